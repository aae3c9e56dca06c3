"""The executors' typed observations against real peers (pyftpdlib, the hostile
server, the reflector behind an emulated middlebox), without the rules."""

import time
from pathlib import Path

import pytest
import trio

import hostile
from ftpprobe.catalog import Probe, parse_probe
from ftpprobe.codec import Command
from ftpprobe.errors import LoginFailed
from ftpprobe.executors import ACTIONS, ProbeContext, failed, nudge_wait
from ftpprobe.middlebox import Middlebox
from ftpprobe.observations import (ActiveObs, AuthTlsObs, CommandObs, Failed, ListingObs, PassiveMapObs,
                                   PassiveObs, ReflectActiveObs, ReflectPassiveObs, SessionLimitObs, Skipped)
from ftpprobe.reflector import Reflector
from ftpprobe.target import Target

PROBES = Path(__file__).resolve().parent.parent / "probes"
TIMEOUT = 1.0


def probe(name: str) -> Probe:
    path = PROBES / f"{name}.toml"
    return parse_probe(path.read_text(), str(path))


def context(server, **kw) -> ProbeContext:
    user = getattr(server, "user", "anonymous")
    password = getattr(server, "password", "ftpprobe@example.net")
    return ProbeContext(Target(server.host, server.port, user, password), timeout=TIMEOUT, **kw)


async def observe(ctx: ProbeContext, name: str):
    p = probe(name)
    with trio.fail_after(30):
        return await ACTIONS[p.action](ctx, p)


def no_login(obs) -> None:
    assert not any(ex.sent.startswith((b"USER ", b"PASS ")) for ex in obs.exchanges)


async def test_held_bare_lf_pasv_is_told_apart_by_the_nudge(pyftpd):
    """pyftpdlib waits for CRLF: 'PASV\\n' gets no reply of its own; the NOOP\\r\\n
    sent after the short wait completes the line, and the one reply shows how
    pyftpdlib parsed what it held ('PASV\\nNOOP', unknown).  Decided without
    waiting out the timeout, and without a retry."""
    server = pyftpd(passive_ports=(54000, 54009))
    started = trio.current_time()
    obs = await observe(context(server), "pasv-lf")
    assert trio.current_time() - started < TIMEOUT  # never waited out the reply timeout
    assert isinstance(obs, CommandObs)
    assert obs.exchange.sent == b"PASV\n" and obs.exchange.outcome == "timeout" and obs.exchange.reply is None
    assert obs.exchange.elapsed < TIMEOUT
    assert obs.nudge is not None and obs.nudge.sent == b"NOOP\r\n" and obs.nudge.outcome == "reply"
    # pyftpdlib echoes the joined line, bare LF and all: the reply reader ends its first line there
    assert obs.nudge.code == 500 and obs.nudge.reply.text.startswith('500 Command "PASV')
    assert obs.alive_after is True and obs.retry is None
    # no login, one session; SYST after the nudge's reply showed which command that reply answered
    assert [ex.sent for ex in obs.exchanges] == [b"PASV\n", b"NOOP\r\n", b"SYST\r\n"]
    # The line was acknowledged, so the nudge went once a further look found no
    # reply, not after the whole wait kept for unacknowledged lines.
    assert obs.exchange.tcp_info.outq == 0 and obs.exchange.tcp_info.stall == "held"
    assert obs.exchange.elapsed < nudge_wait(TIMEOUT, None)


def slow_commands(conn, server):
    """Logs in at once, then answers every command (bare LF or not) by itself
    0.4 s after reading it: a slow server, not one that holds the line."""
    conn.sendall(b"220 hello\r\n")
    replies = {b"USER": b"331 password please\r\n", b"PASS": b"230 ok\r\n", b"NOOP": b"200 NOOP ok\r\n",
               b"SYST": b"215 UNIX Type: L8\r\n", b"QUIT": b"221 bye\r\n"}
    while line := hostile._read_line(conn):
        verb = line.split()[0].upper() if line.split() else b""
        if verb not in (b"USER", b"PASS"):
            time.sleep(0.4)
        conn.sendall(hostile._own_pasv(server) if verb == b"PASV" else replies.get(verb, b"502 not here\r\n"))


async def test_an_early_nudge_still_tells_a_slow_server_from_one_that_holds(monkeypatch):
    """The server acknowledges 'PASV\\n' at once but answers only 0.4 s later,
    and the NOOP 0.4 s after that: the nudge has gone long before, yet the
    order of the replies (227, then the NOOP's 200 before SYST's 215) shows
    a late reply to the line, never a held line."""
    monkeypatch.setitem(hostile.SCENARIOS, "slow-commands", slow_commands)
    with hostile.HostileServer("slow-commands") as server:
        obs = await observe(context(server), "pasv-lf")
    assert obs.exchange.outcome == "reply" and obs.exchange.code == 227
    assert obs.nudge is not None and obs.nudge.code == 200
    assert obs.alive_after is True and obs.retry is None
    assert [(ex.sent, ex.code) for ex in obs.exchanges] == [(b"PASV\n", 227), (b"NOOP\r\n", 200),
                                                            (b"SYST\r\n", 215)]


def silent_after_login(conn, server):
    """Logs in, then never answers anything (a real stall)."""
    conn.sendall(b"220 hello\r\n")
    for answer in (b"331 password please\r\n", b"230 ok\r\n"):
        hostile._read_line(conn)
        conn.sendall(answer)
    time.sleep(30)


async def test_a_real_stall_waits_out_the_timeout_and_is_retried(monkeypatch):
    """Nothing answers even the nudge: a timeout, a NOOP afterwards, a retry in a new session."""
    monkeypatch.setitem(hostile.SCENARIOS, "silent-after-login", silent_after_login)
    with hostile.HostileServer("silent-after-login") as server:
        obs = await observe(context(server), "pasv-lf")
    assert obs.exchange.outcome == "timeout" and obs.exchange.elapsed >= TIMEOUT * 0.9
    assert obs.nudge is not None and obs.nudge.outcome == "timeout"
    assert obs.alive_after is False
    assert obs.retry is not None and obs.retry.sent == b"PASV\n" and obs.retry.outcome == "timeout"


async def test_canonical_pasv_replies_and_the_session_survives(pyftpd):
    server = pyftpd(passive_ports=(54010, 54019))
    obs = await observe(context(server), "pasv-crlf")
    assert isinstance(obs, CommandObs)
    assert obs.exchange.code == 227 and obs.exchange.positive and obs.alive_after is True
    assert obs.retry is None
    no_login(obs)


async def test_split_command_keeps_its_segments(pyftpd):
    server = pyftpd(passive_ports=(54020, 54029))
    obs = await observe(context(server), "pasv-split")
    assert obs.exchange.segments == 2 and obs.exchange.code == 227 and obs.exchange.sent == b"PASV\r\n"


async def test_password_is_masked_and_noted_as_sent_in_clear(pyftpd):
    server = pyftpd(passive_ports=(54030, 54039), anonymous=False)
    ctx = context(server)
    assert ctx.password_sent_in_clear is False
    s = await ctx.preflight()
    try:
        sent = [ex.sent for ex in s.history]
        assert sent == [f"USER {server.user}\r\n".encode(), b"PASS ****\r\n"]
        assert server.password.encode() not in b"".join(sent)
        assert ctx.password_sent_in_clear is True
        obs = await observe(ctx, "auth-tls")
    finally:
        await ctx.aclose()
    assert isinstance(obs, AuthTlsObs)
    assert obs.password_sent_in_clear is True and obs.anonymous is False and obs.user == server.user
    assert obs.exchange is not None and obs.exchange.sent == b"AUTH TLS\r\n"


async def test_auth_tls_without_any_login_sent_no_password(pyftpd):
    server = pyftpd(passive_ports=(54040, 54049))
    obs = await observe(context(server), "auth-tls")
    assert isinstance(obs, AuthTlsObs) and obs.password_sent_in_clear is False


async def test_session_limit_421_counts_the_held_session(pyftpd):
    server = pyftpd(passive_ports=(54050, 54059), max_cons=3)
    ctx = context(server, max_sessions=8)
    await ctx.preflight()
    try:
        obs = await observe(ctx, "session-limit")
    finally:
        await ctx.aclose()
    assert isinstance(obs, SessionLimitObs)
    # pyftpdlib counts its listening socket: max_cons=3 lets two sessions in
    assert obs.held == 1 and obs.accepted == 2 and obs.refusal == "421"
    assert obs.tried == 8 and "421" in obs.refusal_text


async def test_session_limit_never_exceeds_max_sessions(pyftpd):
    server = pyftpd(passive_ports=(54060, 54069))
    ctx = context(server, max_sessions=3)
    await ctx.preflight()
    try:
        obs = await observe(ctx, "session-limit")
    finally:
        await ctx.aclose()
    assert obs.tried == 3 and obs.held == 1 and obs.accepted == 3 and obs.refusal is None


def too_many(conn, server):
    """Refuses the third concurrent login with a 530 that says why (vsftpd style)."""
    server.open_sessions = getattr(server, "open_sessions", 0) + 1
    try:
        conn.sendall(b"220 counting\r\n")
        while (line := hostile._read_line(conn)):
            verb = line.split()[0].upper() if line.split() else b""
            if verb == b"USER":
                conn.sendall(b"331 password please\r\n")
            elif verb == b"PASS":
                if server.open_sessions > 2:
                    conn.sendall(b"530 Sorry, the maximum number of clients (2) are already connected.\r\n")
                else:
                    conn.sendall(b"230 ok\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"221 bye\r\n")
                return
            else:
                conn.sendall(b"502 not here\r\n")
    finally:
        server.open_sessions -= 1


async def test_session_limit_refusal_in_words_is_too_many(monkeypatch):
    monkeypatch.setitem(hostile.SCENARIOS, "too-many", too_many)
    with hostile.HostileServer("too-many") as server:
        obs = await observe(context(server, max_sessions=5), "session-limit")
    assert obs.held == 0 and obs.accepted == 2 and obs.refusal == "too-many"
    assert "maximum number of clients" in obs.refusal_text


async def test_session_limit_silence_is_a_timeout_not_a_limit():
    with hostile.HostileServer("silent-after-greeting") as server:
        obs = await observe(context(server, max_sessions=2), "session-limit")
    assert obs.accepted == 0 and obs.refusal == "timeout"


async def test_failed_login_maps_to_kind_login():
    with hostile.HostileServer("login-refused") as server:
        ctx = context(server)
        with pytest.raises(LoginFailed) as caught:
            await observe(ctx, "pasv-crlf")
    obs = failed("pasv-crlf", caught.value)
    assert isinstance(obs, Failed) and obs.kind == "login" and "refused" in obs.error
    assert ctx.password_sent_in_clear is True  # PASS went out before the refusal


async def test_passive_parse_error():
    with hostile.HostileServer("pasv-port-zero") as server:
        obs = await observe(context(server), "epsv")
    assert isinstance(obs, PassiveObs)
    assert obs.parse_error == "229 reply: port 65536 out of range" and obs.data is None and obs.advertised is None


async def test_passive_data_connection(pyftpd):
    server = pyftpd(passive_ports=(54070, 54079))
    obs = await observe(context(server), "epsv")
    assert isinstance(obs, PassiveObs) and obs.exchange.code == 229
    assert obs.advertised[0] is None and 54070 <= obs.advertised[1] <= 54079
    assert obs.data.connected and obs.data.host == "127.0.0.1" and obs.data.port == obs.advertised[1]


async def test_active_transfer_arrives(pyftpd):
    server = pyftpd(passive_ports=(54080, 54089))
    obs = await observe(context(server), "port-own")
    assert isinstance(obs, ActiveObs) and obs.exchange.code == 200
    t = obs.transfer
    assert t is not None and t.list_exchange.code in (125, 150) and t.expected and t.connected
    assert t.source[0] == "127.0.0.1" and t.bytes > 0 and b"welcome.txt" in t.head
    assert t.final.startswith("226")
    assert obs.listen[0] == "127.0.0.1" and obs.control_port == server.port


async def test_active_port_refused_means_no_transfer():
    with hostile.HostileServer("pasv-port-zero") as server:  # answers PORT with 502
        obs = await observe(context(server), "port-own")
    assert isinstance(obs, ActiveObs) and obs.exchange.code == 502 and obs.transfer is None


async def test_listing(pyftpd):
    server = pyftpd(passive_ports=(54090, 54099))
    obs = await observe(context(server), "list-format")
    assert isinstance(obs, ListingObs)
    assert obs.no_passive == "" and obs.list_exchange.code in (125, 150)
    assert obs.style == "unix" and obs.lines == 2 and obs.unparseable == () and not obs.timed_out


async def test_listing_without_passive_says_why():
    with hostile.HostileServer("pasv-bad-numbers") as server:
        obs = await observe(context(server), "list-format")
    assert isinstance(obs, ListingObs) and obs.list_exchange is None and "300" in obs.no_passive


async def test_pasv_map_samples(pyftpd):
    server = pyftpd(passive_ports=(54100, 54109))
    ctx = context(server, samples=6)
    obs = await observe(ctx, "pasv-map")
    assert isinstance(obs, PassiveMapObs)
    assert len(obs.samples) == 6 and obs.wanted == 6 and obs.errors == () and obs.sessions >= 1
    assert all(54100 <= s.port <= 54109 for s in obs.samples)
    # One PASV alone (address evidence), then the rest in one write: only the last
    # port of a write stays open, so only it is connected to; the others are untried.
    assert [s.pipelined for s in sorted(obs.samples, key=lambda s: s.order)] == [False] + [True] * 5
    assert [s.reachable for s in sorted(obs.samples, key=lambda s: s.order)] == [True, None, None, None, None, True]
    assert list(obs.samples) == ctx.pasv_samples  # visible to the runner as they arrive


async def reflector_behind(nursery, personalities=()) -> tuple[Reflector, int]:
    reflector = Reflector("127.0.0.1", (0,))
    (port,) = await nursery.start(reflector.serve)
    if not personalities:
        return reflector, port
    box = Middlebox("127.0.0.1", port, personalities)
    await nursery.start(box.serve)
    return reflector, box.bound_port


def reflector_context(port: int, **kw) -> ProbeContext:
    return ProbeContext(Target("127.0.0.1", port), timeout=TIMEOUT, expect_reflector=True, **kw)


async def test_reflect_active_reports_what_arrived(nursery):
    _, port = await reflector_behind(nursery)
    obs = await observe(reflector_context(port), "alg-port-split-verb")
    assert isinstance(obs, ReflectActiveObs) and obs.exchange.outcome == "reply" and obs.retry is None
    assert obs.sent.startswith(b"PORT 127,0,0,1,") and obs.reflection.arrived == obs.sent
    assert obs.reflection.peer_seen == obs.local and len(obs.reflection.reads) == 2
    assert obs.named == ("127.0.0.1", obs.named[1]) and obs.sent.endswith(
        f",{obs.named[1] >> 8},{obs.named[1] & 255}\r\n".encode())
    assert obs.transfer is not None and obs.transfer.expected and obs.transfer.connected


async def test_reflect_passive_declared_and_advertised(nursery):
    _, port = await reflector_behind(nursery)
    obs = await observe(reflector_context(port), "alg-pasv-crlf")
    assert isinstance(obs, ReflectPassiveObs) and obs.reflection.arrived == b"PASV\r\n" == obs.sent
    assert obs.declared == obs.advertised and obs.data.connected and obs.data.head.startswith(b"ftpprobe-token ")


async def test_reflect_passive_stall_is_retried(nursery):
    _, port = await reflector_behind(nursery, ("stall-space-lf",))
    obs = await observe(reflector_context(port), "alg-pasv-space-lf")
    assert isinstance(obs, ReflectPassiveObs)
    assert obs.exchange.outcome == "timeout" and obs.reflection is None
    assert obs.retry is not None and obs.retry.sent == b"PASV \n" and obs.retry.outcome == "timeout"


async def test_reflect_without_second_port_is_skipped(nursery):
    _, port = await reflector_behind(nursery)
    obs = await observe(reflector_context(port), "alg-pasv-other-port")
    assert isinstance(obs, Skipped) and obs.reason == "no second control port given"


async def test_exchange_is_frozen_and_bytes_exact(pyftpd):
    server = pyftpd(passive_ports=(54110, 54119))
    ctx = context(server)
    async with ctx.session() as s:
        ex = await s.exchange(Command("PASV", trailer=b" ", line_ending=b"\r\n"))
    with pytest.raises(AttributeError):
        ex.outcome = "timeout"  # type: ignore[misc]
    assert ex.sent == b"PASV \r\n"


def _read_crlf(conn) -> bytes:
    line = b""
    while not line.endswith(b"\r\n"):
        byte = conn.recv(1)
        if not byte:
            return b""
        line += byte
    return line


def holds_then_syst_200(conn, server):
    """Holds every line until CRLF, takes the first word of the joined line
    ('PASV\\nNOOP' is PASV: 227), and answers SYST with 200, against RFC 959."""
    conn.sendall(b"220 hello\r\n")
    while line := _read_crlf(conn):
        verb = line.split()[0].upper()
        if verb == b"QUIT":
            conn.sendall(b"221 bye\r\n")
            return
        conn.sendall({b"USER": b"331 password please\r\n", b"PASS": b"230 ok\r\n", b"PASV": hostile._own_pasv(server),
                      b"SYST": b"200 UNIX Type: L8\r\n"}.get(verb, b"200 ok\r\n"))


def slow_then_reset(conn, server):
    """Answers a bare-LF PASV by itself 0.4 s late, then resets the connection
    instead of answering the NOOP: which line the 227 answered is unknown."""
    conn.sendall(b"220 hello\r\n")
    while line := hostile._read_line(conn):
        verb = line.split()[0].upper() if line.split() else b""
        if verb in (b"USER", b"PASS"):
            conn.sendall(b"331 password please\r\n" if verb == b"USER" else b"230 ok\r\n")
        elif verb == b"PASV":
            time.sleep(0.4)
            conn.sendall(hostile._own_pasv(server))
        else:
            hostile._reset(conn)
            return


async def test_a_held_line_stays_held_when_syst_is_answered_200(monkeypatch):
    """The reply after the nudge's is a 200, but SYST's (nothing follows it):
    the server held 'PASV\\n', it did not answer it late."""
    monkeypatch.setitem(hostile.SCENARIOS, "holds-then-syst-200", holds_then_syst_200)
    with hostile.HostileServer("holds-then-syst-200") as server:
        obs = await observe(context(server), "pasv-lf")
    assert obs.exchange.outcome == "timeout" and obs.nudge is not None and obs.nudge.code == 227


async def test_a_reset_after_the_nudges_first_reply_leaves_the_variant_undecided(monkeypatch):
    """A reset before the NOOP's reply: the 227 may have answered the line or
    the joined line; the variant is recorded as reset, the session as dead."""
    monkeypatch.setitem(hostile.SCENARIOS, "slow-then-reset", slow_then_reset)
    with hostile.HostileServer("slow-then-reset") as server:
        obs = await observe(context(server), "pasv-lf")
    assert obs.exchange.outcome == "reset" and obs.nudge is not None and obs.nudge.code == 227
    assert obs.alive_after is False and "unknown" in obs.exchange.error
