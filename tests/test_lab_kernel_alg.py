"""The real Linux FTP ALG (nf_conntrack_ftp + nf_nat_ftp) in network namespaces.

Each test builds a LAN client behind a masquerading router and runs
`ftpprobe reflect` outside; `ftpprobe fingerprint` runs in the LAN.  The
findings are checked against the reflector's journal: the bytes and peer the
reflector actually received after the kernel helper had its way.
"""

import json

import pytest

from lab import NatLab, ftpprobe_in, reflector_in, running

pytestmark = pytest.mark.root


@pytest.fixture(params=[21, 2121, None], ids=["helper-on-21", "helper-on-2121", "no-helper"])
def lab_run(request, tmp_path):
    """(helper_port, report, journal entries) for one router variant."""
    journal = tmp_path / "journal.jsonl"
    with running(NatLab(helper_port=request.param)) as lab, reflector_in(lab, lab.out, lab.OUT, str(journal)):
        _, report = ftpprobe_in(lab, lab.lan, "fingerprint", "--other-port", "2121", lab.OUT)
    entries = [json.loads(line) for line in journal.read_text().splitlines()] if journal.exists() else []
    return request.param, report, entries


def port_lines(entries, port):
    return [bytes.fromhex(e["raw"]) for e in entries if e["port"] == port and bytes.fromhex(e["raw"])[:4].upper() == b"PORT"]


def test_findings_match_what_the_kernel_did(lab_run):
    helper, report, entries = lab_run
    f = {x["id"]: x for x in report["findings"]}
    assert report["exit_code"] in (0, 1)
    # NAT: every session reached the reflector from the router's public address.
    assert {e["peer"][0] for e in entries} == {"198.51.100.1"}
    assert f["nat.present"]["status"] == "present"

    on_21, on_2121 = port_lines(entries, 21), port_lines(entries, 2121)
    rewritten_21 = [l for l in on_21 if b"198,51,100,1" in l]
    private_21 = [l for l in on_21 if b"10,0,0,2" in l]
    if helper == 21:
        # The helper rewrote PORT and port (strncasecmp) after a login, not as the first line.
        assert any(l.startswith(b"PORT 198,51,100,1,") for l in rewritten_21)
        assert any(l.startswith(b"port 198,51,100,1,") for l in rewritten_21)
        assert f["alg.port-rewrite"]["status"] == "present"
        assert f["alg.case-sensitive"]["status"] == "absent"
        # Only the first-line PORT and the PORT pipelined after a NOOP in the same
        # segment (alg-port-pipelined: find_pattern() looks at a segment's start) passed unrewritten.
        assert len(private_21) == 2
        assert f["alg.first-command-blind"]["status"] == "present"
        assert f["alg.eprt-rewrite"]["status"] == "present"
        assert any(bytes.fromhex(e["raw"]).startswith(b"EPRT |1|198.51.100.1|") for e in entries)
        assert f["alg.foreign-ignored"]["status"] == "present"
        assert any(b"192,0,2,99" in l for l in on_21)
        assert f["alg.canonicalizes"]["status"] == "absent"
        # Lines the helper cannot parse to their CR never reached the reflector.
        assert not any(l.endswith(b"\n") and not l.endswith(b"\r\n") for l in on_21)
        assert not any(l.endswith(b" \r\n") for l in on_21)
        for quirk in ("alg.stall.bare-lf", "alg.stall.trailing-space", "alg.stall.split"):
            assert f[quirk]["status"] == "present", quirk
            assert any("TCP_INFO" in e for e in f[quirk]["evidence"]), quirk
        # On 2121 there is no helper: PORT arrived as sent.
        assert on_2121 and all(b"10,0,0,2" in l for l in on_2121)
        assert f["alg.port-21-only"]["status"] == "present"
        # The reflector's data connection came back through the helper's expectation.
        assert any("token" in e for e in entries)
        assert f["path.active-blocked"]["status"] == "absent"
        assert f["nat.no-alg"]["status"] == "absent"
    else:
        assert rewritten_21 == [] and private_21
        assert f["alg.port-rewrite"]["status"] == "absent"
        assert f["nat.no-alg"]["status"] == "present"
        assert f["path.active-blocked"]["status"] == "present"
        assert any("connect_error" in e for e in entries if e["port"] == 21)
        # PORT with a bare LF reached the reflector as sent: nothing stalls it.
        assert any(l.endswith(b"\n") and not l.endswith(b"\r\n") for l in on_21)
        assert f["alg.stall.bare-lf"]["status"] == "absent"
        if helper == 2121:
            assert on_2121 and all(b"198,51,100,1" in l for l in on_2121)
            assert f["alg.port-21-only"]["status"] == "absent"
        else:
            assert all(b"10,0,0,2" in l for l in on_2121)
    # PASV passes every router here unaltered, and 227 replies are not rewritten
    # for a masqueraded client (the server's address is already public).
    assert f["alg.pasv-mangle"]["status"] == "absent"
    assert f["alg.reply-rewrite"]["status"] == "absent"
    assert f["alg.stall.space-lf"]["status"] == "absent"
