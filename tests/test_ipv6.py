"""probe, map-pasv and check over IPv6 against a real pyftpdlib on ::1 (EPSV/229, EPRT |2|,
literal [::1] URLs), with the verdict lines."""

import json
import socket

import pytest

from conftest import drawn, run_cli, run_json


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback (::1) on this machine")


def test_probe_over_ipv6_uses_epsv_and_eprt_and_gives_a_verdict(pyftpd):
    server = pyftpd(host="::1", passive_ports=(57000, 57009))
    code, report = run_json("probe", "--timeout", "1.5", "--samples", "10", f"ftp://[::1]:{server.port}/")
    assert report["error"] == "" and report["peer"] == "::1"
    assert set(report["passive"]["commands"]) == {"EPSV"} and drawn(report["passive"], 10)
    assert report["verdict"]["passive"]["state"] == "works"
    assert report["verdict"]["active"]["state"] == "works"   # EPRT |2| to our own ::1 listener
    f = {x["id"]: x for x in report["findings"]}
    assert f["path.active-blocked"]["status"] == "absent"
    assert any("EPRT |2|::1|" in line for line in f["path.active-blocked"]["evidence"])


def test_map_pasv_and_check_over_ipv6(pyftpd):
    server = pyftpd(host="::1", passive_ports=(57100, 57119))
    code, report = run_json("map-pasv", "--samples", "30", "--timeout", "1.5", f"ftp://[::1]:{server.port}/")
    p = report["passive"]
    assert drawn(p, 30) and 57100 <= p["observed_min"] <= p["observed_max"] <= 57119
    done = run_cli("check", "--format", "jsonl", f"ftp://[::1]:{server.port}/")
    site = json.loads(done.stdout.splitlines()[0])
    assert site["up"] is True and site["site"] == f"[::1]:{server.port}"
