"""Packet-level evidence: the one module that touches scapy.

scapy is imported lazily, inside :meth:`Capture.start` (in a worker thread),
never when ``ftpprobe`` is imported: ``import ftpprobe.cli`` stays fast and
works where scapy cannot open a capture.  Permission is checked by trying
(:func:`permission_problem` opens an ``AF_PACKET`` raw socket: root or
CAP_NET_RAW); without it the packet probes are ``skipped`` with that reason.

What is here:

* :class:`Capture`: an ``AsyncSniffer`` on the interface that routes to a
  peer, restricted to one TCP peer (and ICMP when asked) by a BPF filter
  (compiled by libpcap or tcpdump when present; otherwise the same predicate
  runs in Python as scapy's ``lfilter``), optionally written to a pcap file
  (:func:`pcap_capture` for a whole run).  Every capture is stopped in a
  ``finally`` block and its thread joined with a bound.
* Pure readings of raw IPv4 packets, testable without scapy or a network:
  :func:`parse_ipv4` (a TCP :class:`Segment`, or an :class:`IcmpError` with
  the packet it quotes, RFC 792), :func:`attribute_resets` (who sent each RST:
  the peer or a middlebox, from IP TTL, IP ID and TCP window).
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import socket
import struct
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterator, Sequence

from .errors import FtpProbeError
from .observations import ResetSource

#: Seconds at most to wait for the sniffer's socket to open, and for its thread to end.
START_WAIT, STOP_WAIT = 3.0, 3.0
#: Packets a capture keeps (and writes) at most; more are counted, not kept.
MAX_PACKETS = 200_000
ETH_P_ALL = 0x0003


class CaptureError(FtpProbeError):
    """A packet capture could not be started (no permission, no scapy, no interface)."""


@lru_cache(maxsize=1)
def permission_problem() -> str | None:
    """``None`` if this process can capture packets, else why not (plain words).

    Decided by trying: an ``AF_PACKET`` raw socket opens only with root or
    CAP_NET_RAW (``packet(7)``).  Also says so when scapy is not installed.
    Cached for the process.
    """
    try:
        probe = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    except PermissionError:
        return ("packet capture needs root or the CAP_NET_RAW capability (run with sudo, or "
                "setcap cap_net_raw+ep on the Python interpreter)")
    except (OSError, AttributeError) as exc:
        return f"packet capture is not available on this system ({exc})"
    probe.close()
    if importlib.util.find_spec("scapy") is None:
        return "packet capture needs scapy (python3 -m pip install scapy)"
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
    a packet too short to read.  Trailing link-layer padding is ignored."""
    if len(data) < 20 or data[0] >> 4 != 4:
        return None
    ihl = (data[0] & 0x0F) * 4
    total = min(struct.unpack_from("!H", data, 2)[0], len(data))
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


# -- capture (scapy) -----------------------------------------------------------------


def bpf_filter(host: str, port: int | None = None, *, icmp: bool = False, any_protocol: bool = False) -> str:
    """The capture filter, in tcpdump syntax: TCP (or any protocol) to or from
    ``host`` (and ``port``), plus ICMP errors when ``icmp``."""
    main = f"host {host}" if any_protocol else f"tcp and host {host}" + (f" and port {port}" if port else "")
    return f"({main}) or icmp" if icmp else main


def _python_filter(host: str, port: int | None, icmp: bool, any_protocol: bool) -> Callable[[object], bool]:
    """The predicate of :func:`bpf_filter` for scapy's ``lfilter`` (where no
    libpcap or tcpdump compiles BPF)."""
    from scapy.layers.inet import ICMP, IP, TCP
    from scapy.layers.inet6 import IPv6

    def keep(pkt) -> bool:
        for layer in (IP, IPv6):
            if layer in pkt:
                ip = pkt[layer]
                if icmp and layer is IP and ICMP in pkt:
                    return True
                if host not in (ip.src, ip.dst):
                    return False
                if any_protocol:
                    return True
                return TCP in pkt and (port is None or port in (pkt[TCP].sport, pkt[TCP].dport))
        return False

    return keep


def _route_interface(host: str) -> str:
    """The interface scapy's routing table sends ``host``'s traffic through."""
    from scapy.config import conf

    if ipaddress.ip_address(host).version == 6:
        import scapy.route6  # noqa: F401  -- fills conf.route6

        return str(conf.route6.route(host)[0])
    return str(conf.route.route(host)[0])


def warm_up() -> None:
    """Import what :meth:`Capture.start` imports (blocking: run it in a
    thread), so a capture started later starts at once.  Never raises."""
    try:
        from scapy.arch.common import compile_filter  # noqa: F401
        from scapy.layers.inet import IP  # noqa: F401
        from scapy.sendrecv import AsyncSniffer  # noqa: F401
        from scapy.utils import PcapWriter  # noqa: F401
    except Exception:  # noqa: BLE001 -- no scapy: Capture.start says so
        pass


class Capture:
    """Capture the packets of one peer on the interface that routes to it.

    ``host``/``port``: the peer (``port`` None: any port); ``icmp``: also
    ICMP errors (for time-exceeded replies); ``any_protocol``: everything to
    or from ``host``; ``pcap``: write the packets to this file as they
    arrive.  :meth:`start` and :meth:`stop` block (run them off the trio
    thread); :attr:`segments` and :attr:`icmp_errors` grow while it runs.
    Raises :class:`CaptureError` from :meth:`start`.
    """

    def __init__(self, host: str, port: int | None = None, *, icmp: bool = False, any_protocol: bool = False,
                 pcap: str | None = None) -> None:
        self.host, self.port, self.icmp, self.any_protocol, self.pcap = host, port, icmp, any_protocol, pcap
        self.segments: list[Segment] = []
        self.icmp_errors: list[IcmpError] = []
        self.packets = 0
        self.dropped = 0
        self.filter_note = ""
        self.interface = ""
        self._started = threading.Event()
        self._sniffer = None
        self._writer = None
        self._last_raw = b""
        self._clock = time.monotonic

    def start(self) -> None:
        """Import scapy, open the capture and wait (:data:`START_WAIT` s) until it runs."""
        problem = permission_problem()
        if problem:
            raise CaptureError(problem)
        try:
            from scapy.arch.common import compile_filter
            from scapy.sendrecv import AsyncSniffer
            from scapy.utils import PcapWriter
        except ImportError as exc:
            raise CaptureError(f"packet capture needs scapy ({exc})") from None
        try:
            self.interface = _route_interface(self.host)
        except (ValueError, OSError, IndexError) as exc:
            raise CaptureError(f"no interface routes to {self.host} ({exc})") from None
        text = bpf_filter(self.host, self.port, icmp=self.icmp, any_protocol=self.any_protocol)
        options: dict = {}
        try:
            compile_filter(text, iface=self.interface)
            options["filter"] = text
            self.filter_note = f"BPF filter '{text}' on {self.interface}"
        except Exception:  # noqa: BLE001 -- scapy raises ImportError or Scapy_Exception without libpcap/tcpdump
            options["lfilter"] = _python_filter(self.host, self.port, self.icmp, self.any_protocol)
            self.filter_note = (f"filter '{text}' on {self.interface}, applied in Python "
                                "(no libpcap or tcpdump to compile BPF)")
        if self.pcap:
            try:
                self._writer = PcapWriter(self.pcap, append=False, sync=True)
            except OSError as exc:
                raise CaptureError(f"cannot write {self.pcap}: {exc.strerror or exc}") from None
        self._sniffer = AsyncSniffer(iface=self.interface, prn=self._on_packet, store=False,
                                     started_callback=self._started.set, **options)
        self._sniffer.start()
        if not self._started.wait(START_WAIT):
            error = getattr(self._sniffer, "exception", None)
            self.stop()
            raise CaptureError(f"the capture on {self.interface} did not start"
                               + (f": {error}" if error else f" within {START_WAIT:g} s"))

    def _on_packet(self, pkt) -> None:
        """Called in the sniffer's thread for each packet that passed the filter."""
        try:
            raw = bytes(pkt)
            if raw == self._last_raw:  # loopback shows each packet twice (out, then in)
                return
            self._last_raw = raw
            self.packets += 1
            if self.packets > MAX_PACKETS:
                self.dropped += 1
                return
            if self._writer is not None:
                self._writer.write(pkt)
            from scapy.layers.inet import IP

            if IP in pkt:
                parsed = parse_ipv4(bytes(pkt[IP]), self._clock())
                if isinstance(parsed, Segment):
                    self.segments.append(parsed)
                elif isinstance(parsed, IcmpError):
                    self.icmp_errors.append(parsed)
        except Exception:  # noqa: BLE001 -- one odd packet must not kill the capture thread
            self.dropped += 1

    def stop(self) -> None:
        """Stop the sniffer, join its thread (at most :data:`STOP_WAIT` s), close the pcap file.  Never raises."""
        sniffer, self._sniffer = self._sniffer, None
        if sniffer is not None:
            try:
                if getattr(sniffer, "running", False):
                    sniffer.stop(join=False)
            except Exception:  # noqa: BLE001 -- "not running": it already ended
                pass
            thread = getattr(sniffer, "thread", None)
            if thread is not None:
                thread.join(STOP_WAIT)
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except OSError:
                pass

    def connection(self, local: tuple[str, int], peer: tuple[str, int]) -> list[Segment]:
        """The captured segments of one TCP connection, both directions, in order."""
        ends = {(*local, *peer), (*peer, *local)}
        return [s for s in list(self.segments) if (s.src, s.sport, s.dst, s.dport) in ends]


@contextlib.asynccontextmanager
async def capturing(host: str, port: int | None = None, *, icmp: bool = False):
    """A running :class:`Capture` for the block (trio); stopped in ``finally``.
    Raises :class:`CaptureError` when it cannot start."""
    import trio

    cap = Capture(host, port, icmp=icmp)
    await trio.to_thread.run_sync(cap.start)
    try:
        yield cap
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(cap.stop)


@contextlib.contextmanager
def pcap_capture(path: str, host: str) -> Iterator[Capture]:
    """Write every packet to or from ``host`` (control and data connections),
    and ICMP errors, to the pcap file ``path`` while the block runs
    (``--pcap``).  Blocking; raises :class:`CaptureError` when it cannot start."""
    cap = Capture(host, any_protocol=True, icmp=True, pcap=path)
    cap.start()
    try:
        yield cap
    finally:
        cap.stop()


def resolve(host: str, port: int) -> str:
    """The IP address a control connection to ``host`` would use (the first
    of ``getaddrinfo``).  Raises :class:`CaptureError` if it does not resolve."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0]
    except (socket.gaierror, IndexError) as exc:
        raise CaptureError(f"cannot resolve {host} for the capture ({exc})") from None
