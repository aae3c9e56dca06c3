"""End to end against real pyftpdlib servers on loopback (no root needed)."""

import json
import os
import socket
import time
from contextlib import asynccontextmanager

import pytest
import trio


from ftpprobe.catalog import load_catalog
from ftpprobe.executors import SAMPLES_PER_SESSION
from ftpprobe.observations import Failed
from ftpprobe.packets import permission_problem
from ftpprobe.rules import RULES
from ftpprobe.runner import run_probes
from ftpprobe.target import Target

from conftest import drawn, findings_by_id, run_cli, run_json


def target_of(server) -> Target:
    return Target(server.host, server.port, server.user, server.password, "test")


async def test_full_probe_reports_what_pyftpdlib_does(pyftpd):
    server = pyftpd(passive_ports=(52000, 52019), max_cons=5)
    # --max-sessions above the server's limit, so the session-limit probe can find it.
    report = await run_probes(target_of(server), timeout=1.5, samples=40, max_sessions=8)
    assert report.error == ""
    f = {x.id: x for x in report.findings}
    # pyftpdlib's asynchat terminator is CRLF: a bare-LF line is never executed.
    assert f["server.bare-lf-rejected"].status == "present"
    assert "PASV\\n" in f["server.bare-lf-rejected"].evidence[0]
    assert f["server.case-sensitive"].status == "absent"
    assert f["server.psw-alias"].status == "absent"          # 500 Command "P@SW" not understood
    assert f["server.epsv-unsupported"].status == "absent"
    assert f["server.port-foreign-accepted"].status == "absent"
    assert "501 Rejected data connection to foreign address" in f["server.port-foreign-accepted"].evidence[0]
    assert f["path.active-blocked"].status == "absent"
    assert f["server.active-source-port"].status == "present"  # pyftpdlib does not bind port L-1
    assert f["server.cleartext-login"].status == "present"
    assert f["server.list-unparseable"].status == "absent"
    assert f["server.connection-limit"].status == "present"
    # pyftpdlib counts its listening socket against max_cons: 5 allows 4 sessions.
    assert f["server.connection-limit"].data["limit"] == 4
    assert f["server.pasv-unreachable"].status == "absent"
    assert f["server.pasv-address-mismatch"].status == "absent"
    assert f["server.pasv-outside-range"].status == "absent"
    p = report.passive
    assert 52000 <= p["observed_min"] <= p["observed_max"] <= 52019
    assert abs(p["estimate_low"] - 52000) <= 4 * p["uncertainty"] + 1
    assert abs(p["estimate_high"] - 52019) <= 4 * p["uncertainty"] + 1
    # Pipelined PASV/EPSV: only the last port of each write is connected to.
    # pyftpdlib counts data channels against max_cons=5, so now and then one map session is
    # refused (once in a CI run): it is counted in "errors", and its samples are missing.
    assert p["allocation"] == "random" and p["reachable"] == p["tried"] >= 5
    assert drawn(p, 40) or (p["errors"] == 1 and p["samples"] >= 40 - SAMPLES_PER_SESSION), p


async def test_max_sessions_is_honoured_exactly(pyftpd, monkeypatch):
    """Never more than --max-sessions control sessions of ours open at once
    (counted from their connect until their close completed): the preflight
    session counts, and is reused.  A server whose per-address limit is the
    same serves every probe."""
    from ftpprobe.transport import ControlSession

    server = pyftpd(passive_ports=(52100, 52119))
    server._server.max_cons_per_ip = 3
    open_now, peak = 0, 0
    real_open, real_close = ControlSession.open.__func__, ControlSession.aclose

    async def counted_open(cls, *args, **kw):
        nonlocal open_now, peak
        s = await real_open(cls, *args, **kw)
        open_now += 1
        peak = max(peak, open_now)
        return s

    async def counted_close(self):
        nonlocal open_now
        was_open = not self.closed
        await real_close(self)
        open_now -= was_open

    monkeypatch.setattr(ControlSession, "open", classmethod(counted_open))
    monkeypatch.setattr(ControlSession, "aclose", counted_close)
    report = await run_probes(target_of(server), timeout=1.5, samples=12, max_sessions=3)
    assert report.error == ""
    # pyftpdlib's own count lags now and then (a session kept after QUIT while a data
    # connection is pending): a 421 is then backed off and retried, never a failed probe.
    assert not [o for o in report.observations.values() if isinstance(o, Failed)]
    f = {x.id: x for x in report.findings}
    assert f["server.connection-limit"].status == "absent"
    assert f["server.connection-limit"].evidence[0].startswith("3 of 3 concurrent sessions")
    assert peak == 3 and open_now == 0


async def test_probes_run_concurrently_not_in_sequence(pyftpd):
    # Three probes meet a line pyftpdlib holds for want of CRLF (bare LF, space+LF, bare CR):
    # the NOOP sent once the line was acknowledged decides each, so none waits out the
    # 1.5 s reply timeout.
    server = pyftpd(passive_ports=(52100, 52119))
    started = time.monotonic()
    report = await run_probes(target_of(server), timeout=1.5, samples=10)
    elapsed = time.monotonic() - started
    durations = [o.elapsed for o in report.observations.values()]
    held = [report.observations[name] for name in ("pasv-lf", "pasv-space-lf", "pasv-cr")]
    assert all(o.nudge is not None and o.nudge.outcome == "reply" and o.elapsed < 1.5 for o in held), held
    slowest = max(durations)
    assert elapsed < slowest + 1.0   # the run takes about as long as its slowest probe
    # In sequence the run would take the sum of its probes; here the others add
    # less than half their time to the slowest one's (however long that was).
    assert elapsed < slowest + (sum(durations) - slowest) / 2


async def test_masquerade_address_is_reported_as_mismatch_and_not_followed(pyftpd):
    server = pyftpd(passive_ports=(52200, 52209), masquerade_address="192.0.2.77")
    report = await run_probes(target_of(server), probes=[p for p in load_catalog() if p.name == "pasv-map"],
                              timeout=1.5, samples=10)
    f = {x.id: x for x in report.findings}
    assert f["server.pasv-address-mismatch"].status == "present"
    assert "192.0.2.77" in f["server.pasv-address-mismatch"].evidence[0]
    # data connections went to the control peer (127.0.0.1), where pyftpdlib listens
    assert report.passive["reachable"] == report.passive["tried"] >= 1
    # address evidence from unpipelined replies only (each session's first PASV)
    assert set(report.passive["addresses"]) == {"192.0.2.77"}


async def test_trusted_bogus_227_address_makes_pasv_ports_unreachable(pyftpd):
    # pyftpdlib really listens on 127.0.0.1; its 227 replies name 127.0.0.9, where
    # nothing listens, and trust_pasv_address makes the prober follow them.  EPSV
    # (no address) still reaches the control peer: the range is partly unreachable.
    server = pyftpd(passive_ports=(52310, 52319), masquerade_address="127.0.0.9")
    report = await run_probes(target_of(server), probes=[p for p in load_catalog() if p.name == "pasv-map"],
                              timeout=1, samples=8, trust_pasv_address=True)
    f = {x.id: x for x in report.findings}
    unreachable = f["server.pasv-unreachable"]
    assert unreachable.status == "present" and unreachable.severity == "warning"
    p = report.passive
    assert 0 < p["reachable"] < p["tried"]  # the EPSV ports reached, the PASV ones not
    assert unreachable.evidence[0] == f"{p['reachable']} of {p['tried']} data connections succeeded"
    assert report.exit_code == 1


def test_catalog_every_decided_id_has_a_rule_and_every_rule_a_probe():
    decided = {q for p in load_catalog() for q in p.decides}
    assert decided == set(RULES)


def test_cli_probes_lists_the_catalog():
    done = run_cli("probes", "--json")
    rows = json.loads(done.stdout)
    by_name = {r["name"]: r for r in rows}
    assert by_name["pasv-space-lf"]["sends"] == "PASV \\n"
    assert by_name["psw-alias"]["decides"] == ["server.psw-alias"]
    assert {"pasv-lf", "pasv-cr", "pasv-lowercase", "epsv", "port-own", "port-foreign", "list-format",
            "auth-tls", "session-limit", "pasv-map"} <= set(by_name)


def test_cli_json_shape_exit_code_and_no_password(pyftpd):
    server = pyftpd(passive_ports=(52400, 52409), password="s3cret-Pw!")
    url = f"ftp://{server.user}:s3cret-Pw!@{server.host}:{server.port}/"
    code, report = run_json("probe", "--timeout", "1", "--samples", "8", url)
    assert code == 1  # cleartext login is a warning
    assert {"target", "started", "duration_s", "findings", "passive"} <= set(report)
    assert report["started"].endswith("+00:00")
    assert all({"id", "status", "evidence", "advice"} <= set(f) for f in report["findings"])
    assert report["target"] == f"ftp://demo@127.0.0.1:{server.port}/"
    text = run_cli("probe", "--timeout", "1", "--samples", "8", url)
    for out in (json.dumps(report), text.stdout, text.stderr):
        assert "s3cret-Pw!" not in out
    assert text.stdout.splitlines()[0].startswith("WARNING: ftp://demo@127.0.0.1")


def test_cli_credentials_from_environment(pyftpd):
    server = pyftpd(passive_ports=(52410, 52419), anonymous=False)
    env = {**os.environ, "FTPPROBE_USER": server.user, "FTPPROBE_PASSWORD": server.password, "NETRC": "/nonexistent"}
    code, report = run_json("map-pasv", "--samples", "5", f"ftp://{server.host}:{server.port}/", env=env)
    assert code == 0, report
    assert drawn(report["passive"], 5)


def test_demo_runs_and_prints_a_report():
    done = run_cli("demo", "--timeout", "1")
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("WARNING: ftp://demo@127.0.0.1")
    assert lines[2].startswith("Verdict") and "passive mode: works" in done.stdout
    assert "server.pasv-range" in done.stdout and "Passive range map:" in done.stdout
    assert max(len(line) for line in lines) <= 80  # fits an ordinary terminal
    router = done.stdout[done.stdout.index("Through an emulated router"):]
    assert "alg.stall.space-lf" in router and "PRESENT (warning)" in router


def test_demo_server_answers_a_new_session_after_another_quits_an_active_transfer(pyftpd):
    # pyftpdlib's own ActiveDTP, closed again at QUIT, unregisters the fd number of its
    # finished data connection; a session that got that number since is never answered.
    server = pyftpd()

    def reply(f) -> str:
        while (line := f.readline())[3:4] == "-":
            pass
        return line

    def command(s, f, line: str) -> str:
        s.sendall(line.encode() + b"\r\n")
        return reply(f)

    with socket.create_connection((server.host, server.port), timeout=3) as a, \
            socket.socket() as b, socket.socket() as listener:
        af = a.makefile("r", newline="\r\n")
        reply(af)
        # b is made now so that, connected later, only the server takes a new fd number
        b.settimeout(3)
        assert command(a, af, "USER anonymous").startswith("331") and command(a, af, "PASS x").startswith("230")
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        assert command(a, af, f"PORT 127,0,0,1,{port >> 8},{port & 255}").startswith("200")
        data, _ = listener.accept()
        with data:
            assert command(a, af, "LIST").startswith("125")
            while data.recv(4096):
                pass
        assert reply(af).startswith("226")  # the server has closed its end: its fd number is free
        time.sleep(0.1)
        b.connect((server.host, server.port))
        bf = b.makefile("r", newline="\r\n")
        assert reply(bf).startswith("220")
        # the case in point: b's control connection got the number a's data connection had
        handlers = {h.remote_port: h for h in list(server._server.ioloop.socket_map.values())
                    if hasattr(h, "remote_port")}
        connector = handlers[a.getsockname()[1]]._dtp_connector
        assert handlers[b.getsockname()[1]]._fileno == connector._fileno
        assert command(a, af, "QUIT").startswith("221")
        assert command(b, bf, "USER anonymous").startswith("331")  # socket.timeout if unanswered


async def test_split_command_is_sent_in_two_segments_and_reassembled(pyftpd):
    """pyftpdlib buffers up to CRLF, so a PASV split inside the verb still works."""
    server = pyftpd(passive_ports=(52500, 52509))
    probe = [p for p in load_catalog() if p.name == "pasv-split"]
    report = await run_probes(target_of(server), probes=probe, timeout=2, samples=0)
    ex = report.observations["pasv-split"].exchange
    assert ex.segments == 2 and ex.reply.code == 227
    assert ex.describe().startswith("sent 'PASV\\r\\n' in 2 segments -> '227 ")


def test_password_from_netrc_never_shown(pyftpd, tmp_path):
    server = pyftpd(passive_ports=(52510, 52519), password="n3trc-Secret", anonymous=False)
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine {server.host} login {server.user} password n3trc-Secret\n")
    netrc.chmod(0o600)
    env = {**os.environ, "NETRC": str(netrc)}
    done = run_cli("probe", "--json", "--timeout", "1", "--samples", "4", server.url, env=env)
    assert json.loads(done.stdout)["findings"]
    assert "n3trc-Secret" not in done.stdout + done.stderr
    # and a failed login names the user, never the password (pyftpdlib answers a
    # wrong password only after its 3 s auth_failed_timeout)
    netrc.write_text(f"machine {server.host} login {server.user} password wrong-Secret\n")
    done = run_cli("probe", "--timeout", "5", server.url, env=env)
    assert done.returncode == 3 and "login as 'demo' refused" in done.stdout
    assert "wrong-Secret" not in done.stdout + done.stderr


def test_wide_range_10000_65535_is_mapped_in_bounded_samples(pyftpd):
    """Seed 000's box: passive range 10000-65535.  30 samples suffice to call it
    wide, with the estimate's uncertainty stated."""
    server = pyftpd(passive_ports=(10000, 65535))
    code, report = run_json("map-pasv", "--samples", "30", "--timeout", "2", "--deadline", "60", server.url)
    f = findings_by_id(report)
    p = report["passive"]
    assert drawn(p, 30) and p["uncertainty"] > 0
    assert f"extended by {p['uncertainty']} port(s) each side" in f["server.pasv-range"]["evidence"][0]
    assert 10000 <= p["observed_min"] and p["observed_max"] <= 65535
    assert abs(p["estimate_low"] - 10000) <= 6 * p["uncertainty"] and abs(p["estimate_high"] - 65535) <= 6 * p["uncertainty"]
    assert f["server.pasv-range-wide"]["status"] == "present"
    assert "narrow the passive range" in f["server.pasv-range-wide"]["advice"]
    assert code == 1


def test_map_pasv_pipeline_one_tries_every_sampled_port(pyftpd):
    # Pipelined (the default), only the last port of each write is connected to;
    # --pipeline 1 connects to every sample's port (a raced failure is asked again).
    server = pyftpd(passive_ports=(53100, 53199))
    _, default = run_json("map-pasv", "--samples", "30", "--timeout", "1.5", server.url)
    _, every = run_json("map-pasv", "--samples", "30", "--pipeline", "1", "--timeout", "1.5", server.url)
    assert drawn(default["passive"], 30) and default["passive"]["tried"] < 30
    assert drawn(every["passive"], 30) and every["passive"]["tried"] == every["passive"]["reachable"] == 30
    # the absence says how to make it stronger
    assert "map with --pipeline 1" in findings_by_id(default)["server.pasv-unreachable"]["evidence"][1]
    assert "(30 ports tried; map with more --samples" in findings_by_id(every)["server.pasv-unreachable"]["evidence"][1]


async def test_pipeline_one_records_every_draw_of_an_unforwarded_port(pyftpd):
    # A range of 4 ports, one advertised but never listening (not forwarded): with
    # --pipeline 1 each of its draws is a failed data connection, none dropped as raced.
    low, high, dead = 53300, 53303, 53300
    server = pyftpd(passive_ports=(low, high))
    handler = server._server.handler  # this server's own class (demo.handler_class)

    class DeadPort(handler.passive_dtp):
        def __init__(self, cmd_channel, extmode=False):
            held = []  # pyftpdlib replies from inside __init__: hold the reply back
            cmd_channel.respond = lambda line, **kw: held.append((line, kw))
            try:
                super().__init__(cmd_channel, extmode)
            finally:
                del cmd_channel.respond
            if self.socket.getsockname()[1] == dead:
                self.close()  # advertised in the 227/229 reply, but nothing listens any more
            for line, kw in held:
                cmd_channel.respond(line, **kw)

    handler.passive_dtp = DeadPort
    pasv_map = [p for p in load_catalog(vantage="server") if p.name == "pasv-map"]
    report = await run_probes(target_of(server), probes=pasv_map, timeout=1.5,
                              samples=40, pipeline=1, max_sessions=1, deadline=20)
    samples = report.observations["pasv-map"].samples
    assert len(samples) == 40 and all(s.reachable is not None for s in samples), samples
    assert all(s.reachable is (s.port != dead) for s in samples), [s for s in samples if s.reachable is not (s.port != dead)]
    assert any(s.port == dead for s in samples)  # missed with probability (3/4)**40, 1e-5


async def test_the_packet_capture_queues_for_a_session_before_the_short_probes(pyftpd):
    """With one session at a time, the probe that holds its session longest
    (the reset capture, or its skip without capture permission) is done
    before any short probe started in the same run."""
    server = pyftpd(passive_ports=(52200, 52209))
    names = ("pasv-crlf", "epsv", "pasv-lowercase", "port-reset-source")
    probes = [p for p in load_catalog(vantage="server") if p.name in names]
    done: list[str] = []
    report = await run_probes(target_of(server), probes=probes, timeout=1.5, max_sessions=1,
                              progress=lambda message, *_a, **_k: done.append(message.split(":")[0]))
    assert report.error == ""
    finished = [name for name in done if name in names]
    assert sorted(finished) == sorted(names) and finished[0] == "port-reset-source", finished


async def test_the_session_limit_probe_hands_its_sessions_to_the_next_probes(pyftpd):
    """The sessions the session-limit probe logged in (none refused) serve the
    probes after it: four logins in all, not one more per probe."""
    server = pyftpd(passive_ports=(52300, 52309))
    logins: list[str] = []
    server._server.handler.on_login = lambda handler, user: logins.append(user)
    names = ("session-limit", "pasv-crlf", "epsv", "list-format")
    probes = [p for p in load_catalog(vantage="server") if p.name in names]
    report = await run_probes(target_of(server), probes=probes, timeout=1.5, max_sessions=4)
    assert report.error == "" and report.refusals == []
    f = {x.id: x for x in report.findings}
    assert f["server.connection-limit"].status == "absent"
    assert f["server.epsv-unsupported"].status == "absent" and f["server.list-unparseable"].status == "absent"
    assert len(logins) == 4, logins  # the preflight's and the three the session-limit probe opened


async def test_a_probe_without_login_is_not_starved_by_idle_sessions(pyftpd):
    """With one session allowed and the preflight's logged-in session idle,
    a probe that needs a session before the login (AUTH TLS) still runs:
    the idle session is closed for it, not waited on until the deadline."""
    server = pyftpd(passive_ports=(52310, 52319))
    probes = [p for p in load_catalog(vantage="server") if p.name == "auth-tls"]
    report = await run_probes(target_of(server), probes=probes, timeout=1.5, max_sessions=1, deadline=10)
    assert report.error == ""
    # pyftpdlib without TLS answers AUTH TLS 500: the login will go in clear text
    assert {x.id: x.status for x in report.findings}["server.cleartext-login"] == "present"


async def test_idle_sessions_never_starve_a_probe_that_cannot_use_them(pyftpd):
    """Idle logged-in sessions (the preflight's, the session-limit probe's,
    ones handed back in check's reuse mode) hold limiter slots; a probe that
    needs a session before the login, or opens its own connections (TLS
    versions), gets one anyway, and a 421 makes the run close an idle one."""
    catalog = {p.name: p for p in load_catalog(vantage="server")}
    runs = [(("session-limit", "tls-versions"), {"max_sessions": 4}),
            (("pasv-crlf", "pasv-lowercase", "epsv", "auth-tls"), {"max_sessions": 2, "reuse_sessions": True})]
    server = pyftpd(passive_ports=(52320, 52329))
    for names, options in runs:
        report = await run_probes(target_of(server), probes=[catalog[n] for n in names], timeout=1.5,
                                  deadline=10, **options)
        assert report.error == "", (names, report.error)
        assert not any(isinstance(o, Failed) for o in report.observations.values()), report.observations
    # pyftpdlib counts its listener: max_cons=2 allows one session, the idle preflight one;
    # in reuse mode its 421s lower the slots to one while a session is handed back.
    limited = pyftpd(passive_ports=(52330, 52339), max_cons=2)
    for names, options in ((("auth-tls", "tls-versions"), {}),
                           (("pasv-crlf", "pasv-lowercase", "auth-tls"), {"reuse_sessions": True})):
        report = await run_probes(target_of(limited), probes=[catalog[n] for n in names], timeout=1.5,
                                  max_sessions=2, deadline=10, **options)
        assert report.error == "", (names, report.error)
        assert not any(isinstance(o, Failed) for o in report.observations.values()), report.observations


async def test_a_session_handed_from_probe_to_probe_gives_each_only_its_own_exchanges(pyftpd):
    # check's reuse mode: one session, the probes in turn; each observation's evidence is its own.
    catalog = {p.name: p for p in load_catalog(vantage="server")}
    names = ("pasv-crlf", "pasv-lowercase", "epsv")
    server = pyftpd(passive_ports=(52340, 52349))
    report = await run_probes(target_of(server), probes=[catalog[n] for n in names], timeout=1.5,
                              max_sessions=1, reuse_sessions=True, deadline=10)
    assert report.error == ""
    own = {"pasv-crlf": b"PASV\r\n", "pasv-lowercase": b"pasv\r\n", "epsv": b"EPSV\r\n"}
    for name in names:
        sent = [ex.sent for ex in report.observations[name].exchanges]
        assert sent[0] == own[name] and set(sent[1:]) <= {b"NOOP\r\n"}, (name, sent)


# -- how many sessions a run without --max-sessions uses (runner._settle_limit) ------------

def _settled(obs, *, auto: bool, start: int) -> int:
    from ftpprobe.executors import ProbeContext
    from ftpprobe.runner import _settle_limit

    ctx = ProbeContext(Target("192.0.2.1"), max_sessions=start)
    _settle_limit(ctx, obs, auto=auto)
    return ctx.limiter.total_tokens


def test_settle_limit_decision_table():
    from ftpprobe.observations import SessionLimitObs
    from ftpprobe.runner import AUTO_SESSIONS, DEFAULT_SESSIONS

    def seen(accepted, refusal=None, tried=AUTO_SESSIONS):
        return SessionLimitObs("session-limit", tried=tried, held=1, accepted=accepted, refusal=refusal)

    auto = AUTO_SESSIONS
    # every session taken: one fewer than the server took (auto only)
    assert _settled(seen(auto), auto=True, start=auto) == auto - 1
    assert _settled(seen(3, tried=3), auto=False, start=3) == 3
    # a limit in words: one fewer than accepted, however the run started
    assert _settled(seen(6, "421"), auto=True, start=auto) == 5
    assert _settled(seen(6, "too-many"), auto=False, start=4) == 4
    assert _settled(seen(2, "421"), auto=True, start=auto) == 2
    assert _settled(seen(1, "421"), auto=False, start=4) == 1
    # no limit shown (timeout, reset, fewer opened) or the probe not run / failed: the default
    for obs in (seen(5, "timeout"), seen(5, "reset"), seen(5, tried=auto), None,
                Failed("session-limit", error="x", kind="timeout")):
        assert _settled(obs, auto=True, start=auto) == DEFAULT_SESSIONS
        assert _settled(obs, auto=False, start=3) == 3
    # a 421 back-off during the preflight is never undone
    assert _settled(None, auto=True, start=2) == 2
    assert _settled(seen(auto), auto=True, start=5) == 5


async def test_default_sessions_with_only_probes_that_need_a_slot_of_their_own(pyftpd):
    """The session-limit probe leaves AUTO_SESSIONS logged-in spares and the
    limit is then one lower: a probe that cannot use a spare (AUTH TLS before any login) still gets
    a slot at once, not at the deadline."""
    server = pyftpd(passive_ports=(52440, 52449))
    probes = [p for p in load_catalog(vantage="server") if p.name in ("session-limit", "auth-tls", "tls-versions")]
    started = time.monotonic()
    report = await run_probes(target_of(server), probes=probes, timeout=1.5, deadline=10)
    assert report.error == "" and time.monotonic() - started < 5


async def _run_watching_sessions(server) -> tuple:
    """Run the full catalog without --max-sessions; also the most control
    connections pyftpdlib counted from us at once after the session-limit
    probe ended (during it, pyftpdlib counts the connections it refuses too)."""
    ended = trio.Event()
    done = trio.Event()
    peak = 0

    def progress(message, done_=None, total=None):
        if message.startswith("session-limit:"):
            ended.set()

    async def watch() -> None:
        nonlocal peak
        await ended.wait()
        while not done.is_set():
            peak = max(peak, sum(1 for ip in list(server._server.ip_map) if ip == "127.0.0.1"))
            await trio.sleep(0.002)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        report = await run_probes(target_of(server), timeout=1.5, samples=12, progress=progress)
        done.set()
    return report, {f.id: f for f in report.findings}["server.connection-limit"], peak


async def test_probes_never_hold_more_sessions_than_the_settled_limit(pyftpd, monkeypatch):
    """The session-limit probe leaves AUTO_SESSIONS logged-in spares and the
    limit settles one lower: the last spare is taken out before any probe
    starts (trio may start the probes in either order), so no more than
    AUTO_SESSIONS - 1 probes hold a session at once."""
    from ftpprobe.executors import ProbeContext
    from ftpprobe.runner import AUTO_SESSIONS

    in_use, peak = 0, 0
    session = ProbeContext.session

    @asynccontextmanager
    async def counted(self, **kw):
        nonlocal in_use, peak
        async with session(self, **kw) as s:
            in_use += 1
            peak = max(peak, in_use)
            try:
                yield s
            finally:
                in_use -= 1

    monkeypatch.setattr(ProbeContext, "session", counted)
    catalog = load_catalog(vantage="server")
    commands = [p for p in catalog if p.action in ("command", "passive", "listing")]
    probes = [p for p in catalog if p.action == "session-limit"] + commands
    assert len(commands) >= 10
    server = pyftpd(passive_ports=(52440, 52449))
    for _ in range(8):  # trio starts the tasks in either order: both, most likely
        peak = 0
        report = await run_probes(target_of(server), probes=probes, timeout=1.5, deadline=20)
        assert report.error == "" and report.observations["session-limit"].accepted == AUTO_SESSIONS
        assert peak <= AUTO_SESSIONS - 1, peak


async def test_default_sessions_stay_within_a_per_address_limit(pyftpd):
    """Without --max-sessions, the session-limit probe tries 12 at once; a
    server that takes 5 per address refuses the sixth, and the other probes
    then hold 4 at most: none of theirs is refused."""
    server = pyftpd(passive_ports=(52400, 52419))
    server._server.max_cons_per_ip = 5
    report, limit, peak = await _run_watching_sessions(server)
    assert report.error == "" and report.refusals == []
    assert limit.status == "present" and limit.data["limit"] == 5, limit
    assert not [o for o in report.observations.values() if isinstance(o, Failed)]
    assert peak <= 5, peak  # the server's own limit: it refused none of them


async def test_default_sessions_rise_where_the_server_takes_them_all(pyftpd):
    """No per-address limit: the session-limit probe holds AUTO_SESSIONS (12)
    at once, and the other probes may then use one fewer (more than the
    default 4)."""
    from ftpprobe.runner import AUTO_SESSIONS

    server = pyftpd(passive_ports=(52420, 52439))
    report, limit, peak = await _run_watching_sessions(server)
    assert report.error == ""
    assert limit.status == "absent" and limit.data["tested_up_to"] == AUTO_SESSIONS == 12, limit
    # AUTO_SESSIONS - 1 (AUTO_SESSIONS until one spare of the session-limit probe is closed)
    assert 4 < peak <= AUTO_SESSIONS, peak


@pytest.mark.skipif(permission_problem() is not None, reason=str(permission_problem()))
async def test_the_packet_capture_sends_port_only_once_the_session_count_is_greeted(pyftpd):
    """The reset capture starts beside the session-limit count, on the
    preflight's session, but sends its PORT (a data connection pyftpdlib
    counts against max_cons) only once every session of the count has been
    greeted or refused: the limit is counted exactly, run after run."""
    from ftpprobe.observations import ResetCaptureObs

    server = pyftpd(passive_ports=(52460, 52469), max_cons=5)
    handler = server._server.handler
    events: list[str] = []
    handle, refuse, port = handler.handle, handler.handle_max_cons, handler.ftp_PORT

    def taken(self):
        events.append("connect")
        return handle(self)

    def refused(self):
        events.append("connect")
        return refuse(self)

    def seen_port(self, line):
        events.append("PORT")
        return port(self, line)

    handler.handle, handler.handle_max_cons, handler.ftp_PORT = taken, refused, seen_port
    probes = [p for p in load_catalog(vantage="server") if p.name in ("session-limit", "port-reset-source")]
    for _ in range(5):
        events.clear()
        report = await run_probes(target_of(server), probes=probes, timeout=1.5, max_sessions=8)
        assert isinstance(report.observations["port-reset-source"], ResetCaptureObs), report.observations
        limit = report.observations["session-limit"]
        # pyftpdlib counts its listening socket against max_cons: 5 allows 4 sessions.
        assert (limit.accepted, limit.refusal, limit.beside_data) == (4, "421", False), limit
        # the preflight's connection, the count's eight (1 held + 7 tried), then the PORT
        assert events == ["connect"] * 8 + ["PORT"], events
