"""Sites behind NAT: a server inside, a router doing DNAT (with and without the
kernel FTP helper), and ftpprobe probing the public address from outside.

Each test asserts the findings against what the topology really does: which
passive ports the router forwards, what the server announces, whether the
helper rewrote the reply (seen by a reflector that declares its own address).
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import LabUnavailable, SiteLab

pytestmark = pytest.mark.root
HERE = Path(__file__).parent
RANGE = (30000, 30019)


def start_site(**kw) -> SiteLab:
    try:
        return SiteLab(**kw).__enter__()
    except LabUnavailable as exc:
        pytest.skip(str(exc))


def serve_pyftpdlib(lab, masquerade=None):
    args = [sys.executable, str(HERE / "serve_pyftpdlib.py"), lab.SERVER, "21", str(RANGE[0]), str(RANGE[1])]
    proc = subprocess.Popen(["ip", "netns", "exec", lab.srv, *args, *([masquerade] if masquerade else [])],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout.readline().strip() == "listening"
    return proc


def probe_from_outside(lab, *args):
    done = lab.ns(lab.out, sys.executable, "-m", "ftpprobe", *args, "--json", "--timeout", "2", check=False)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def by_id(report):
    return {f["id"]: f for f in report["findings"]}


def test_private_address_announced_range_forwarded_no_helper():
    lab = start_site(helper=False, forward=RANGE)
    server = serve_pyftpdlib(lab)
    try:
        code, report = probe_from_outside(lab, "map-pasv", "--samples", "20", f"ftp://{lab.PUBLIC}/")
    finally:
        server.kill()
        lab.__exit__(None, None, None)
    f = by_id(report)
    assert f["server.pasv-private-address"]["status"] == "present"
    assert "192.168.1.10" in f["server.pasv-private-address"]["evidence"][0]
    assert "announce the public address 203.0.113.1" in f["server.pasv-private-address"]["advice"]
    assert f["server.pasv-address-mismatch"]["status"] == "present"
    # the prober connected to the control peer (the public address): the forward works
    assert f["server.pasv-unreachable"]["status"] == "absent"
    assert RANGE[0] <= report["passive"]["observed_min"] <= report["passive"]["observed_max"] <= RANGE[1]
    assert code == 1


def test_partly_forwarded_range_names_the_unreachable_ports():
    lab = start_site(helper=False, forward=(RANGE[0], RANGE[0] + 9))  # only 30000-30009 forwarded
    server = serve_pyftpdlib(lab, masquerade=SiteLab.PUBLIC)
    try:
        code, report = probe_from_outside(lab, "map-pasv", "--samples", "40", f"ftp://{lab.PUBLIC}/")
    finally:
        server.kill()
        lab.__exit__(None, None, None)
    f = by_id(report)
    assert f["server.pasv-private-address"]["status"] == "absent"  # it announces the public address
    unreachable = f["server.pasv-unreachable"]
    assert unreachable["status"] == "present" and unreachable["severity"] == "warning"
    ranges = unreachable["data"]["unreachable_ranges"]
    assert ranges and all(RANGE[0] + 10 <= low <= high <= RANGE[1] for low, high in ranges)
    assert "part of the range is not forwarded" in unreachable["advice"]
    assert report["passive"]["reachable"] < report["passive"]["tried"]


def test_helper_rewrites_the_reply_and_opens_the_pinhole():
    """No passive port forwarded, the server announces its private address: the
    kernel helper rewrites the 227 reply and its expectation lets the data
    connection in.  A reflector as the server proves the reply was rewritten."""
    lab = start_site(helper=True, forward=None)
    server = serve_pyftpdlib(lab)
    try:
        code, report = probe_from_outside(lab, "map-pasv", "--samples", "10", f"ftp://{lab.PUBLIC}/")
    finally:
        server.kill()
    try:
        reflector = subprocess.Popen(["ip", "netns", "exec", lab.srv, sys.executable, "-m", "ftpprobe", "reflect",
                                      "--listen", lab.SERVER, "--ports", "21,2121"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(1.5)
        _, fingerprint = probe_from_outside(lab, "fingerprint", "--only", "alg-pasv-crlf,alg-epsv", lab.PUBLIC)
        reflector.kill()
    finally:
        lab.__exit__(None, None, None)
    f = by_id(report)
    assert report["passive"]["addresses"] == {"203.0.113.1": report["passive"]["commands"]["PASV"]}
    assert f["server.pasv-private-address"]["status"] == "absent"
    assert f["server.pasv-unreachable"]["status"] == "absent"  # the helper's expectations let them in
    g = by_id(fingerprint)
    assert g["alg.reply-rewrite"]["status"] == "present"
    assert "declared 192.168.1.10:" in g["alg.reply-rewrite"]["evidence"][0]
    assert "received 203.0.113.1:" in g["alg.reply-rewrite"]["evidence"][0]


@pytest.mark.parametrize("hairpin, expected", [("control", "present"), ("full", "absent")])
def test_hairpin_from_the_lan(hairpin, expected):
    """A LAN client uses the site's public address.  With hairpin NAT for the
    control port only, control works and data does not (seed 003); with it for
    the passive range too, both work."""
    lab = start_site(helper=False, forward=RANGE, hairpin=hairpin)
    server = serve_pyftpdlib(lab, masquerade=SiteLab.PUBLIC)
    try:
        done = lab.ns(lab.lan, sys.executable, "-m", "ftpprobe", "map-pasv", "--from-lan", "--json", "--timeout",
                      "1", "--samples", "8", f"ftp://{lab.PUBLIC}/", check=False)
        outside_code, outside = probe_from_outside(lab, "map-pasv", "--samples", "8", f"ftp://{lab.PUBLIC}/")
    finally:
        server.kill()
        lab.__exit__(None, None, None)
    report = json.loads(done.stdout)
    f = by_id(report)
    assert report["error"] == ""  # the control connection worked from the LAN
    assert f["path.hairpin"]["status"] == expected
    assert f["path.hairpin"]["evidence"][1] == (
        "0 of 8 passive data connections to 203.0.113.1 succeeded" if expected == "present"
        else "8 of 8 passive data connections to 203.0.113.1 succeeded")
    # from outside the same site works, and path.hairpin is not decidable there
    assert by_id(outside)["server.pasv-unreachable"]["status"] == "absent"
    assert by_id(outside)["path.hairpin"]["status"] == "skipped"


def serve_debian(lab, package, extra=None):
    from peers import DebianServer, Unavailable

    try:
        return DebianServer(package, RANGE, host=lab.SERVER, port=21, netns=lab.srv, extra=extra).__enter__()
    except Unavailable as exc:
        lab.__exit__(None, None, None)
        pytest.skip(str(exc))


def test_vsftpd_behind_nat_announcing_its_private_address():
    lab = start_site(helper=False, forward=RANGE)
    server = serve_debian(lab, "vsftpd")
    try:
        code, report = probe_from_outside(lab, "map-pasv", "--samples", "20", f"ftp://{lab.PUBLIC}/")
    finally:
        server.__exit__(None, None, None)
        lab.__exit__(None, None, None)
    f = by_id(report)
    assert "vsFTPd 3.0.3" in report["greeting"]
    assert f["server.pasv-private-address"]["status"] == "present"
    assert "vsftpd pasv_address" in f["server.pasv-private-address"]["advice"]
    assert f["server.pasv-unreachable"]["status"] == "absent"
    assert RANGE[0] <= report["passive"]["observed_min"] <= report["passive"]["observed_max"] <= RANGE[1]
    assert code == 1


def test_pure_ftpd_announcing_public_address_with_no_range_forwarded_is_critical():
    lab = start_site(helper=False, forward=None)
    server = serve_debian(lab, "pure-ftpd", extra={"masquerade": SiteLab.PUBLIC})
    try:
        code, report = probe_from_outside(lab, "map-pasv", "--samples", "6", f"ftp://{lab.PUBLIC}/")
    finally:
        server.__exit__(None, None, None)
        lab.__exit__(None, None, None)
    f = by_id(report)
    assert "Pure-FTPd" in report["greeting"]
    assert f["server.pasv-private-address"]["status"] == "absent"
    assert f["server.pasv-unreachable"]["status"] == "present"
    assert f["server.pasv-unreachable"]["severity"] == "critical"
    assert f"forward {report['passive']['estimate_low']}-" in f["server.pasv-unreachable"]["advice"]
    assert code == 2


@pytest.mark.parametrize("helper_port, rewritten", [(21, False), (2121, True)])
def test_control_port_2121_and_where_the_helper_listens(helper_port, rewritten):
    """The site forwards public port 2121 to the server's 21, no passive range.
    A helper on 21 never sees the session (seed 002/004: changing the control
    port breaks the ALG); a helper on 2121 rewrites the reply and opens pinholes."""
    lab = start_site(helper=True, forward=None, control_port=2121, helper_port=helper_port)
    server = serve_pyftpdlib(lab)
    try:
        code, report = probe_from_outside(lab, "map-pasv", "--samples", "6", f"ftp://{lab.PUBLIC}:2121/")
    finally:
        server.kill()
        lab.__exit__(None, None, None)
    f = by_id(report)
    if rewritten:
        assert report["passive"]["addresses"] == {"203.0.113.1": report["passive"]["commands"]["PASV"]}
        assert f["server.pasv-unreachable"]["status"] == "absent"
    else:
        assert report["passive"]["addresses"] == {"192.168.1.10": report["passive"]["commands"]["PASV"]}
        assert f["server.pasv-private-address"]["status"] == "present"
        assert f["server.pasv-unreachable"]["status"] == "present"
