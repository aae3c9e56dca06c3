"""Bad input: each gives a clear message and exit code 3 (or a finding) within the deadline."""

import socket
import time

import pytest

from ftpprobe.catalog import load_catalog
from ftpprobe.runner import run_probes
from ftpprobe.target import Target, parse_target
from ftpprobe.errors import TargetError

from conftest import run_cli
from hostile import HostileServer

TIMEOUT = 1.5


@pytest.mark.parametrize("url, message", [
    ("http://example.net/", "unsupported scheme 'http'"),
    ("ftp://:21/", "no host"),
    ("ftp://host:99999/", "not a valid ftp:// URL"),
    ("ftp://host:0/", "port 0"),
])
def test_wrong_url(url, message):
    with pytest.raises(TargetError, match=message):
        parse_target(url)
    done = run_cli("probe", url)
    assert done.returncode == 3
    assert message in done.stderr and "Traceback" not in done.stderr


def test_refused_connection():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        done = run_cli("probe", f"ftp://127.0.0.1:{port}/")
    assert done.returncode == 3
    text = " ".join(done.stdout.split())  # the report wraps to the terminal's width
    assert f"control connection to 127.0.0.1 port {port}" in text
    assert "Connection refused" in text
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("scenario, message", [
    ("never-greets", "no complete reply within 1.5 s"),
    ("drips", "no complete reply within 1.5 s"),
    ("huge-line", "reply line longer than 8192 bytes"),
    ("endless-multiline", "reply longer than 1048576 bytes"),
    ("login-refused", "login as 'anonymous' refused: 530 Login incorrect.\\r\\n"),
])
def test_hostile_greeting_or_login_fails_the_probe_clearly(scenario, message):
    with HostileServer(scenario) as server:
        started = time.monotonic()
        done = run_cli("probe", "--timeout", str(TIMEOUT), server.url, timeout=60)
        elapsed = time.monotonic() - started
    assert done.returncode == 3, done.stdout + done.stderr
    assert message in " ".join(done.stdout.split()), done.stdout
    assert "Traceback" not in done.stderr
    # a lost greeting is retried once: two timeouts, plus interpreter start-up
    assert elapsed < 2 * TIMEOUT + 5


async def test_227_naming_a_third_party_is_reported_and_never_followed():
    """The data connection goes to the control peer; a listener on the advertised
    address (127.0.0.2, same port) must see nothing."""
    import trio

    with HostileServer("pasv-third-party") as server:
        trap = trio.socket.socket()
        await trap.bind(("127.0.0.2", server.data_port))
        trap.listen(5)
        try:
            report = await run_probes(Target(server.host, server.port),
                                      probes=[p for p in load_catalog() if p.name == "pasv-map"],
                                      timeout=TIMEOUT, samples=4)
            with trio.move_on_after(0.2):
                await trap.accept()
                pytest.fail("the prober connected to the third-party address")
        finally:
            trap.close()
    f = {x.id: x for x in report.findings}
    assert f["server.pasv-address-mismatch"].status == "present"
    assert "127.0.0.2" in f["server.pasv-address-mismatch"].evidence[0]
    # Every data connection tried went to the control peer (pipelined samples are
    # connected to on a subset: the last port of each write).
    assert server.data_connections == report.passive["tried"] >= 1


async def test_227_with_numbers_over_255_is_a_clear_error():
    with HostileServer("pasv-bad-numbers") as server:
        report = await run_probes(Target(server.host, server.port),
                                  probes=[p for p in load_catalog() if p.name in ("pasv-map", "epsv")],
                                  timeout=TIMEOUT, samples=3)
    f = {x.id: x for x in report.findings}
    assert f["server.pasv-range"].status == "inconclusive"
    assert "number over 255" in " ".join(f["server.pasv-range"].evidence)
    assert f["server.epsv-unsupported"].status == "present"  # 502 not here


def _probes(*names):
    return [p for p in load_catalog() if p.name in names]


async def run_with_trap(server, probe_names, **kw):
    """run_probes against ``server`` while a listener on 127.0.0.2 (every port the
    hostile server names) must see no connection at all."""
    import trio

    traps = []
    for port in {server.data_port, server.port}:
        trap = trio.socket.socket()
        # The port was chosen free on 127.0.0.1; on 127.0.0.2 it may linger in TIME_WAIT.
        trap.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        await trap.bind(("127.0.0.2", port))
        trap.listen(5)
        traps.append(trap)
    try:
        report = await run_probes(Target(server.host, server.port), probes=_probes(*probe_names),
                                  timeout=TIMEOUT, **kw)
        for trap in traps:
            with trio.move_on_after(0.1):
                await trap.accept()
                pytest.fail("the prober connected to an address other than the control peer")
    finally:
        for trap in traps:
            trap.close()
    return report, {f.id: f for f in report.findings}


async def test_greeting_after_the_deadline():
    with HostileServer("greets-late", late=TIMEOUT + 0.5) as server:
        report, _ = await run_with_trap(server, ["pasv-map"])
    assert "no complete reply within 1.5 s" in report.error


async def test_227_port_0_and_229_port_65536():
    with HostileServer("pasv-port-zero") as server:
        report, f = await run_with_trap(server, ["pasv-map", "epsv"], samples=4)
    assert f["server.pasv-range"].status == "inconclusive"
    assert "227 reply: port 0" in " ".join(f["server.pasv-range"].evidence)
    obs = report.observations["epsv"]
    assert obs.parse_error == "229 reply: port 65536 out of range"


async def test_reset_after_port_is_a_finding():
    with HostileServer("reset-after-port") as server:
        report, f = await run_with_trap(server, ["port-own"])
    assert f["server.port-reset"].status == "present"
    assert "reset" in f["server.port-reset"].evidence[0]


async def test_half_close_after_greeting():
    with HostileServer("half-closes") as server:
        report, _ = await run_with_trap(server, ["pasv-map"])
    assert report.error.startswith("USER anonymous\\r\\n: connection closed by peer")


async def test_data_connection_that_never_sends_ends_within_the_deadline():
    import time

    with HostileServer("data-silent") as server:
        started = time.monotonic()
        report, f = await run_with_trap(server, ["list-format"])
        elapsed = time.monotonic() - started
    assert f["server.list-unparseable"].status == "inconclusive"
    assert report.observations["list-format"].timed_out is True
    assert elapsed < 4 * TIMEOUT  # read timeout plus the final-reply timeout, nothing more


async def test_list_of_1_gb_is_cut_at_1_mib():
    with HostileServer("list-1gb") as server:
        report, f = await run_with_trap(server, ["list-format"])
        sent = server.data_sent
    listing = report.observations["list-format"]
    assert listing.truncated is True and listing.bytes >= 1 << 20
    assert "(read stopped at 1 MiB)" in " ".join(f["server.list-unparseable"].evidence)
    assert sent < 1 << 30  # the prober hung up long before a gigabyte


@pytest.mark.parametrize("scenario", ["logged-in-by-user", "user-refused"])
async def test_a_real_password_is_sent_only_after_331(scenario):
    """The password is never sent ahead of USER's reply: a server that logs in
    at USER, or refuses the user, never receives it."""
    from ftpprobe.errors import LoginFailed
    from ftpprobe.transport import ControlSession

    with HostileServer(scenario) as server:
        s = await ControlSession.open("127.0.0.1", server.port, TIMEOUT)
        try:
            await s.greet()
            try:
                await s.login("alice", "s3cret")
            except LoginFailed:
                assert scenario == "user-refused"
        finally:
            await s.aclose()
    assert not s.password_sent
    assert not any(b"s3cret" in line for line in server.lines)


@pytest.mark.parametrize("pipeline", [0, 17, True, 2.0, "6"])
def test_run_probes_refuses_a_pipeline_that_is_not_a_whole_number_from_1_to_16(pipeline):
    import trio

    from ftpprobe.errors import FtpProbeError

    with pytest.raises(FtpProbeError, match="pipeline must be a whole number from 1 to 16"):
        trio.run(lambda: run_probes(Target("127.0.0.1", 9), pipeline=pipeline))
