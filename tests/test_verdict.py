"""The verdict (ftpprobe/verdict.py) on constructed findings and observations: no network."""

from ftpprobe.codec import Reply
from ftpprobe.findings import Finding
from ftpprobe.observations import ActiveObs, Exchange
from ftpprobe.verdict import verdict


def F(quirk, status, evidence=("evidence",), severity=None, data=None):
    return Finding(quirk, status, list(evidence), severity=severity, data=data or {})


RANGE = F("server.pasv-range", "present", data={"estimate_low": 40000, "estimate_high": 40099})


def test_server_passive_works_names_the_ports_and_active_works():
    v = verdict([RANGE, F("server.pasv-unreachable", "absent", ["20 of 20 data connections succeeded"]),
                 F("path.active-blocked", "absent")], {}, vantage="server")
    assert v.passive.state == "works" and "ports 40000-40099" in v.passive.reason
    assert v.active.state == "works"
    assert not v.no_data_path


def test_server_neither_mode_carries_data():
    v = verdict([RANGE, F("server.pasv-unreachable", "present", ["0 of 20 data connections succeeded"],
                          severity="critical"),
                 F("path.active-blocked", "present")], {}, vantage="server")
    assert v.passive.state == "fails" and v.active.state == "fails"
    assert v.no_data_path
    assert v.to_dict()["no_data_path"] is True


def test_server_partial_range_and_refused_port():
    refused = ActiveObs("port-own", exchange=Exchange(b"PORT 1,2,3,4,5,6\r\n", "reply",
                                                      Reply(500, (b"500 PORT disabled",), b"500 PORT disabled\r\n")))
    v = verdict([RANGE, F("server.pasv-unreachable", "present", ["10 of 20 succeeded", "ports 40050-40099"]),
                 F("path.active-blocked", "inconclusive", ["PORT refused"])],
                {"port-own": refused}, vantage="server")
    assert v.passive.state == "partly"
    assert v.active.state == "fails" and "refused" in v.active.reason


def test_timeouts_leave_the_verdict_unknown_not_works():
    v = verdict([F("server.pasv-unreachable", "inconclusive", ["no passive reply could be sampled"]),
                 F("path.active-blocked", "inconclusive", ["no answer"])], {}, vantage="server")
    assert v.passive.state == "unknown" and v.active.state == "unknown"
    assert not v.no_data_path


def test_reflector_no_alg_means_active_fails_at_port_and_passive_blocked():
    v = verdict([F("nat.no-alg", "present"), F("path.passive-blocked", "present", ["0 of 2 connected"]),
                 F("path.active-blocked", "inconclusive")], {}, vantage="reflector")
    assert v.active.state == "fails" and v.active.reason.startswith("at PORT")
    assert v.passive.state == "fails" and "blocked" in v.passive.reason
    assert v.no_data_path


def test_reflector_pinhole_missing_and_passive_works_with_a_stall_note():
    v = verdict([F("nat.no-alg", "absent"), F("path.active-blocked", "present"),
                 F("path.passive-blocked", "absent", ["2 of 2 connected"]),
                 F("alg.stall.space-lf", "present")], {}, vantage="reflector")
    assert v.active.state == "fails" and "data connection" in v.active.reason
    assert v.passive.state == "works"
    assert any("PASV \\n" in n for n in v.notes)


def test_a_port_timeout_through_the_reflector_is_unknown_not_fails():
    from ftpprobe.observations import ReflectActiveObs
    timed_out = ReflectActiveObs("alg-port-crlf", exchange=Exchange(b"PORT 10,0,0,2,156,64\r\n", "timeout"))
    v = verdict([F("path.passive-blocked", "present"), F("path.active-blocked", "inconclusive")],
                {"alg-port-crlf": timed_out}, vantage="reflector")
    assert v.active.state == "unknown"
    assert not v.no_data_path


def test_a_transient_4xx_to_port_is_unknown_not_fails():
    transient = ActiveObs("port-own", exchange=Exchange(b"PORT 1,2,3,4,5,6\r\n", "reply",
                                                        Reply(421, (b"421 busy",), b"421 busy\r\n")))
    v = verdict([F("path.active-blocked", "inconclusive", ["PORT refused"])], {"port-own": transient},
                vantage="server")
    assert v.active.state == "unknown"
