"""Emulated middleboxes: a trio TCP proxy with the quirk personalities of the seeds.

For fast tests and for ``ftpprobe demo``; never a substitute for the kernel
ALG in the tests that decide a finding (see ``tests/test_lab_kernel_alg.py``).

Personalities (combine several):

* ``stall-space-lf`` -- seed 000: after the client sends ``PASV \\n`` (space,
  bare LF) the box holds back all of the server's traffic until the client
  sends a line ended by CRLF.
* ``psw`` -- seed 003: an SMC Barricade rewrites ``PASV`` to ``P@SW``.
* ``canonical-port`` -- an ALG that rewrites the whole PORT/EPRT line in its own
  spelling (upper case, one space, CRLF) with its outward address and a port
  of its own, and forwards the data connection that arrives there to the
  client: a working pinhole, unlike a plain NAT.

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
from dataclasses import dataclass, field

import trio

from .codec import encode_eprt, encode_port, parse_eprt, parse_port
from .errors import ProtocolError

PERSONALITIES = ("stall-space-lf", "psw", "canonical-port")

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
        try:
            server = await _open_from(self.outward_host, self.upstream_host, self.upstream_port)
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


async def _open_from(source: str, host: str, port: int) -> trio.SocketStream:
    sock = trio.socket.socket()
    try:
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

    async def client_to_server(self) -> None:
        """Relay (and transform) the client's lines.  On the client's EOF, pass
        the half-close on and leave the flow to the server's side: the
        client still reads the replies to what it sent."""
        buffer = bytearray()
        try:
            while True:
                data = await self.client.receive_some(4096)
                if not data:
                    break
                buffer += data
                while (nl := buffer.find(b"\n")) >= 0:
                    line = bytes(buffer[: nl + 1])
                    del buffer[: nl + 1]
                    await self.server.send_all(await self.transform(line))
                if len(buffer) > self.box.max_line:
                    await self.server.send_all(bytes(buffer))
                    buffer.clear()
            if buffer:
                await self.server.send_all(bytes(buffer))
            await self.server.send_eof()
        except PEER_ERRORS:
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
                await self.client.send_all(data)
        except PEER_ERRORS:
            pass
        finally:
            self.nursery.cancel_scope.cancel()

    async def transform(self, line: bytes) -> bytes:
        p = self.box.personalities
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
        outward_port = listener.getsockname()[1]
        self.pinhole = trio.CancelScope(deadline=trio.current_time() + 30)
        self.nursery.start_soon(self._pinhole, listener, client_host, port, self.pinhole)
        if verb == b"PORT":
            return f"PORT {encode_port(self.box.outward_host, outward_port)}\r\n".encode()
        return f"EPRT {encode_eprt(self.box.outward_host, outward_port)}\r\n".encode()

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
