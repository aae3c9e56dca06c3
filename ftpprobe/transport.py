"""Control and data connections on trio: the only module that touches sockets.

Every read has a deadline, every ``OSError`` becomes one of
:mod:`ftpprobe.errors`, and a stall leaves evidence: the kernel's TCP_INFO for
the connection (unacknowledged bytes, retransmissions, time since the last
data) at the moment the deadline passed.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import ipaddress
import socket
import struct
import termios
import time
from dataclasses import asdict, replace

import trio

from .codec import NEED_DATA, Command, Reply, ReplyReader, escape, replace_argument
from .errors import ConnectFailed, LoginFailed, PeerClosed, ProtocolError, ReplyTimeout
from .observations import Exchange, TcpInfo

#: Pause between the TCP segments of a split command, seconds.  Long enough
#: that Nagle-free writes leave as separate segments even on loopback.
SEGMENT_PAUSE = 0.05

# struct tcp_info from include/uapi/linux/tcp.h: 8 u8, then u32 fields.
_TCP_INFO_U32 = (
    "rto ato snd_mss rcv_mss unacked sacked lost retrans fackets "
    "last_data_sent last_ack_sent last_data_recv last_ack_recv pmtu "
    "rcv_ssthresh rtt rttvar snd_ssthresh snd_cwnd advmss reordering "
    "rcv_rtt rcv_space total_retrans"
).split()


def read_tcp_info(sock: socket.socket | trio.socket.SocketType) -> dict[str, int]:
    """The kernel's TCP_INFO for ``sock`` plus the send-queue size (Linux).

    Returns a dict: ``state``, ``retransmits`` (current run), ``unacked``
    (segments sent, not acknowledged), ``total_retrans`` (segments
    retransmitted over the connection's life), ``last_data_sent`` /
    ``last_data_recv`` (milliseconds since), ``rtt`` (microseconds),
    ``bytes_acked`` / ``bytes_received`` (bytes), and ``outq`` (bytes in the
    send queue: sent-but-unacknowledged plus not-yet-sent, from SIOCOUTQ).
    Returns ``{}`` on a platform without TCP_INFO or a closed socket.
    """
    info: dict[str, int] = {}
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except (OSError, AttributeError):
        return info
    if len(raw) >= 104:
        head = struct.unpack_from("<8B", raw, 0)
        info["state"], info["retransmits"] = head[0], head[2]
        info.update(zip(_TCP_INFO_U32, struct.unpack_from(f"<{len(_TCP_INFO_U32)}I", raw, 8)))
    if len(raw) >= 136:
        _pacing, _max_pacing, info["bytes_acked"], info["bytes_received"] = struct.unpack_from("<4Q", raw, 104)
    try:
        outq = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        info["outq"] = struct.unpack("<i", outq)[0]
    except OSError:
        pass
    keep = ("state", "retransmits", "unacked", "total_retrans", "last_data_sent",
            "last_data_recv", "rtt", "bytes_acked", "bytes_received", "outq")
    return {k: info[k] for k in keep if k in info}


def _closed_error(exc: BaseException, what: str) -> PeerClosed:
    reset = isinstance(exc, ConnectionResetError) or getattr(exc, "errno", None) in (
        errno.ECONNRESET, errno.EPIPE)
    return PeerClosed(f"{what}: connection {'reset' if reset else 'closed'} by peer", reset=reset)


def _os_reason(exc: BaseException) -> str:
    """The innermost strerror: trio reports a failed connect as "all attempts
    failed" with the real errors (refused, unreachable) as its cause."""
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        cause = cause.exceptions[0]
    if isinstance(cause, OSError) and cause.errno:
        return os.strerror(cause.errno)
    return getattr(exc, "strerror", None) or str(exc)


def _literal(host: str) -> int | None:
    """The address family of a literal IPv4/IPv6 address, None for a name."""
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return None


async def _connect_literal(host: str, port: int, family: int) -> tuple[trio.SocketStream, socket.socket]:
    """Connect to a literal address: one non-blocking socket, no name
    lookup, no happy-eyeballs nursery (what ``trio.open_tcp_stream`` costs
    per call).  Returns the stream and its stdlib socket (for
    :class:`ControlSession`'s direct reads and writes)."""
    raw = socket.socket(family, socket.SOCK_STREAM)
    try:
        raw.setblocking(False)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        err = raw.connect_ex((host, port))
        if err in (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY):
            await trio.lowlevel.wait_writable(raw)
            err = raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
    except BaseException:
        raw.close()
        raise
    return trio.SocketStream(trio.socket.from_stdlib_socket(raw)), raw


async def _open(host: str, port: int, timeout: float, what: str,
                address: str | None) -> tuple[trio.SocketStream, socket.socket | None]:
    """:func:`open_tcp`, also returning the stdlib socket of a literal address's connection."""
    target = address or host
    family = _literal(target)
    raw = None
    try:
        with trio.fail_after(timeout):
            if family is not None:
                stream, raw = await _connect_literal(target, port, family)
            else:
                stream = await trio.open_tcp_stream(host, port)
    except trio.TooSlowError:
        raise ConnectFailed(f"{what} connection to {host} port {port}: no answer within {timeout:g} s") from None
    except OSError as exc:
        reason = _os_reason(exc)
        if isinstance(exc, socket.gaierror):
            reason = f"cannot resolve host name ({reason})"
        raise ConnectFailed(f"{what} connection to {host} port {port}: {reason}") from None
    if raw is None:
        try:
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        except OSError:
            pass  # reset already: the first read or write reports it
    return stream, raw


async def open_tcp(host: str, port: int, timeout: float, *, what: str = "control",
                   address: str | None = None) -> trio.SocketStream:
    """Open a TCP connection within ``timeout`` seconds.

    ``address``: a literal address ``host`` is already known to resolve to
    (connect there, no new name lookup).  A literal address is connected to
    directly; a name goes through ``trio.open_tcp_stream``.

    Raises :class:`ConnectFailed` (refused, unreachable, unknown host, or
    timeout) with a message naming host and port.
    """
    stream, _ = await _open(host, port, timeout, what, address)
    return stream


def _unanswered(sent: bytes, exc: ReplyTimeout | PeerClosed | ProtocolError, started: float,
                segments: int = 1) -> Exchange:
    """The :class:`Exchange` of a line that got no reply: ``timeout`` (with
    TCP_INFO), ``reset``, ``closed`` or ``malformed``, as ``exc`` says;
    ``elapsed`` counts from ``started`` (``time.monotonic()``)."""
    if isinstance(exc, ReplyTimeout):
        outcome, tcp_info = "timeout", TcpInfo.from_kernel(exc.tcp_info)
    else:
        outcome = "malformed" if isinstance(exc, ProtocolError) else "reset" if exc.reset else "closed"
        tcp_info = None
    return Exchange(sent=sent, outcome=outcome, segments=segments,  # type: ignore[arg-type]
                    elapsed=round(time.monotonic() - started, 3), tcp_info=tcp_info, error=str(exc))


class ControlSession:
    """One FTP control connection (RFC 959 §3): greet, send commands, read replies.

    Use :meth:`connect` (an async context manager).  ``timeout`` (seconds)
    bounds every connect and every complete reply, so a peer that drips one
    byte a second still times out.  ``history`` keeps an
    :class:`ftpprobe.observations.Exchange` per command for evidence;
    ``password_sent`` becomes True once a PASS line was written in clear
    text, ``password_sent_in_tls`` once one was written inside TLS.

    FTPS (RFC 4217): :meth:`start_tls` wraps the connection in TLS (after
    ``AUTH TLS`` for explicit FTPS, before the greeting for implicit FTPS);
    from then on every command and reply goes through ``stream`` (a
    ``trio.SSLStream``), ``tls`` is that stream, and ``tcp`` stays the TCP
    connection underneath (for TCP_INFO).
    """

    def __init__(self, stream: trio.SocketStream, host: str, port: int, timeout: float,
                 raw: socket.socket | None = None) -> None:
        self.stream: trio.abc.Stream = stream
        #: The stdlib socket under ``stream`` when known (:meth:`open`): plain
        #: FTP reads and writes it directly, waiting through trio only when
        #: it would block (no task switch or cancel scope for a write that
        #: fits the send buffer, or a reply already received).
        self._raw = raw
        self.tcp = stream  # the TCP connection, also under TLS
        self.tls: trio.SSLStream | None = None
        self.password_sent_in_tls = False
        self.host = host
        self.port = port
        self.timeout = timeout
        self.reader = ReplyReader()
        self.history: list[Exchange] = []
        #: Where in :attr:`history` the current probe's exchanges start: a
        #: session handed from probe to probe (``check``) moves it on.
        self.evidence_from = 0
        self.greeting: Reply | None = None
        self.password_sent = False
        self._eof = False
        #: :meth:`aclose` ran (a second call does nothing).
        self.closed = False
        self._peer = stream.socket.getpeername()
        self._local = stream.socket.getsockname()

    @classmethod
    async def open(cls, host: str, port: int, timeout: float, *, address: str | None = None) -> "ControlSession":
        """Connect (no greeting read yet) to ``host``, or to ``address`` when
        the name's address is known already.  Raises :class:`ConnectFailed`,
        or :class:`PeerClosed` if the peer resets before we know its address."""
        stream, raw = await _open(host, port, timeout, "control", address)
        try:
            return cls(stream, host, port, timeout, raw=raw)
        except OSError as exc:
            await stream.aclose()
            raise _closed_error(exc, "connecting") from None

    # Addresses -------------------------------------------------------------

    # Read once at connect time: after a reset, getpeername() fails (ENOTCONN)
    # and the addresses are still needed for the evidence.

    @functools.cached_property
    def peer_address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """The control peer's IP address: the only address data connections go to by default."""
        return ipaddress.ip_address(self._peer[0])

    @functools.cached_property
    def local_address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """Our own address on the control connection (what PORT should name)."""
        return ipaddress.ip_address(self._local[0])

    @property
    def local_port(self) -> int:
        return self._local[1]

    def tcp_info(self) -> dict[str, int]:
        return read_tcp_info(self.tcp.socket)

    # I/O -------------------------------------------------------------------

    #: Seconds at most that :meth:`aclose` waits for QUIT's reply and the server's close.
    QUIT_WAIT = 1.0

    async def aclose(self) -> None:
        """End the session: QUIT (RFC 959 §4.1.1) and wait, at most
        :data:`QUIT_WAIT` seconds, for the server to close its side, then close.

        Waiting matters for session limits: a server counts a session until it
        has seen the close, so a slot freed before that could let our next
        session in over its limit.  A session whose last command got no reply
        (a stalled path) is closed at once.  Never raises; shielded from
        cancellation.
        """
        if self.closed:
            return
        self.closed = True
        raw = self._raw if self.tls is None else None
        with trio.CancelScope(shield=True):
            last = self.history[-1].outcome if self.history else "reply"
            if self.greeting is not None and not self._eof and last == "reply":
                with trio.move_on_after(min(self.timeout, self.QUIT_WAIT)):
                    try:
                        if raw is not None:
                            await self.send_raw([b"QUIT\r\n"])
                            while True:  # the 221 reply, then the server's FIN
                                try:
                                    if not raw.recv(4096):
                                        break
                                except BlockingIOError:
                                    await trio.lowlevel.wait_readable(raw)
                        else:
                            await self.stream.send_all(b"QUIT\r\n")
                            while await self.stream.receive_some(4096):
                                pass  # the 221 reply, then the server's FIN
                    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, PeerClosed, ReplyTimeout):
                        pass
            if raw is not None:  # a plain socket's close cannot block
                await self.stream.aclose()
                return
            with trio.move_on_after(1):
                try:
                    await self.stream.aclose()
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

    async def __aenter__(self) -> "ControlSession":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def send_raw(self, chunks: list[bytes], pause: float = SEGMENT_PAUSE) -> None:
        """Write ``chunks`` as separate TCP segments, ``pause`` seconds apart.

        Raises :class:`PeerClosed` if the connection is gone.
        """
        try:
            for i, chunk in enumerate(chunks):
                if i:
                    await trio.sleep(pause)
                if self._raw is not None and self.tls is None:
                    try:
                        sent = self._raw.send(chunk)
                    except BlockingIOError:
                        sent = 0
                    if sent == len(chunk):
                        continue
                    chunk = chunk[sent:]  # the send buffer is full: wait, within the timeout
                with trio.fail_after(self.timeout):
                    await self.stream.send_all(chunk)
        except trio.TooSlowError:
            raise ReplyTimeout("send did not complete: the peer stopped reading",
                               tcp_info=self.tcp_info()) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise _closed_error(exc.__cause__ or exc, "sending") from None

    async def read_reply(self, timeout: float | None = None) -> Reply:
        """Read one complete reply within ``timeout`` (default: the session's).

        Raises :class:`ReplyTimeout` (with TCP_INFO), :class:`PeerClosed`, or
        :class:`ProtocolError` (malformed or oversized reply).
        """
        timeout = self.timeout if timeout is None else timeout
        raw = self._raw if self.tls is None else None
        if raw is not None:
            # Without a cancel scope while the reply (or its missing part) is already here.
            while (reply := self._received(raw)) is not NEED_DATA:
                if reply is not None:
                    return reply  # type: ignore[return-value]
        with trio.move_on_after(timeout):
            while True:
                reply = self.reader.next_reply()
                if reply is not NEED_DATA:
                    return reply  # type: ignore[return-value]
                self._check_eof()
                if raw is not None:
                    await trio.lowlevel.wait_readable(raw)
                    self._received(raw)
                    continue
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, OSError) as exc:
                    raise _closed_error(exc.__cause__ or exc, "reading") from None
                if not data:
                    self._eof = True
                self.reader.feed(data)
        raise ReplyTimeout(f"no complete reply within {timeout:g} s",
                           tcp_info=self.tcp_info(), partial=self.reader.buffered[:200])

    def _check_eof(self) -> None:
        if self._eof:
            raise PeerClosed("connection closed by peer"
                             + (f" after '{escape(self.reader.buffered[:60])}'" if self.reader.buffered else ""))

    def _received(self, raw: socket.socket) -> Reply | None | object:
        """One step of a direct read: a complete reply already buffered, else
        ``None`` after reading what the socket holds, or :data:`NEED_DATA`
        when it holds nothing (wait for it).  Raises :class:`PeerClosed` and
        :class:`ProtocolError` like :meth:`read_reply`."""
        reply = self.reader.next_reply()
        if reply is not NEED_DATA:
            return reply
        self._check_eof()
        try:
            data = raw.recv(65536)
        except BlockingIOError:
            return NEED_DATA
        except OSError as exc:
            raise _closed_error(exc, "reading") from None
        if not data:
            self._eof = True
        self.reader.feed(data)
        return None

    async def start_tls(self, context, server_hostname: str | None) -> None:
        """Wrap the control connection in TLS and complete the handshake
        within the session's timeout (RFC 4217 §4: after a 234 reply to
        ``AUTH TLS``; implicit FTPS: right after connecting).

        Refuses bytes the server sent after its 234 reply and before the
        handshake (they would be read as if they came through TLS: the
        STARTTLS command injection of CVE-2011-0411).  Raises
        :class:`~ftpprobe.errors.TlsFailed` (certificate, protocol),
        :class:`ReplyTimeout`, :class:`PeerClosed` or :class:`ProtocolError`.
        """
        from .tls import handshake

        if self.reader.buffered:
            raise ProtocolError(f"the server sent '{escape(self.reader.buffered[:60])}' after its AUTH TLS "
                                "reply, before the TLS handshake: refused")
        self.stream = self.tls = await handshake(self.tcp, context, server_hostname, self.timeout)

    async def greet(self) -> Reply:
        """Read the greeting (RFC 959 §5.4: 220, or 120 then 220, or 421)."""
        reply = await self.read_reply()
        if reply.code == 120:
            reply = await self.read_reply()
        self.greeting = reply
        return reply

    async def exchange(self, command: Command, *, cuts: tuple[int, ...] = (),
                       timeout: float | None = None) -> Exchange:
        """Send ``command`` (split at ``cuts``) and read its reply within
        ``timeout`` seconds (default: the session's), never raising for the
        peer's behaviour: the outcome (reply, timeout with TCP_INFO, closed,
        reset, malformed) is recorded in the returned
        :class:`~ftpprobe.observations.Exchange` and in :attr:`history`.

        ``Exchange.sent`` is the exact bytes written, except that a secret
        argument (PASS) is replaced by ``****``.  Raises ``ValueError`` for a
        cut outside the line.
        """
        chunks = command.segments(cuts) if cuts else [command.encode()]
        shown = replace_argument(command, "****").encode() if command.secret and command.argument is not None \
            else command.encode()
        started = time.monotonic()
        try:
            try:
                await self.send_raw(chunks)
            finally:
                # Counted even when the send failed half-way: some of it may have left.
                if command.verb.upper() == "PASS":
                    if self.tls is None:
                        self.password_sent = True
                    else:
                        self.password_sent_in_tls = True
        except (ReplyTimeout, PeerClosed, ProtocolError) as exc:
            ex = _unanswered(shown, exc, started, len(chunks))
        else:
            ex = await self.read_exchange(shown, started=started, timeout=timeout, segments=len(chunks))
        self.history.append(ex)
        return ex

    async def read_exchange(self, sent: bytes, *, started: float, timeout: float | None = None,
                            segments: int = 1) -> Exchange:
        """Read the reply to ``sent`` (already written, at ``started``,
        ``time.monotonic()``) within ``timeout`` seconds, as an
        :class:`Exchange`; never raises for the peer's behaviour.  Not added
        to :attr:`history` (the caller decides)."""
        try:
            reply = await self.read_reply(timeout)
        except (ReplyTimeout, PeerClosed, ProtocolError) as exc:
            return _unanswered(sent, exc, started, segments)
        return Exchange(sent=sent, outcome="reply", reply=reply, segments=segments,
                        elapsed=round(time.monotonic() - started, 3))

    #: What :meth:`exchange_nudged` sends after its short wait: a canonical
    #: line, so the server's reply shows how it parsed what it held.
    NUDGE = Command("NOOP")

    def quiet(self) -> bool:
        """Nothing unread: no buffered part of a reply, no bytes waiting in the
        socket (plain FTP; a peek, nothing consumed), not closed.  A session
        that is quiet can be handed to another probe."""
        if self.reader.buffered or self._eof or self.closed:
            return False
        if self._raw is not None and self.tls is None:
            try:
                self._raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                return True  # nothing waiting
            except OSError:
                return False
            return False  # a byte waiting, or the peer's close
        return True

    def round_trip(self) -> float | None:
        """The quickest answered exchange of this session (seconds): an upper
        bound of the round trip (None before any answered exchange)."""
        times = [ex.elapsed for ex in self.history if ex.outcome == "reply"]
        return min(times) if times else None

    def settle(self) -> float:
        """Seconds between looks at an unanswered line (:meth:`exchange_nudged`):
        two round trips of this session, at least 0.05 s (a peer's delayed
        ACK; the round trip is measured between FTP replies, so a middlebox
        that acknowledges for the server does not shorten it)."""
        return max(0.05, 2 * (self.round_trip() or 0.0))

    async def _await_or_acknowledged(self, command: Command, cuts: tuple[int, ...], wait: float) -> Exchange:
        """:meth:`exchange` of ``command`` whose reply is awaited at most
        ``wait`` seconds, or until the line, acknowledged by the peer with no
        part of a reply received, has stayed so for a further :meth:`settle`
        seconds; a ``timeout`` exchange then (with the TCP_INFO of that
        moment).  Recorded in :attr:`history` like :meth:`exchange`."""
        step = min(self.settle(), wait)
        started = time.monotonic()
        ex = await self.exchange(command, cuts=cuts, timeout=step)
        acknowledged = False
        while ex.outcome == "timeout" and (left := wait - (time.monotonic() - started)) > 0:
            if ex.tcp_info is not None and ex.tcp_info.outq == 0 and not self.reader.buffered:
                if acknowledged:
                    break  # acknowledged at the last look too, and still no reply: held
                acknowledged = True
            else:
                acknowledged = False
            self.history[-1] = ex = await self.read_exchange(ex.sent, started=started, segments=ex.segments,
                                                             timeout=min(step, left))
        return ex

    #: What :meth:`exchange_nudged` sends after the nudge's first reply: a
    #: command that is never answered 200 (RFC 959 §4.2: 215, or 500/501/502),
    #: so whether the NOOP's 200 comes before its reply tells which command
    #: the first reply answered.
    MARKER = Command("SYST")
    #: Seconds at most for the replies after the nudge's first (the NOOP's
    #: and the marker's, in all): a slow server's, not a stalled path's.
    MARKER_WAIT = 2.0

    async def exchange_nudged(self, command: Command, *, cuts: tuple[int, ...] = (), wait: float,
                              timeout: float | None = None) -> tuple[Exchange, Exchange | None]:
        """Send ``command`` like :meth:`exchange`; if no reply came, send
        :data:`NUDGE` (``NOOP\\r\\n``, a line ending behind whatever the
        server holds) and read on until ``timeout``.

        When to nudge: the kernel's send queue (SIOCOUTQ) is looked at every
        :meth:`settle` seconds (two round trips of this session, at least
        50 ms).  Once the peer has acknowledged every byte of the line, no
        part of a reply has arrived, and a further look finds the same, the
        line is held (by the server or by a middlebox that acknowledged it)
        and the nudge goes at once; while bytes stay unacknowledged (a path
        that drops the segment: its retransmissions are the evidence) the
        variant waits the whole ``wait`` seconds.

        Which command the first reply after the nudge answered is told by
        order, never by timing (a slow server may answer the line itself
        after the nudge left): :data:`MARKER` (``SYST``) follows at once, and
        replies come in the order of the commands (RFC 959 §4.2).  If the
        next reply is a 200 (the NOOP's), the first one was the server's own
        late reply to the line: ``variant`` is it and ``nudge`` the NOOP's.
        Otherwise the first reply answered what the server held plus the
        line ending: ``variant`` is a ``timeout`` (no reply of its own before
        the nudge; TCP_INFO taken then) and ``nudge`` that reply; also when
        a 200 came next but nothing after it (a server that answers SYST with
        200).  A reset or close before the marker's reply leaves it unknown:
        ``variant`` is that ``reset``/``closed``.  The replies after the
        first are awaited :data:`MARKER_WAIT` seconds in all and read, so the
        session is left in step.  When
        nothing answers even the nudge, ``variant`` is a ``timeout`` at
        ``timeout`` and ``nudge`` a ``timeout`` too.  Every exchange goes to
        :attr:`history`; ``nudge`` is ``None`` when the variant was answered
        before the nudge.
        """
        timeout = self.timeout if timeout is None else timeout
        if wait >= timeout:
            return await self.exchange(command, cuts=cuts, timeout=timeout), None
        ex = await self._await_or_acknowledged(command, cuts, wait)
        if ex.outcome != "timeout":
            return ex, None
        self.history.pop()  # replaced below by what the nudge shows
        waited = ex.elapsed
        nudge_sent = time.monotonic()
        sent = self.NUDGE.encode()
        try:
            await self.send_raw([sent])
            first = await self.read_reply(timeout - waited)
        except ReplyTimeout as exc:
            late = Exchange(sent=ex.sent, outcome="timeout", segments=ex.segments,
                            elapsed=round(ex.elapsed + time.monotonic() - nudge_sent, 3),
                            tcp_info=TcpInfo.from_kernel(exc.tcp_info),
                            error=f"no complete reply within {timeout:g} s (a line ending sent after "
                                  f"{waited:g} s got no answer either)")
            nudge = Exchange(sent=sent, outcome="timeout", elapsed=round(time.monotonic() - nudge_sent, 3),
                             error=f"no reply to the line ending within {timeout - waited:g} s")
            self.history += [late, nudge]
            return late, nudge
        except PeerClosed as exc:
            closed = Exchange(sent=ex.sent, outcome="reset" if exc.reset else "closed", segments=ex.segments,
                              elapsed=round(ex.elapsed + time.monotonic() - nudge_sent, 3),
                              error=f"{exc} (after a line ending sent {waited:g} s after the line)")
            self.history.append(closed)
            return closed, None
        except ProtocolError as exc:
            bad = Exchange(sent=ex.sent, outcome="malformed", segments=ex.segments,
                           elapsed=round(ex.elapsed + time.monotonic() - nudge_sent, 3), error=str(exc))
            self.history.append(bad)
            return bad, None
        after = round(time.monotonic() - nudge_sent, 3)
        nudge = Exchange(sent=sent, outcome="reply", reply=first, elapsed=after)
        marker_sent = time.monotonic()
        marker = self.MARKER.encode()
        budget = min(timeout, self.MARKER_WAIT)  # for the replies after the first, in all
        try:
            await self.send_raw([marker])
        except (ReplyTimeout, PeerClosed, ProtocolError) as exc:
            following = _unanswered(marker, exc, marker_sent)
        else:
            following = await self.read_exchange(marker, started=marker_sent, timeout=budget)
        if following.outcome in ("reset", "closed"):
            # The NOOP's reply may have been lost with the connection: which
            # command the first reply answered cannot be told.
            cut = Exchange(sent=ex.sent, outcome=following.outcome, segments=ex.segments,
                           elapsed=round(ex.elapsed + after, 3),
                           error=f"{following.error} (after the line ending's first reply "
                                 f"'{first.display(60)}': which line it answered is unknown)")
            self.history += [cut, nudge, following]
            return cut, nudge
        if following.reply is not None and following.reply.code == 200:
            # A 200 next: the NOOP's (the line was answered late, by itself), unless
            # SYST's: then nothing follows it.
            own = await self.read_exchange(marker, started=marker_sent,
                                           timeout=max(0.0, budget - (time.monotonic() - marker_sent)))
            if own.outcome == "reply":
                late = Exchange(sent=ex.sent, outcome="reply", reply=first, segments=ex.segments,
                                elapsed=round(ex.elapsed + after, 3))
                noop = replace(following, sent=sent, elapsed=round(time.monotonic() - nudge_sent, 3))
                self.history += [late, noop, own]
                return late, noop
        held = Exchange(sent=ex.sent, outcome="timeout", segments=ex.segments, elapsed=ex.elapsed,
                        tcp_info=ex.tcp_info, error=f"no reply of its own within {waited:g} s")
        self.history += [held, nudge, following]
        return held, nudge

    async def exchange_pipelined(self, commands: list[Command], *, timeout: float | None = None) -> list[Exchange]:
        """Send ``commands`` in one write and read their replies in order,
        each within ``timeout`` (default: the session's).  Returns one
        :class:`Exchange` per command answered, and for the first that got
        no reply its outcome; the commands after it are left out (the
        session is then unusable).  Each exchange's ``elapsed`` counts from
        the write.  Never raises for the peer's behaviour."""
        data = b"".join(c.encode() for c in commands)
        started = time.monotonic()
        out: list[Exchange] = []
        try:
            await self.send_raw([data])
        except (ReplyTimeout, PeerClosed) as exc:
            ex = _unanswered(commands[0].encode(), exc, started)
            self.history.append(ex)
            return [ex]
        for command in commands:
            ex = await self.read_exchange(command.encode(), started=started, timeout=timeout)
            self.history.append(ex)
            out.append(ex)
            if ex.reply is None:
                break
        return out

    async def command(self, command: Command, *, timeout: float | None = None) -> Reply:
        """Send ``command`` and return its reply, raising on any failure
        (:class:`ReplyTimeout`, :class:`PeerClosed`, :class:`ProtocolError`)."""
        ex = await self.exchange(command, timeout=timeout)
        if ex.reply is None:
            sent = escape(ex.sent)
            if ex.outcome == "timeout":
                raise ReplyTimeout(f"{sent}: {ex.error}", tcp_info=asdict(ex.tcp_info) if ex.tcp_info else {})
            if ex.outcome == "malformed":
                raise ProtocolError(f"{sent}: {ex.error}")
            raise PeerClosed(f"{sent}: {ex.error}", reset=ex.outcome == "reset")
        return ex.reply

    async def login(self, user: str, password: str) -> Reply:
        """USER, then PASS only when the server asks for it (331/332; RFC 959
        §4.1.1).  Raises :class:`LoginFailed` on refusal.

        Never pipelined: a strict FTP inspection (a firewall that allows a
        command only after the previous one was answered) closes a session
        that sends PASS before its 331, and a password sent ahead would reach
        a server that refused the user.  The password is sent as a secret
        :class:`Command`: it never appears in evidence, history or error
        messages.
        """
        reply = await self.command(Command("USER", user))
        if reply.code == 331 or reply.code == 332:
            reply = await self.command(Command("PASS", password, secret=True))
        if reply.code not in (230, 202):
            raise LoginFailed(f"login as '{user}' refused: {reply.display(120)}")
        return reply
