"""vsftpd 3.0.3 and pure-ftpd 1.0.50 from Debian, on loopback with known configs.

Each assertion is what the server is configured and known to do; the mapped
passive range must lie inside the configured one, its estimate within the
stated uncertainty.
"""

import pytest

from ftpprobe.runner import run_probes
from ftpprobe.target import Target

from peers import DebianServer, Unavailable

pytestmark = pytest.mark.debian_servers


def start(package, pasv, **kw):
    try:
        return DebianServer(package, pasv, **kw).__enter__()
    except Unavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def server(request):
    package, pasv = request.param
    s = start(package, pasv, max_clients=8)
    yield s
    s.__exit__(None, None, None)


@pytest.mark.parametrize("server", [("vsftpd", (31000, 31049)), ("pure-ftpd", (32000, 32049))],
                         indirect=True, ids=["vsftpd", "pure-ftpd"])
async def test_real_server_findings(server):
    report = await run_probes(Target(server.host, server.port), timeout=2, samples=40)
    assert report.error == "", report.error
    f = {x.id: x for x in report.findings}
    # Both servers execute a bare-LF line and accept P@SW as PASV (verified by hand).
    assert f["server.bare-lf-rejected"].status == "absent"
    assert f["server.psw-alias"].status == "present"
    assert f["server.case-sensitive"].status == "absent"
    assert f["server.epsv-unsupported"].status == "absent"
    bounce = f["server.port-foreign-accepted"]
    assert bounce.status == "absent"
    if server.package == "vsftpd":
        assert "500 Illegal PORT command." in bounce.evidence[0]
        assert "vsFTPd 3.0.3" in report.greeting
    else:
        assert "500 I won't open a connection to 192.0.2.1 (only to 127.0.0.1)" in bounce.evidence[0]
        assert "Pure-FTPd" in report.greeting
    assert f["server.cleartext-login"].status == "absent"  # anonymous: no secret exposed
    assert f["path.active-blocked"].status == "absent"
    assert f["server.pasv-unreachable"].status == "absent"
    assert f["server.list-unparseable"].status == "absent"
    low, high = server.pasv
    p = report.passive
    assert low <= p["observed_min"] <= p["observed_max"] <= high
    assert p["outside"] == []
    assert p["allocation"] == "random"
    for est, true in ((p["estimate_low"], low), (p["estimate_high"], high)):
        assert abs(est - true) <= 6 * p["uncertainty"] + 1  # P(miss) about e**-7 per bound


async def test_vsftpd_session_limit_and_pasv_address():
    s = start("vsftpd", (31100, 31119), max_clients=3, extra={"pasv_address": "192.0.2.55"})
    try:
        report = await run_probes(Target(s.host, s.port), timeout=2, samples=12)
    finally:
        s.__exit__(None, None, None)
    f = {x.id: x for x in report.findings}
    limit = f["server.connection-limit"]
    assert limit.status == "present" and limit.data["limit"] == 3
    assert "421" in limit.evidence[1]
    mismatch = f["server.pasv-address-mismatch"]
    assert mismatch.status == "present" and "192.0.2.55" in mismatch.evidence[0]
    assert report.passive["samples"] >= 12  # a raced connection that failed is asked again, unraced
    assert report.passive["reachable"] == report.passive["tried"] >= 1
