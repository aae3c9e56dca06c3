"""The FTP control-channel codec: bytes in, values out, no I/O.

Modelled on h11: a :class:`ReplyReader` is fed bytes as they arrive and hands
back complete :class:`Reply` values or :data:`NEED_DATA`.  Nothing here knows
about sockets, trio or time, so every function can be tested byte by byte.

Standards followed:

* RFC 959 §4.2 -- reply format, multi-line replies (``NNN-`` ... ``NNN ``),
  §4.1.2 -- PORT ``h1,h2,h3,h4,p1,p2``, §4.1.2/§4.2 -- the 227 reply.
* RFC 2428 §2 -- EPRT ``|af|addr|port|``, §3 -- the 229 reply ``(|||port|)``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, fields
from typing import Final

from .errors import ProtocolError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

CRLF: Final = b"\r\n"

#: The line endings a probe can choose, by name (for the probe catalog).
LINE_ENDINGS: Final[dict[str, bytes]] = {
    "crlf": b"\r\n",
    "lf": b"\n",
    "cr": b"\r",
    "none": b"",
}


class _NeedData:
    """Sentinel type: the reader has no complete reply yet."""

    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by :meth:`ReplyReader.next_reply` when more bytes are needed.
NEED_DATA: Final = _NeedData()


def escape(data: bytes) -> str:
    r"""Show bytes exactly, for evidence: ``b'PASV \n'`` -> ``'PASV \\n'``.

    Printable ASCII is kept (a backslash is doubled); CR, LF and TAB become
    ``\r``, ``\n``, ``\t``; every other byte becomes ``\xNN``.  The result is
    unambiguous and safe to print on a terminal.
    """
    out = []
    for b in data:
        if b == 0x5C:
            out.append("\\\\")
        elif b == 0x0D:
            out.append("\\r")
        elif b == 0x0A:
            out.append("\\n")
        elif b == 0x09:
            out.append("\\t")
        elif 0x20 <= b < 0x7F:
            out.append(chr(b))
        else:
            out.append(f"\\x{b:02x}")
    return "".join(out)


# --------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------


def _wire(text: str) -> bytes:
    """``text`` as sent: latin-1 when it fits (so any byte value 0-255 can be
    written as is), else UTF-8 (RFC 2640 §2.2), e.g. a password with a euro sign."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


@dataclass(frozen=True)
class Command:
    r"""One control-channel command with its exact wire spelling.

    ``Command("PASV", trailer=b" ", line_ending=b"\n")`` is ``b"PASV \n"``:
    the verb is sent as given (case and spelling kept, so ``"pasv"`` and
    ``"P@SW"`` are possible), then ``separator`` and ``argument`` if an
    argument is given, then ``trailer`` (e.g. a trailing space), then
    ``line_ending`` (``b"\r\n"`` per RFC 959 §4.1, or a variant).

    Attributes are ``str`` for the verb and argument (ASCII; encoded as
    latin-1 so any byte can be expressed) and ``bytes`` for the separators.
    """

    verb: str
    argument: str | None = None
    separator: bytes = b" "
    trailer: bytes = b""
    line_ending: bytes = CRLF
    #: True for commands whose argument is a secret (PASS): never shown.
    secret: bool = False

    def encode(self) -> bytes:
        """The exact bytes to put on the wire."""
        line = _wire(self.verb)
        if self.argument is not None:
            line += self.separator + _wire(self.argument)
        return line + self.trailer + self.line_ending

    def __bytes__(self) -> bytes:
        return self.encode()

    def __repr__(self) -> str:
        """The dataclass repr, with a secret argument shown as ``'****'`` (so
        a PASS command in a log line or traceback never shows the password;
        ``str()`` falls back on this too)."""
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.secret and self.argument is not None:
            shown["argument"] = "****"
        return f"Command({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    def display(self) -> str:
        """Escaped wire form for evidence; a secret argument is masked."""
        if self.secret and self.argument is not None:
            return escape(replace_argument(self, "****").encode())
        return escape(self.encode())

    def segments(self, cuts: tuple[int, ...] | list[int]) -> list[bytes]:
        """Split the wire bytes at the given offsets (0 < cut < len).

        ``Command("PORT", "1,2,3,4,5,6").segments([2])`` gives
        ``[b"PO", b"RT 1,2,3,4,5,6\\r\\n"]``.  A negative cut counts from the
        end.  Raises ``ValueError`` for a cut outside the line.
        """
        data = self.encode()
        points = sorted({c if c >= 0 else len(data) + c for c in cuts})
        if any(not 0 < c < len(data) for c in points):
            raise ValueError(f"cut outside the {len(data)}-byte line: {list(cuts)}")
        edges = [0, *points, len(data)]
        return [data[a:b] for a, b in zip(edges, edges[1:])]


def replace_argument(cmd: Command, argument: str | None) -> Command:
    """Return ``cmd`` with another argument, every other byte kept."""
    return Command(cmd.verb, argument, cmd.separator, cmd.trailer, cmd.line_ending, cmd.secret)


# --------------------------------------------------------------------------
# Replies
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """A complete FTP reply (RFC 959 §4.2).

    ``code`` is the three-digit reply code as an int; ``lines`` are the reply
    lines as received, without their line endings, bytes; ``raw`` is every
    byte of the reply, line endings included.
    """

    code: int
    lines: tuple[bytes, ...]
    raw: bytes = field(repr=False)

    @property
    def text(self) -> str:
        """The reply as text (latin-1, so no byte is lost), lines joined by LF."""
        return "\n".join(line.decode("latin-1") for line in self.lines)

    @property
    def first_line(self) -> str:
        return self.lines[0].decode("latin-1")

    @property
    def positive(self) -> bool:
        """1xx, 2xx or 3xx: the command was accepted."""
        return 100 <= self.code < 400

    def display(self, limit: int = 160) -> str:
        """Escaped raw reply for evidence, cut to ``limit`` characters."""
        shown = escape(self.raw)
        return shown if len(shown) <= limit else shown[: limit - 3] + "..."


_FIRST_LINE = re.compile(rb"^(\d{3})([ -]|$)")


class ReplyReader:
    """Incremental reader of FTP replies, fed with :meth:`feed`.

    Lines may end in CRLF or a bare LF (servers send both).  A reply is
    single-line ``NNN text`` or multi-line ``NNN-text`` ... ``NNN text``
    (RFC 959 §4.2); the lines in between may look like anything.

    Limits keep a hostile peer from growing memory without bound:
    ``max_line`` bytes per line (default 8 KiB), ``max_reply`` bytes per
    reply (default 1 MiB).  Exceeding either, or a first line that is not a
    reply line, raises :class:`~ftpprobe.errors.ProtocolError`; the reader is
    then unusable, as the stream can no longer be trusted.
    """

    def __init__(self, max_line: int = 8192, max_reply: int = 1 << 20) -> None:
        self.max_line = max_line
        self.max_reply = max_reply
        self._buffer = bytearray()
        self._scan = 0  # offset in _buffer from which to look for LF
        self._lines: list[bytes] = []
        self._raw = bytearray()
        self._code: int | None = None
        self._failed: ProtocolError | None = None

    @property
    def buffered(self) -> bytes:
        """Bytes received but not yet part of a returned reply."""
        return bytes(self._raw) + bytes(self._buffer)

    def feed(self, data: bytes) -> None:
        """Add received bytes.  Feeding ``b""`` is allowed and does nothing."""
        self._buffer += data

    def next_reply(self) -> Reply | _NeedData:
        """Return the next complete :class:`Reply`, or :data:`NEED_DATA`.

        Raises :class:`ProtocolError` for a malformed or oversized reply.
        """
        if self._failed:
            raise self._failed
        try:
            return self._next_reply()
        except ProtocolError as exc:
            self._failed = exc
            raise

    def _next_reply(self) -> Reply | _NeedData:
        while True:
            nl = self._buffer.find(b"\n", self._scan)
            if nl < 0:
                self._scan = len(self._buffer)
                if len(self._buffer) > self.max_line:
                    raise ProtocolError(
                        f"reply line longer than {self.max_line} bytes "
                        f"(starts {escape(bytes(self._buffer[:40]))!r})"
                    )
                return NEED_DATA
            if nl > self.max_line:
                raise ProtocolError(f"reply line longer than {self.max_line} bytes")
            raw_line = bytes(self._buffer[: nl + 1])
            del self._buffer[: nl + 1]
            self._scan = 0
            line = raw_line[:-1]
            if line.endswith(b"\r"):
                line = line[:-1]
            self._raw += raw_line
            if len(self._raw) > self.max_reply:
                raise ProtocolError(
                    f"reply longer than {self.max_reply} bytes "
                    f"({len(self._lines)} lines and no final line)"
                )
            if self._code is None:
                m = _FIRST_LINE.match(line)
                if not m:
                    raise ProtocolError(f"not an FTP reply line: {escape(line[:80])!r}")
                self._code = int(m.group(1))
                self._lines.append(line)
                if m.group(2) == b"-":
                    continue  # multi-line: read up to "NNN " with the same code
                return self._finish()
            self._lines.append(line)
            if _FIRST_LINE.match(line) and int(line[:3]) == self._code and line[3:4] != b"-":
                return self._finish()

    def _finish(self) -> Reply:
        assert self._code is not None
        reply = Reply(self._code, tuple(self._lines), bytes(self._raw))
        self._lines = []
        self._raw = bytearray()
        self._code = None
        return reply


def parse_replies(data: bytes) -> list[Reply]:
    """Parse every complete reply in ``data`` (a convenience for tests and tools).

    Raises :class:`ProtocolError` if bytes are left over or malformed.
    """
    reader = ReplyReader()
    reader.feed(data)
    out = []
    while isinstance(reply := reader.next_reply(), Reply):
        out.append(reply)
    if reader.buffered:
        raise ProtocolError(f"incomplete reply: {escape(reader.buffered[:80])!r}")
    return out


# --------------------------------------------------------------------------
# Addresses: PORT / 227 (RFC 959), EPRT / 229 (RFC 2428)
# --------------------------------------------------------------------------

_SIX_NUMBERS = re.compile(r"(\d{1,10}),(\d{1,10}),(\d{1,10}),(\d{1,10}),(\d{1,10}),(\d{1,10})", re.ASCII)


def _host_port_from_six(numbers: list[int], what: str) -> tuple[ipaddress.IPv4Address, int]:
    if any(n > 255 for n in numbers):
        raise ProtocolError(f"{what}: number over 255 in {','.join(map(str, numbers))}")
    port = numbers[4] * 256 + numbers[5]
    if port == 0:
        raise ProtocolError(f"{what}: port 0")
    return ipaddress.IPv4Address(bytes(numbers[:4])), port


def parse_227(reply: Reply | str) -> tuple[ipaddress.IPv4Address, int]:
    """Address and port from a 227 reply (RFC 959 §4.1.2), as real clients do.

    The six numbers ``h1,h2,h3,h4,p1,p2`` are taken from anywhere after the
    code (as ftplib, curl and FileZilla do: the parentheses are not required
    and servers vary).  Returns ``(IPv4Address, port)`` with port in 1..65535.
    Raises :class:`ProtocolError` if there are no six numbers, a number is over
    255, or the port is 0.
    """
    text = reply.text if isinstance(reply, Reply) else reply
    if isinstance(reply, Reply) and reply.code != 227:
        raise ProtocolError(f"expected a 227 reply, got {reply.code}")
    m = _SIX_NUMBERS.search(text, 3)
    if not m:
        raise ProtocolError(f"227 reply without h1,h2,h3,h4,p1,p2: {text[:80]!r}")
    return _host_port_from_six([int(g) for g in m.groups()], "227 reply")


def parse_229(reply: Reply | str) -> int:
    """The port from a 229 reply ``(|||port|)`` (RFC 2428 §3).

    The delimiter is whatever printable character follows ``(`` (RFC 2428
    allows any of ASCII 33-126; ``|`` is recommended).  Returns the port,
    1..65535.  Raises :class:`ProtocolError` otherwise.
    """
    text = reply.text if isinstance(reply, Reply) else reply
    if isinstance(reply, Reply) and reply.code != 229:
        raise ProtocolError(f"expected a 229 reply, got {reply.code}")
    m = re.search(r"\(([!-~])\1\1(\d{1,10})\1\)", text, re.ASCII)
    if not m:
        raise ProtocolError(f"229 reply without (|||port|): {text[:80]!r}")
    port = int(m.group(2))
    if not 0 < port < 65536:
        raise ProtocolError(f"229 reply: port {port} out of range")
    return port


def parse_passive(reply: Reply) -> tuple[ipaddress.IPv4Address | None, int]:
    """``(address, port)`` from a 227 reply, or ``(None, port)`` from a 229
    reply (RFC 2428 §3 names no address).  Raises :class:`ProtocolError` for
    any other reply or a malformed one."""
    if reply.code == 229:
        return None, parse_229(reply)
    return parse_227(reply)


def encode_port(address: ipaddress.IPv4Address | str, port: int) -> str:
    """PORT argument ``h1,h2,h3,h4,p1,p2`` (RFC 959 §4.1.2).

    Raises ``ValueError`` for a non-IPv4 address or a port outside 1..65535.
    """
    addr = ipaddress.IPv4Address(address)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range 1..65535")
    return ",".join(str(b) for b in addr.packed) + f",{port >> 8},{port & 0xFF}"


def parse_port(argument: str) -> tuple[ipaddress.IPv4Address, int]:
    """Inverse of :func:`encode_port`; raises :class:`ProtocolError`."""
    m = _SIX_NUMBERS.fullmatch(argument.strip())
    if not m:
        raise ProtocolError(f"PORT argument is not h1,h2,h3,h4,p1,p2: {argument[:80]!r}")
    return _host_port_from_six([int(g) for g in m.groups()], "PORT")


def encode_eprt(address: IPAddress | str, port: int, delimiter: str = "|") -> str:
    """EPRT argument ``|1|addr|port|`` or ``|2|addr|port|`` (RFC 2428 §2).

    Raises ``ValueError`` for a bad address or a port outside 1..65535.
    """
    addr = ipaddress.ip_address(address)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range 1..65535")
    af = 1 if addr.version == 4 else 2
    d = delimiter
    return f"{d}{af}{d}{addr.compressed}{d}{port}{d}"


def parse_eprt(argument: str) -> tuple[IPAddress, int]:
    """Inverse of :func:`encode_eprt`; raises :class:`ProtocolError`."""
    arg = argument.strip()
    if len(arg) < 7:
        raise ProtocolError(f"EPRT argument too short: {arg!r}")
    d = arg[0]
    parts = arg.split(d)
    if len(parts) != 5 or parts[0] or parts[4] or not "!" <= d <= "~":
        raise ProtocolError(f"EPRT argument is not <d>af<d>addr<d>port<d>: {arg[:80]!r}")
    af, host, port_text = parts[1:4]
    try:
        addr = ipaddress.ip_address(host)
        port = int(port_text)
    except ValueError as exc:
        raise ProtocolError(f"EPRT argument: {exc}") from None
    if {"1": 4, "2": 6}.get(af) != addr.version:
        raise ProtocolError(f"EPRT address family {af!r} does not match {host!r}")
    if not 0 < port < 65536:
        raise ProtocolError(f"EPRT port {port} out of range")
    return addr, port
