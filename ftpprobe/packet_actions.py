"""Executors of the packet probes (actions ``reset-capture`` and ``hops``).

They capture packets through :mod:`ftpprobe.packets` while talking FTP
through :mod:`ftpprobe.transport`.  Without root or CAP_NET_RAW each returns a
:class:`~ftpprobe.observations.Skipped` with the reason, and nothing else of
the run changes.  Registered in :data:`ftpprobe.executors.ACTIONS` when
:mod:`ftpprobe.executors` is imported.
"""

from __future__ import annotations

import ipaddress
import socket

import trio

from .catalog import Probe
from .codec import Command, encode_port, replace_argument
from .data import ActiveListener
from .executors import ProbeContext, _evidence_exchanges, _reflection, action
from .observations import Hop, HopsObs, ResetCaptureObs, Skipped
from .packets import CaptureError, Quoted, acknowledged_at, attribute_resets, capturing, permission_problem

#: Seconds to keep capturing after the command's outcome, for a late RST.
LINGER = 0.3
#: Seconds to wait for a hop's ICMP time-exceeded after our segment left with its TTL.
HOP_WAIT = 1.0


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _ipv4_peer(ctx: ProbeContext, port: int) -> str | None:
    """The IPv4 address the control connection goes to, or ``None`` (IPv6, or no address)."""
    known = ctx._address or (ctx.target.host if _is_ip(ctx.target.host) else None)
    if known is not None:  # the run's own address (no lookup, and no wait before the session queue)
        return known if ipaddress.ip_address(known).version == 4 else None
    try:
        infos = await trio.socket.getaddrinfo(ctx.target.host, port, type=socket.SOCK_STREAM)
    except OSError:
        return None
    address = infos[0][4][0] if infos else None
    return address if address and ipaddress.ip_address(address).version == 4 else None


async def _preconditions(ctx: ProbeContext, probe: Probe, port: int) -> tuple[str | None, Skipped | None]:
    problem = permission_problem()
    if problem:
        return None, Skipped(probe.name, reason=problem)
    host = await _ipv4_peer(ctx, port)
    if host is None:
        return None, Skipped(probe.name, reason="the packet probes read IPv4 headers only; "
                                                "this peer has no IPv4 address")
    return host, None


@action("reset-capture", starts_first=True)
async def run_reset_capture(ctx: ProbeContext, probe: Probe) -> ResetCaptureObs | Skipped:
    """PORT naming our own listener, on a control connection captured packet
    by packet; every RST that arrives is attributed to the peer or a
    middlebox (:func:`ftpprobe.packets.attribute_resets`).

    The capture starts once the probe has its session (the preflight's, or
    a new one), so a NOOP first gives the peer's own packets to compare
    with; it lasts until the session is closed.  Skipped without
    capture permission or an IPv4 peer.  Raises :class:`FtpProbeError` when
    the session fails before PORT is sent.
    """
    assert probe.command is not None
    port = ctx.target.port
    host, skipped = await _preconditions(ctx, probe, port)
    if skipped is not None:
        return skipped
    # The capture starts once this probe has its session, not while it waits its turn.
    try:
        async with ctx.session(login=probe.login) as s:
            async with capturing(host, port) as cap:
                local, peer = (str(s.local_address), s.local_port), (str(s.peer_address), port)
                await s.exchange(Command("NOOP"))
                async with ActiveListener(local[0]) as listener:
                    cmd = replace_argument(probe.command, encode_port(s.local_address, listener.port))
                    if ctx.count_greeted is not None:
                        # A data connection may count against a session limit being counted.
                        await ctx.count_greeted.wait()
                    ctx.data_connection_invited = True
                    ex = await s.exchange(cmd)
                await trio.sleep(LINGER)
                exchanges = _evidence_exchanges(s)
                await s.aclose()  # QUIT and the server's close captured too, as ever
    except CaptureError as exc:
        return Skipped(probe.name, reason=str(exc))
    segments = cap.connection(local, peer)
    return ResetCaptureObs(probe.name, exchanges=exchanges, exchange=ex, local=local, peer=peer,
                           peer_packets=sum(1 for x in segments if (x.src, x.sport) == peer),
                           resets=attribute_resets(segments, peer, local), capture=cap.filter_note,
                           lost=cap.losses())


def quote_state(line: bytes, quoted: Quoted | None) -> str:
    """Compare the line we sent with what a router quoted (see :class:`~ftpprobe.observations.Hop`)."""
    if quoted is None or quoted.seq is None or not quoted.payload:
        return "not-quoted"
    if quoted.payload == line:
        return "as-sent"
    if len(quoted.payload) < len(line) and line.startswith(quoted.payload):
        return "partial"
    return "rewritten"


@action("hops")
async def run_hops(ctx: ProbeContext, probe: Probe) -> HopsObs | Skipped:
    """After a login to the reflector, send the probe's PORT line (naming our
    own address and a listener) with IP TTL 1, then raise the TTL by one each
    time a hop has answered (or ``HOP_WAIT`` seconds passed): TCP retransmits
    the unacknowledged line with the TTL set at that moment, so each hop's
    ICMP time-exceeded quotes the line as it reached that hop (RFC 792;
    tracebox).  Stops when the reflector acknowledges the line, after
    ``params.max_hops`` (12) TTLs, or after ``params.budget`` seconds (15);
    IP_TTL is restored in a ``finally`` block either way.

    The Linux FTP helper parses only a line that follows a segment ending in
    ``\\n``, never the first of a session: hence after the login.  Skipped
    without capture permission or an IPv4 peer.  Raises
    :class:`FtpProbeError` when the session fails before the line is sent.
    """
    assert probe.command is not None
    port = ctx.target.port
    max_hops = int(probe.params.get("max_hops", 12))
    budget = float(probe.params.get("budget", 15.0))
    host, skipped = await _preconditions(ctx, probe, port)
    if skipped is not None:
        return skipped
    hops: list[Hop] = []
    reached: list[int] = []
    restored = [True]
    try:
        async with capturing(host, port, icmp=True) as cap:
            async with ctx.session(login=True, port=port) as s:
                local = (str(s.local_address), s.local_port)
                peer = (str(s.peer_address), port)
                async with ActiveListener(local[0]) as listener:
                    cmd = replace_argument(probe.command, encode_port(s.local_address, listener.port))
                    line = cmd.encode()
                    sock = s.stream.socket
                    original = sock.getsockopt(socket.IPPROTO_IP, socket.IP_TTL)
                    walked = trio.Event()

                    def ours() -> list:
                        return [x for x in list(cap.segments) if (x.src, x.sport) == local and x.payload == line]

                    def acked(seq: int) -> float | None:
                        return acknowledged_at(list(cap.segments), local, peer, seq, len(line))

                    async def until(predicate, limit: float):
                        with trio.move_on_after(limit):
                            while not (found := predicate()):
                                await trio.sleep(0.01)
                            return found
                        return None

                    async def walk() -> None:
                        try:
                            first = await until(ours, ctx.timeout)
                            if not first:
                                return
                            seq = first[0].seq
                            for ttl in range(1, max_hops + 1):
                                if ttl > 1:
                                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
                                tx = await until(lambda: [x for x in ours() if x.ttl == ttl] or acked(seq), budget)
                                if not isinstance(tx, list):
                                    break  # acknowledged (or out of time) before a segment left with this TTL
                                sent_at = tx[0].time

                                def answer():
                                    return [e for e in list(cap.icmp_errors) if e.type == 11 and e.time >= sent_at
                                            and e.quoted is not None and e.quoted.seq == seq] or acked(seq)

                                got = await until(answer, HOP_WAIT)
                                if isinstance(got, list):
                                    err = got[0]
                                    hops.append(Hop(ttl, err.src, err.quoted.payload if err.quoted else b"",
                                                    quote_state(line, err.quoted)))  # type: ignore[arg-type]
                                elif got is None:
                                    hops.append(Hop(ttl))
                                if acked(seq) is not None:
                                    break
                            done_at = acked(seq)
                            if done_at is not None:
                                before = [x.ttl for x in ours() if x.time <= done_at]
                                if before:
                                    reached.append(max(before))
                        finally:
                            try:
                                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, original)
                            except OSError:
                                restored[0] = False
                            walked.set()

                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 1)
                    try:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(walk)
                            ex = await s.exchange(cmd, timeout=budget + ctx.timeout)
                            with trio.move_on_after(HOP_WAIT):
                                await walked.wait()
                            nursery.cancel_scope.cancel()
                    finally:
                        try:
                            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, original)
                        except OSError:
                            restored[0] = False
                exchanges = _evidence_exchanges(s)
    except CaptureError as exc:
        return Skipped(probe.name, reason=str(exc))
    return HopsObs(probe.name, exchanges=exchanges, sent=line, hops=tuple(hops),
                   reached_ttl=reached[0] if reached else None, reflection=_reflection(ex), exchange=ex,
                   local=local, capture=cap.filter_note, lost=cap.losses(), ttl_restored=restored[0])
