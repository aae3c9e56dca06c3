"""Rules of FTPS (RFC 4217): what the server says in clear text and inside TLS.

A router's FTP helper (ALG) reads the control connection: it rewrites the
address of a 227 reply and opens the data port the reply names.  Inside TLS
it reads nothing.  So a site whose server announces its private address, or
whose passive range is not forwarded, works for plain FTP and fails for
FTPS.  These rules compare the ``tls`` probe's plain session with its TLS
session (:class:`~ftpprobe.observations.TlsObs`), judge the certificate, and
the TLS versions and session-reuse demand (``tls-versions``).

As in :mod:`.server`: a timeout or a reset never becomes ``absent``; the
outcomes every rule shares (probe not run or failed) are decided by
:func:`ftpprobe.rules.decide` first and listed as "(shared)".
"""

from __future__ import annotations

import datetime as dt
import ipaddress

from ..findings import Finding
from ..observations import CertificateInfo, TlsObs, TlsTransfer, TlsVersionsObs, non_routable
from . import Seen, rule

#: Where a server's announced passive address and range are configured.
ADDRESS_OPTIONS = ("vsftpd pasv_address, pure-ftpd -P, proftpd MasqueradeAddress, "
                   "pyftpdlib masquerade_address")
RANGE_OPTIONS = "vsftpd pasv_min_port/pasv_max_port, pure-ftpd -p, proftpd PassivePorts"
#: Keys shorter than these (bits) are weak (NIST SP 800-57: 112-bit security).
WEAK_KEY_BITS = {"RSA": 2048, "DSA": 2048, "EC": 224}
WEAK_HASHES = ("md5", "sha1")
#: OpenSSL verification codes (X509_V_ERR_*) that name why a certificate was refused.
VERIFY_EXPIRED, VERIFY_NOT_YET_VALID = 10, 9
VERIFY_SELF_SIGNED = (18, 19)
VERIFY_NAME = (62, 64)
#: Versions a server should no longer accept (RFC 8996 deprecates TLS 1.0 and 1.1).
OLD_VERSIONS = ("TLSv1", "TLSv1.1")


def name_matches(host: str, names: tuple[str, ...]) -> bool:
    """Does the certificate's ``names`` cover ``host`` (RFC 6125 §6.4: an IP
    address only by an IP entry; a DNS name exactly, or by a wildcard for
    exactly the left-most label)?"""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for name in names:
        if address is not None:
            try:
                if ipaddress.ip_address(name) == address:
                    return True
            except ValueError:
                continue
            continue
        want, have = host.lower().rstrip("."), name.lower().rstrip(".")
        if want == have:
            return True
        if have.startswith("*.") and "." in want and want.split(".", 1)[1] == have[2:]:
            return True
    return False


def _when(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _no_tls(obs: TlsObs) -> str | None:
    """Why there is no TLS session to judge, as ``skipped`` (the server does
    not offer TLS), or ``None`` when TLS was tried."""
    if obs.auth is not None and obs.auth.reply is not None and obs.auth.code != 234 and obs.auth.negative:
        return f"the server does not offer AUTH TLS: {obs.auth.describe()}"
    return None


def _tls_failure(obs: TlsObs) -> str | None:
    """Why TLS did not come up although it was tried (no reply to AUTH TLS,
    a failed handshake), or ``None`` when a TLS session was made."""
    if obs.auth is not None and obs.auth.reply is None:
        return f"AUTH TLS got no reply: {obs.auth.describe()}"
    if obs.auth is not None and obs.auth.code != 234:
        return f"AUTH TLS was not accepted: {obs.auth.describe()}"
    usable = obs.unverified if obs.unverified is not None else obs.handshake
    if usable is None or not usable.ok:
        return "the TLS handshake failed: " + (usable.error if usable is not None else "not attempted")
    return None


def _transfer_line(name: str, t: TlsTransfer) -> list[str]:
    """Evidence lines of one transfer inside TLS."""
    lines = []
    if t.passive is not None:
        lines.append(f"{name}: {t.passive.describe()}")
    if t.data is not None:
        lines.append(f"{name}: {t.data.describe()}")
    if t.handshake is not None:
        h = t.handshake
        offered = "TLS session offered for reuse" if t.reuse_offered else "TLS session not offered for reuse"
        lines.append(f"{name}: data TLS handshake ({offered}): "
                     + (f"{h.version}, session {'resumed' if t.session_reused else 'not resumed'}" if h.ok
                        else h.error))
    if t.list_exchange is not None:
        lines.append(f"{name}: {t.list_exchange.describe()}")
    if t.final is not None:
        lines.append(f"{name}: after the transfer '{t.final.display(100)}' ({t.bytes} bytes read)")
    elif t.final_error:
        lines.append(f"{name}: after the transfer: {t.final_error}")
    return lines


def _clear_lines(obs: TlsObs) -> list[str]:
    lines = []
    if obs.clear_passive is not None:
        lines.append(f"in clear text: {obs.clear_passive.describe()}")
    if obs.clear_data is not None:
        lines.append(f"in clear text: {obs.clear_data.describe()}")
    return lines


def _common(seen: Seen, quirk: str) -> tuple[TlsObs | None, Finding | None]:
    """The ``tls`` observation, or the finding when it cannot be judged
    (no TLS offered: skipped; TLS tried and failed: inconclusive)."""
    obs = seen.get("tls")
    if not isinstance(obs, TlsObs):
        return None, Finding(quirk, "inconclusive", ["tls: no observation"])
    if (why := _no_tls(obs)) is not None:
        return None, Finding(quirk, "skipped", [why])
    if (why := _tls_failure(obs)) is not None:
        return None, Finding(quirk, "inconclusive", [why])
    return obs, None


@rule("server.pasv-relies-on-alg", reads=("tls",))
def pasv_relies_on_alg(seen: Seen) -> Finding:
    """Inside TLS the 227 reply names another address than in clear text:
    plain FTP works only because the router's FTP helper rewrites the reply.

    ============================================  ==========================================
    tls (plain PASV, then PASV inside TLS)        status
    ============================================  ==========================================
    probe not run                                 ``skipped`` (shared)
    probe failed (Failed)                         ``inconclusive`` (shared)
    AUTH TLS refused (4xx/5xx)                    ``skipped``: no FTPS here
    AUTH TLS without reply, handshake failed      ``inconclusive``
    no plain session (implicit FTPS, or it        ``skipped``, the reason
    would send a password in clear text)
    plain PASV: no 227 (refused, timeout, reset)  ``inconclusive``
    plain 229 only (EPSV, IPv6)                   ``skipped``: 229 names no address
    no PASV inside TLS (session stopped: login,   ``inconclusive``, the reason
    certificate, PROT P)
    PASV inside TLS: no 227 (refused, timeout)    ``inconclusive``
    both 227 name the same address                ``absent``
    the 227s name different addresses             ``present``
    ============================================  ==========================================
    """
    quirk = "server.pasv-relies-on-alg"
    obs, early = _common(seen, quirk)
    if early is not None:
        return early
    if obs.clear_skipped:
        return Finding(quirk, "skipped", [obs.clear_skipped])
    evidence = _clear_lines(obs)
    clear = obs.clear_advertised
    if clear is None:
        return Finding(quirk, "inconclusive", evidence + ["no 227 reply in clear text to compare with"])
    if clear[0] is None:
        return Finding(quirk, "skipped", evidence + ["EPSV's 229 reply names no address (RFC 2428 §3)"])
    t = obs.transfer
    if t is None or t.passive is None:
        return Finding(quirk, "inconclusive", evidence + [
            "no PASV was sent inside TLS" + (f": {obs.stopped}" if obs.stopped else "")])
    evidence += _transfer_line("inside TLS", t)[:1]
    if t.advertised is None or t.advertised[0] is None:
        return Finding(quirk, "inconclusive", evidence + ["no 227 reply inside TLS to compare with"])
    inside = t.advertised[0]
    data = {"clear": clear[0], "tls": inside}
    if inside == clear[0]:
        return Finding(quirk, "absent", evidence + [f"both name {inside}: nothing on the path rewrote the reply"],
                       data=data)
    evidence.insert(0, f"in clear text the 227 names {clear[0]}, inside TLS {inside}: something on the path (the "
                       "router's FTP helper) rewrote the clear-text reply, and cannot read the TLS one")
    private = ""
    try:
        if non_routable(inside):
            private = f" ({inside} is a private address: FTPS clients outside cannot reach it)"
    except ValueError:
        pass
    return Finding(quirk, "present", evidence,
                   f"configure the server to announce {clear[0]} itself{private} ({ADDRESS_OPTIONS}); plain FTP "
                   "works only because the router rewrites the reply, FTPS clients get the address the server "
                   "announces", data=data)


@rule("server.tls-data-unreachable", reads=("tls",))
def tls_data_unreachable(seen: Seen) -> Finding:
    """Passive ports reachable for plain FTP are not reachable for FTPS: the
    router opens them for its FTP helper's expectations, it does not forward
    them.

    ============================================  ==========================================
    tls (data connections: plain, inside TLS)     status
    ============================================  ==========================================
    probe not run                                 ``skipped`` (shared)
    probe failed (Failed)                         ``inconclusive`` (shared)
    AUTH TLS refused (4xx/5xx)                    ``skipped``: no FTPS here
    AUTH TLS without reply, handshake failed      ``inconclusive``
    no plain session                              ``skipped``, the reason
    no plain data connection attempted            ``inconclusive``
    plain data connection failed                  ``inconclusive``: it fails in clear text too
                                                  (``server.pasv-unreachable``)
    no data connection attempted inside TLS       ``inconclusive``, the reason
    a data connection inside TLS failed (TCP)     ``present``
    every data connection inside TLS connected    ``absent``
    ============================================  ==========================================

    Only the TCP connection counts here: a TLS handshake or a transfer that
    fails afterwards is ``server.tls-protocol``'s or the evidence's business.
    """
    quirk = "server.tls-data-unreachable"
    obs, early = _common(seen, quirk)
    if early is not None:
        return early
    if obs.clear_skipped:
        return Finding(quirk, "skipped", [obs.clear_skipped])
    evidence = _clear_lines(obs)
    if obs.clear_data is None:
        return Finding(quirk, "inconclusive", evidence + ["no data connection was tried in clear text"])
    if not obs.clear_data.connected:
        return Finding(quirk, "inconclusive", evidence + [
            "the data connection fails in clear text too: see server.pasv-unreachable"])
    tried = [(n, t) for n, t in (("inside TLS", obs.transfer), ("inside TLS, no session reuse", obs.no_reuse))
             if t is not None and t.data is not None]
    if not tried:
        return Finding(quirk, "inconclusive", evidence + [
            "no data connection was tried inside TLS" + (f": {obs.stopped}" if obs.stopped else "")])
    for name, t in tried:
        evidence += _transfer_line(name, t)[:2]
    failed = [t for _, t in tried if not t.data.connected]
    ports = sorted({t.data.port for _, t in tried})
    data = {"tls_ports": ports, "failed": [t.data.port for t in failed], "clear_port": obs.clear_data.port}
    if failed:
        return Finding(quirk, "present", [
            f"port {obs.clear_data.port} connected in clear text (the router's FTP helper opened it), "
            f"port(s) {', '.join(str(t.data.port) for t in failed)} did not inside TLS, where the helper "
            "cannot read the reply"] + evidence,
                       f"forward the server's whole passive range on the router ({RANGE_OPTIONS} set it) "
                       "instead of relying on its FTP helper", data=data)
    return Finding(quirk, "absent", evidence, data=data)


def certificate_problems(cert: CertificateInfo, host: str, at: float, verify_code: int = 0,
                         verify_message: str = "", verified: bool = False) -> list[tuple[str, str]]:
    """What is wrong with ``cert`` for ``host`` at ``at`` (UTC seconds):
    ``(kind, text)`` with kinds ``expired``, ``not-yet-valid``,
    ``other-name``, ``self-signed``, ``untrusted``, ``weak-key``,
    ``weak-signature``.  ``verify_code``/``verify_message``: OpenSSL's
    refusal, if any (``untrusted`` when it names nothing listed here)."""
    problems: list[tuple[str, str]] = []
    if at > cert.not_after or verify_code == VERIFY_EXPIRED:
        days = (at - cert.not_after) / 86400
        problems.append(("expired", f"expired on {_when(cert.not_after)} ({days:.0f} days ago)"))
    if at < cert.not_before or verify_code == VERIFY_NOT_YET_VALID:
        problems.append(("not-yet-valid", f"not valid before {_when(cert.not_before)}"))
    if not name_matches(host, cert.names) or verify_code in VERIFY_NAME:
        problems.append(("other-name", f"issued for {', '.join(cert.names) or 'no name'}, not for {host}"))
    if cert.self_signed or verify_code in VERIFY_SELF_SIGNED:
        problems.append(("self-signed", "self-signed: no client trusts it without being told to"))
    family = cert.key_type.split()[0] if cert.key_type else ""
    if family in WEAK_KEY_BITS and cert.key_bits < WEAK_KEY_BITS[family]:
        problems.append(("weak-key", f"weak key: {cert.key_type} {cert.key_bits} bits "
                                     f"(at least {WEAK_KEY_BITS[family]})"))
    if cert.signature_hash.lower() in WEAK_HASHES:
        problems.append(("weak-signature", f"signed with {cert.signature_hash}, which is broken"))
    if verify_code and not problems:
        problems.append(("untrusted", f"refused by this machine's trust store: {verify_message} "
                                      f"(issued by {cert.issuer})"))
    return problems


@rule("server.tls-certificate", reads=("tls",))
def tls_certificate(seen: Seen) -> Finding:
    """The server's certificate is expired, not yet valid, for another name,
    self-signed, not trusted, or has a weak key or signature; or it expires
    within ``--cert-warn-days`` (a warning, as check_http reports it).

    ============================================  ==========================================
    tls (the control connection's handshake)      status
    ============================================  ==========================================
    probe not run                                 ``skipped`` (shared)
    probe failed (Failed)                         ``inconclusive`` (shared)
    AUTH TLS refused (4xx/5xx)                    ``skipped``: no FTPS here
    AUTH TLS without reply, handshake failed      ``inconclusive``: no certificate seen
    (timeout, reset, alert)
    no certificate could be read                  ``inconclusive``
    expired or not yet valid                      ``present``, critical
    for another name, self-signed, untrusted,     ``present``, warning
    weak key (RSA/DSA < 2048, EC < 224 bits),
    MD5/SHA-1 signature
    accepted, but expires within N days           ``present``, warning
    accepted, none of the above                   ``absent``
    ============================================  ==========================================

    Evidence: subject, issuer, names, validity, key, signature hash,
    fingerprint, and OpenSSL's verdict.  Validity is judged at the moment the
    probe ran (``TlsObs.observed_at``).
    """
    quirk = "server.tls-certificate"
    obs, early = _common(seen, quirk)
    if early is not None:
        return early
    cert = obs.certificate
    if cert is None:
        return Finding(quirk, "inconclusive", ["the server's certificate could not be read"])
    checked = obs.handshake
    verdict = ("accepted by this machine's trust store and for this host name" if checked is not None and checked.ok
               else f"refused: {checked.verify_message or checked.error}" if checked is not None else "not checked")
    days_left = (cert.not_after - obs.observed_at) / 86400
    evidence = [f"subject: {cert.subject}", f"issuer: {cert.issuer}",
                f"names: {', '.join(cert.names) or '(none)'}",
                f"valid from {_when(cert.not_before)} to {_when(cert.not_after)} ({days_left:.0f} days left)",
                f"key: {cert.key_type} {cert.key_bits} bits; signature hash: {cert.signature_hash or '-'}",
                f"SHA-256 fingerprint: {cert.fingerprint}", f"certificate {verdict}"]
    data = {"subject": cert.subject, "issuer": cert.issuer, "names": list(cert.names),
            "not_before": _when(cert.not_before), "not_after": _when(cert.not_after),
            "days_left": round(days_left, 1), "key": f"{cert.key_type} {cert.key_bits}"}
    failed = checked is not None and not checked.ok
    problems = certificate_problems(cert, obs.host, obs.observed_at,
                                    checked.verify_code if failed else 0, checked.verify_message if failed else "")
    if failed and not checked.verify_code and not problems:
        return Finding(quirk, "inconclusive", evidence + [f"the handshake failed: {checked.error}"], data=data)
    if problems:
        kinds = [k for k, _ in problems]
        data["problems"] = kinds
        severity = "critical" if {"expired", "not-yet-valid"} & set(kinds) else "warning"
        return Finding(quirk, "present", [text for _, text in problems] + evidence,
                       "install a certificate from a CA the clients trust, issued for the name they connect to "
                       f"({obs.host}), valid now, with an RSA key of at least 2048 bits or an EC key "
                       "(vsftpd rsa_cert_file, pure-ftpd /etc/ssl/private/pure-ftpd.pem, proftpd "
                       "TLSRSACertificateFile)", severity=severity, data=data)
    warn = seen.facts.cert_warn_days
    if days_left < warn:
        data["problems"] = ["expires-soon"]
        return Finding(quirk, "present", [f"expires in {days_left:.1f} days (on {_when(cert.not_after)}), "
                                          f"within the {warn} days warned about"] + evidence,
                       "renew the certificate before it expires", severity="warning", data=data)
    return Finding(quirk, "absent", evidence, data=data)


def reuse_demand(obs: TlsObs) -> tuple[bool | None, list[str]]:
    """Does the server demand that data connections resume the control
    connection's TLS session?  ``(True/False/None, evidence)``: ``True`` when
    the transfer that resumed it worked and the one that did not failed
    after connecting; ``False`` when a transfer without resumption worked;
    ``None`` when the transfers do not tell (not made, timeouts, resets)."""
    first, second = obs.transfer, obs.no_reuse
    if first is None or first.handshake is None or not first.handshake.ok:
        return None, ["no data connection inside TLS completed its handshake: session reuse not tested"]
    evidence = _transfer_line("resumed", first)
    first_ok = first.final is not None and 200 <= first.final.code < 300
    if not first.session_reused:
        if first_ok:
            return False, evidence + ["the server did not resume the TLS session and the transfer worked"]
        return None, evidence + ["the server did not resume the offered session and the transfer failed"]
    if second is None or second.data is None or not second.data.connected:
        return None, evidence + ["no second data connection (without reuse) connected: not tested"]
    evidence += _transfer_line("not resumed", second)
    second_ok = second.final is not None and 200 <= second.final.code < 300
    if second_ok and (second.handshake is not None and second.handshake.ok):
        return False, evidence
    refused = (second.final is not None and second.final.code >= 400) or (
        second.handshake is not None and not second.handshake.ok and "no answer within" not in second.handshake.error
        and "reset" not in second.handshake.error)
    if first_ok and refused:
        return True, evidence + ["the transfer that resumed the control connection's TLS session worked, the one "
                                 "that did not was refused"]
    return None, evidence + ["the transfers do not tell whether session reuse is demanded"]


@rule("server.tls-protocol", reads=("tls-versions", "tls"))
def tls_protocol(seen: Seen) -> Finding:
    """The TLS versions the server accepts, and whether its data connections
    must resume the control connection's TLS session.

    ``tls-versions`` offers each version alone; ``tls`` tells the reuse
    demand (:func:`reuse_demand`) and the negotiated version.

    ============================================  ==========================================
    tls-versions / tls                            status
    ============================================  ==========================================
    neither probe run                             ``skipped`` (shared)
    every one that ran failed                     ``inconclusive`` (shared)
    no TLS offered (AUTH TLS refused)             ``skipped``
    TLS 1.0 or 1.1 accepted                       ``present``, warning (RFC 8996)
    session reuse demanded (a transfer without    ``present``, info
    it refused, one with it worked)
    a version's session timed out, was reset or   ``inconclusive`` (unless present above)
    failed before the handshake
    TLS came up in no session at all             ``inconclusive``
    otherwise (only TLS 1.2/1.3; reuse not        ``absent`` (the evidence says what was not
    demanded or not tested)                       tested)
    ============================================  ==========================================
    """
    quirk = "server.tls-protocol"
    versions = seen.get("tls-versions")
    obs = seen.get("tls")
    evidence: list[str] = []
    data: dict = {}
    undecided: list[str] = []
    no_tls = []
    if isinstance(versions, TlsVersionsObs):
        for v in versions.versions:
            evidence.append(f"{v.version}: {v.outcome}" + (f" ({v.detail})" if v.detail else ""))
        data["accepted"] = [v.version for v in versions.versions if v.outcome == "accepted"]
        undecided = [v.version for v in versions.versions if v.outcome in ("timeout", "reset", "failed")]
        no_tls = [v for v in versions.versions if v.outcome == "no-tls"]
        if no_tls and len(no_tls) == len(versions.versions):
            return Finding(quirk, "skipped", [f"the server does not offer AUTH TLS: {no_tls[0].detail}"])
    else:
        evidence.append("TLS versions not scanned (probe tls-versions not run)")
    demanded = None
    if isinstance(obs, TlsObs):
        if (why := _no_tls(obs)) is not None and not data.get("accepted"):
            return Finding(quirk, "skipped", [why])
        usable = obs.unverified if obs.unverified is not None else obs.handshake
        if usable is not None and usable.ok:
            evidence.append(f"control connection: {usable.version}, {usable.cipher}")
            data["negotiated"] = usable.version
        demanded, lines = reuse_demand(obs)
        evidence += lines
        data["reuse_demanded"] = demanded
    old = [v for v in data.get("accepted", []) if v in OLD_VERSIONS]
    if old or demanded:
        advice = []
        severity = "info"
        if old:
            severity = "warning"
            advice.append(f"disable {', '.join(old)} (RFC 8996), keep TLS 1.2 and 1.3 (vsftpd ssl_tlsv1=NO, "
                          "proftpd TLSProtocol TLSv1.2 TLSv1.3, pure-ftpd -J with a TLS 1.2 minimum)")
            evidence.insert(0, f"old versions accepted: {', '.join(old)}")
        if demanded:
            advice.append("data connections must resume the control connection's TLS session: clients that do "
                          "not (some libraries and scripts) get '522 SSL connection failed: session reuse "
                          "required'; keep it (it stops data-connection theft) and use a client that resumes "
                          "sessions (curl, lftp, FileZilla do), or vsftpd require_ssl_reuse=NO")
            evidence.insert(0, "session reuse demanded on data connections")
        return Finding(quirk, "present", evidence, "; ".join(advice), severity=severity, data=data)
    if undecided:
        return Finding(quirk, "inconclusive", evidence + [
            f"{', '.join(undecided)}: no answer or a reset, which shows neither acceptance nor refusal"], data=data)
    if not data.get("accepted") and "negotiated" not in data:
        return Finding(quirk, "inconclusive", evidence + ["TLS did not come up in any session"], data=data)
    if demanded is None:
        evidence.append("whether session reuse is demanded was not decided")
    return Finding(quirk, "absent", evidence, data=data)
