"""FTPS: FTP inside TLS (RFC 4217), through Python's ``ssl`` and ``trio.SSLStream``.

Explicit FTPS sends ``AUTH TLS`` on the ordinary control port and starts TLS
after the 234 reply (RFC 4217 §4); implicit FTPS (``ftps://``, port 990)
speaks TLS from the first byte.  After the login, ``PBSZ 0`` and ``PROT P``
(RFC 4217 §8, §9) make the data connections TLS too, each with its own
handshake in which the client offers the control connection's TLS session
for resumption (servers such as vsftpd with ``require_ssl_reuse=YES`` refuse
a data connection that does not resume it: "522 SSL connection failed:
session reuse required").

Why this matters to ftpprobe: a router's FTP helper (ALG) reads the control
connection to rewrite 227 replies and to open the data ports it names.  Inside
TLS it reads nothing, so :func:`observe_tls` compares what the server says in
clear text with what it says inside TLS (:mod:`ftpprobe.rules.tls` decides).

Certificates are checked by default against the system's trust store
(``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` name another one) and the host name.
Every ``ssl`` error becomes one of :mod:`ftpprobe.errors` in one place,
:func:`tls_error`; every handshake has a deadline.
"""

from __future__ import annotations

import functools
import hashlib
import os
import ssl
import time
import warnings
from typing import TYPE_CHECKING

import trio

from .codec import Command, parse_passive
from .data import connect_passive, passive_target, read_all
from .errors import FtpProbeError, LoginFailed, PeerClosed, ProtocolError, ReplyTimeout, TlsFailed
from .observations import (CertificateInfo, DataOutcome, Exchange, TlsHandshake, TlsObs, TlsTransfer,
                           TlsVersionOutcome, TlsVersionsObs)

if TYPE_CHECKING:
    from .catalog import Probe
    from .executors import ProbeContext
    from .transport import ControlSession

#: The control port of implicit FTPS (RFC 4217 §2 mentions it as historical; still common).
IMPLICIT_PORT = 990

#: The versions ``tls-versions`` offers one at a time, oldest first.
VERSIONS: dict[str, ssl.TLSVersion] = {
    "TLSv1": ssl.TLSVersion.TLSv1, "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}


def client_context(*, verify: bool = True, version: str | None = None) -> ssl.SSLContext:
    """A client context: the system trust store and host-name checking when
    ``verify``; neither otherwise (for diagnosis only; the trust store is
    then not read at all).

    ``version`` (a key of :data:`VERSIONS`) pins the context to that one
    version, lowering OpenSSL's security level where TLS 1.0/1.1 need it.
    Contexts are shared within the process (none is changed after it is
    made): reading the trust store costs tens of milliseconds of CPU, once
    per ``SSL_CERT_FILE``/``SSL_CERT_DIR`` setting rather than once per
    probe or site.  Raises ``ValueError`` or ``ssl.SSLError`` when this
    machine's OpenSSL cannot offer ``version``.
    """
    store = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")) if verify else None
    return _client_context(verify, version, store, os.environ.get("SSLKEYLOGFILE") or None)


@functools.lru_cache(maxsize=None)
def _client_context(verify: bool, version: str | None, store: tuple[str | None, str | None] | None,
                    keylog: str | None) -> ssl.SSLContext:
    """:func:`client_context`, made once per ``(verify, version, store, keylog)``."""
    if verify:
        context = ssl.create_default_context()  # also honours SSLKEYLOGFILE
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if keylog:  # as create_default_context does: session keys for decrypting a --pcap capture
            context.keylog_filename = keylog
    if version is not None:
        wanted = VERSIONS[version]
        if wanted < ssl.TLSVersion.TLSv1_2:
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():  # offering TLS 1.0/1.1 on purpose: to see whether the server takes them
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = wanted
            context.maximum_version = wanted
    return context


def tls_error(exc: BaseException, what: str) -> FtpProbeError:
    """The project's error for ``exc`` raised by ``ssl`` or ``trio.SSLStream``
    during a handshake or a read (the one place ssl errors are mapped).

    A refused certificate and a TLS alert become :class:`TlsFailed` (with
    OpenSSL's ``verify_code``/``verify_message`` or its reason); a close
    during the handshake (EOF) or a reset becomes :class:`PeerClosed`.
    """
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ else exc
    if isinstance(cause, ssl.SSLCertVerificationError):
        return TlsFailed(f"{what}: the server's certificate was refused: {cause.verify_message} "
                         "(--insecure-tls goes on anyway, for diagnosis)",
                         verify_code=cause.verify_code or 0, verify_message=cause.verify_message or "")
    if isinstance(cause, ssl.SSLEOFError) or getattr(cause, "reason", "") == "UNEXPECTED_EOF_WHILE_READING":
        return PeerClosed(f"{what}: connection closed by peer during the TLS handshake")
    if isinstance(cause, ssl.SSLError):
        reason = cause.reason or cause.__class__.__name__
        return TlsFailed(f"{what}: TLS handshake failed: {reason}", alert=reason)
    if isinstance(cause, (ConnectionResetError, BrokenPipeError)):
        return PeerClosed(f"{what}: connection reset by peer during the TLS handshake", reset=True)
    if isinstance(cause, OSError):
        return PeerClosed(f"{what}: {cause.strerror or cause}", reset=True)
    return PeerClosed(f"{what}: connection closed by peer during the TLS handshake")


async def handshake(transport: trio.SocketStream, context: ssl.SSLContext, server_hostname: str | None,
                    timeout: float, *, session: ssl.SSLSession | None = None,
                    what: str = "control") -> trio.SSLStream:
    """Wrap ``transport`` in TLS as the client and complete the handshake
    within ``timeout`` seconds; ``session`` is offered for resumption (RFC
    4217 §9 on a data connection; it must come from ``context``).

    Ragged EOF (a server that closes without close_notify) counts as EOF
    (``https_compatible``), as FTP servers often close data connections so.
    Raises :class:`TlsFailed`, :class:`PeerClosed` or :class:`ReplyTimeout`
    (with TCP_INFO).
    """
    from .transport import read_tcp_info

    stream = trio.SSLStream(transport, context, server_hostname=server_hostname, https_compatible=True)
    if session is not None:
        stream.session = session
    try:
        with trio.fail_after(timeout):
            await stream.do_handshake()
    except trio.TooSlowError:
        raise ReplyTimeout(f"{what}: TLS handshake: no answer within {timeout:g} s",
                           tcp_info=read_tcp_info(transport.socket)) from None
    except (trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
        raise tls_error(exc, what) from None
    return stream


def handshake_record(stream: trio.SSLStream, started: float) -> TlsHandshake:
    """A completed handshake as evidence."""
    cipher = stream.cipher()
    return TlsHandshake(True, version=stream.version() or "", cipher=cipher[0] if cipher else "",
                        verified=stream.context.verify_mode == ssl.CERT_REQUIRED,
                        elapsed=round(time.monotonic() - started, 3))


def failed_handshake(exc: FtpProbeError, started: float) -> TlsHandshake:
    """A failed handshake as evidence."""
    return TlsHandshake(False, verify_code=getattr(exc, "verify_code", 0),
                        verify_message=getattr(exc, "verify_message", ""), alert=getattr(exc, "alert", ""),
                        error=str(exc), elapsed=round(time.monotonic() - started, 3))


# -- certificates ------------------------------------------------------------------


def certificate_info(der: bytes) -> CertificateInfo | None:
    """Read the certificate ``der`` (RFC 5280) with the ``cryptography``
    package; ``None`` when it cannot be parsed."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(san.get_values_for_type(x509.DNSName)) + tuple(
            str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    except (x509.ExtensionNotFound, ValueError):
        names = tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME))
    before, after = cert.not_valid_before_utc, cert.not_valid_after_utc  # cryptography >= 42
    try:
        key = cert.public_key()
    except (ValueError, TypeError):  # an algorithm this cryptography does not know
        key = None
    if isinstance(key, rsa.RSAPublicKey):
        key_type, bits = "RSA", key.key_size
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key_type, bits = f"EC {key.curve.name}", key.curve.key_size
    elif isinstance(key, dsa.DSAPublicKey):
        key_type, bits = "DSA", key.key_size
    elif isinstance(key, ed25519.Ed25519PublicKey):
        key_type, bits = "Ed25519", 256
    elif isinstance(key, ed448.Ed448PublicKey):
        key_type, bits = "Ed448", 456
    else:
        key_type, bits = "unknown", 0
    try:
        digest = cert.signature_hash_algorithm
    except Exception:  # noqa: BLE001 -- an unsupported algorithm: no hash to name
        digest = None
    return CertificateInfo(subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(),
                           names=names, not_before=before.timestamp(), not_after=after.timestamp(),
                           key_type=key_type, key_bits=bits, signature_hash=digest.name if digest else "",
                           self_signed=cert.subject == cert.issuer, fingerprint=hashlib.sha256(der).hexdigest())


# -- sessions ---------------------------------------------------------------------------


async def auth_tls(s: ControlSession, context: ssl.SSLContext, host: str) -> Exchange:
    """``AUTH TLS`` (RFC 4217 §4) and, on its 234 reply, the handshake.

    Raises :class:`TlsFailed` when the server refuses AUTH TLS or the
    handshake fails, :class:`ReplyTimeout` / :class:`PeerClosed` /
    :class:`ProtocolError` when AUTH TLS gets no reply.
    """
    ex = await s.exchange(Command("AUTH", "TLS"))
    if ex.reply is None:
        if ex.outcome == "timeout":
            raise ReplyTimeout(f"AUTH TLS: {ex.error}")
        if ex.outcome == "malformed":
            raise ProtocolError(f"AUTH TLS: {ex.error}")
        raise PeerClosed(f"AUTH TLS: {ex.error}", reset=ex.outcome == "reset")
    if ex.reply.code != 234:
        raise TlsFailed(f"the server refused AUTH TLS (RFC 4217 §4): {ex.reply.display(120)}")
    await s.start_tls(context, host)
    return ex


async def protect(s: ControlSession) -> tuple[Exchange, Exchange | None]:
    """``PBSZ 0`` then ``PROT P`` (RFC 4217 §8, §9): data connections inside
    TLS.  ``PROT P`` is not sent when ``PBSZ`` was refused.  Never raises for
    the server's behaviour."""
    pbsz = await s.exchange(Command("PBSZ", "0"))
    if not pbsz.positive:
        return pbsz, None
    return pbsz, await s.exchange(Command("PROT", "P"))


async def close_quietly(stream: trio.abc.AsyncResource) -> None:
    """Close ``stream`` within a second, shielded; never raises."""
    with trio.CancelScope(shield=True), trio.move_on_after(1):
        try:
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ssl.SSLError):
            pass


async def transfer(s: ControlSession, context: ssl.SSLContext, timeout: float, *, reuse: bool,
                   trust_pasv_address: bool = False, limit: int = 1 << 16) -> TlsTransfer:
    """PASV (EPSV on IPv6), a data connection to its port, then LIST with the
    data connection's TLS handshake running while LIST's reply is awaited
    (servers differ: vsftpd and pure-ftpd send 150 before their handshake,
    others after it).  ``reuse``: offer the control connection's TLS session
    (RFC 4217 §9 does not demand it; vsftpd's ``require_ssl_reuse`` does).

    Reads at most ``limit`` bytes of the listing; every step has ``timeout``
    seconds.  Never raises for the server's or the path's behaviour.
    """
    assert s.tls is not None
    pasv = await s.exchange(Command("EPSV" if s.peer_address.version == 6 else "PASV"))
    if pasv.reply is None or pasv.reply.code not in (227, 229):
        return TlsTransfer(passive=pasv, reuse_offered=reuse)
    try:
        address, port = parse_passive(pasv.reply)
    except ProtocolError as exc:
        return TlsTransfer(passive=pasv, reuse_offered=reuse, final_error=str(exc))
    advertised = (str(address) if address is not None else None, port)
    host = passive_target(s.peer_address, address, trust_pasv_address=trust_pasv_address)
    tcp, result = await connect_passive(host, port, timeout)
    data = DataOutcome(host, port, result.connected, error=result.error)
    if tcp is None:
        return TlsTransfer(passive=pasv, advertised=advertised, data=data, reuse_offered=reuse)
    offered = s.tls.session if reuse else None
    got: dict = {}
    shake_scope = trio.CancelScope()

    async def send_list() -> None:
        got["list"] = ex = await s.exchange(Command("LIST"))
        if ex.reply is None or not 100 <= ex.reply.code < 200:
            shake_scope.cancel()  # no transfer: the server will not handshake

    async def shake() -> None:
        started = time.monotonic()
        with shake_scope:
            try:
                got["stream"] = stream = await handshake(tcp, context, s.host, timeout, session=offered, what="data")
                got["handshake"] = handshake_record(stream, started)
            except FtpProbeError as exc:
                got["handshake"] = failed_handshake(exc, started)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(shake)
        nursery.start_soon(send_list)
    stream = got.get("stream")
    count, reused = 0, None
    try:
        if stream is not None:
            reused = bool(stream.session_reused)
            data_bytes, count, _truncated, _timed_out = await read_all(stream, timeout, limit)
    finally:
        await close_quietly(stream if stream is not None else tcp)
    listed: Exchange = got["list"]
    final, final_error = None, ""
    if listed.reply is not None and 100 <= listed.reply.code < 200:
        try:
            final = await s.read_reply()
        except FtpProbeError as exc:
            final_error = str(exc)
    return TlsTransfer(passive=pasv, advertised=advertised, data=data, reuse_offered=offered is not None,
                       handshake=got.get("handshake"), session_reused=reused, list_exchange=listed,
                       final=final, final_error=final_error, bytes=count)


async def _clear_leg(ctx: ProbeContext) -> tuple[Exchange | None, tuple[str | None, int] | None,
                                                 DataOutcome | None, str, tuple[Exchange, ...]]:
    """PASV in a plain session and a TCP connection to its port: what the
    server says where a router's FTP helper can read (and rewrite) it.

    Returns ``(passive, advertised, data, skipped, exchanges)``; ``skipped``
    says why no plain session was made.  Raises nothing for the server's
    behaviour: a failed session becomes ``skipped``.
    """
    from .executors import _evidence_exchanges
    from .data import probe_passive_port

    target = ctx.target
    if target.tls == "implicit":
        return None, None, None, "implicit FTPS has no clear-text session to compare with", ()
    if target.tls != "none" and not target.anonymous:
        return None, None, None, (f"a clear-text session would send the password of {target.user} in clear "
                                  "text: not made (probe an anonymous account to compare)"), ()
    try:
        async with ctx.session(login=True, secure=False) as s:
            pasv = await s.exchange(Command("EPSV" if s.peer_address.version == 6 else "PASV"))
            advertised = data = None
            if pasv.reply is not None and pasv.reply.code in (227, 229):
                try:
                    address, port = parse_passive(pasv.reply)
                except ProtocolError:
                    pass
                else:
                    advertised = (str(address) if address is not None else None, port)
                    host = passive_target(s.peer_address, address, trust_pasv_address=ctx.trust_pasv_address)
                    result = await probe_passive_port(host, port, ctx.timeout)
                    data = DataOutcome(host, port, result.connected, error=result.error)
            return pasv, advertised, data, "", _evidence_exchanges(s)
    except FtpProbeError as exc:
        return None, None, None, f"the clear-text session failed: {exc}", ()


async def _open_secured(ctx: ProbeContext, context: ssl.SSLContext, mode: str
                        ) -> tuple[ControlSession | None, Exchange | None, TlsHandshake | None]:
    """Open a control session and bring it into TLS (``mode`` explicit or
    implicit).  Returns ``(session, auth, handshake)``: ``session`` is
    ``None`` when TLS did not come up (AUTH TLS refused, handshake failed).
    Raises :class:`FtpProbeError` when the session fails before TLS was tried.
    """
    from .transport import ControlSession

    s = await ControlSession.open(ctx.target.host, ctx.target.port, ctx.timeout)
    auth = None
    try:
        if mode == "explicit":
            greeting = await s.greet()
            if greeting.code != 220:
                raise ProtocolError(f"unexpected greeting {greeting.display(120)}")
            auth = await s.exchange(Command("AUTH", "TLS"))
            if auth.code != 234:
                await s.aclose()
                return None, auth, None
        started = time.monotonic()
        try:
            await s.start_tls(context, ctx.target.host)
        except FtpProbeError as exc:
            await s.aclose()
            return None, auth, failed_handshake(exc, started)
        record = handshake_record(s.tls, started)
        if mode == "implicit":
            greeting = await s.greet()
            if greeting.code != 220:
                raise ProtocolError(f"unexpected greeting inside TLS {greeting.display(120)}")
        return s, auth, record
    except BaseException:
        await s.aclose()
        raise


async def observe_tls(ctx: ProbeContext, probe: Probe) -> TlsObs:
    """The ``tls`` action: PASV in clear text, then a TLS session: the
    certificate (checked; when refused, read again without checking), the
    login inside TLS, ``PBSZ 0``/``PROT P``, PASV and LIST with the TLS
    session offered for reuse, and once more without offering it.

    After a refused certificate the session goes on (without checking) only
    for an anonymous login or with ``--insecure-tls``: a password is never
    sent to a server whose certificate was refused unless asked.  Raises
    :class:`FtpProbeError` when the TLS session fails before TLS was tried.
    """
    from .executors import _evidence_exchanges

    mode = "implicit" if ctx.target.tls == "implicit" else "explicit"
    observed_at = time.time()
    clear_passive, clear_advertised, clear_data, clear_skipped, exchanges = await _clear_leg(ctx)
    fields: dict = {}
    async with ctx.slot():
        context = client_context(verify=True)
        s, auth, checked = await _open_secured(ctx, context, mode)
        unverified = None
        if s is None and checked is not None and checked.verify_code:
            context = client_context(verify=False)
            s, auth, unverified = await _open_secured(ctx, context, mode)
        if s is None:
            return TlsObs(probe.name, exchanges=exchanges + ((auth,) if auth else ()), mode=mode,
                          host=ctx.target.host, observed_at=observed_at, clear_passive=clear_passive,
                          clear_advertised=clear_advertised, clear_data=clear_data, clear_skipped=clear_skipped,
                          auth=auth, handshake=checked, unverified=unverified)
        try:
            assert s.tls is not None
            der = s.tls.getpeercert(binary_form=True)
            fields["certificate"] = certificate_info(der) if der else None
            if unverified is not None and not ctx.target.anonymous and ctx.target.tls_verify:
                fields["stopped"] = (f"the certificate was refused ({checked.verify_message}): no password is "
                                     "sent to this server; give --insecure-tls to probe inside TLS anyway")
            else:
                try:
                    await ctx.login(s)
                    fields["login_in_tls"] = True
                except LoginFailed as exc:
                    fields["stopped"] = str(exc)
            if not fields.get("stopped"):
                pbsz, prot = await protect(s)
                fields["protection"] = tuple(e for e in (pbsz, prot) if e is not None)
                if prot is not None and prot.positive:
                    first = await transfer(s, context, ctx.timeout, reuse=True,
                                           trust_pasv_address=ctx.trust_pasv_address)
                    fields["transfer"] = first
                    if first.handshake is not None and first.handshake.ok and first.session_reused:
                        fields["no_reuse"] = await transfer(s, context, ctx.timeout, reuse=False,
                                                            trust_pasv_address=ctx.trust_pasv_address)
                else:
                    fields["stopped"] = "PROT P was not accepted: no data connection inside TLS"
        finally:
            exchanges += _evidence_exchanges(s)
            await s.aclose()
    return TlsObs(probe.name, exchanges=exchanges, mode=mode, host=ctx.target.host, observed_at=observed_at,
                  clear_passive=clear_passive, clear_advertised=clear_advertised, clear_data=clear_data,
                  clear_skipped=clear_skipped, auth=auth, handshake=checked, unverified=unverified, **fields)


async def observe_versions(ctx: ProbeContext, probe: Probe) -> TlsVersionsObs:
    """The ``tls-versions`` action: each of :data:`VERSIONS` offered alone,
    one session each, no login, certificate not checked (only the version
    is asked).  Never raises for the server's behaviour."""
    mode = "implicit" if ctx.target.tls == "implicit" else "explicit"
    outcomes: list[TlsVersionOutcome] = []
    async with ctx.slot():
        for name in VERSIONS:
            if outcomes and outcomes[-1].outcome == "no-tls":
                outcomes.append(TlsVersionOutcome(name, "no-tls", outcomes[-1].detail))  # asked once is enough
                continue
            try:
                context = client_context(verify=False, version=name)
            except (ValueError, ssl.SSLError) as exc:
                outcomes.append(TlsVersionOutcome(name, "untestable", f"this machine's OpenSSL cannot offer it ({exc})"))
                continue
            try:
                s, auth, record = await _open_secured(ctx, context, mode)
            except FtpProbeError as exc:
                outcomes.append(TlsVersionOutcome(name, "timeout" if isinstance(exc, ReplyTimeout) else "failed",
                                                  f"session failed before the handshake: {exc}"))
                continue
            if s is not None:
                await s.aclose()
                outcomes.append(TlsVersionOutcome(name, "accepted", f"handshake completed ({record.cipher})"))
            elif record is None:
                detail = auth.describe() if auth is not None else "no AUTH TLS exchange"
                outcomes.append(TlsVersionOutcome(name, "no-tls", detail))
            elif "no answer within" in record.error:
                outcomes.append(TlsVersionOutcome(name, "timeout", record.error))
            elif "reset" in record.error:
                outcomes.append(TlsVersionOutcome(name, "reset", record.error))
            elif record.alert == "NO_PROTOCOLS_AVAILABLE":
                outcomes.append(TlsVersionOutcome(name, "untestable", f"this machine's OpenSSL refused: {record.error}"))
            else:
                outcomes.append(TlsVersionOutcome(name, "refused", record.error))
    return TlsVersionsObs(probe.name, mode=mode, versions=tuple(outcomes))

