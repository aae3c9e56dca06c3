"""FTPS behind a site router with the kernel FTP helper: what TLS hides from it.

The site router (tests/lab.py ``SiteLab``) forwards the control port to the
server and runs the kernel FTP helper (nf_conntrack_ftp + nf_nat_ftp) on it.
In clear text the helper rewrites the server's 227 reply to the public
address and opens each data port the reply names; inside TLS it reads
nothing.  Real vsftpd, pure-ftpd and proftpd (Debian packages) with
certificates from a CA made in this test run; ftpprobe runs in the outside
namespace and trusts that CA through ``SSL_CERT_FILE``.
"""

import contextlib
import json
import re
import sys

import pytest

from conftest import findings_by_id
from ftps_servers import DAY, ProftpdTls, PureFtpdTls, CertAuthority, vsftpd_tls
from lab import SiteLab, ftpprobe_in, running
from peers import DebianServer, Unavailable

pytestmark = pytest.mark.root
RANGE = (30000, 30009)
SERVERS = ("vsftpd", "pure-ftpd", "proftpd")


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    try:
        authority = CertAuthority(tmp_path_factory.mktemp("ca"))
    except Unavailable as exc:
        pytest.skip(str(exc))
    return authority


@pytest.fixture(autouse=True)
def trust_the_test_ca(ca, monkeypatch):
    # ftpprobe (run inside a namespace as a subprocess) checks certificates
    # against this file instead of the system's trust store.
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.ca_file))


@contextlib.contextmanager
def ftps_server(lab, name, cert, *, public=None, implicit=False):
    """``name`` with TLS on the lab's inside host, port 21, passive RANGE,
    announcing ``public`` (or its own private address); skips where it cannot run."""
    crt, key = cert
    try:
        if name == "vsftpd":
            server = DebianServer("vsftpd", RANGE, host=lab.SERVER, port=21, netns=lab.srv,
                                  extra=vsftpd_tls(crt, key, public=public, implicit=implicit))
        elif name == "pure-ftpd":
            server = PureFtpdTls(crt, key, RANGE, host=lab.SERVER, port=21, netns=lab.srv,
                                 extra={"masquerade": public} if public else None)
        else:
            server = ProftpdTls(crt, key, RANGE, host=lab.SERVER, netns=lab.srv, public=public)
        server.__enter__()
    except Unavailable as exc:
        pytest.skip(f"{name}: {exc}")
    try:
        yield server
    finally:
        server.__exit__(None, None, None)


def probe_tls(lab, *extra):
    code, report = ftpprobe_in(lab, lab.out, "probe", "--only", "tls,tls-versions", *extra, f"ftp://{lab.PUBLIC}/",
                               timeout="3")
    assert report["error"] == "", report["error"]
    return code, findings_by_id(report)


@pytest.mark.parametrize("server", SERVERS)
def test_private_address_and_unforwarded_range_hidden_by_the_helper(ca, server):
    """No passive port forwarded, the server announces its private address.
    In clear text the helper rewrites the 227 and opens the port; inside TLS
    the 227 names 192.168.1.10 and the port is closed."""
    cert = ca.issue(f"{server}-good", [SiteLab.PUBLIC])
    with running(SiteLab(helper=True, forward=None)) as lab, ftps_server(lab, server, cert):
        code, f = probe_tls(lab)
    alg = f["server.pasv-relies-on-alg"]
    assert alg["status"] == "present", alg
    assert alg["data"] == {"clear": "203.0.113.1", "tls": "192.168.1.10"}
    assert "announce 203.0.113.1" in alg["advice"]
    unreachable = f["server.tls-data-unreachable"]
    assert unreachable["status"] == "present", unreachable
    assert "connected in clear text (the router's FTP helper opened it)" in unreachable["evidence"][0]
    assert "in clear text: data connection to 203.0.113.1 port" in unreachable["evidence"][2]
    assert unreachable["data"]["failed"]
    assert f["server.tls-certificate"]["status"] == "absent", f["server.tls-certificate"]
    assert code == 1


@pytest.mark.parametrize("server, demanded", [("vsftpd", True), ("pure-ftpd", False), ("proftpd", True)])
def test_public_address_and_forwarded_range(ca, server, demanded):
    """The server announces the public address and the range is forwarded:
    clear text and TLS agree, data connections work inside TLS, and the
    session-reuse demand (vsftpd require_ssl_reuse=YES, proftpd's default)
    is seen and honoured."""
    cert = ca.issue(f"{server}-public", [SiteLab.PUBLIC])
    with running(SiteLab(helper=True, forward=RANGE)) as lab, \
            ftps_server(lab, server, cert, public=SiteLab.PUBLIC):
        code, f = probe_tls(lab)
    assert f["server.pasv-relies-on-alg"]["status"] == "absent", f["server.pasv-relies-on-alg"]
    assert f["server.tls-data-unreachable"]["status"] == "absent", f["server.tls-data-unreachable"]
    protocol = f["server.tls-protocol"]
    assert protocol["data"]["reuse_demanded"] is demanded, protocol
    assert "TLSv1.2" in protocol["data"]["accepted"]
    text = "\n".join(protocol["evidence"])
    assert "resumed: data TLS handshake (TLS session offered for reuse)" in text
    if demanded:
        assert protocol["status"] == "present"
        assert "session reuse demanded on data connections" in protocol["evidence"]
        assert "session resumed" in text  # honoured: the transfer that resumed it worked
        # refused without it (vsftpd: "522 SSL connection failed: session reuse required", proftpd: 425)
        assert re.search(r"not resumed: after the transfer '(522|425) ", text), text
    else:
        assert protocol["status"] == "absent"


@pytest.mark.parametrize("server", ("vsftpd", "pure-ftpd"))
@pytest.mark.parametrize("kind", ("expired", "other-name"))
def test_bad_certificates_reported(ca, server, kind):
    if kind == "expired":
        cert = ca.issue(f"{server}-expired", [SiteLab.PUBLIC], valid_from=-30 * DAY, valid_to=-2 * DAY)
    else:
        cert = ca.issue(f"{server}-other", ["ftp.example.net"])
    with running(SiteLab(helper=True, forward=RANGE)) as lab, \
            ftps_server(lab, server, cert, public=SiteLab.PUBLIC):
        code, f = probe_tls(lab)
        # as an ftpes:// target, every session fails at its handshake: one clear line, exit 3
        refused = lab.ns(lab.out, sys.executable, "-m", "ftpprobe", "probe", "--only", "epsv", "--json",
                         f"ftpes://{lab.PUBLIC}/", check=False)
    cert_finding = f["server.tls-certificate"]
    assert cert_finding["status"] == "present", cert_finding
    assert cert_finding["data"]["problems"] == [kind]
    evidence = "\n".join(cert_finding["evidence"])
    assert "issuer: CN=ftpprobe test CA" in evidence and "valid from " in evidence
    if kind == "expired":
        assert cert_finding["severity"] == "critical" and "certificate has expired" in evidence
        assert code == 2
    else:
        assert "issued for ftp.example.net, not for 203.0.113.1" in evidence
        assert "names: ftp.example.net" in evidence
    # anonymous: the probe went on without checking and still compared clear text and TLS
    assert f["server.pasv-relies-on-alg"]["status"] == "absent"
    assert refused.returncode == 3
    assert "certificate was refused" in json.loads(refused.stdout)["error"]


def test_check_implicit_ftps_certificate_expiring_soon(ca):
    """check ftps:// (implicit FTPS on the site's port 990): a certificate that
    expires in 5 days is a WARNING with the default --cert-warn-days 14, OK with 3."""
    cert = ca.issue("implicit", [SiteLab.PUBLIC], valid_to=5 * DAY)
    with running(SiteLab(helper=False, forward=RANGE, control_port=990)) as lab, \
            ftps_server(lab, "vsftpd", cert, public=SiteLab.PUBLIC, implicit=True):
        url = f"ftps://{lab.PUBLIC}/"
        warned = lab.ns(lab.out, sys.executable, "-m", "ftpprobe", "check", "--timeout", "3", "--samples", "4", url,
                        check=False)
        calm = lab.ns(lab.out, sys.executable, "-m", "ftpprobe", "check", "--timeout", "3", "--samples", "4",
                      "--cert-warn-days", "3", "--format", "jsonl", url, check=False)
    assert warned.returncode == 1, warned.stdout + warned.stderr
    assert warned.stdout.startswith("FTPPROBE WARNING - ")
    assert "server.tls-certificate present: expires in " in warned.stdout
    line = json.loads(calm.stdout)
    assert calm.returncode == 0, calm.stdout
    assert line["up"] and line["target"] == "ftps://203.0.113.1/"
    assert not [f for f in line["findings"] if f["status"] == "present" and f["severity"] != "info"]
