"""Executors of the probes that tell ALG implementations apart (issue 12).

Registered in :data:`ftpprobe.executors.ACTIONS` on import:

* ``reflect-variant`` -- PORT/EPRT to the reflector in one TCP segment with
  another command before it (``params.before``: does the ALG look past the
  first line of a segment?) or after it (``params.after``: does it keep the
  rest of the segment?), or naming a chosen port (``params.port``, e.g. one
  below 1024); never followed by a transfer.
* ``reflect-reply`` -- a command whose reply the reflector writes in a fixed
  text (SYST): does the reply arrive as written?
* ``reflect-syn`` -- a control connection whose SYN advertises an unusual MSS
  (:data:`PROBE_MSS`), and the SYN the reflector received
  (``SITE FTPPROBE-SYN``): the same connection, or one a proxy opened?

Why the MSS and not the TTL or the window: a NAT or a stateful firewall
forwards our SYN (it may lower the MSS to fit a smaller path MTU, "MSS
clamping", but never raises it), while a proxy terminates our connection and
opens its own with its own stack's MSS (1460 on Ethernet).  An MSS of 1000
is below what any common path clamps to, so a larger MSS at the reflector
means the SYN was not ours.  The TTL cannot tell (a proxy one hop away looks
like one more router) and the window depends on buffer tuning.

Each raises :class:`~ftpprobe.errors.FtpProbeError` when its session fails
before its own command, like every executor.
"""

from __future__ import annotations

import socket
import time

import trio

from .catalog import Probe
from .codec import Command, replace_argument
from .data import ActiveListener
from .errors import ConnectFailed, PeerClosed, ProtocolError, ReplyTimeout
from .executors import ProbeContext, _active_argument, _control_port, _evidence_exchanges, _reflection, action
from .observations import Exchange, ReflectReplyObs, ReflectVariantObs, Skipped, SynObs, SynSeen
from .reflector import SYST_TEXT, parse_syn_reply
from .transport import ControlSession, read_tcp_info

#: The MSS (bytes) our ``reflect-syn`` SYN advertises: below any common clamp.
PROBE_MSS = 1000


def _is_active_line(ex: Exchange) -> bool:
    """The reply reports a PORT/EPRT line (by what the reflector received)."""
    seen = _reflection(ex)
    return seen is not None and seen.arrived[:4].upper() in (b"PORT", b"EPRT")


@action("reflect-variant")
async def run_reflect_variant(ctx: ProbeContext, probe: Probe) -> ReflectVariantObs | Skipped:
    """PORT/EPRT naming our own address, written in one segment with
    ``params.before`` / ``params.after`` (a command line, CRLF added), or
    naming ``params.port``; no LIST follows.  Over IPv6 a PORT variant is
    sent as EPRT ``|2|`` (the same spelling otherwise).

    The replies are told apart by what the reflector reports receiving, not
    by their order (an ALG that regenerates the segment may drop the other
    line).  Waits ``ctx.timeout`` seconds for each reply, so at most twice
    that.  Skipped without the second control port, or for PORT over IPv6.
    """
    assert probe.command is not None
    if (port := _control_port(ctx, probe)) is None:
        return Skipped(probe.name, reason="no second control port given")
    before, after = probe.params.get("before"), probe.params.get("after")
    companion = Command(before or after).encode() if (before or after) else b""
    async with ctx.session(login=True, port=port) as s:
        local = s.local_address
        async with ActiveListener(str(local)) as listener:
            named_port = int(probe.params.get("port", listener.port))
            base = probe.command
            if local.version == 6 and base.verb.upper() == "PORT":
                # PORT cannot name an IPv6 address: the same variant as EPRT |2| (RFC 2428).
                base = Command("EPRT" if base.verb.isupper() else "eprt", separator=base.separator,
                               trailer=base.trailer, line_ending=base.line_ending)
            argument = _active_argument(base.verb, local, named_port)
            if argument is None:
                return Skipped(probe.name, reason=f"{probe.command.verb} cannot name {local}")
            line = replace_argument(base, argument).encode()
            written = companion + line if before else line + companion
            try:
                await s.send_raw([written])
            except (ReplyTimeout, PeerClosed) as exc:
                kind = "timeout" if isinstance(exc, ReplyTimeout) else ("reset" if exc.reset else "closed")
                ex = Exchange(sent=written, outcome=kind, error=str(exc))  # type: ignore[arg-type]
                return ReflectVariantObs(probe.name, exchange=ex, sent=line, local=(str(local), s.local_port),
                                         control_port=port, named=(str(local), named_port),
                                         companion_sent=companion, position="before" if before else "after")
            replies = [await s.read_exchange(written, started=time.monotonic(), timeout=ctx.timeout)]
            if companion and replies[0].outcome == "reply":
                replies.append(await s.read_exchange(written, started=time.monotonic(), timeout=ctx.timeout))
        s.history.extend(replies)
        exchanges = _evidence_exchanges(s)
    mine = [r for r in replies if r.outcome == "reply" and _is_active_line(r)]
    others = [r for r in replies if r.outcome == "reply" and not _is_active_line(r)]
    failed = [r for r in replies if r.outcome != "reply"]
    if companion:
        ex = mine[0] if mine else (failed[0] if failed else replies[-1])
        comp = others[0] if others else (failed[-1] if failed else None)
    else:
        ex, comp = replies[0], None
    return ReflectVariantObs(probe.name, exchanges=exchanges, exchange=ex, sent=line, reflection=_reflection(ex),
                             local=(str(local), s.local_port), control_port=port, named=(str(local), named_port),
                             companion_sent=companion, position="before" if before else "after", companion=comp,
                             companion_reflection=_reflection(comp) if comp is not None else None)


@action("reflect-reply")
async def run_reflect_reply(ctx: ProbeContext, probe: Probe) -> ReflectReplyObs | Skipped:
    """Send the probe's command (SYST) after a login; the reflector answers
    ``215`` + :data:`ftpprobe.reflector.SYST_TEXT`."""
    assert probe.command is not None
    if (port := _control_port(ctx, probe)) is None:
        return Skipped(probe.name, reason="no second control port given")
    async with ctx.session(login=True, port=port) as s:
        ex = await s.exchange(probe.command)
        exchanges = _evidence_exchanges(s)
    return ReflectReplyObs(probe.name, exchanges=exchanges, exchange=ex, expected=SYST_TEXT, control_port=port)


async def _connect_with_mss(host: str, port: int, timeout: float, mss: int) -> trio.SocketStream:
    """A TCP connection whose SYN advertises ``mss`` bytes (TCP_MAXSEG set
    before connect).  Raises :class:`ConnectFailed`."""
    try:
        with trio.fail_after(timeout):
            infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            family, type_, proto, _, address = infos[0]
            sock = trio.socket.socket(family, type_, proto)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
                await sock.connect(address)
            except BaseException:
                sock.close()
                raise
    except trio.TooSlowError:
        raise ConnectFailed(f"control connection to {host} port {port}: no answer within {timeout:g} s") from None
    except OSError as exc:
        raise ConnectFailed(f"control connection to {host} port {port}: {exc.strerror or exc}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return trio.SocketStream(sock)


def _sent_ttl(sock) -> int:
    """The IP TTL (IPv4) or unicast hop limit (IPv6) our segments leave with; 0 if unknown."""
    try:
        if sock.family == socket.AF_INET6:
            return sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS)
        return sock.getsockopt(socket.IPPROTO_IP, socket.IP_TTL)
    except OSError:
        return 0


@action("reflect-syn")
async def run_reflect_syn(ctx: ProbeContext, probe: Probe) -> SynObs:
    """A control connection of our own with MSS :data:`PROBE_MSS`, greeted,
    then ``SITE FTPPROBE-SYN``: the reflector reports the SYN it received.
    Holds a session slot; no login (the SYN is all it asks about).  Raises
    :class:`FtpProbeError` when the connection or greeting fails."""
    host, port = ctx.target.host, ctx.target.port
    async with ctx.slot():
        stream = await _connect_with_mss(host, port, ctx.timeout, PROBE_MSS)
        s = ControlSession(stream, host, port, ctx.timeout)
        try:
            greeting = await s.greet()
            if greeting.code != 220:
                raise ProtocolError(f"unexpected greeting {greeting.display(120)}")
            advertised = read_tcp_info(stream.socket).get("advmss") or PROBE_MSS
            ttl = _sent_ttl(stream.socket)
            ex = await s.exchange(probe.command or Command("SITE", "FTPPROBE-SYN"))
            local = (str(s.local_address), s.local_port)
        finally:
            await s.aclose()
    seen = None
    if ex.reply is not None and ex.reply.code == 200:
        info = parse_syn_reply(ex.reply.lines[-1].decode("latin-1"))
        if info is not None:
            seen = SynSeen(info.ttl, info.window, info.mss, info.wscale, info.options)
    return SynObs(probe.name, exchanges=tuple(s.history), sent_mss=min(advertised, PROBE_MSS), sent_ttl=ttl,
                  seen=seen, exchange=ex, local=local, control_port=port)
