"""What the probes saw: one frozen dataclass per executor action.  Pure: no I/O, no trio.

Executors (:mod:`ftpprobe.executors`) build these; rules (:mod:`ftpprobe.rules`)
read them.  Bytes stay bytes here (the exact wire form of what was sent and
what arrived) and are escaped only for output (:func:`ftpprobe.codec.escape`).

Every observation carries ``probe`` (the catalog name), ``elapsed`` (seconds
the probe took) and ``exchanges`` (every command of its own sessions, logins
left out).  A probe that could not run at all is a :class:`Failed`; one that
decided it had nothing to do is a :class:`Skipped`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from .codec import Reply, escape
from .passive import PassiveSample

Outcome = Literal["reply", "timeout", "closed", "reset", "malformed"]
Address = tuple[str, int]  #: (IP address as text, TCP port)


@dataclass(frozen=True)
class TcpInfo:
    """The kernel's view of a TCP connection at one moment (Linux TCP_INFO,
    ``include/uapi/linux/tcp.h``, plus SIOCOUTQ).

    ``outq``: bytes in the send queue (sent but unacknowledged, or not yet
    sent); ``unacked``: segments sent and not acknowledged; ``retransmits``:
    retransmissions of the current segment; ``total_retrans``: segments
    retransmitted over the connection's life; ``last_data_recv_ms``:
    milliseconds since data last arrived; ``rtt_us``: smoothed RTT,
    microseconds.  ``None`` where the platform gave no value.
    """

    outq: int | None = None
    unacked: int | None = None
    retransmits: int | None = None
    total_retrans: int | None = None
    last_data_recv_ms: int | None = None
    rtt_us: int | None = None

    @classmethod
    def from_kernel(cls, info: dict[str, int]) -> "TcpInfo | None":
        """From :func:`ftpprobe.transport.read_tcp_info`'s dict; ``None`` if empty."""
        if not info:
            return None
        return cls(outq=info.get("outq"), unacked=info.get("unacked"), retransmits=info.get("retransmits"),
                   total_retrans=info.get("total_retrans"), last_data_recv_ms=info.get("last_data_recv"),
                   rtt_us=info.get("rtt"))

    @property
    def stall(self) -> Literal["dropped", "held", "unknown"]:
        """How an unanswered line was lost, from the kernel's counters.

        ``dropped``: our bytes are still unacknowledged (``outq`` > 0) and
        were retransmitted: something on the path discards the segment (an
        ALG's NF_DROP).  ``held``: every byte was acknowledged (``outq`` 0)
        and no answer came: a middlebox (or the server) holds the line back.
        ``unknown``: no counters, or unacknowledged without a retransmission yet.
        """
        if self.outq is None:
            return "unknown"
        if self.outq > 0 and ((self.total_retrans or 0) > 0 or (self.retransmits or 0) > 0):
            return "dropped"
        if self.outq == 0:
            return "held"
        return "unknown"

    def describe(self) -> str:
        return (f"TCP_INFO: {self.outq if self.outq is not None else '?'} bytes unacknowledged, "
                f"{self.total_retrans if self.total_retrans is not None else '?'} retransmissions, "
                f"last data received {self.last_data_recv_ms if self.last_data_recv_ms is not None else '?'} ms ago")


@dataclass(frozen=True)
class Exchange:
    """One line sent and what came back (RFC 959 §4.2).

    ``sent``: the exact bytes written (a secret argument replaced by
    ``****``); ``segments``: TCP writes used; ``outcome``: ``reply``,
    ``timeout``, ``closed``, ``reset`` or ``malformed``; ``reply``: the reply
    when there was one; ``elapsed``: seconds from the first byte sent to the
    outcome; ``tcp_info``: counters at a timeout; ``error``: the reason text.
    """

    sent: bytes
    outcome: Outcome
    reply: Reply | None = None
    segments: int = 1
    elapsed: float = 0.0
    tcp_info: TcpInfo | None = None
    error: str = ""

    @property
    def code(self) -> int | None:
        """The reply code, or ``None`` without a reply."""
        return self.reply.code if self.reply is not None else None

    @property
    def positive(self) -> bool:
        """A 1xx/2xx/3xx reply: the command was accepted (RFC 959 §4.2.1)."""
        return self.reply is not None and self.reply.code < 400

    @property
    def negative(self) -> bool:
        """A 4xx/5xx reply: the command was refused."""
        return self.reply is not None and self.reply.code >= 400

    def describe(self) -> str:
        """One evidence line: what was sent and what came back."""
        split = f" in {self.segments} segments" if self.segments > 1 else ""
        if self.reply is not None:
            return f"sent '{escape(self.sent)}'{split} -> '{self.reply.display(100)}'"
        line = f"sent '{escape(self.sent)}'{split} -> {self.outcome}" + (f" ({self.error})" if self.error else "")
        if self.outcome == "timeout" and self.tcp_info is not None:
            line += "; " + self.tcp_info.describe()
        return line


@dataclass(frozen=True)
class Observed:
    """Fields every observation has."""

    probe: str
    elapsed: float = 0.0
    exchanges: tuple[Exchange, ...] = ()


FailureKind = Literal["connect", "login", "refused", "timeout", "reset", "protocol", "deadline"]


@dataclass(frozen=True)
class Failed(Observed):
    """The probe could not be carried out: its session failed before the
    probe's own command (``kind`` says how), or the run's deadline passed."""

    error: str = ""
    kind: FailureKind = "protocol"


@dataclass(frozen=True)
class Skipped(Observed):
    """The probe had nothing to do here (e.g. PORT cannot name an IPv6 address)."""

    reason: str = ""


@dataclass(frozen=True)
class DataOutcome:
    """One data connection attempt (RFC 959 §3.2).  ``host``/``port``: where
    it went; ``connected``: the TCP handshake completed; ``error``: why not;
    ``head``: the first bytes read from it (at most a few hundred)."""

    host: str
    port: int
    connected: bool
    error: str = ""
    head: bytes = b""

    def describe(self) -> str:
        """One evidence line: where it went, and connected or why not."""
        where = f"data connection to {self.host} port {self.port}: "
        error = self.error.removeprefix(where) or "no reason given"  # the connect's error may name it too
        return where + ("connected" if self.connected else f"failed ({error})")


@dataclass(frozen=True)
class Transfer:
    """An active-mode transfer: LIST after PORT/EPRT, and whether the peer's
    data connection arrived at our listener.

    ``list_exchange``: LIST and its first reply; ``expected``: the peer
    accepted the transfer (a 1xx reply), so a connection was due;
    ``connected``: it arrived, from ``source``; ``bytes``: bytes read
    (``truncated`` past 1 MiB); ``head``: its first bytes; ``final``: the
    reply after the transfer, or why there was none; ``error``: why no
    connection arrived.
    """

    list_exchange: Exchange
    expected: bool
    connected: bool = False
    source: Address | None = None
    bytes: int = 0
    truncated: bool = False
    head: bytes = b""
    final: str = ""
    error: str = ""


@dataclass(frozen=True)
class CommandObs(Observed):
    """A command variant in a fresh session (action ``command``).

    ``exchange``: the variant; ``alive_after``: a canonical NOOP afterwards
    got a reply (``None`` when not tried); ``retry``: when the variant got no
    reply, the same variant once more in a new session (one lost packet is
    not a stall); ``nudge``: the ``NOOP\\r\\n`` sent when the variant got no
    reply within a short wait, and its outcome (``None``: not sent).  An
    ``exchange`` that is a ``timeout`` with a ``nudge`` that is a ``reply``
    means the server held the line until a line ending followed, then parsed
    what it held as that reply (the line as sent was never executed).
    """

    exchange: Exchange | None = None
    alive_after: bool | None = None
    retry: Exchange | None = None
    nudge: Exchange | None = None


@dataclass(frozen=True)
class PassiveObs(Observed):
    """PASV/EPSV variant then a data connection to the port it named (action ``passive``).

    ``advertised``: the address in a 227 (``None`` for 229) and the port;
    ``data``: the data connection attempt; ``parse_error``: the reply was a
    227/229 that could not be parsed.
    """

    exchange: Exchange | None = None
    advertised: tuple[str | None, int] | None = None
    data: DataOutcome | None = None
    parse_error: str = ""


@dataclass(frozen=True)
class ActiveObs(Observed):
    """PORT/EPRT naming our own listener, then LIST (action ``active``).

    ``listen``: our listener; ``control_port``: the server's control port
    (RFC 959 §3.3: active data comes from port L-1 by default);
    ``transfer``: LIST and the data connection, when PORT/EPRT was accepted.
    """

    exchange: Exchange | None = None
    listen: Address | None = None
    control_port: int = 21
    transfer: Transfer | None = None


@dataclass(frozen=True)
class BounceObs(Observed):
    """PORT naming a third party (action ``bounce``); never followed by a transfer."""

    exchange: Exchange | None = None
    foreign: Address | None = None


@dataclass(frozen=True)
class ListingObs(Observed):
    """FEAT, then LIST over a passive data connection (action ``listing``).

    ``mlsd``: FEAT lists MLSD/MLST (RFC 3659); ``no_passive``: why no data
    connection was made (empty if it was); ``list_exchange``: LIST and its
    reply; ``lines``: non-empty lines read; ``bytes``/``truncated``: as for
    :class:`Transfer`; ``timed_out``: the data connection did not end within
    the timeout; ``style``: ``unix``, ``dos`` or ``none``; ``unparseable``:
    up to three lines that fit neither style; ``unparseable_count``: all of them.
    """

    mlsd: bool = False
    no_passive: str = ""
    list_exchange: Exchange | None = None
    lines: int = 0
    bytes: int = 0
    truncated: bool = False
    timed_out: bool = False
    style: str = "none"
    unparseable: tuple[bytes, ...] = ()
    unparseable_count: int = 0


@dataclass(frozen=True)
class AuthTlsObs(Observed):
    """FEAT and AUTH TLS (RFC 4217 §4) before login (action ``auth-tls``).

    ``feat_auth_tls``: FEAT lists AUTH TLS; ``exchange``: AUTH TLS and its
    reply (the session closes without a handshake); ``user``/``anonymous``:
    the run's login; ``password_sent_in_clear``: a session of this run sent
    PASS outside TLS (decided from what was sent, not from the user name).
    """

    feat_auth_tls: bool = False
    exchange: Exchange | None = None
    user: str = ""
    anonymous: bool = True
    password_sent_in_clear: bool = False
    #: a session of this run sent PASS inside TLS (RFC 4217 §4: after AUTH TLS, or implicit FTPS)
    password_sent_in_tls: bool = False
    #: the run's sessions: ``none`` (plain FTP), ``explicit`` (AUTH TLS) or ``implicit`` FTPS
    tls_mode: str = "none"


@dataclass(frozen=True)
class CertificateInfo:
    """The server's certificate as it arrived (X.509, RFC 5280 §4.1).

    ``subject`` / ``issuer``: RFC 4514 strings; ``names``: the
    subjectAltName DNS names and IP addresses (the subject's common name
    when there is no subjectAltName); ``not_before`` / ``not_after``: UTC,
    seconds since the epoch; ``key_type``: ``RSA``, ``EC``, ``DSA``,
    ``Ed25519`` ...; ``key_bits``: key size in bits; ``signature_hash``:
    ``sha256``, ``sha1``, ``md5`` ... (empty when the algorithm has none);
    ``self_signed``: subject and issuer are the same name;
    ``fingerprint``: SHA-256 of the DER bytes, hex.
    """

    subject: str
    issuer: str
    names: tuple[str, ...] = ()
    not_before: float = 0.0
    not_after: float = 0.0
    key_type: str = ""
    key_bits: int = 0
    signature_hash: str = ""
    self_signed: bool = False
    fingerprint: str = ""


@dataclass(frozen=True)
class TlsHandshake:
    """One TLS handshake (RFC 4217 §4 on the control connection, §9 on a data
    connection).

    ``ok``: it completed; ``version``: e.g. ``TLSv1.3``; ``cipher``: the
    cipher suite; ``verified``: the certificate was checked against the
    trust store and the host name and accepted (False when not checked);
    ``verify_code`` / ``verify_message``: OpenSSL's verification error
    (``X509_V_ERR_*``) when the certificate was refused; ``alert``: OpenSSL's
    reason for another failure; ``error``: the failure as one line
    (``timeout``, ``reset`` ... included); ``elapsed``: seconds.
    """

    ok: bool
    version: str = ""
    cipher: str = ""
    verified: bool = False
    verify_code: int = 0
    verify_message: str = ""
    alert: str = ""
    error: str = ""
    elapsed: float = 0.0


@dataclass(frozen=True)
class TlsTransfer:
    """PASV (or EPSV), then LIST over a data connection protected by TLS
    (RFC 4217 §9: ``PROT P``).

    ``passive``: PASV/EPSV and its reply; ``advertised``: what the 227/229
    named (address ``None`` for 229); ``data``: the TCP connection (to the
    control peer unless ``--trust-pasv-address``); ``reuse_offered``: the
    control connection's TLS session was offered for resumption;
    ``handshake``: the data connection's handshake; ``session_reused``: the
    server resumed the session (``None`` without a handshake);
    ``list_exchange``: LIST and its first reply; ``final``: the reply after
    the transfer (226, or e.g. "522 SSL connection failed: session reuse
    required"); ``final_error``: why there was none; ``bytes``: bytes read.
    """

    passive: Exchange | None = None
    advertised: tuple[str | None, int] | None = None
    data: DataOutcome | None = None
    reuse_offered: bool = True
    handshake: TlsHandshake | None = None
    session_reused: bool | None = None
    list_exchange: Exchange | None = None
    final: Reply | None = None
    final_error: str = ""
    bytes: int = 0


TlsMode = Literal["explicit", "implicit"]


@dataclass(frozen=True)
class TlsObs(Observed):
    """What the server says in clear text and inside TLS (action ``tls``).

    ``mode``: ``explicit`` (``AUTH TLS`` on the control port, RFC 4217 §4)
    or ``implicit`` (TLS from the first byte, port 990); ``host``: the name
    the certificate was checked against; ``observed_at``: UTC seconds since
    the epoch (certificate validity is judged at this moment).

    Clear text: ``clear_passive`` / ``clear_advertised`` / ``clear_data``:
    PASV in a plain session and the TCP connection to its port;
    ``clear_skipped``: why there was no plain session (implicit FTPS, or a
    login that would have sent a password in clear text).

    Inside TLS: ``auth``: ``AUTH TLS`` and its reply (explicit);
    ``handshake``: the control connection's handshake with certificate
    checking; ``unverified``: a second handshake without checking, made when
    the first refused the certificate (to read it, and to go on when allowed);
    ``certificate``: the server's certificate; ``login_in_tls``: USER/PASS
    went inside TLS; ``stopped``: why the session went no further (e.g. a
    refused certificate with a password login); ``protection``: ``PBSZ 0``
    and ``PROT P`` and their replies; ``transfer``: PASV and LIST with the
    TLS session offered for reuse; ``no_reuse``: the same without offering it
    (does the server demand reuse?).
    """

    mode: TlsMode = "explicit"
    host: str = ""
    observed_at: float = 0.0
    clear_passive: Exchange | None = None
    clear_advertised: tuple[str | None, int] | None = None
    clear_data: DataOutcome | None = None
    clear_skipped: str = ""
    auth: Exchange | None = None
    handshake: TlsHandshake | None = None
    unverified: TlsHandshake | None = None
    certificate: CertificateInfo | None = None
    login_in_tls: bool = False
    stopped: str = ""
    protection: tuple[Exchange, ...] = ()
    transfer: TlsTransfer | None = None
    no_reuse: TlsTransfer | None = None


@dataclass(frozen=True)
class TlsVersionOutcome:
    """One TLS version offered alone (action ``tls-versions``).

    ``version``: ``TLSv1``, ``TLSv1.1``, ``TLSv1.2``, ``TLSv1.3``;
    ``outcome``: ``accepted`` (the handshake completed), ``refused`` (the
    server answered with an alert or closed during the handshake),
    ``no-tls`` (AUTH TLS refused), ``untestable`` (this machine's OpenSSL
    cannot offer it), ``timeout``, ``reset`` or ``failed`` (the session
    failed before the handshake); ``detail``: the evidence line.
    """

    version: str
    outcome: Literal["accepted", "refused", "no-tls", "untestable", "timeout", "reset", "failed"]
    detail: str = ""


@dataclass(frozen=True)
class TlsVersionsObs(Observed):
    """Each TLS version offered alone in its own session, no login (action ``tls-versions``)."""

    mode: TlsMode = "explicit"
    versions: tuple[TlsVersionOutcome, ...] = ()


RefusalKind = Literal["421", "too-many", "other-reply", "timeout", "reset", "closed", "connect"]


@dataclass(frozen=True)
class SessionLimitObs(Observed):
    """Concurrent logged-in sessions, opened until the first refusal (action ``session-limit``).

    ``tried``: sessions wanted in all (``--max-sessions`` at most);
    ``held``: sessions this run already held (they count); ``accepted``:
    sessions open at once, ``held`` included; ``refusal``: how the next one
    failed (``421``; ``too-many``: a reply that says so in words; or a
    timeout, reset, close, connect failure, which show no limit);
    ``refusal_text``: its evidence; ``beside_data``: a session was refused
    at its login after a probe running beside the count (the packet
    capture) had sent PORT, so a server that counts data connections
    against its limit may allow one session more than ``accepted``.
    """

    tried: int = 0
    held: int = 0
    accepted: int = 0
    refusal: RefusalKind | None = None
    refusal_text: str = ""
    beside_data: bool = False


@dataclass(frozen=True)
class PassiveMapObs(Observed):
    """Repeated PASV/EPSV over ``sessions`` concurrent sessions (action ``pasv-map``).

    ``samples``: in the order they arrived; ``errors``: why a session
    stopped early; ``wanted``: samples asked for.
    """

    samples: tuple[PassiveSample, ...] = ()
    errors: tuple[str, ...] = ()
    sessions: int = 0
    wanted: int = 0


@dataclass(frozen=True)
class Reflection:
    """What an ``ftpprobe reflect`` server reported for one line: the bytes
    as they arrived, the peer address it saw, and the sizes of the reads the
    line arrived in (segment boundaries as received)."""

    arrived: bytes
    peer_seen: Address
    reads: tuple[int, ...] = ()


@dataclass(frozen=True)
class ReflectActiveObs(Observed):
    """PORT/EPRT variant to the reflector, then LIST (action ``reflect-active``).

    ``sent``: the exact line; ``reflection``: what the reflector received
    (``None`` if no report came back); ``local``: our end of the control
    connection; ``control_port``: the reflector port used; ``named``: the
    address and port the line named; ``transfer``: LIST and whether the
    reflector's connection back arrived (only for our own address);
    ``retry``: when the line got no reply, the same line once more in a new
    session (one lost packet is not a stall).
    """

    exchange: Exchange | None = None
    retry: Exchange | None = None
    sent: bytes = b""
    reflection: Reflection | None = None
    local: Address | None = None
    control_port: int = 21
    named: Address | None = None
    transfer: Transfer | None = None


@dataclass(frozen=True)
class ReflectPassiveObs(Observed):
    """PASV/EPSV variant to the reflector (action ``reflect-passive``).

    ``declared``: the address/port the reflector wrote in its 227/229 (out
    of band); ``advertised``: what arrived here; ``data``: the passive data
    connection to the advertised port (to the control peer's address);
    ``retry``: as for :class:`ReflectActiveObs`.
    """

    exchange: Exchange | None = None
    retry: Exchange | None = None
    sent: bytes = b""
    reflection: Reflection | None = None
    local: Address | None = None
    control_port: int = 21
    declared: tuple[str | None, int] | None = None
    advertised: tuple[str | None, int] | None = None
    data: DataOutcome | None = None
    parse_error: str = ""


Observation = (Failed | Skipped | CommandObs | PassiveObs | ActiveObs | BounceObs | ListingObs | AuthTlsObs
               | SessionLimitObs | PassiveMapObs | ReflectActiveObs | ReflectPassiveObs | TlsObs | TlsVersionsObs)

# -- packet-level evidence (ftpprobe.packets; needs root or CAP_NET_RAW) --------------


@dataclass(frozen=True)
class ResetSource:
    """Who sent one TCP RST, judged from the packet (:func:`ftpprobe.packets.attribute_resets`).

    ``time``: seconds (capture clock); ``ttl``: the RST's IP TTL as it
    arrived (hops left); ``ip_id``: its IP identification; ``window``: its
    raw TCP window; ``sender``: ``peer``, ``middlebox`` or ``unknown``;
    ``peer_ttls``: the TTLs of the peer's own packets on the connection;
    ``peer_ip_ids``: how the peer numbers its IP IDs (``zero``, ``counter``,
    ``random``); ``peer_windows``: windows it advertised (up to six);
    ``ip_id_match``/``window_match``: whether the RST's fit (``None``: no
    basis to tell); ``reason``: the comparison in words.
    """

    time: float
    ttl: int
    ip_id: int
    window: int
    sender: Literal["peer", "middlebox", "unknown"]
    peer_ttls: tuple[int, ...] = ()
    peer_ip_ids: str = ""
    peer_windows: tuple[int, ...] = ()
    ip_id_match: bool | None = None
    window_match: bool | None = None
    reason: str = ""

    def describe(self) -> str:
        who = {"peer": "sent by the peer itself", "middlebox": "sent by a middlebox, not the peer",
               "unknown": "sender unclear"}[self.sender]
        return f"RST (TTL {self.ttl}, IP ID {self.ip_id}, window {self.window}) {who}: {self.reason}"


@dataclass(frozen=True)
class ResetCaptureObs(Observed):
    """PORT (or EPRT) on a captured control connection (action ``reset-capture``).

    ``exchange``: the command and its outcome; ``local``/``peer``: the
    connection's ends (the capture's 4-tuple); ``peer_packets``: packets the
    peer sent on it that the capture saw (RSTs included); ``resets``: every
    RST that arrived from the peer's address, attributed; ``capture``: how
    packets were captured (interface, filter); ``lost``: what the capture
    lost, in words ("" when nothing: :meth:`ftpprobe.packets.Capture.losses`).
    """

    exchange: Exchange | None = None
    local: Address | None = None
    peer: Address | None = None
    peer_packets: int = 0
    resets: tuple[ResetSource, ...] = ()
    capture: str = ""
    lost: str = ""


HopState = Literal["as-sent", "rewritten", "partial", "not-quoted", "silent"]


@dataclass(frozen=True)
class Hop:
    """One TTL of a hop-by-hop probe (tracebox-style).

    ``ttl``: the IP TTL our segment left with (hops); ``address``: the
    router that answered with ICMP time exceeded (``None``: no answer);
    ``quoted``: the TCP payload it quoted (RFC 792); ``state``: ``as-sent``
    (the quote holds the line byte for byte), ``rewritten`` (it differs),
    ``partial`` (too short a quote to hold the line, its prefix as sent),
    ``not-quoted`` (no payload quoted), ``silent`` (no ICMP came).
    """

    ttl: int
    address: str | None = None
    quoted: bytes = b""
    state: HopState = "silent"


@dataclass(frozen=True)
class HopsObs(Observed):
    """A PORT line sent with IP TTL 1, 2, ... inside a logged-in session to a
    reflector, and the ICMP time-exceeded quotes of every hop (action ``hops``).

    ``sent``: the exact line; ``hops``: one per TTL tried, in order;
    ``reached_ttl``: the TTL at which the line reached the reflector (its
    ACK came back; ``None`` if it never did within the bound);
    ``reflection``: what the reflector reported receiving; ``exchange``: the
    line and its reply; ``local``: our end; ``capture``: how packets were
    captured; ``lost``: what the capture lost ("" when nothing);
    ``ttl_restored``: the socket's IP_TTL was set back afterwards.
    """

    sent: bytes = b""
    hops: tuple[Hop, ...] = ()
    reached_ttl: int | None = None
    reflection: Reflection | None = None
    exchange: Exchange | None = None
    local: Address | None = None
    capture: str = ""
    lost: str = ""
    ttl_restored: bool = True


#: The packet probes' observations join the union (kept apart from the line above: additive).
Observation = Observation | ResetCaptureObs | HopsObs


#: Addresses a 227 reply must not advertise to the internet: RFC 1918,
#: loopback, link-local, CGNAT (RFC 6598) and IPv6 unique-local.  Not
#: ``ipaddress``'s ``is_private``, which also counts the documentation ranges.
NON_ROUTABLE = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "169.254.0.0/16", "100.64.0.0/10",
    "::1/128", "fe80::/10", "fc00::/7"))


def non_routable(address: str) -> bool:
    """True for an address in :data:`NON_ROUTABLE`.  Raises ``ValueError`` for a non-address."""
    addr = ipaddress.ip_address(address)
    return any(addr.version == net.version and addr in net for net in NON_ROUTABLE)



# -- telling ALG implementations apart (ftpprobe.implementation_actions) -------------


@dataclass(frozen=True)
class ReflectVariantObs(ReflectActiveObs):
    """PORT/EPRT to the reflector written in one TCP segment together with
    another command, or naming a chosen port, with no transfer after it
    (action ``reflect-variant``).

    The inherited fields describe the PORT/EPRT line (``sent`` is that line
    alone; ``exchange.sent`` everything written).  ``companion_sent``: the
    other line written in the same segment (empty if none); ``position``:
    ``before`` (it preceded PORT) or ``after``; ``companion``: its reply,
    or why none came; ``companion_reflection``: what the reflector received
    for it.
    """

    companion_sent: bytes = b""
    position: str = "after"
    companion: Exchange | None = None
    companion_reflection: Reflection | None = None


@dataclass(frozen=True)
class ReflectReplyObs(Observed):
    """A command the reflector answers with a fixed text (action ``reflect-reply``),
    e.g. SYST: does the reply arrive as the reflector wrote it?

    ``exchange``: the command and its reply; ``expected``: the text the
    reflector writes (after the code); ``control_port``: the reflector port.
    """

    exchange: Exchange | None = None
    expected: str = ""
    control_port: int = 21


@dataclass(frozen=True)
class SynSeen:
    """The TCP SYN of the control connection as the reflector received it:
    ``ttl`` (hops left), ``window`` (bytes, unscaled), ``mss`` (bytes, 0
    absent), ``wscale`` (shift, -1 absent), ``options`` (kinds in order)."""

    ttl: int
    window: int
    mss: int = 0
    wscale: int = -1
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class SynObs(Observed):
    """Our control connection's SYN against the SYN the reflector received
    (action ``reflect-syn``): is the connection at the reflector ours, or one
    a middlebox opened (a proxy)?

    ``sent_mss``: the MSS our SYN advertised (bytes; set with TCP_MAXSEG);
    ``sent_ttl``: the IP TTL / hop limit we sent with; ``seen``: what the
    reflector saw (``None``: it could not say); ``exchange``: the
    ``SITE FTPPROBE-SYN`` command and its reply; ``local``: our end.
    """

    sent_mss: int = 0
    sent_ttl: int = 0
    seen: SynSeen | None = None
    exchange: Exchange | None = None
    local: Address | None = None
    control_port: int = 21


Observation = Observation | ReflectVariantObs | ReflectReplyObs | SynObs
