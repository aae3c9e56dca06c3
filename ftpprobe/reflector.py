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

Safe to leave on the internet: at most ``max_sessions`` sessions in all and
``per_address`` from one address, at most ``rate`` new sessions a minute from
one address, lines of at most ``max_line`` bytes, ``idle`` seconds without a
line, ``lifetime`` seconds a session; no file system access; one log line per
refused peer per minute.

Reply format (RFC 959 multi-line, so any FTP client can read it)::

    200-ftpprobe-reflect/1 raw=504f5254203130... peer=198.51.100.1:40412 reads=4,15 port=21
    200 PORT seen 198.51.100.1:40413
"""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

import trio

from .codec import encode_port, escape, parse_eprt, parse_port
from .errors import ProtocolError

log = logging.getLogger("ftpprobe.reflect")

TAG = "ftpprobe-reflect/1"


@dataclass
class ReflectorLimits:
    """Resource caps.  Seconds for times, bytes for lengths."""

    max_sessions: int = 64
    per_address: int = 8
    rate: int = 60          # new sessions a minute from one address
    max_line: int = 512
    idle: float = 30.0
    lifetime: float = 120.0
    connect_timeout: float = 5.0


@dataclass
class Reflector:
    """The reflector server.  ``host``: address to listen on; ``ports``: control
    ports; ``journal``: optional path of a JSON-lines record of every line seen
    (for the lab tests and for operators); ``limits``: :class:`ReflectorLimits`.
    """

    host: str = "0.0.0.0"
    ports: tuple[int, ...] = (21, 2121)
    limits: ReflectorLimits = field(default_factory=ReflectorLimits)
    journal: str | None = None
    sessions: int = 0
    per_address: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    recent: dict[str, deque] = field(default_factory=lambda: defaultdict(deque))
    refused_logged: dict[str, float] = field(default_factory=dict)
    bound_ports: list[int] = field(default_factory=list)

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Listen on every port and serve until cancelled.  ``task_status.started``
        receives the list of bound ports (port 0 picks a free one)."""
        listeners = []
        for port in self.ports:
            listeners += await trio.open_tcp_listeners(port, host=self.host)
        self.bound_ports = [lst.socket.getsockname()[1] for lst in listeners]
        log.info("reflector listening on %s ports %s", self.host, ",".join(map(str, self.bound_ports)))
        task_status.started(self.bound_ports)
        async with trio.open_nursery() as nursery:
            for lst in listeners:
                nursery.start_soon(trio.serve_listeners, self._handle, [lst])

    # -- admission -----------------------------------------------------------

    def _admit(self, address: str) -> str | None:
        """None to admit, else the reason for refusing."""
        now = time.monotonic()
        window = self.recent[address]
        while window and now - window[0] > 60:
            window.popleft()
        if self.sessions >= self.limits.max_sessions:
            return "too many sessions"
        if self.per_address[address] >= self.limits.per_address:
            return "too many sessions from this address"
        if len(window) >= self.limits.rate:
            return "too many new sessions a minute from this address"
        window.append(now)
        return None

    def _log_refusal(self, address: str, reason: str) -> None:
        now = time.monotonic()
        if now - self.refused_logged.get(address, -1e9) >= 60:
            self.refused_logged[address] = now
            log.warning("refused %s: %s", address, reason)

    async def _handle(self, stream: trio.SocketStream) -> None:
        peer = stream.socket.getpeername()
        address = peer[0]
        reason = self._admit(address)
        if reason:
            self._log_refusal(address, reason)
            with trio.move_on_after(1):
                try:
                    await stream.send_all(f"421 {reason}\r\n".encode())
                except (trio.BrokenResourceError, OSError):
                    pass
            await stream.aclose()
            return
        self.sessions += 1
        self.per_address[address] += 1
        try:
            async with trio.open_nursery() as nursery:  # holds the session's data listeners
                with trio.move_on_after(self.limits.lifetime):
                    await _Session(self, stream, nursery).run()
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError):
            pass
        finally:
            self.sessions -= 1
            self.per_address[address] -= 1
            if not self.per_address[address]:
                del self.per_address[address]
            with trio.CancelScope(shield=True):
                await stream.aclose()

    def record(self, entry: dict) -> None:
        if self.journal:
            with open(self.journal, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")


class _Session:
    """One control connection to the reflector."""

    def __init__(self, server: Reflector, stream: trio.SocketStream, nursery: trio.Nursery) -> None:
        self.server = server
        self.stream = stream
        self.nursery = nursery
        peer = stream.socket.getpeername()
        local = stream.socket.getsockname()
        self.peer = (peer[0], peer[1])
        self.local = (local[0], local[1])
        self.buffer = bytearray()
        self.reads: list[int] = []  # sizes of the reads holding the current line
        self.active: tuple[int, str] | None = None  # (port, as-arrived) from PORT/EPRT

    async def send(self, text: str) -> None:
        with trio.fail_after(self.server.limits.idle):
            await self.stream.send_all(text.encode("latin-1"))

    async def next_line(self) -> tuple[bytes, list[int]] | None:
        """A complete line (ending in LF, or CR alone after a pause) and its reads."""
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
            if scope.cancelled_caught:
                if self.buffer:
                    line, reads = bytes(self.buffer), self.reads
                    self.buffer.clear()
                    self.reads = []
                    return line, reads
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
            await self.send("221 bye\r\n")
            return 0, ""
        if verb in (b"USER", b"PASS"):
            return 230, "ok: the reflector needs no login"
        return 200, "seen"

    async def passive(self, extended: bool, entry: dict) -> tuple[int, str]:
        if not extended and ":" in self.local[0]:
            return 425, "PASV is for IPv4; use EPSV"
        listener = trio.socket.socket(trio.socket.AF_INET6 if ":" in self.local[0] else trio.socket.AF_INET)
        await listener.bind((self.local[0], 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        token = secrets.token_hex(8)
        self.nursery.start_soon(self._serve_token, listener, token)
        entry["pasv"] = [self.local[0], port]
        if extended:
            return 229, f"Entering Extended Passive Mode (|||{port}|) declared={port:04x}.{token}"
        declared = ipaddress.IPv4Address(self.local[0]).packed.hex() + f"{port:04x}"
        return 227, f"Entering Passive Mode ({encode_port(self.local[0], port)}) declared={declared}.{token}"

    async def _serve_token(self, listener, token: str) -> None:
        """Accept one data connection within connect_timeout and send it the token."""
        with listener, trio.move_on_after(self.server.limits.connect_timeout):
            conn, _ = await listener.accept()
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
