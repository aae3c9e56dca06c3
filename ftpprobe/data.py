"""Data connections (RFC 959 §3.2): passive connect and active listen, with deadlines.

Safety: :func:`passive_target` decides where a passive data connection goes.
By default that is the control peer's address whatever the 227 reply names
(as curl's FTP_SKIP_PASV_IP and Python's ftplib do), so a hostile server
cannot turn the prober into a port scanner.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from dataclasses import dataclass

import trio

from .errors import ConnectFailed
from .transport import open_tcp

#: Stop reading a data connection after this many bytes (a LIST of 1 GB must
#: not fill memory); the count read so far is kept.
MAX_DATA_BYTES = 1 << 20


def passive_target(control_peer: ipaddress.IPv4Address | ipaddress.IPv6Address,
                   advertised: ipaddress.IPv4Address | None, *, trust_pasv_address: bool) -> str:
    """The address to open a passive data connection to.

    ``advertised`` is the address from a 227 reply (``None`` for 229, which
    names no address, RFC 2428 §3).  Returns the control peer's address unless
    ``trust_pasv_address`` is true and an address was advertised.
    """
    if trust_pasv_address and advertised is not None:
        return str(advertised)
    return str(control_peer)


@dataclass
class DataResult:
    """What happened on one data connection.

    ``connected``: the TCP connection was established; ``error``: why not;
    ``peer``: ``(address, port)`` of the far end as seen locally; ``received``:
    the first :data:`MAX_DATA_BYTES` bytes read (``b""`` if not read);
    ``total``: bytes read in all (capped with ``truncated`` set);
    ``elapsed``: seconds.
    """

    connected: bool
    error: str = ""
    peer: tuple[str, int] | None = None
    received: bytes = b""
    total: int = 0
    truncated: bool = False
    elapsed: float = 0.0


async def read_all(stream: trio.abc.ReceiveStream, timeout: float, limit: int = MAX_DATA_BYTES) -> tuple[bytes, int, bool, bool]:
    """Read until EOF, ``limit`` bytes, or ``timeout`` seconds.

    Returns ``(data, total, truncated, timed_out)``.  Never raises for the
    peer's behaviour (a reset ends the read like EOF).
    """
    buf = bytearray()
    timed_out = True
    with trio.move_on_after(timeout):
        try:
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                buf += chunk
                if len(buf) >= limit:
                    return bytes(buf[:limit]), len(buf), True, False
        except (trio.BrokenResourceError, OSError):
            pass
        timed_out = False
    return bytes(buf), len(buf), False, timed_out


async def connect_passive(host: str, port: int, timeout: float) -> tuple[trio.SocketStream | None, DataResult]:
    """Open a passive data connection to ``host``:``port`` within ``timeout`` s.

    Returns ``(stream, result)``; ``stream`` is ``None`` when the connection
    failed (``result.error`` says why).  The caller closes the stream.
    """
    started = time.monotonic()
    try:
        stream = await open_tcp(host, port, timeout, what="data")
    except ConnectFailed as exc:
        return None, DataResult(False, error=str(exc), elapsed=round(time.monotonic() - started, 3))
    elapsed = round(time.monotonic() - started, 3)
    try:
        peer = stream.socket.getpeername()
    except OSError:  # reset right after the handshake: it did connect
        return stream, DataResult(True, error="reset right after connecting", elapsed=elapsed)
    return stream, DataResult(True, peer=(peer[0], peer[1]), elapsed=elapsed)


def start_connect(host: str, port: int) -> socket.socket:
    """Send the SYN now (a non-blocking connect to a literal address): the
    connection is on its way before whatever the caller writes next.
    Finish with :func:`finish_connect`.  Raises ``OSError`` (e.g. out of
    file descriptors)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.connect_ex((host, port))
    return sock


async def finish_connect(sock: socket.socket, host: str, port: int, timeout: float) -> DataResult:
    """Wait (``timeout`` seconds) for a connect begun by :func:`start_connect`,
    then close it: is ``host``:``port`` reachable?  Never raises for the peer."""
    started = time.monotonic()
    try:
        with trio.move_on_after(timeout):
            await trio.lowlevel.wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            elapsed = round(time.monotonic() - started, 3)
            if err:
                return DataResult(False, error=f"data connection to {host} port {port}: {os.strerror(err)}",
                                  elapsed=elapsed)
            return DataResult(True, peer=(host, port), elapsed=elapsed)
        return DataResult(False, error=f"data connection to {host} port {port}: no answer within {timeout:g} s",
                          elapsed=round(time.monotonic() - started, 3))
    finally:
        sock.close()


async def probe_passive_port(host: str, port: int, timeout: float) -> DataResult:
    """Is ``host``:``port`` reachable?  Connect, then close at once."""
    stream, result = await connect_passive(host, port, timeout)
    if stream is not None:
        with trio.CancelScope(shield=True):
            await stream.aclose()
    return result


class ActiveListener:
    """A listening socket for an active-mode data connection (PORT/EPRT).

    Binds ``address`` (our own address on the control connection), port 0
    (the kernel picks), backlog 1.  :meth:`accept` waits at most ``timeout``
    seconds.  Use as an async context manager so the socket is always closed.
    """

    def __init__(self, address: str) -> None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.sock = trio.socket.socket(family, socket.SOCK_STREAM)
        self.address = address

    async def __aenter__(self) -> "ActiveListener":
        await self.sock.bind((self.address, 0))
        self.sock.listen(1)
        return self

    async def __aexit__(self, *exc) -> None:
        self.sock.close()

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    async def accept(self, timeout: float) -> tuple[trio.SocketStream | None, DataResult]:
        """Wait for the server's data connection.  Never raises for a no-show."""
        started = time.monotonic()
        with trio.move_on_after(timeout):
            try:
                conn, peer = await self.sock.accept()
            except OSError as exc:  # e.g. out of file descriptors: no connection, said so
                return None, DataResult(False, error=f"accept failed: {exc.strerror or exc}",
                                        elapsed=round(time.monotonic() - started, 3))
            return trio.SocketStream(conn), DataResult(True, peer=(peer[0], peer[1]),
                                                       elapsed=round(time.monotonic() - started, 3))
        return None, DataResult(False, error=f"no data connection arrived within {timeout:g} s",
                                elapsed=round(time.monotonic() - started, 3))
