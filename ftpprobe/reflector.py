"""``ftpprobe reflect``: the cooperating server outside the NAT.

Speaks enough FTP for a prober (and any ALG on the path) to treat it as an FTP
server, and reports back, for every line it receives, the exact bytes (as hex,
a token no ALG recognises), the peer address and port it saw, and the sizes of
the reads in which the line arrived (the segment boundaries as received).

* ``PASV``/``EPSV`` (any spelling the reflector recognises: PASV, P@SW, EPSV, in
  any case) are answered with a 227/229 naming the reflector's own address and
  a listening port, followed on the same line by ``declared=HEX``: the address
  and port as originally written, so a rewrite of the reply on its way back is
  visible to the prober.
* ``PORT``/``EPRT`` are parsed and reported.  ``LIST`` after them makes the
  reflector connect back, **to the control peer's address only** (never the
  address inside PORT), on the port PORT named, and send a token: proof that
  the pinhole works.
* ``SYST`` is answered ``215 UNIX Type: L8`` (a fixed text, so a firewall
  that masks the reply, as Cisco ASA's FTP inspection does by default, is
  visible); ``SITE FTPPROBE-SYN`` is answered with the TCP SYN that opened
  the control connection as it arrived (IP TTL, window, MSS, window scale,
  option order; Linux ``TCP_SAVE_SYN``): a middlebox that terminates TCP and
  opens a connection of its own (a proxy) shows there.
* It listens on every IPv4 and IPv6 address by default (``host`` empty), or
  on each address of a comma-separated list.

Safe to leave on the internet: at most ``max_sessions`` sessions in all and
``per_address`` from one address, at most ``rate`` new sessions a minute from
one address, lines of at most ``max_line`` bytes, ``idle`` seconds without a
line, ``lifetime`` seconds a session; one passive listener per session (a new
PASV/EPSV closes the previous one) and ``max_listeners`` in all; a journal of
at most twice ``journal_bytes``; per-address tables of at most
``tracked_addresses`` entries; no other file system access; one log line per
refused peer per minute.  One client's reset, half-close or garbage ends its
own session only: every error a peer can cause is handled in the task that
meets it, never by an ``except`` around a nursery (under trio >= 0.25 that
sees an ExceptionGroup and lets it through).

Reply format (RFC 959 multi-line, so any FTP client can read it)::

    200-ftpprobe-reflect/1 raw=504f5254203130... peer=198.51.100.1:40412 reads=4,15 port=21
    200 PORT seen 198.51.100.1:40413
"""

from __future__ import annotations

import ipaddress
import json
import logging
import logging.handlers
import secrets
import time
from collections import deque
from dataclasses import dataclass, field

import trio

from .codec import encode_port, escape, parse_eprt, parse_port
from .errors import ProtocolError

log = logging.getLogger("ftpprobe.reflect")

TAG = "ftpprobe-reflect/1"

# What a peer can do to a session's connection: reset it, close it under us,
# stop reading (a send times out).  Each ends that session only.
PEER_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError)

RATE_WINDOW = 60.0  # seconds: the window of ``rate`` and of the one-log-line-per-refused-peer rule


@dataclass
class ReflectorLimits:
    """Resource caps.  Seconds for times, bytes for lengths.

    ``max_sessions``: control sessions open at once; ``per_address``: of them
    from one address; ``rate``: new sessions a minute from one address;
    ``max_line``: bytes of one command line; ``idle``: seconds without a line
    (and for one reply to be sent); ``lifetime``: seconds of one session;
    ``connect_timeout``: seconds for a data connection (to a passive port, or
    back to the client after PORT); ``max_listeners``: passive listeners open
    at once over all sessions (each session has at most one: a new PASV/EPSV
    closes the previous); beyond it PASV/EPSV is answered 425;
    ``journal_bytes``: size of the journal file before it is rotated to
    ``JOURNAL.1`` (one old file kept: at most twice this on disk);
    ``tracked_addresses``: addresses remembered for ``rate`` and for the
    refusal log (the least recently admitted or refused is forgotten first:
    its rate window starts afresh).
    """

    max_sessions: int = 64
    per_address: int = 8
    rate: int = 60          # new sessions a minute from one address
    max_line: int = 512
    idle: float = 30.0
    lifetime: float = 120.0
    connect_timeout: float = 5.0
    max_listeners: int = 64
    journal_bytes: int = 16 * 1024 * 1024
    tracked_addresses: int = 4096


@dataclass
class Reflector:
    """The reflector server.  ``host``: address(es) to listen on, comma-separated
    (empty: every IPv4 and IPv6 address, one socket per family); ``ports``: control
    ports; ``journal``: optional path of a JSON-lines record of every line seen
    (for the lab tests and for operators; rotated at ``limits.journal_bytes``);
    ``limits``: :class:`ReflectorLimits`.

    ``sessions``, ``per_address`` (open sessions by address, only addresses
    with one open), ``listeners`` (passive listeners open), ``recent``
    (admission times of the last minute by address) and ``refused_logged``
    (time of the last refusal logged, by address) are its live state.
    """

    host: str = ""
    ports: tuple[int, ...] = (21, 2121)
    limits: ReflectorLimits = field(default_factory=ReflectorLimits)
    journal: str | None = None
    sessions: int = 0
    per_address: dict[str, int] = field(default_factory=dict)
    # Both ordered oldest first (an entry moves to the end when updated), so
    # pruning looks at the front only.
    recent: dict[str, deque] = field(default_factory=dict)
    refused_logged: dict[str, float] = field(default_factory=dict)
    listeners: int = 0
    bound_ports: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._idle = trio.Event()
        self._idle.set()
        self._journal: logging.handlers.RotatingFileHandler | None = None

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Listen on every port and serve until cancelled.  ``task_status.started``
        receives the list of bound ports (port 0 picks a free one).

        Raises ``OSError`` (e.g. ``PermissionError``) if a port cannot be bound;
        nothing a client does makes it raise.
        """
        listeners = []
        hosts = [h.strip() for h in self.host.split(",") if h.strip()] or [None]
        try:
            for port in self.ports:
                for host in hosts:
                    listeners += await trio.open_tcp_listeners(port, host=host)
        except OSError:
            for listener in listeners:
                await listener.aclose()
            raise
        for listener in listeners:
            save_syn(listener.socket)
        self.bound_ports = list(dict.fromkeys(lst.socket.getsockname()[1] for lst in listeners))
        log.info("reflector listening on %s ports %s", self.host, ",".join(map(str, self.bound_ports)))
        task_status.started(self.bound_ports)
        try:
            await trio.serve_listeners(self._handle, listeners)
        finally:
            if self._journal is not None:
                self._journal.close()

    async def wait_idle(self) -> None:
        """Return once no session is open (at once if none is): for tests and
        for a graceful shutdown.  Connections still in the kernel's accept
        queue are not counted."""
        await self._idle.wait()

    # -- admission -----------------------------------------------------------

    def _prune(self, now: float) -> None:
        """Forget what no longer matters: admissions and refusal logs older than
        the rate window, and the oldest entries beyond ``tracked_addresses``."""
        cap = self.limits.tracked_addresses
        for table, last in ((self.recent, lambda w: w[-1] if w else -1e9), (self.refused_logged, lambda t: t)):
            while table:
                oldest = next(iter(table))
                if len(table) <= cap and now - last(table[oldest]) <= RATE_WINDOW:
                    break
                del table[oldest]

    def _admit(self, address: str) -> str | None:
        """None to admit (and count the admission), else the reason for refusing."""
        now = time.monotonic()
        self._prune(now)
        if self.sessions >= self.limits.max_sessions:
            return "too many sessions"
        if self.per_address.get(address, 0) >= self.limits.per_address:
            return "too many sessions from this address"
        window = self.recent.get(address, ())
        while window and now - window[0] > RATE_WINDOW:
            window.popleft()
        if len(window) >= self.limits.rate:
            return "too many new sessions a minute from this address"
        window = self.recent.pop(address, None) or deque()
        window.append(now)
        self.recent[address] = window  # to the end: the most recently admitted
        self._prune(now)  # the cap, now that there may be one more
        return None

    def _log_refusal(self, address: str, reason: str) -> None:
        now = time.monotonic()
        if now - self.refused_logged.get(address, -1e9) >= RATE_WINDOW:
            self.refused_logged.pop(address, None)
            self.refused_logged[address] = now  # to the end: the most recent
            self._prune(now)
            log.warning("refused %s: %s", address, reason)

    async def _handle(self, stream: trio.SocketStream) -> None:
        """Serve one control connection.  Never raises for anything the peer
        does (reset, half-close, garbage, silence): one client must not end
        the server, which a handler's exception would (it reaches
        serve_listeners' nursery)."""
        try:
            peer = stream.socket.getpeername()
            local = stream.socket.getsockname()
        except OSError:
            return  # reset while waiting to be accepted: nobody to serve
        address = peer[0]
        reason = self._admit(address)
        if reason:
            self._log_refusal(address, reason)
            with trio.move_on_after(1):
                try:
                    await stream.send_all(f"421 {reason}\r\n".encode())
                except PEER_ERRORS:
                    pass
            return  # serve_listeners closes the stream
        self.sessions += 1
        self.per_address[address] = self.per_address.get(address, 0) + 1
        if self._idle.is_set():
            self._idle = trio.Event()
        try:
            await self._session(stream, (peer[0], peer[1]), (local[0], local[1]))
        except Exception:
            # Last resort: a bug met by one session is logged and ends that
            # session, not the reflector (and not the other sessions).
            log.exception("session with %s:%s failed", peer[0], peer[1])
        finally:
            self.sessions -= 1
            self.per_address[address] -= 1
            if not self.per_address[address]:
                del self.per_address[address]
            if not self.sessions:
                self._idle.set()
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _session(self, stream: trio.SocketStream, peer: tuple[str, int], local: tuple[str, int]) -> None:
        """Run one session for at most ``lifetime`` seconds; returns when the
        peer quits, closes, resets or stops reading."""
        async with trio.open_nursery() as nursery:  # the task serving the session's passive port
            session = _Session(self, stream, nursery, peer, local)
            try:
                with trio.move_on_after(self.limits.lifetime):
                    await session.run()
            except PEER_ERRORS as exc:
                # Handled here, in the task that met it: the nursery would
                # wrap it in an ExceptionGroup.
                log.debug("session with %s:%s ended: %s", peer[0], peer[1], exc)
            finally:
                session.close_passive()
                nursery.cancel_scope.cancel()

    def record(self, entry: dict) -> None:
        """Append ``entry`` to the journal as one JSON line, if there is a journal;
        the file is rotated to ``JOURNAL.1`` past ``limits.journal_bytes``.
        A write error is reported on stderr by :mod:`logging`, never raised."""
        if not self.journal:
            return
        if self._journal is None:
            self._journal = logging.handlers.RotatingFileHandler(
                self.journal, maxBytes=self.limits.journal_bytes, backupCount=1, encoding="utf-8", delay=True)
        self._journal.handle(logging.makeLogRecord({"msg": json.dumps(entry)}))


class _Session:
    """One control connection to the reflector.  Its methods raise
    :data:`PEER_ERRORS` when the peer resets, closes or stops reading; the
    caller (:meth:`Reflector._session`) ends the session on them."""

    def __init__(self, server: Reflector, stream: trio.SocketStream, nursery: trio.Nursery,
                 peer: tuple[str, int], local: tuple[str, int]) -> None:
        self.server = server
        self.stream = stream
        self.nursery = nursery
        self.peer = peer
        self.local = local
        self.buffer = bytearray()
        self.reads: list[int] = []  # sizes of the reads holding the current line
        self.active: tuple[int, str] | None = None  # (port, as-arrived) from PORT/EPRT
        # The one passive listener, and the scope of the task serving it.
        self.passive_listener: trio.socket.SocketType | None = None
        self.passive_scope: trio.CancelScope | None = None
        # The SYN that opened this connection, as it arrived (read once: the
        # kernel frees it after the first read).
        self.syn: SynInfo | None = saved_syn(stream.socket)

    async def send(self, text: str) -> None:
        with trio.fail_after(self.server.limits.idle):
            await self.stream.send_all(text.encode("latin-1"))

    async def next_line(self) -> tuple[bytes, list[int]] | None:
        """A complete line (ending in LF, or CR alone after a pause, or whatever
        arrived before the peer half-closed) and its reads; None at the end of
        the session (EOF, idle, an overlong line)."""
        while True:
            nl = self.buffer.find(b"\n")
            if nl >= 0:
                line = bytes(self.buffer[: nl + 1])
                del self.buffer[: nl + 1]
                reads, self.reads = self.reads, ([len(self.buffer)] if self.buffer else [])
                return line, reads
            if len(self.buffer) > self.server.limits.max_line:
                await self.send(f"500 line longer than {self.server.limits.max_line} bytes\r\n")
                await self.linger()
                return None
            # A line ended by CR alone, or with no end at all, is reported after a
            # short pause: the prober wants to know what arrived.
            timeout = 0.5 if self.buffer else self.server.limits.idle
            with trio.move_on_after(timeout) as scope:
                data = await self.stream.receive_some(4096)
            if (scope.cancelled_caught or not data) and self.buffer:
                # After a pause, or once the peer half-closed (it may still
                # read the answer): the next call then ends the session.
                line, reads = bytes(self.buffer), self.reads
                self.buffer.clear()
                self.reads = []
                return line, reads
            if scope.cancelled_caught:
                await self.send("421 idle too long\r\n")
                return None
            if not data:
                return None
            self.buffer += data
            self.reads.append(len(data))

    async def linger(self) -> None:
        """Half-close and discard input for at most a second, so the last reply
        is not destroyed by a reset (closing with unread input sends RST)."""
        try:
            await self.stream.send_eof()
            with trio.move_on_after(1):
                while await self.stream.receive_some(65536):
                    pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def run(self) -> None:
        await self.send(f"220 {TAG} ready; every reply reports the bytes it received\r\n")
        while (got := await self.next_line()) is not None:
            line, reads = got
            verb = line.split(b" ", 1)[0].strip().upper()
            entry = {"raw": line.hex(), "shown": escape(line), "peer": list(self.peer),
                     "port": self.local[1], "reads": reads, "time": time.time()}
            code, text = await self.dispatch(verb, line, entry)
            self.server.record(entry)
            if code == 0:
                return
            # The report line first, then the final line in a segment of its own:
            # an ALG only parses a 227/229 that starts a segment after a LF
            # (nf_conntrack_ftp.c find_nl_seq), as real servers send it.
            await self.send(f"{code}-{TAG} raw={line.hex()} peer={self.peer[0]}:{self.peer[1]} "
                            f"reads={','.join(map(str, reads))} port={self.local[1]}\r\n")
            await trio.sleep(0.02)
            await self.send(f"{code} {text}\r\n")

    async def dispatch(self, verb: bytes, line: bytes, entry: dict) -> tuple[int, str]:
        """The final reply (code, text) for one received line; code 0 closes."""
        if verb in (b"PASV", b"P@SW", b"EPSV"):
            return await self.passive(verb == b"EPSV", entry)
        if verb in (b"PORT", b"EPRT"):
            return self.port(verb, line, entry)
        if verb in (b"LIST", b"NLST", b"RETR"):
            return await self.connect_back(entry)
        if verb == b"QUIT":
            self.close_passive()  # released before the 221: a client may count on it
            await self.send("221 bye\r\n")
            return 0, ""
        if verb in (b"USER", b"PASS"):
            return 230, "ok: the reflector needs no login"
        if verb == b"SYST":
            return 215, SYST_TEXT
        if verb == b"SITE" and line[4:].strip().upper() == b"FTPPROBE-SYN":
            if self.syn is None:
                return 502, "the SYN of this connection is not known here (needs Linux TCP_SAVE_SYN)"
            entry["syn"] = self.syn.describe()
            return 200, f"syn {self.syn.describe()}"
        return 200, "seen"

    async def passive(self, extended: bool, entry: dict) -> tuple[int, str]:
        """Open the session's passive listener and answer 227/229 (425 when
        ``max_listeners`` are open or the socket cannot be opened)."""
        # One listener per session, as FTP servers do: a new PASV/EPSV closes
        # the previous one, so a PASV flood cannot pile up sockets.
        self.close_passive()
        if not extended and ":" in self.local[0]:
            return 425, "PASV is for IPv4; use EPSV"
        limit = self.server.limits.max_listeners
        if self.server.listeners >= limit:
            entry["pasv_error"] = "too many passive listeners"
            return 425, f"too many passive listeners ({limit}); try again later"
        try:
            listener = trio.socket.socket(trio.socket.AF_INET6 if ":" in self.local[0] else trio.socket.AF_INET)
        except OSError as exc:  # e.g. EMFILE
            entry["pasv_error"] = str(exc)
            return 425, "cannot open a passive port"
        try:
            await listener.bind((self.local[0], 0))
            listener.listen(1)
        except OSError as exc:
            listener.close()
            entry["pasv_error"] = str(exc)
            return 425, "cannot open a passive port"
        self.server.listeners += 1
        self.passive_listener = listener
        self.passive_scope = trio.CancelScope(deadline=trio.current_time() + self.server.limits.connect_timeout)
        port = listener.getsockname()[1]
        token = secrets.token_hex(8)
        self.nursery.start_soon(self._serve_token, listener, token, self.passive_scope)
        entry["pasv"] = [self.local[0], port]
        if extended:
            return 229, f"Entering Extended Passive Mode (|||{port}|) declared={port:04x}.{token}"
        declared = ipaddress.IPv4Address(self.local[0]).packed.hex() + f"{port:04x}"
        return 227, f"Entering Passive Mode ({encode_port(self.local[0], port)}) declared={declared}.{token}"

    def _release_listener(self, listener) -> None:
        """Close ``listener`` if it is still the session's passive listener."""
        if listener is not None and listener is self.passive_listener:
            self.passive_listener = None
            listener.close()  # at once: an accept() waiting on it gets ClosedResourceError
            self.server.listeners -= 1

    def close_passive(self) -> None:
        """Close the passive listener and stop the data connection it may be
        serving.  Synchronous, so the descriptor is gone before the next reply."""
        if self.passive_scope is not None:
            self.passive_scope.cancel()
            self.passive_scope = None
        self._release_listener(self.passive_listener)

    async def _serve_token(self, listener, token: str, scope: trio.CancelScope) -> None:
        """Accept one data connection before ``scope``'s deadline (connect_timeout
        seconds) and send it the token.  Never raises: a data connection's
        trouble is not the session's."""
        with scope:
            try:
                conn, _ = await listener.accept()
            except (OSError, trio.ClosedResourceError):
                return  # closed by a newer PASV or the end of the session
            finally:
                self._release_listener(listener)  # one data connection per PASV
            with conn:
                try:
                    await conn.send(f"ftpprobe-token {token}\r\n".encode())
                except OSError:
                    pass

    def port(self, verb: bytes, line: bytes, entry: dict) -> tuple[int, str]:
        argument = line.split(b" ", 1)[1].decode("latin-1").strip() if b" " in line else ""
        try:
            address, port = parse_port(argument) if verb == b"PORT" else parse_eprt(argument)
        except ProtocolError as exc:
            self.active = None
            entry["port_error"] = str(exc)
            return 501, str(exc)
        self.active = (port, str(address))
        entry["active"] = [str(address), port]
        return 200, f"{verb.decode()} seen {address}:{port}; LIST connects back to {self.peer[0]}:{port}"

    async def connect_back(self, entry: dict) -> tuple[int, str]:
        """Connect to the control peer's address (never the one PORT named) on
        the port PORT/EPRT named, and send a token."""
        if self.active is None:
            return 503, "PORT or EPRT first"
        port, _named = self.active
        self.active = None
        token = secrets.token_hex(8)
        entry["connect"] = [self.peer[0], port]
        await self.send(f"150 connecting to {self.peer[0]}:{port} (the control peer, never elsewhere)\r\n")
        try:
            with trio.fail_after(self.server.limits.connect_timeout):
                data = await trio.open_tcp_stream(self.peer[0], port)
            async with data:
                await data.send_all(f"ftpprobe-token {token}\r\n".encode())
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            entry["connect_error"] = str(exc) or type(exc).__name__
            return 425, f"no data connection to {self.peer[0]}:{port}"
        entry["token"] = token
        return 226, f"token {token} sent to {self.peer[0]}:{port}"


def parse_reflection(reply_text: str) -> dict | None:
    """The reflector's report in a reply: ``raw`` (bytes), ``peer`` ((address,
    port)), ``reads`` (list of int), ``port`` (int); None if absent."""
    for line in reply_text.splitlines():
        if TAG in line:
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            try:
                host, _, port = fields["peer"].rpartition(":")
                return {"raw": bytes.fromhex(fields["raw"]), "peer": (host, int(port)),
                        "reads": [int(n) for n in fields.get("reads", "").split(",") if n],
                        "port": int(fields.get("port", 0))}
            except (KeyError, ValueError):
                return None
    return None


def parse_declared(reply_text: str) -> tuple[str | None, int] | None:
    """The (address, port) a reflector's 227/229 declared out of band."""
    for part in reply_text.split():
        if part.startswith("declared="):
            value = part[len("declared="):].split(".")[0]
            try:
                if len(value) == 12:
                    return str(ipaddress.IPv4Address(bytes.fromhex(value[:8]))), int(value[8:], 16)
                return None, int(value, 16)
            except ValueError:
                return None
    return None


#: The text of the reflector's SYST reply (RFC 959 §4.1.3; the usual UNIX
#: answer): a middlebox that masks it (Cisco ASA ``mask-syst-reply``) shows.
SYST_TEXT = "UNIX Type: L8"

# Linux include/uapi/linux/tcp.h: keep the SYN of each accepted connection
# (TCP_SAVE_SYN, since Linux 4.2) and read it once (TCP_SAVED_SYN).
TCP_SAVE_SYN, TCP_SAVED_SYN = 27, 28


def save_syn(sock) -> bool:
    """Ask the kernel to keep the SYN of every connection ``sock`` (a listener)
    accepts.  False where the platform cannot (not Linux): the reflector then
    answers ``SITE FTPPROBE-SYN`` with 502.  Never raises."""
    try:
        sock.setsockopt(6, TCP_SAVE_SYN, 1)  # IPPROTO_TCP
        return True
    except (OSError, AttributeError):
        return False


@dataclass(frozen=True)
class SynInfo:
    """One TCP SYN as it arrived: ``ttl`` (IPv4 TTL or IPv6 hop limit, hops
    left), ``window`` (raw TCP window, bytes, unscaled), ``mss`` (the MSS
    option, bytes; 0 when absent), ``wscale`` (the window scale shift; -1
    when absent), ``options`` (option kinds in order: ``mss``, ``nop``,
    ``wscale``, ``sackok``, ``ts``, ``eol`` or ``kN``)."""

    ttl: int
    window: int
    mss: int = 0
    wscale: int = -1
    options: tuple[str, ...] = ()

    def describe(self) -> str:
        """``ttl=63 window=64240 mss=1000 wscale=7 options=mss,sackok,ts,nop,wscale``."""
        return (f"ttl={self.ttl} window={self.window} mss={self.mss} wscale={self.wscale} "
                f"options={','.join(self.options) or '-'}")


_OPTION_NAMES = {0: "eol", 1: "nop", 2: "mss", 3: "wscale", 4: "sackok", 8: "ts"}


def parse_syn(packet: bytes) -> SynInfo | None:
    """A :class:`SynInfo` from the IP and TCP headers of a SYN (RFC 791 /
    RFC 8200 / RFC 9293 §3.1); ``None`` if they are truncated or not IPv4/IPv6."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        ihl = (packet[0] & 0x0F) * 4
        if len(packet) < ihl + 20:
            return None
        ttl, tcp = packet[8], packet[ihl:]
    elif version == 6:
        if len(packet) < 60:
            return None
        ttl, tcp = packet[7], packet[40:]  # extension headers: none on a SYN in practice
    else:
        return None
    window = int.from_bytes(tcp[14:16], "big")
    end = min(len(tcp), (tcp[12] >> 4) * 4)
    mss, wscale, names, i = 0, -1, [], 20
    while i < end:
        kind = tcp[i]
        names.append(_OPTION_NAMES.get(kind, f"k{kind}"))
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= end or tcp[i + 1] < 2:
            break
        length = tcp[i + 1]
        if kind == 2 and length == 4:
            mss = int.from_bytes(tcp[i + 2:i + 4], "big")
        elif kind == 3 and length == 3:
            wscale = tcp[i + 2]
        i += length
    return SynInfo(ttl, window, mss, wscale, tuple(names))


def saved_syn(sock) -> SynInfo | None:
    """The SYN the kernel kept for an accepted connection (see :func:`save_syn`),
    or ``None`` (not kept, already read, not Linux).  Never raises."""
    try:
        return parse_syn(sock.getsockopt(6, TCP_SAVED_SYN, 512))
    except (OSError, AttributeError, IndexError):
        return None


def parse_syn_reply(text: str) -> SynInfo | None:
    """The :class:`SynInfo` in a reflector's reply to ``SITE FTPPROBE-SYN``
    (``... syn ttl=.. window=.. mss=.. wscale=.. options=..``), or ``None``."""
    fields = dict(part.split("=", 1) for part in text.split() if "=" in part)
    try:
        return SynInfo(int(fields["ttl"]), int(fields["window"]), int(fields["mss"]), int(fields["wscale"]),
                       tuple(o for o in fields.get("options", "").split(",") if o and o != "-"))
    except (KeyError, ValueError):
        return None
