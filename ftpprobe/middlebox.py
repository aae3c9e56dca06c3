"""Emulated middleboxes: a trio TCP proxy with the quirk personalities of known routers.

For fast tests and for ``ftpprobe demo``; never a substitute for the kernel
ALG in the tests that decide a finding (see ``tests/test_lab_kernel_alg.py``).

Personalities (combine several):

* ``stall-space-lf`` -- a consumer router seen in the field: after the client sends ``PASV \\n`` (space,
  bare LF) the box holds back all of the server's traffic until the client
  sends a line ended by CRLF.
* ``psw`` -- an SMC Barricade rewrites ``PASV`` to ``P@SW``.
* ``canonical-port`` -- an ALG that rewrites the whole PORT/EPRT line in its own
  spelling (upper case, one space, CRLF) with its outward address and a port
  of its own, and forwards the data connection that arrives there to the
  client: a working pinhole, unlike a plain NAT.

* ``libalias`` -- FreeBSD's libalias (``sys/netinet/libalias/alias_ftp.c``),
  packet by packet: a segment is parsed only if it is at most 128 bytes and
  the previous one ended in CRLF (``AliasHandleFtpOut``); it must start with
  ``PORT ``/``EPRT `` in any case (``ParseFtpPortCommand``, any non-digit
  ends the last number); a PORT naming another address than the client's or
  a port below 1024 is left alone (``NewFtpMessage``); otherwise the whole
  segment becomes ``PORT a,b,c,d,p1,p2\r\n`` (whatever else it held is lost).
* ``userland-proxy`` -- OpenBSD's ftp-proxy (``usr.sbin/ftp-proxy/ftp-proxy.c``):
  a new TCP connection (its own SYN: the client's MSS is not carried over),
  whole lines (``getline``: up to LF, 500 bytes), PORT/EPRT regenerated with
  the proxy's address and a port of its own whatever address the line named
  (``client_parse_cmd``/``proxy_reply``); a port below 1024 or one it cannot
  read (``parse_port`` scans back to the last space, so a trailing space
  fails) ends the session.
* ``strict-firewall`` -- Cisco ASA ``inspect ftp strict`` (ASA CLI
  configuration guide, "Using the strict Option"): a command not ended by
  CRLF, a second command before the first was answered (pipelined or
  embedded), more than 8 bytes after the PORT numbers, a PORT without five
  commas or naming a port below 1024 close the connection; PORT numbers are
  rewritten (the rest of the line kept); the SYST reply is masked with X.

Every personality but ``userland-proxy`` opens its outward connection with
the MSS of the client's SYN (``TCP_SAVE_SYN``), as a NAT forwards the
client's own SYN.

The proxy connects outward from ``outward_host`` (e.g. 127.0.0.2), so the far
end sees a source address other than the client's: NAT, on loopback.

One client's reset, half-close or garbage ends its own flow only: each relay
task handles the errors it meets (under trio >= 0.25 an ``except`` around a
nursery sees an ExceptionGroup and lets it through).  A client's half-close is
passed on (the server gets EOF and its replies still reach the client), as a
NAT does.
"""

from __future__ import annotations

import logging
import re
import socket
from dataclasses import dataclass, field

import trio

from .codec import encode_eprt, encode_port, parse_eprt, parse_port
from .errors import ProtocolError
from .reflector import saved_syn, save_syn

PERSONALITIES = ("stall-space-lf", "psw", "canonical-port", "libalias", "userland-proxy", "strict-firewall")

log = logging.getLogger("ftpprobe.middlebox")

# What either peer can do to a relayed connection: reset it, or have it closed under us.
PEER_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


@dataclass
class Middlebox:
    """Proxy ``listen_host:listen_port`` -> ``upstream_host:upstream_port``.

    ``personalities``: names from :data:`PERSONALITIES`.  Port 0 picks a free
    one; :meth:`serve` reports the bound port through ``task_status``.
    ``connections``: flows accepted so far; ``active``: flows open now.
    Raises ``ValueError`` for an unknown personality.
    """

    upstream_host: str
    upstream_port: int
    personalities: tuple[str, ...] = ()
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    outward_host: str = "127.0.0.2"
    max_line: int = 4096
    bound_port: int = 0
    connections: int = field(default=0)
    active: int = field(default=0)

    def __post_init__(self) -> None:
        unknown = set(self.personalities) - set(PERSONALITIES)
        if unknown:
            raise ValueError(f"unknown personality {', '.join(sorted(unknown))}; known: {', '.join(PERSONALITIES)}")
        self._idle = trio.Event()
        self._idle.set()

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Proxy until cancelled.  Raises ``OSError`` if the port cannot be bound;
        nothing a client or the upstream does makes it raise."""
        listeners = await trio.open_tcp_listeners(self.listen_port, host=self.listen_host)
        for listener in listeners:
            save_syn(listener.socket)
        self.bound_port = listeners[0].socket.getsockname()[1]
        task_status.started(self.bound_port)
        await trio.serve_listeners(self._handle, listeners)

    async def wait_idle(self) -> None:
        """Return once no flow is open (at once if none is); for tests."""
        await self._idle.wait()

    async def _handle(self, client: trio.SocketStream) -> None:
        """Relay one connection.  Never raises: an exception here would reach
        serve_listeners' nursery and end the middlebox for every client."""
        self.connections += 1
        self.active += 1
        if self._idle.is_set():
            self._idle = trio.Event()
        try:
            await self._relay(client)
        except Exception:
            # Last resort: a bug met by one flow is logged and ends that flow only.
            log.exception("flow %d failed", self.connections)
        finally:
            self.active -= 1
            if not self.active:
                self._idle.set()

    async def _relay(self, client: trio.SocketStream) -> None:
        syn = saved_syn(client.socket)
        # A NAT forwards the client's own SYN: carry its MSS over (a proxy does not).
        mss = syn.mss if syn is not None and "userland-proxy" not in self.personalities else 0
        try:
            server = await _open_from(self.outward_host, self.upstream_host, self.upstream_port, mss)
        except OSError:
            return  # serve_listeners closes the client
        flow = _Flow(self, client, server)
        async with client, server:
            # The relay tasks handle their own errors, so this nursery raises
            # nothing a peer causes.
            async with trio.open_nursery() as nursery:
                flow.nursery = nursery
                nursery.start_soon(flow.client_to_server)
                nursery.start_soon(flow.server_to_client)


async def _open_from(source: str, host: str, port: int, mss: int = 0) -> trio.SocketStream:
    """Connect from ``source`` to ``host``:``port``, advertising ``mss``
    bytes in the SYN when given.  Raises ``OSError``."""
    sock = trio.socket.socket()
    try:
        if mss:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
            except OSError:
                pass  # beyond what the kernel accepts (e.g. loopback's 65495): its default then
        await sock.bind((source, 0))
        await sock.connect((host, port))
    except OSError:
        sock.close()
        raise
    return trio.SocketStream(sock)


class _Flow:
    """One proxied control connection.  Its two relay tasks never raise: each
    ends the flow on the peer errors it meets."""

    def __init__(self, box: Middlebox, client: trio.SocketStream, server: trio.SocketStream) -> None:
        self.box, self.client, self.server = box, client, server
        self.held = trio.Event()
        self.held.set()  # set: server traffic flows
        self.nursery: trio.Nursery | None = None
        self.pinhole: trio.CancelScope | None = None  # the flow's one PORT pinhole
        self.closing = False        # a personality decided to end the flow
        self.wait_crlf = False      # libalias: the previous segment did not end in CRLF
        self.awaiting = False       # strict-firewall: a command not yet answered
        self.last_verb = b""        # strict-firewall: the last command's verb (SYST masking)

    async def client_to_server(self) -> None:
        """Relay (and transform) the client's lines.  On the client's EOF, pass
        the half-close on and leave the flow to the server's side: the
        client still reads the replies to what it sent."""
        buffer = bytearray()
        p = self.box.personalities
        try:
            while True:
                data = await self.client.receive_some(4096)
                if not data:
                    break
                if "libalias" in p:  # packet by packet, never line by line
                    await self.server.send_all(await self.libalias_segment(data))
                    continue
                if "strict-firewall" in p and not await self.strict_check(bytes(buffer) + data):
                    return  # connection closed
                buffer += data
                if "userland-proxy" in p and buffer.find(b"\n") < 0 and len(buffer) > PROXY_MAX_LINE:
                    return  # ftp-proxy getline(): "command too long", end_session()
                while (nl := buffer.find(b"\n")) >= 0:
                    line = bytes(buffer[: nl + 1])
                    del buffer[: nl + 1]
                    if "userland-proxy" in p:
                        out = await self.proxy_line(line)
                        if out is None:
                            return  # ftp-proxy ended the session
                        await self.server.send_all(out)
                        continue
                    out = await self.transform(line)
                    if self.closing:
                        return  # a strict personality closes the connection
                    await self.server.send_all(out)
                if len(buffer) > self.box.max_line:
                    await self.server.send_all(bytes(buffer))
                    buffer.clear()
            if buffer:
                await self.server.send_all(bytes(buffer))
            await self.server.send_eof()
        except PEER_ERRORS:
            self.nursery.cancel_scope.cancel()
        finally:
            if self.closing:
                self.nursery.cancel_scope.cancel()

    async def server_to_client(self) -> None:
        """Relay the server's bytes (held while a stall personality holds them);
        the server's close or any error ends the flow."""
        try:
            while True:
                data = await self.server.receive_some(4096)
                if not data:
                    break
                await self.held.wait()
                if "strict-firewall" in self.box.personalities:
                    data = self.strict_reply(data)
                await self.client.send_all(data)
        except PEER_ERRORS:
            pass
        finally:
            self.nursery.cancel_scope.cancel()

    async def transform(self, line: bytes) -> bytes:
        p = self.box.personalities
        if "strict-firewall" in p:
            return await self.strict_line(line)
        if "stall-space-lf" in p:
            if line.upper() == b"PASV \n":
                self.held = trio.Event()  # hold the server's traffic ...
            elif line.endswith(b"\r\n"):
                self.held.set()           # ... until a proper CRLF line
        verb = line.split(b" ", 1)[0].strip().upper()
        if "psw" in p and verb == b"PASV":
            line = b"P@SW" + line[4:]
        if "canonical-port" in p and verb in (b"PORT", b"EPRT"):
            line = await self.rewrite_port(verb, line)
        return line

    async def rewrite_port(self, verb: bytes, line: bytes) -> bytes:
        argument = line.split(maxsplit=1)[1].decode("latin-1").strip() if b" " in line.strip() else ""
        try:
            address, port = parse_port(argument) if verb == b"PORT" else parse_eprt(argument)
        except ProtocolError:
            return line
        client_host = self.client.socket.getpeername()[0]
        if str(address) != client_host:
            return line  # like nf_nat_ftp: no pinhole for a third party
        outward_port = await self.open_pinhole(port)
        if verb == b"PORT":
            return f"PORT {encode_port(self.box.outward_host, outward_port)}\r\n".encode()
        return f"EPRT {encode_eprt(self.box.outward_host, outward_port)}\r\n".encode()

    async def open_pinhole(self, port: int) -> int:
        """Listen on a port of the outward address and forward the one data
        connection that arrives there to the client's ``port``; returns the
        outward port.  Raises ``OSError`` if no port can be opened."""
        client_host = self.client.socket.getpeername()[0]
        # One pinhole per flow, as nf_conntrack_ftp's max_expected = 1: a new
        # PORT replaces the previous one, so a PORT flood cannot pile up sockets.
        if self.pinhole is not None:
            self.pinhole.cancel()
        listener = trio.socket.socket()
        try:
            await listener.bind((self.box.outward_host, 0))
            listener.listen(1)
        except OSError:
            listener.close()
            raise
        self.pinhole = trio.CancelScope(deadline=trio.current_time() + 30)
        self.nursery.start_soon(self._pinhole, listener, client_host, port, self.pinhole)
        return listener.getsockname()[1]

    # -- libalias (sys/netinet/libalias/alias_ftp.c) ----------------------------

    async def libalias_segment(self, segment: bytes) -> bytes:
        """One client segment as libalias' AliasHandleFtpOut() leaves it."""
        out = segment
        if len(segment) <= LIBALIAS_MAX_MESSAGE and not self.wait_crlf:
            parsed = libalias_parse(segment)
            if parsed is not None:
                verb, address, port = parsed
                client_host = self.client.socket.getpeername()[0]
                # NewFtpMessage(): the address must be the sender's, the port >= IPPORT_RESERVED.
                if address == client_host and port >= 1024:
                    outward = await self.open_pinhole(port)
                    if verb == b"PORT":
                        out = f"PORT {encode_port(self.box.outward_host, outward)}\r\n".encode()
                    else:
                        out = f"EPRT |1|{self.box.outward_host}|{outward}|\r\n".encode()
        self.wait_crlf = not out.endswith(b"\r\n")
        return out

    # -- userland proxy (usr.sbin/ftp-proxy/ftp-proxy.c) ------------------------

    async def proxy_line(self, line: bytes) -> bytes | None:
        """One whole client line as ftp-proxy's client_parse_cmd() passes it
        on; ``None`` where ftp-proxy ends the session."""
        if b"\0" in line:
            return None  # getline(): NUL
        upper = line.upper()
        if not (upper.startswith(b"PORT ") or upper.startswith(b"EPRT ")):
            return line
        verb = upper[:4]
        port = proxy_parse_port(verb, line)
        if port < 1024:
            self.closing = True
            return None  # "bad port": end_session()
        outward = await self.open_pinhole(port)
        if verb == b"PORT":
            return f"PORT {encode_port(self.box.outward_host, outward)}\r\n".encode()
        return f"EPRT |1|{self.box.outward_host}|{outward}|\r\n".encode()

    # -- strict inspecting firewall (Cisco ASA inspect ftp strict) ----------------

    async def strict_check(self, pending: bytes) -> bool:
        """False (and the flow ends) when the bytes received so far break a
        strict rule: a second command before the first was answered, or a
        line ended by a bare LF."""
        lines = pending.split(b"\n")
        complete = lines[:-1]
        if any(not l.endswith(b"\r") for l in complete):
            self.closing = True
            return False  # "Incorrect command": not ended by CRLF
        if len(complete) > 1 or (complete and self.awaiting):
            self.closing = True
            return False  # "must be acknowledged before ... a new command": pipelined / embedded
        return True

    async def strict_line(self, line: bytes) -> bytes:
        """One complete CRLF line through the strict firewall: PORT checked
        (five commas, at most 8 bytes after the numbers, port >= 1024) and its
        numbers rewritten; anything else passes.  Sets ``closing`` to close."""
        verb = line.split(b" ", 1)[0].strip().upper()
        self.awaiting, self.last_verb = True, verb
        if verb != b"PORT":
            return line
        m = re.match(rb"(?i)(PORT\s+)([\d,]*)(.*)$", line, re.DOTALL)
        numbers = m.group(2) if m else b""
        if numbers.count(b",") != 5 or len(m.group(3)) > 8:
            self.closing = True  # "Truncated command" / "Command pipelining"
            return b""
        try:
            address, port = parse_port(numbers.decode("latin-1"))
        except ProtocolError:
            self.closing = True
            return b""
        if port < 1024:
            self.closing = True  # "Invalid port negotiation"
            return b""
        if str(address) != self.client.socket.getpeername()[0]:
            return line
        outward = await self.open_pinhole(port)
        return m.group(1) + encode_port(self.box.outward_host, outward).encode() + m.group(3)

    def strict_reply(self, data: bytes) -> bytes:
        """Server bytes on their way back: a final reply line ends the wait
        for an answer; a SYST reply is masked with X (mask-syst-reply)."""
        if re.search(rb"(^|\n)\d{3} ", data):
            self.awaiting = False
        if self.last_verb == b"SYST":
            data = re.sub(rb"(?m)^(\d{3}[ -])[^\r\n]*", lambda m: m.group(1) + b"X" * 20, data)
        return data

    async def _pinhole(self, listener, client_host: str, client_port: int, scope: trio.CancelScope) -> None:
        """Forward one data connection from the outward port to the client.
        ``scope`` bounds the wait for it (30 seconds, or until a newer PORT);
        the forwarding then lasts at most 30 seconds.  Never raises."""
        conn = None
        with scope, listener:
            try:
                conn, _ = await listener.accept()
            except OSError:
                return
        if conn is None:
            return  # expired or replaced before the data connection came
        outside = trio.SocketStream(conn)
        with trio.move_on_after(30):
            try:
                inside = await trio.open_tcp_stream(client_host, client_port)
            except OSError:
                await outside.aclose()
                return
            async with outside, inside:
                async with trio.open_nursery() as nursery:  # the pipes handle their own errors
                    nursery.start_soon(_pipe, outside, inside, nursery)
                    nursery.start_soon(_pipe, inside, outside, nursery)
        await outside.aclose()  # if cancelled before ``async with`` took it


async def _pipe(src: trio.SocketStream, dst: trio.SocketStream, nursery: trio.Nursery) -> None:
    """Copy ``src`` to ``dst`` and pass EOF on; an error ends both directions."""
    try:
        while data := await src.receive_some(65536):
            await dst.send_all(data)
        await dst.send_eof()
    except PEER_ERRORS:
        nursery.cancel_scope.cancel()


#: libalias' MAX_MESSAGE_SIZE (alias_ftp.c): longer segments are not parsed.
LIBALIAS_MAX_MESSAGE = 128
#: ftp-proxy's MAX_LINE (ftp-proxy.c).
PROXY_MAX_LINE = 500

_LIBALIAS_PORT = re.compile(rb"(?i)^(PORT|EPRT) [ \t]*(.*)$", re.DOTALL)


def libalias_parse(segment: bytes) -> tuple[bytes, str, int] | None:
    """``(verb, address, port)`` when libalias' ParseFtpPortCommand() /
    ParseFtpEprtCommand() would accept ``segment``: at least 18 bytes, the
    verb and a space in any case at its start, six numbers (PORT) or
    ``|1|a.b.c.d|port|`` (EPRT); any non-digit ends the last PORT number and
    whatever follows is ignored.  Otherwise ``None``."""
    if len(segment) < 18:
        return None
    m = _LIBALIAS_PORT.match(segment)
    if not m:
        return None
    verb, rest = m.group(1).upper(), m.group(2)
    if verb == b"PORT":
        n = re.match(rb"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", rest)
        if not n:
            return None
        a = [int(x) & 0xFF for x in n.groups()]
        return verb, ".".join(map(str, a[:4])), (a[4] << 8) | a[5]
    n = re.match(rb"([!-~])1\1(\d+)\.(\d+)\.(\d+)\.(\d+)\1(\d+)\1", rest)
    if not n:
        return None
    a = [int(x) & 0xFF for x in n.groups()[1:5]]
    return verb, ".".join(map(str, a)), int(n.group(6)) & 0xFFFF


def proxy_parse_port(verb: bytes, line: bytes) -> int:
    """The port ftp-proxy's parse_port() reads from a PORT/EPRT line: from the
    last space on, ``" %u,%u,%u,%u,%u,%u"`` or ``" |1|a.b.c.d|port|"``; 0 when
    that fails (so a trailing space gives 0)."""
    cut = line.rfind(b" ")
    if cut < 0:
        return 0
    tail = line[cut:]
    if verb == b"PORT":
        m = re.match(rb" ?(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", tail)
        if not m or any(int(x) > 255 for x in m.groups()):
            return 0
        return (int(m.group(5)) << 8) | int(m.group(6))
    m = re.match(rb" ?\|[12]\|[^|]*\|(\d+)\|", tail)
    return int(m.group(1)) if m and int(m.group(1)) < 65536 else 0
