"""Compare a line as sent with the line as it arrived: what did the path do?  Pure.

An ALG such as Linux's nf_nat_ftp (net/netfilter/nf_nat_ftp.c) replaces only
the address and port numbers of a PORT/EPRT line; others normalise the whole
line (case, spacing, line ending) or mangle the verb (SMC Barricade: PASV to
P@SW).  :func:`compare` names which.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .codec import escape, parse_eprt, parse_port
from .errors import ProtocolError

# verb, separator, address argument, the rest (trailer + line ending)
_ADDRESS_LINE = re.compile(rb"^(\S+)([ \t]+)(\d[\d,]*\d|\|[12]\|[^|]*\|\d+\|)(.*)$", re.DOTALL)


@dataclass(frozen=True)
class Comparison:
    """``outcome``: ``"passed"`` (byte-identical), ``"rewritten"`` (address or
    port changed), ``"mangled"`` (other bytes changed, numbers not); for a
    rewrite, ``canonical`` is true when bytes besides the numbers changed too,
    ``sent_address``/``arrived_address`` are ``(address, port)`` strings/ints.
    """

    outcome: str
    canonical: bool = False
    sent_address: tuple[str, int] | None = None
    arrived_address: tuple[str, int] | None = None

    def describe(self, sent: bytes, arrived: bytes) -> str:
        text = f"sent '{escape(sent)}', reflector received '{escape(arrived)}': {self.outcome}"
        if self.outcome == "rewritten":
            text += f" {self.sent_address[0]}:{self.sent_address[1]} -> {self.arrived_address[0]}:{self.arrived_address[1]}"
            if self.canonical:
                text += " (whole line normalised)"
        return text


def _address(verb: bytes, argument: bytes) -> tuple[str, int] | None:
    try:
        text = argument.decode("latin-1")
        address, port = parse_eprt(text) if verb.upper() == b"EPRT" else parse_port(text)
    except ProtocolError:
        return None
    return str(address), port


def compare(sent: bytes, arrived: bytes) -> Comparison:
    """Classify what happened to ``sent`` on its way (both whole lines, bytes)."""
    if sent == arrived:
        return Comparison("passed")
    a, b = _ADDRESS_LINE.match(sent), _ADDRESS_LINE.match(arrived)
    if a and b:
        sent_addr, arrived_addr = _address(a.group(1), a.group(3)), _address(b.group(1), b.group(3))
        if sent_addr and arrived_addr and sent_addr != arrived_addr:
            canonical = (a.group(1), a.group(2), a.group(4)) != (b.group(1), b.group(2), b.group(4))
            return Comparison("rewritten", canonical, sent_addr, arrived_addr)
    return Comparison("mangled")
