"""Packet-level evidence: captures, and the readings of their packets.

A capture is an ``AF_PACKET`` socket read in a thread; scapy is imported
only to write a pcap file (``--pcap``), never when ``ftpprobe`` is imported.
Permission is checked by trying (:func:`permission_problem` opens an
``AF_PACKET`` raw socket: root or CAP_NET_RAW); without it the packet probes
are ``skipped`` with that reason.

What is here:

* :class:`Capture`: the IP packets of one peer (one TCP peer and port, and
  IPv4 ICMP when asked; :func:`packet_filter`, :func:`bpf_program`),
  optionally written to a pcap file.  Every capture is stopped in a ``finally`` block and its thread
  joined with a bound.
* Pure readings of raw IPv4 packets, testable without a network:
  :func:`parse_ipv4` (a TCP :class:`Segment`, or an :class:`IcmpError` with
  the packet it quotes, RFC 792), :func:`attribute_resets` (who sent each RST:
  the peer or a middlebox, from IP TTL, IP ID and TCP window).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ipaddress
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

from .errors import FtpProbeError
from .observations import ResetSource

#: Seconds at most to wait for a capture's reading thread to end.
STOP_WAIT = 3.0
#: Packets a capture keeps (and writes) at most; more are counted, not kept.
MAX_PACKETS = 200_000
ETH_P_ALL = 0x0003


class CaptureError(FtpProbeError):
    """A packet capture could not be started (no permission, no scapy, no interface)."""


@lru_cache(maxsize=1)
def permission_problem() -> str | None:
    """``None`` if this process can capture packets, else why not (plain words).

    Decided by trying: an ``AF_PACKET`` raw socket opens only with root or
    CAP_NET_RAW (``packet(7)``).  Cached for the process.  The trial socket
    is closed in a thread of its own: closing a packet socket waits for the
    kernel's RCU grace period (``synchronize_net``, 8-16 ms here), which
    would hold up every probe of the caller's event loop.
    """
    try:
        probe = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    except PermissionError:
        return ("packet capture needs root or the CAP_NET_RAW capability (run with sudo, or "
                "setcap cap_net_raw+ep on the Python interpreter)")
    except (OSError, AttributeError) as exc:
        return f"packet capture is not available on this system ({exc})"
    try:
        threading.Thread(target=probe.close, name="ftpprobe-permission-check", daemon=True).start()
    except RuntimeError:  # no thread to spare: close it here, slowly
        probe.close()
    return None


# -- pure readings of IPv4 packets ------------------------------------------------

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


@dataclass(frozen=True)
class Segment:
    """One IPv4 TCP segment as captured.

    ``time``: seconds (capture clock); ``ttl``: IP TTL on arrival here (hops
    left); ``ip_id``: IP identification; ``flags``: TCP flag bits;
    ``window``: the raw 16-bit window field (unscaled); ``payload``: TCP data.
    """

    time: float
    src: str
    dst: str
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    ttl: int
    ip_id: int
    payload: bytes = b""

    @property
    def rst(self) -> bool:
        return bool(self.flags & RST)

    @property
    def syn(self) -> bool:
        return bool(self.flags & SYN)

    def flag_text(self) -> str:
        return "".join(c for bit, c in ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"), (ACK, "A"))
                       if self.flags & bit) or "."


@dataclass(frozen=True)
class Quoted:
    """The start of a packet quoted by an ICMP error (RFC 792: its IP header
    and at least 64 bits of its data; Linux routers quote up to 576 bytes in
    all, RFC 1812 §4.3.2.3).  ``payload``: the TCP data quoted (may be cut
    short: ``complete`` says whether the quote holds every byte the quoted IP
    header announces); ``seq``/``sport``/``dport``: ``None`` when fewer than 8
    bytes of the TCP header were quoted."""

    src: str
    dst: str
    ttl: int
    sport: int | None
    dport: int | None
    seq: int | None
    payload: bytes
    complete: bool


@dataclass(frozen=True)
class IcmpError:
    """An ICMP error (RFC 792): ``type`` 11 time exceeded, 3 unreachable;
    ``src``: the router (or host) that sent it; ``quoted``: the packet it quotes."""

    time: float
    src: str
    type: int
    code: int
    ttl: int
    quoted: Quoted | None


def _quoted(data: bytes) -> Quoted | None:
    """Parse the IP packet an ICMP error quotes (possibly truncated)."""
    if len(data) < 20 or data[0] >> 4 != 4:
        return None
    ihl = (data[0] & 0x0F) * 4
    total = struct.unpack_from("!H", data, 2)[0]
    src, dst = socket.inet_ntoa(data[12:16]), socket.inet_ntoa(data[16:20])
    tcp = data[ihl:]
    if data[9] != 6 or len(tcp) < 8:
        return Quoted(src, dst, data[8], None, None, None, b"", False)
    sport, dport, seq = struct.unpack_from("!HHI", tcp, 0)
    payload, complete = b"", False
    if len(tcp) >= 13:
        offset = (tcp[12] >> 4) * 4
        payload = tcp[offset:max(offset, total - ihl)]
        complete = len(data) >= total
    return Quoted(src, dst, data[8], sport, dport, seq, payload, complete)


def parse_ipv4(data: bytes, when: float = 0.0) -> Segment | IcmpError | None:
    """Read one raw IPv4 packet: a TCP :class:`Segment`, an ICMP error
    (type 3 or 11) as :class:`IcmpError`, or ``None`` for anything else or
    a packet too short to read.  Trailing link-layer padding is ignored; an
    IP total length of 0 (a TSO or BIG TCP packet, RFC 2675's IPv4
    counterpart) means "the whole packet"; a fragment other than the first
    (its bytes are not a TCP or ICMP header) is ``None``."""
    if len(data) < 20 or data[0] >> 4 != 4:
        return None
    if struct.unpack_from("!H", data, 6)[0] & 0x1FFF:
        return None
    ihl = (data[0] & 0x0F) * 4
    total = min(struct.unpack_from("!H", data, 2)[0] or len(data), len(data))
    ip_id = struct.unpack_from("!H", data, 4)[0]
    ttl, proto = data[8], data[9]
    src, dst = socket.inet_ntoa(data[12:16]), socket.inet_ntoa(data[16:20])
    body = data[ihl:total]
    if proto == 6 and len(body) >= 20:
        sport, dport, seq, ack, off_flags, window = struct.unpack_from("!HHIIHH", body, 0)
        offset = (off_flags >> 12) * 4
        return Segment(when, src, dst, sport, dport, seq, ack, off_flags & 0x3F, window, ttl, ip_id,
                       bytes(body[offset:]))
    if proto == 1 and len(body) >= 8 and body[0] in (3, 11):
        return IcmpError(when, src, body[0], body[1], ttl, _quoted(bytes(body[8:])))
    return None


def _id_behaviour(ids: Sequence[int]) -> str:
    """How a sender numbers its IP IDs: ``zero`` (always 0, common with DF
    set), ``counter`` (each step forward by 1..64), else ``random``."""
    if not ids:
        return "random"
    if all(i == 0 for i in ids):
        return "zero"
    if len(ids) >= 2 and all(0 < (b - a) % 65536 <= 64 for a, b in zip(ids, ids[1:])):
        return "counter"
    return "random"


def acknowledged_at(segments: Sequence[Segment], local: tuple[str, int], peer: tuple[str, int],
                    seq: int, length: int) -> float | None:
    """When ``peer`` first acknowledged the ``length`` bytes that ``local``
    sent from sequence number ``seq`` (monotonic seconds, the time of the
    first segment of this connection from ``peer`` whose ACK covers them;
    sequence numbers compared modulo 2**32, RFC 793 §3.3), or ``None``.

    Only this connection's segments count (both ends, address and port):
    other connections to the same peer and port have sequence spaces of
    their own, and half of their ACK numbers would seem to cover any line.
    """
    end = (seq + length) % 2**32
    for x in segments:
        if ((x.src, x.sport, x.dst, x.dport) == (*peer, *local) and x.flags & ACK
                and (x.ack - end) % 2**32 < 2**31):
            return x.time
    return None


def attribute_resets(segments: Sequence[Segment], peer: tuple[str, int], local: tuple[str, int]
                     ) -> tuple[ResetSource, ...]:
    """Who sent each RST that arrived on the connection ``local`` <- ``peer``.

    Compared with the peer's own (non-RST) packets on the same connection,
    as they arrived here:

    ==================================  =====================  ==================
    RST's IP TTL                        IP ID and TCP window   sender
    ==================================  =====================  ==================
    no peer packet to compare with      any                    ``unknown``
    differs from every peer packet's    any                    ``middlebox``
    equals a peer packet's              both consistent        ``peer``
    equals a peer packet's              either inconsistent    ``unknown``
    ==================================  =====================  ==================

    A host sends every packet with the same initial TTL, and its packets
    cross the same hops, so a different TTL means another sender (Linux's
    ``reject with tcp reset``, nf_reject_ipv4.c, builds the RST with the
    router's default TTL, IP ID 0 and window 0).  An equal TTL with an IP ID
    or window that does not fit is left ``unknown``: the peer's own kernel
    answers a segment for a closed socket that way too.  IP ID consistent:
    the peer's IDs are all 0 and so is the RST's, or they count up and the
    RST's follows the last within 64; random IDs tell nothing (``None``).
    Window consistent: a value the peer advertised, or within a factor of 4
    of its range (0 only if the peer advertised 0).
    """
    conn = [s for s in segments if (s.src, s.sport, s.dst, s.dport) == (*peer, *local)]
    out: list[ResetSource] = []
    for rst in (s for s in conn if s.rst):
        own = [s for s in conn if not s.rst and s.time <= rst.time] or [s for s in conn if not s.rst]
        if not own:
            out.append(ResetSource(rst.time, rst.ttl, rst.ip_id, rst.window, "unknown",
                                   reason="no packet of the peer's own on this connection to compare with"))
            continue
        ttls = tuple(sorted({s.ttl for s in own}))
        ttl_match = rst.ttl in ttls
        ids = [s.ip_id for s in own if not s.syn]
        behaviour = _id_behaviour(ids)
        id_match: bool | None = None
        if behaviour == "zero":
            id_match = rst.ip_id == 0
        elif behaviour == "counter":
            id_match = 0 < (rst.ip_id - ids[-1]) % 65536 <= 64
        windows = sorted({s.window for s in own if not s.syn})
        window_match: bool | None = None
        if windows:
            window_match = (rst.window in windows
                            or (rst.window > 0 and min(windows) // 4 <= rst.window <= max(windows) * 4))
        if not ttl_match:
            sender, reason = "middlebox", (f"TTL {rst.ttl} differs from the peer's own packets' TTL "
                                           f"{'/'.join(map(str, ttls))}")
        elif id_match is False or window_match is False:
            sender = "unknown"
            odd = [w for w, bad in (("IP ID", id_match is False), ("window", window_match is False)) if bad]
            reason = (f"TTL {rst.ttl} as the peer's, but its {' and '.join(odd)} do not fit the peer's packets "
                      "(the peer's kernel answering for a closed connection, or a middlebox at the same distance)")
        else:
            sender, reason = "peer", f"TTL {rst.ttl}, IP ID and window fit the peer's own packets"
        out.append(ResetSource(rst.time, rst.ttl, rst.ip_id, rst.window, sender, peer_ttls=ttls,
                               peer_ip_ids=behaviour, peer_windows=tuple(windows[:6]),
                               ip_id_match=id_match, window_match=window_match, reason=reason))
    return tuple(out)


# -- capture ---------------------------------------------------------------------------

#: ``sll_pkttype`` of a packet this host sends and ``sll_hatype`` of a loopback
#: interface (``packet(7)``, ``linux/if_arp.h``): loopback shows every packet
#: twice, as sent and as received.
PACKET_OUTGOING, ARPHRD_LOOPBACK = 4, 772
#: The ``sll_protocol`` (EtherType) of IPv4 and IPv6 packets.
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
_ETHERTYPES = {4: ETH_P_IP, 6: ETH_P_IPV6}  # by IP version
#: ``SOL_PACKET``, ``PACKET_STATISTICS`` (``packet(7)``): the packets the
#: kernel filter passed and those dropped for a full receive buffer.
SOL_PACKET, PACKET_STATISTICS = 263, 6
#: ``SO_ATTACH_FILTER`` and ``SO_TIMESTAMPNS`` (``socket(7)``; the numbers of
#: Linux on x86 and ARM; the latter delivers a native ``struct timespec``).
SO_ATTACH_FILTER, SO_TIMESTAMPNS = 26, 35
#: Bytes read of each packet at most: more than a GSO/GRO packet (64 KiB),
#: less than a BIG TCP one can be (those are counted as cut short; their
#: headers are still read).
READ_SIZE = 1 << 18
#: Seconds within which the same bytes seen on another interface are the
#: same packet again (a bridge and its port), not a retransmission (whose IP
#: ID or TCP timestamp differs, and which comes 200 ms or more later).
DUPLICATE_WINDOW = 0.05
#: Receive buffer asked for (the kernel caps it at ``net.core.rmem_max``).
RECEIVE_BUFFER = 4 << 20
#: Seconds :meth:`Capture.stop` reads what was queued before it was called.
STOP_DRAIN = 0.5
#: pcap link type of raw IP packets, IPv4 or IPv6 (no link-layer header).
LINKTYPE_RAW = 101


def bpf_filter(host: str, port: int | None = None, *, icmp: bool = False, any_protocol: bool = False) -> str:
    """The capture filter, in tcpdump syntax: TCP (or any protocol) to or from
    ``host`` (and ``port``), plus ICMP when ``icmp``.  Names what
    :func:`packet_filter` and :func:`bpf_program` keep."""
    main = f"host {host}" if any_protocol else f"tcp and host {host}" + (f" and port {port}" if port else "")
    return f"({main}) or icmp" if icmp else main


def packet_filter(host: str, port: int | None = None, *, icmp: bool = False,
                  any_protocol: bool = False) -> Callable[[bytes], bool]:
    """The predicate of :func:`bpf_filter` on one raw IP packet (``bytes``
    from its IP header on; IPv4 or IPv6 by its version nibble).

    As tcpdump reads the expression: ``icmp`` keeps every IPv4 ICMP packet;
    ports are read only from the first fragment of an IPv4 packet.  Unlike
    tcpdump, which looks past one IPv6 fragment header, IPv6 ports are read
    only right after the fixed header (TCP over IPv6 does not fragment).
    Short or non-IP packets are not kept.  Raises ``ValueError`` if ``host``
    is not an IP address.
    """
    wanted = ipaddress.ip_address(host).packed

    def keep(data: bytes) -> bool:
        version = data[0] >> 4 if data else 0
        if version == 4 and len(data) >= 20:
            proto, src, dst, ports_at = data[9], data[12:16], data[16:20], (data[0] & 0x0F) * 4
            if icmp and proto == 1:
                return True
            later_fragment = bool(struct.unpack_from("!H", data, 6)[0] & 0x1FFF)
        elif version == 6 and len(data) >= 40:
            proto, src, dst, ports_at, later_fragment = data[6], data[8:24], data[24:40], 40, False
        else:
            return False
        if wanted != src and wanted != dst:
            return False
        if any_protocol:
            return True
        if proto != 6 or later_fragment or len(data) < ports_at + 4:
            return False
        return port is None or port in struct.unpack_from("!HH", data, ports_at)

    return keep


def bpf_program(host: str, port: int | None = None, *, icmp: bool = False,
                any_protocol: bool = False) -> list[tuple[int, int, int, int]]:
    """:func:`packet_filter` as a classic BPF program for an ``AF_PACKET``
    datagram socket (offsets from the IP header; the EtherType from the
    kernel's ``SKF_AD_PROTOCOL``), so the kernel drops what is not kept
    before it costs a read: a list of ``(code, jt, jf, k)`` instructions
    (``linux/filter.h``), returning the whole of a packet kept (so a read
    can tell one longer than its buffer) and 0 otherwise; loopback's
    outgoing copies are not kept.  Raises ``ValueError`` if ``host`` is not
    an IP address.
    """
    WHOLE = 0xFFFFFFFF
    address = ipaddress.ip_address(host)
    words = struct.unpack(f"!{len(address.packed) // 4}I", address.packed)
    code: list[tuple] = []  # instructions, with label names for jump targets
    at: dict[str, int] = {}

    def label(name: str) -> None:
        at[name] = len(code)

    def op(opcode: int, k: int = 0, jt: str | None = None, jf: str | None = None) -> None:
        code.append((opcode, jt, jf, k))

    LD_W, LD_H, LD_B, LD_H_IND, LDX_IHL = 0x20, 0x28, 0x30, 0x48, 0xB1
    JEQ, JSET, RET = 0x15, 0x45, 0x06
    SKF_AD_PROTOCOL, SKF_AD_PKTTYPE, SKF_AD_HATYPE = 0xFFFFF000, 0xFFFFF004, 0xFFFFF01C  # SKF_AD_OFF + n
    op(LD_W, SKF_AD_PKTTYPE)  # loopback's outgoing copy of a packet: its incoming one follows
    op(JEQ, PACKET_OUTGOING, None, "protocol")
    op(LD_W, SKF_AD_HATYPE)
    op(JEQ, ARPHRD_LOOPBACK, "drop", None)
    label("protocol")
    op(LD_W, SKF_AD_PROTOCOL)  # the EtherType
    op(JEQ, ETH_P_IP, "v4", None)
    op(JEQ, ETH_P_IPV6, "v6", "drop")
    label("v4")
    if icmp:
        op(LD_B, 9)
        op(JEQ, 1, "keep", None)
    if address.version == 4:
        op(LD_W, 12)
        op(JEQ, words[0], "v4 host", None)
        op(LD_W, 16)
        op(JEQ, words[0], "v4 host", "drop")
        label("v4 host")
        if any_protocol:
            op(RET, WHOLE)
        op(LD_B, 9)
        op(JEQ, 6, None, "drop")
        op(LD_H, 6)
        op(JSET, 0x1FFF, "drop", None)  # a later fragment: no ports to read
        if port is None:
            op(RET, WHOLE)
        else:
            op(LDX_IHL, 0)
            op(LD_H_IND, 0)
            op(JEQ, port, "keep", None)
            op(LD_H_IND, 2)
            op(JEQ, port, "keep", "drop")
    else:
        op(RET, 0)
    label("v6")
    if address.version == 6:
        for side, offset in (("src", 8), ("dst", 24)):
            label(f"v6 {side}")
            for i, word in enumerate(words):
                op(LD_W, offset + 4 * i)
                last = i == len(words) - 1
                op(JEQ, word, "v6 host" if last else None, "v6 dst" if side == "src" else "drop")
        label("v6 host")
        if any_protocol:
            op(RET, WHOLE)
        op(LD_B, 6)
        op(JEQ, 6, None, "drop")
        if port is None:
            op(RET, WHOLE)
        else:
            op(LD_H, 40)
            op(JEQ, port, "keep", None)
            op(LD_H, 42)
            op(JEQ, port, "keep", "drop")
    label("drop")
    op(RET, 0)
    label("keep")
    op(RET, WHOLE)
    program = []
    for i, (opcode, jt, jf, k) in enumerate(code):
        program.append((opcode, at[jt] - i - 1 if jt else 0, at[jf] - i - 1 if jf else 0, k))
    return program


def attach_bpf(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    """Attach ``program`` (:func:`bpf_program`) to ``sock`` (``SO_ATTACH_FILTER``,
    ``socket(7)``).  Raises ``OSError`` when the kernel refuses it."""
    raw = b"".join(struct.pack("HBBI", *instruction) for instruction in program)
    buffer = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("HL", len(program), ctypes.addressof(buffer))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class Capture:
    """Capture the IP packets of one peer: an ``AF_PACKET`` datagram socket
    (``packet(7)``: every interface, link-layer header removed) with a
    kernel filter (:func:`bpf_program`), read by a thread of its own, each
    packet checked again and read here (:func:`packet_filter`,
    :func:`parse_ipv4`) and stamped with the kernel's receive time.

    Not scapy's sniffer: where no libpcap compiles BPF it dissects every
    packet of the interface into layers before any filter runs, which cost
    several times the CPU of the rest of a probe run.  scapy writes the pcap
    file.

    ``host``/``port``: the peer (``port`` None: any port); ``icmp``: also
    IPv4 ICMP (for the time-exceeded replies of a TTL walk); ``any_protocol``: everything to
    or from ``host``; ``pcap``: write the packets to this file as they
    arrive (pcap, raw IP).  A packet seen again on another interface within
    :data:`DUPLICATE_WINDOW` (a bridge and its port show each packet twice)
    counts once; a loopback interface's outgoing copies are skipped.
    :meth:`start` and :meth:`stop` block briefly (an ``open``, a thread
    ``join``); :attr:`segments` and :attr:`icmp_errors` grow while it runs.
    Raises :class:`CaptureError` from :meth:`start`.
    """

    def __init__(self, host: str, port: int | None = None, *, icmp: bool = False, any_protocol: bool = False,
                 pcap: str | None = None) -> None:
        self.host, self.port, self.icmp, self.any_protocol, self.pcap = host, port, icmp, any_protocol, pcap
        self.segments: list[Segment] = []
        self.icmp_errors: list[IcmpError] = []
        self.interfaces: set[str] = set()
        #: Packets kept; those past MAX_PACKETS (counted, not kept); those the
        #: kernel dropped (a full buffer); those cut at READ_SIZE; pcap writes that failed.
        self.packets = self.over_cap = self.kernel_drops = self.truncated = self.write_errors = 0
        self.kernel_filter = False
        self.error = ""
        self._keep = packet_filter(host, port, icmp=icmp, any_protocol=any_protocol)
        self._recent: collections.deque[tuple[int, str, float]] = collections.deque(maxlen=64)
        self._socket: socket.socket | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._thread: threading.Thread | None = None
        self._writer = None
        # stop() and a reading thread that outlived it: whichever comes last closes.
        self._lock = threading.Lock()
        self._stopped = self._reader_done = self._abandoned = False

    @property
    def filter_note(self) -> str:
        """How packets were captured: the filter and where it ran, the
        interfaces, the packets kept (what was lost: :meth:`losses`)."""
        text = bpf_filter(self.host, self.port, icmp=self.icmp, any_protocol=self.any_protocol)
        where = "in the kernel" if self.kernel_filter else "in Python (the kernel refused the BPF filter)"
        on = f"on {', '.join(sorted(self.interfaces))}" if self.interfaces else "(no packet matched)"
        return f"filter '{text}' {where} {on}: {self.packets} packets"

    def losses(self) -> str:
        """The packets (or bytes) the capture is missing, in words; "" when none."""
        missing = [f"{n} {what}" for n, what in (
            (self.kernel_drops, "dropped by the kernel (receive buffer full)"),
            (self.over_cap, f"past the cap of {MAX_PACKETS} packets"),
            (self.truncated, f"cut at {READ_SIZE} bytes"),
            (self.write_errors, "not written to the pcap file")) if n]
        return ", ".join(missing + ([f"the capture stopped early: {self.error}"] if self.error else []))

    def start(self) -> None:
        """Open the capture socket (packets are queued for it from then on),
        the pcap file when asked, and start the reading thread.  On any
        failure everything opened is closed again and :class:`CaptureError`
        raised."""
        problem = permission_problem()
        if problem:
            raise CaptureError(problem)
        try:
            if self.pcap:
                self._writer = _pcap_writer(self.pcap)
            self._socket = sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
            self._wake = socket.socketpair()
            with contextlib.suppress(OSError):  # a smaller buffer only risks drops, which are counted
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            try:
                attach_bpf(sock, bpf_program(self.host, self.port, icmp=self.icmp, any_protocol=self.any_protocol))
                self.kernel_filter = True
                # Reading the statistics resets them: drops of the unfiltered moment before
                # are not this capture's (what was queued then still meets packet_filter).
                sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
            except OSError:
                pass  # every packet then reaches packet_filter, which decides the same
            thread = threading.Thread(target=self._read, args=(sock, self._wake),
                                      name="ftpprobe capture", daemon=True)
            thread.start()
            self._thread = thread
        except BaseException as exc:
            self.stop()
            if isinstance(exc, CaptureError):
                raise
            if isinstance(exc, (OSError, RuntimeError)):
                detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                raise CaptureError(f"cannot open a packet capture: {detail}") from None
            raise

    def _read(self, sock: socket.socket, wake: tuple[socket.socket, socket.socket]) -> None:
        """The reading thread: every packet as it is queued, until woken by
        :meth:`stop`; then what was queued by then (for :data:`STOP_DRAIN` s
        at most).  Closes the socket, the wake-up pair and the file itself if
        :meth:`stop` gave up waiting for it."""
        poller = select.poll()  # not select(): no FD_SETSIZE limit on the descriptor numbers
        poller.register(sock, select.POLLIN)
        wake_fd = wake[1].fileno()
        poller.register(wake_fd, select.POLLIN)
        timespec = struct.calcsize("ll")  # a native struct timespec
        ancillary = socket.CMSG_SPACE(timespec)
        until = None
        try:
            while until is None or time.monotonic() < until:
                if until is None and any(fd == wake_fd for fd, _ in poller.poll()):
                    until = time.monotonic() + STOP_DRAIN
                try:
                    data, ancdata, flags, address = sock.recvmsg(READ_SIZE, ancillary, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    if until is not None or self._stopped:
                        return
                    continue
                if self._stopped:
                    return
                when = None
                for level, kind, value in ancdata:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= timespec:
                        seconds, nanoseconds = struct.unpack_from("ll", value)
                        # Kernel times are wall-clock; the segments keep time.monotonic()'s scale.
                        when = seconds + nanoseconds / 1e9 + time.monotonic() - time.time()
                self.take(data, address[0], address[2], address[3], when, protocol=address[1],
                          cut=bool(flags & socket.MSG_TRUNC))
        except Exception as exc:  # noqa: BLE001 -- said in filter_note, never lost silently
            self.error = str(exc) or type(exc).__name__
        finally:
            with self._lock:
                self._reader_done = True
                if self._abandoned:
                    self._close(sock)
                    for end in wake:
                        end.close()

    def take(self, data: bytes, interface: str, pkttype: int = 0, hatype: int = 0,
             when: float | None = None, *, protocol: int | None = None, cut: bool = False) -> None:
        """Keep one IP packet (``bytes`` from its IP header on) read from
        ``interface`` if it passes the filter and is not a copy of one just
        seen on another interface.  ``pkttype``/``hatype``/``protocol``: its
        ``sll_pkttype``, ``sll_hatype`` and ``sll_protocol`` (the EtherType,
        which must agree with the IP version; None: not checked); ``when``:
        its receive time (``time.monotonic()`` seconds; now when None);
        ``cut``: longer than :data:`READ_SIZE`, and cut there.  Called by the
        reading thread."""
        if protocol is not None and protocol != _ETHERTYPES.get(data[0] >> 4 if data else 0):
            return  # not IP, or a frame whose EtherType and IP version disagree
        if (hatype == ARPHRD_LOOPBACK and pkttype == PACKET_OUTGOING) or not self._keep(data):
            return
        when = time.monotonic() if when is None else when
        digest = hash(data)
        if any(d == digest and i != interface and abs(when - t) < DUPLICATE_WINDOW for d, i, t in self._recent):
            return
        self._recent.append((digest, interface, when))
        self.interfaces.add(interface)
        self.truncated += cut
        if self.packets >= MAX_PACKETS:
            self.over_cap += 1
            return
        self.packets += 1
        if self._writer is not None:
            try:
                seconds = when - time.monotonic() + time.time()
                self._writer.write_packet(data, sec=int(seconds), usec=int(seconds % 1 * 1e6))
            except Exception:  # noqa: BLE001 -- a full disk ends the file, not the capture
                self.write_errors += 1
        if self._stopped:
            return  # stop() gave up waiting while this packet was being written
        parsed = parse_ipv4(data, when)
        if isinstance(parsed, Segment):
            self.segments.append(parsed)
        elif isinstance(parsed, IcmpError):
            self.icmp_errors.append(parsed)

    def stop(self) -> None:
        """Read what is queued, stop the thread (waiting :data:`STOP_WAIT` s
        at most), close the socket and the pcap file.  A thread still busy
        then (a pcap file on a stalled pipe) keeps nothing more, closes them
        itself, and is said in :attr:`error`.  Never raises."""
        thread, self._thread = self._thread, None
        wake, self._wake = self._wake, None
        if wake is not None:
            with contextlib.suppress(OSError):
                wake[0].send(b"x")
        if thread is not None:
            thread.join(STOP_WAIT)
        sock, self._socket = self._socket, None
        with self._lock:
            self._stopped = True
            if thread is not None and not self._reader_done:
                self._abandoned = True  # the thread closes the socket, the pair and the file
                self.error = self.error or f"the capture thread did not stop within {STOP_WAIT:g} s"
                return
            self._close(sock)
        for end in wake or ():
            end.close()

    def _close(self, sock: socket.socket | None) -> None:
        """Read the kernel's drop count, close the socket and the pcap file."""
        if sock is not None:
            with contextlib.suppress(OSError, struct.error):
                self.kernel_drops = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))[1]
            sock.close()
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(OSError):
                writer.close()

    def connection(self, local: tuple[str, int], peer: tuple[str, int]) -> list[Segment]:
        """The captured segments of one TCP connection, both directions, in order."""
        ends = {(*local, *peer), (*peer, *local)}
        return [s for s in list(self.segments) if (s.src, s.sport, s.dst, s.dport) in ends]


def _pcap_writer(path: str):
    """scapy's pcap writer for raw IP packets at ``path``, its header written
    (an empty capture is still a valid file).  Raises :class:`CaptureError`."""
    try:
        from scapy.utils import RawPcapWriter
    except ImportError as exc:
        raise CaptureError(f"writing a pcap file needs scapy ({exc})") from None
    try:
        writer = RawPcapWriter(path, linktype=LINKTYPE_RAW, snaplen=READ_SIZE, sync=True)
        writer.write_header(None)
    except OSError as exc:
        raise CaptureError(f"cannot write {path}: {exc.strerror or exc}") from None
    return writer


@contextlib.asynccontextmanager
async def capturing(host: str, port: int | None = None, *, icmp: bool = False):
    """A running :class:`Capture` for the block (trio); stopped in ``finally``.
    Raises :class:`CaptureError` when it cannot start."""
    import trio

    cap = Capture(host, port, icmp=icmp)
    cap.start()  # opens a socket and starts a thread: quick
    try:
        yield cap
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(cap.stop)


def resolve(host: str, port: int) -> str:
    """The IP address a control connection to ``host`` would use (the first
    of ``getaddrinfo``).  Raises :class:`CaptureError` if it does not resolve."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0]
    except (socket.gaierror, IndexError) as exc:
        raise CaptureError(f"cannot resolve {host} for the capture ({exc})") from None
