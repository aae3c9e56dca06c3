"""Rules of the server vantage: what any FTP server answered, no reflector needed.

Every rule declares what it reads; the outcomes every rule shares (probe not
run, its session failed, the canonical baseline missing or not working) are
decided by :func:`ftpprobe.rules.decide` before the rule runs, and each
docstring's table lists them again as "(shared)".

Principles the tables follow:

* a timeout or a reset never becomes ``absent``: no answer is no evidence
  that the server behaves well;
* ``present`` needs the evidence the catalog (QUIRKS.md) asks for: the exact
  bytes sent and what came back, and for the command variants the canonical
  line (``pasv-crlf``) answered on the same path;
* evidence lines are :meth:`Exchange.describe` (escaped bytes, never Python
  reprs).
"""

from __future__ import annotations

from ..codec import escape
from ..findings import Finding
from ..observations import ActiveObs, AuthTlsObs, BounceObs, CommandObs, ListingObs, PassiveObs, SessionLimitObs
from . import Seen, rule

#: Where the bounce, session-limit and source-port behaviour is configured.
BOUNCE_OPTIONS = ("vsftpd port_promiscuous=NO (its default), proftpd AllowForeignAddress off, "
                  "pyftpdlib permit_foreign_addresses=False")
LIMIT_OPTIONS = "vsftpd max_clients/max_per_ip, pure-ftpd -c/-C, proftpd MaxClients/MaxClientsPerHost"


def _no_command(quirk: str, probe: str, extra: list[str] | None = None) -> Finding:
    return Finding(quirk, "inconclusive", [f"{probe}: no command was sent"] + (extra or []))


def _failed_lines(seen: Seen) -> list[str]:
    return [f"probe {name} failed: {obs.error}" for name, obs in seen.failed.items()]


# --------------------------------------------------------------------------
# Command variants, compared with canonical PASV
# --------------------------------------------------------------------------

#: The decision table every variant rule follows (each rule's docstring repeats it).
VARIANT_TABLE = """
    ===============================================  =========================================
    the variant (and its retry in a new session)     status
    ===============================================  =========================================
    probe not run                                    ``skipped`` (shared)
    probe failed before the variant (Failed)         ``inconclusive`` (shared)
    probe skipped by its executor                    ``skipped`` (shared), its reason
    canonical pasv-crlf not run, failed, or without  ``inconclusive`` (shared): nothing to
    a positive reply (baseline failed)               compare with
    no command sent                                  ``inconclusive``
    positive reply, the canonical line's code        ``absent``: executed like PASV
    positive reply, another code (e.g. 202)          ``inconclusive``: not clearly executed
    negative reply 5xx                               ``present``: refused, not executed
    negative reply 4xx (transient)                   ``inconclusive``
    no reply within the short wait, then one reply   ``present``: held until a line ending
    once ``NOOP\\r\\n`` followed (the nudge)        followed, then parsed as that reply;
                                                     not executed as sent (no retry needed)
    the same, but the line's bytes were not yet      ``inconclusive``: the line may have
    acknowledged at the short wait (TCP_INFO)        reached the server with the nudge
    timeout, no retry made                           ``inconclusive``: one lost packet?
    timeout, the retry answered (or was reset)       ``inconclusive``: one lost packet
    timeout twice, bytes never acknowledged and      ``inconclusive``: the path drops them
    retransmitted (TCP_INFO)                         before the server
    timeout twice, and a canonical NOOP afterwards   ``inconclusive``: the whole connection
    got no answer either (or was not sent)           stalled, not only this line
    timeout twice, the NOOP afterwards answered      ``present``: never executed
    reset or closed                                  ``inconclusive``, the reset as evidence
    malformed reply                                  ``inconclusive``
    ===============================================  =========================================

    The short wait: a variant gets ``NOOP\\r\\n`` behind it once its bytes
    were acknowledged and two round trips more (at least 50 ms) brought no
    reply, or after 0.5 s (or 10 round trips) while they stay unacknowledged
    (:meth:`~ftpprobe.transport.ControlSession.exchange_nudged`); ``SYST``
    follows the first reply.  A reply to the line and then the NOOP's 200
    before SYST's reply is a late reply (the rows of a reply apply); one
    reply alone answered what the server held plus the line ending, so the
    server did not execute the line as sent; nothing even then is a timeout
    (the rows below: a NOOP afterwards, a retry in a new session).

    Why a double timeout is ``present``: the canonical line answered on the
    same path, the variant went unanswered twice in two fresh sessions (so
    not one lost packet), the kernel saw our bytes acknowledged (or could not
    tell), and the session was still alive (a NOOP sent after the variant was
    answered).  A server that buffers the line
    and waits for an ending it never gets behaves exactly so, and for a
    client that sends this spelling the command never runs.  A 4xx reply is
    not ``present``: RFC 959 §4.2.1 makes it transient (the command may work
    later), so it says nothing about the spelling.  A reset is not
    ``present`` either: a strict firewall in front of the server resets the
    same way, and a reset is not a refusal of the spelling.  The retry's own
    answer does not decide (one timeout then a reply leaves the verdict open)
    so that a flaky path never produces a verdict.
"""


def _variant(seen: Seen, quirk: str, probe: str, *, stall: str, advice: str) -> Finding:
    """Decide one variant rule by :data:`VARIANT_TABLE`.

    ``stall``: what a double timeout means for this variant (an evidence
    line); ``advice``: what to do when the quirk is present.
    """
    obs = seen.get(probe)
    base = seen.baseline
    base_ex = getattr(base, "exchange", None)
    canonical = f"canonical {base.probe}: {base_ex.describe()}" if base is not None and base_ex else ""
    if not isinstance(obs, CommandObs) or obs.exchange is None:
        return _no_command(quirk, probe, [canonical] if canonical else [])
    ex, retry = obs.exchange, obs.retry
    evidence = [f"{probe}: {ex.describe()}"]
    if retry is not None:
        evidence.append(f"{probe} again, in a new session: {retry.describe()}")
    if canonical:
        evidence.append(canonical)

    if ex.outcome == "reply" and ex.reply is not None:
        if ex.positive:
            if base_ex is not None and ex.code != base_ex.code:
                return Finding(quirk, "inconclusive", evidence + [
                    f"the variant got {ex.code}, the canonical line {base_ex.code}: "
                    "it is not clear that the server executed it"])
            return Finding(quirk, "absent", evidence)
        if ex.code is not None and ex.code >= 500:
            return Finding(quirk, "present", evidence + ["the server refused the line: not executed"], advice)
        return Finding(quirk, "inconclusive", evidence + [
            f"a transient refusal ({ex.code}) says nothing about this spelling: run the probe again"])

    nudge = obs.nudge
    if ex.outcome == "timeout" and nudge is not None and nudge.outcome == "reply" and nudge.reply is not None:
        evidence.insert(1, f"{probe}, then a line ending: {nudge.describe()} ({nudge.elapsed:g} s later)")
        if ex.tcp_info is not None and (ex.tcp_info.outq or 0) > 0:
            return Finding(quirk, "inconclusive", evidence + [
                "the line's bytes were not yet acknowledged when the line ending followed: the line may have "
                "reached the server only with it; this says nothing about the spelling"])
        evidence.append(f"no reply within {ex.elapsed:g} s; only once a line ending followed did the server "
                        f"answer, parsing what it held as '{nudge.reply.display(80)}': " + stall)
        return Finding(quirk, "present", evidence, advice)

    if ex.outcome == "timeout":
        if retry is None:
            return Finding(quirk, "inconclusive", evidence + [
                "no answer, and no retry was made: one lost packet cannot be ruled out"])
        if retry.outcome != "timeout":
            return Finding(quirk, "inconclusive", evidence + [
                "the retry did not time out the same way: the first timeout may have been one lost packet"])
        if any(e.tcp_info is not None and e.tcp_info.stall == "dropped" for e in (ex, retry)):
            return Finding(quirk, "inconclusive", evidence + [
                "the line's bytes were never acknowledged and were retransmitted: something on the path "
                "drops them before the server sees them (a router's FTP helper?); probe through a "
                "reflector to tell which"])
        if obs.alive_after is not True:
            return Finding(quirk, "inconclusive", evidence + [
                "a canonical NOOP sent afterwards got no answer either: the whole connection stalled, "
                "not only this line" if obs.alive_after is False else
                "whether the session was still alive afterwards is unknown (no NOOP was sent)"])
        evidence.append("no answer in two sessions while the canonical line answered: " + stall)
        evidence.append("a canonical NOOP sent afterwards was answered: the session was alive")
        return Finding(quirk, "present", evidence, advice)

    if ex.outcome in ("reset", "closed"):
        return Finding(quirk, "inconclusive", evidence + [
            f"the control connection was {ex.outcome} on this line: the server, or a strict firewall in front "
            "of it, drops sessions on it; that is not a refusal of the spelling"])
    return Finding(quirk, "inconclusive", evidence + ["the reply could not be read as an FTP reply"])


@rule("server.bare-lf-rejected", reads=("pasv-lf",), baseline="pasv-crlf")
def bare_lf_rejected(seen: Seen) -> Finding:
    """``PASV\\n`` (a bare LF instead of CRLF) is not executed.
    """
    return _variant(
        seen, "server.bare-lf-rejected", "pasv-lf",
        stall="the server never executed the line; it waits for a CRLF",
        advice="clients that end commands with a bare LF (some embedded devices and scripts) fail against this "
               "server: make the client send CRLF, as RFC 959 requires, or use a server that accepts a bare LF")


@rule("server.space-lf-rejected", reads=("pasv-space-lf",), baseline="pasv-crlf")
def space_lf_rejected(seen: Seen) -> Finding:
    """``PASV \\n`` (a space, then a bare LF) is not executed.
    """
    return _variant(
        seen, "server.space-lf-rejected", "pasv-space-lf",
        stall="the server never executed the line; it waits for a CRLF",
        advice="clients that send 'PASV \\n' (a trailing space and a bare LF, as some media players and signage "
               "boxes do) cannot open a data connection here: fix the client to send 'PASV\\r\\n', or use a "
               "server that accepts this spelling")


@rule("server.cr-rejected", reads=("pasv-cr",), baseline="pasv-crlf")
def cr_rejected(seen: Seen) -> Finding:
    """``PASV\\r`` (a bare CR instead of CRLF) is not executed.
    """
    return _variant(
        seen, "server.cr-rejected", "pasv-cr",
        stall="the server never executed the line; it waits for a line feed",
        advice="clients that end commands with a bare CR (old Mac-style line endings) fail against this server: "
               "make the client send CRLF, as RFC 959 requires")


@rule("server.trailing-space-rejected", reads=("pasv-trailing-space",), baseline="pasv-crlf")
def trailing_space_rejected(seen: Seen) -> Finding:
    """``PASV \\r\\n`` (a space before CRLF) is refused or not executed.
    """
    return _variant(
        seen, "server.trailing-space-rejected", "pasv-trailing-space",
        stall="the server never executed the line, although it ended with CRLF",
        advice="clients that put a space after a command without an argument fail against this server: fix the "
               "client, or use a server that ignores trailing spaces")


@rule("server.split-rejected", reads=("pasv-split",), baseline="pasv-crlf")
def split_rejected(seen: Seen) -> Finding:
    """``PASV\\r\\n`` sent as two TCP segments (``PA`` | ``SV\\r\\n``) is not executed.
    """
    return _variant(
        seen, "server.split-rejected", "pasv-split",
        stall="the server never executed a line that arrived in two pieces",
        advice="the server treats each TCP segment as a whole command: any client, link or proxy that splits a "
               "line (small MTU, slow links, TLS records, Nagle) breaks it; a server must read up to CRLF: "
               "upgrade or replace it")


@rule("server.case-sensitive", reads=("pasv-lowercase",), baseline="pasv-crlf")
def case_sensitive(seen: Seen) -> Finding:
    """``pasv\\r\\n`` (lower case) is refused or not executed.
    """
    return _variant(
        seen, "server.case-sensitive", "pasv-lowercase",
        stall="the server never executed the lower-case line",
        advice="RFC 959 §5.3 makes commands case-insensitive; clients that send lower-case commands fail against "
               "this server: upgrade or reconfigure it")


for _fn in (bare_lf_rejected, space_lf_rejected, cr_rejected, trailing_space_rejected, split_rejected,
            case_sensitive):
    _fn.__doc__ = (_fn.__doc__ or "").rstrip() + "\n" + VARIANT_TABLE


@rule("server.psw-alias", reads=("psw-alias",))
def psw_alias(seen: Seen) -> Finding:
    """``P@SW`` (PASV as an SMC Barricade mangles it) is accepted as PASV.

    No baseline: a 227 to ``P@SW`` is the quirk whatever canonical PASV did.

    ========================================  ==========================================
    the P@SW exchange                         status
    ========================================  ==========================================
    probe not run                             ``skipped`` (shared)
    probe failed before P@SW (Failed)         ``inconclusive`` (shared)
    probe skipped by its executor             ``skipped`` (shared), its reason
    no command sent                           ``inconclusive``
    positive reply 227 (entering passive)     ``present``
    positive reply, another code (e.g. 202)   ``absent``: not executed as PASV
    negative reply 5xx                        ``absent``: refused
    negative reply 4xx (transient)            ``inconclusive``
    timeout (with or without a retry)         ``inconclusive``: no answer is no refusal
    reset or closed                           ``inconclusive``
    malformed reply                           ``inconclusive``
    ========================================  ==========================================
    """
    quirk = "server.psw-alias"
    obs = seen.get("psw-alias")
    if not isinstance(obs, CommandObs) or obs.exchange is None:
        return _no_command(quirk, "psw-alias")
    ex = obs.exchange
    evidence = [f"psw-alias: {ex.describe()}"]
    if obs.retry is not None:
        evidence.append(f"psw-alias again, in a new session: {obs.retry.describe()}")
    if ex.outcome == "reply" and ex.reply is not None:
        if ex.code == 227:
            return Finding(quirk, "present", evidence,
                           "harmless: clients behind a router that mangles PASV into P@SW (SMC Barricade) can "
                           "still use passive mode with this server")
        if ex.positive:
            return Finding(quirk, "absent", evidence + [f"{ex.code} is not 227: not executed as PASV"])
        if ex.code is not None and ex.code >= 500:
            return Finding(quirk, "absent", evidence + ["the server refuses P@SW"])
        return Finding(quirk, "inconclusive", evidence + [
            f"a transient refusal ({ex.code}) does not tell: run the probe again"])
    if ex.outcome == "timeout":
        return Finding(quirk, "inconclusive", evidence + ["no answer: neither accepted nor refused"])
    if ex.outcome in ("reset", "closed"):
        return Finding(quirk, "inconclusive", evidence + [f"the control connection was {ex.outcome} on P@SW"])
    return Finding(quirk, "inconclusive", evidence + ["the reply could not be read as an FTP reply"])


# --------------------------------------------------------------------------
# EPSV, PORT, active mode
# --------------------------------------------------------------------------


@rule("server.epsv-unsupported", reads=("epsv",))
def epsv_unsupported(seen: Seen) -> Finding:
    """EPSV (RFC 2428 §3) is refused.

    The data connection to the 229's port is evidence only: whether it
    connects is ``server.pasv-unreachable`` / ``path.passive-blocked``.

    ========================================  ==========================================
    the EPSV exchange                         status
    ========================================  ==========================================
    probe not run                             ``skipped`` (shared)
    probe failed before EPSV (Failed)         ``inconclusive`` (shared)
    probe skipped                             ``skipped`` (shared), its reason
    no command sent                           ``inconclusive``
    229 reply, parsed                         ``absent``
    229 reply that cannot be parsed           ``inconclusive``: not refused, but broken
    202 (command not implemented)             ``present``
    other positive reply                      ``inconclusive``: EPSV answers 229
    negative reply 5xx (500, 502, 522, ...)   ``present``
    negative reply 4xx (transient)            ``inconclusive``
    timeout                                   ``inconclusive``
    reset or closed                           ``inconclusive``
    malformed reply                           ``inconclusive``
    ========================================  ==========================================
    """
    quirk = "server.epsv-unsupported"
    obs = seen.get("epsv")
    if not isinstance(obs, PassiveObs) or obs.exchange is None:
        return _no_command(quirk, "epsv")
    ex = obs.exchange
    evidence = [f"epsv: {ex.describe()}"]
    advice = ("enable EPSV (RFC 2428): it names no address, so NAT cannot break it the way it breaks "
              "227 replies")
    if ex.outcome == "reply" and ex.reply is not None:
        code = ex.code or 0
        if code == 229:
            if obs.parse_error:
                return Finding(quirk, "inconclusive", evidence + [f"the 229 reply cannot be parsed: {obs.parse_error}"],
                               "fix the 229 reply's format: '229 Entering Extended Passive Mode (|||port|)'")
            if obs.data is not None:
                evidence.append(obs.data.describe())
            return Finding(quirk, "absent", evidence)
        if code == 202 or code >= 500:
            return Finding(quirk, "present", evidence, advice)
        if ex.positive:
            return Finding(quirk, "inconclusive", evidence + [f"EPSV answers 229 (RFC 2428 §3), not {code}"])
        return Finding(quirk, "inconclusive", evidence + [
            f"a transient refusal ({code}) does not tell: run the probe again"])
    if ex.outcome in ("timeout", "reset", "closed"):
        return Finding(quirk, "inconclusive", evidence + [f"EPSV got no reply ({ex.outcome}): no verdict"])
    return Finding(quirk, "inconclusive", evidence + ["the reply could not be read as an FTP reply"])


@rule("server.port-foreign-accepted", reads=("port-foreign",))
def port_foreign_accepted(seen: Seen) -> Finding:
    """PORT naming a third party (TEST-NET) is accepted: FTP bounce is possible.

    The probe never sends a transfer command after it: the server is asked,
    never made to connect.

    ========================================  ==========================================
    the PORT exchange                         status
    ========================================  ==========================================
    probe not run                             ``skipped`` (shared)
    probe failed before PORT (Failed)         ``inconclusive`` (shared)
    probe skipped (e.g. an IPv6 peer)         ``skipped`` (shared), its reason
    no command sent                           ``inconclusive``
    positive reply (200)                      ``present``
    421 (service closing)                     ``inconclusive``: not an answer to the address
    other negative reply (4xx/5xx)            ``absent``: refused
    timeout                                   ``inconclusive``
    reset or closed                           ``inconclusive``
    malformed reply                           ``inconclusive``
    ========================================  ==========================================
    """
    quirk = "server.port-foreign-accepted"
    obs = seen.get("port-foreign")
    if not isinstance(obs, BounceObs) or obs.exchange is None:
        return _no_command(quirk, "port-foreign")
    ex = obs.exchange
    evidence = [f"port-foreign: {ex.describe()}"]
    if obs.foreign is not None:
        evidence.append(f"the line named {obs.foreign[0]} port {obs.foreign[1]}, not the prober's address")
    evidence.append("no transfer command was sent after it")
    if ex.outcome == "reply" and ex.reply is not None:
        if ex.positive:
            return Finding(quirk, "present", evidence,
                           "refuse PORT to addresses other than the client's, or anyone can make the server "
                           f"connect to third parties (FTP bounce, CERT CA-1997-27): {BOUNCE_OPTIONS}")
        if ex.code == 421:
            return Finding(quirk, "inconclusive", evidence + ["421: the server is closing the session, "
                                                              "not answering the address"])
        return Finding(quirk, "absent", evidence)
    if ex.outcome in ("timeout", "reset", "closed"):
        return Finding(quirk, "inconclusive", evidence + [f"PORT got no reply ({ex.outcome}): no verdict"])
    return Finding(quirk, "inconclusive", evidence + ["the reply could not be read as an FTP reply"])


@rule("server.port-reset", reads=("port-own", "eprt-own", "port-reset-source"))
def port_reset(seen: Seen) -> Finding:
    """The server drops or resets the control connection on PORT (or EPRT).

    Each of ``port-own`` and ``eprt-own`` that ran is judged on its PORT/EPRT
    exchange alone (a reset on the LIST that follows is evidence, but
    ``path.active-blocked``'s business); the finding combines them.

    ========================================  ==========================================
    PORT / EPRT exchange (each probe)         status
    ========================================  ==========================================
    neither probe run (not run)               ``skipped`` (shared)
    every one that ran failed (Failed)        ``inconclusive`` (shared)
    every one that ran was skipped            ``skipped`` (shared)
    reset or closed (any probe)               ``present``
    a reply (positive or negative)            that probe shows no reset
    timeout                                   ``inconclusive``: no answer is no survival
    malformed reply                           ``inconclusive``
    no command sent                           ``inconclusive``
    ========================================  ==========================================

    Combined: ``present`` if any probe was reset or closed; ``absent`` only
    if every probe that ran got a reply and none failed; otherwise
    ``inconclusive``.  A reset injected by a middlebox looks the same from
    here (``path.reset-injected`` tells them apart): the evidence says so.
    """
    quirk = "server.port-reset"
    evidence: list[str] = []
    dropped, answered, undecided = False, 0, False
    for name in ("port-own", "eprt-own"):
        obs = seen.get(name)
        if obs is None:
            continue
        ex = obs.exchange if isinstance(obs, ActiveObs) else None
        if ex is None:
            evidence.append(f"{name}: no command was sent")
            undecided = True
            continue
        evidence.append(f"{name}: {ex.describe()}")
        if ex.outcome in ("reset", "closed"):
            dropped = True
        elif ex.outcome == "reply" and ex.reply is not None:
            answered += 1
            listed = obs.transfer.list_exchange if obs.transfer is not None else None
            if listed is not None and listed.outcome in ("reset", "closed"):
                evidence.append(f"{name}, then LIST: {listed.describe()}")
        else:
            undecided = True
    evidence += _failed_lines(seen)
    from .packets import reset_evidence  # who reset, from a packet capture (path.reset-injected)

    who = reset_evidence(seen.get("port-reset-source"))
    evidence += who
    if dropped:
        return Finding(quirk, "present", evidence + ([] if who else [
            "a reset sent by a firewall on the path looks the same from here"]),
                       "the server, or a firewall in front of it, kills the session on PORT/EPRT: use passive "
                       "mode (PASV/EPSV), or find the firewall rule that drops active-mode commands")
    if answered and not undecided and not seen.failed:
        return Finding(quirk, "absent", evidence)
    return Finding(quirk, "inconclusive", evidence + [
        "a PORT/EPRT without a reply shows neither a reset nor a surviving session"])


@rule("server.active-source-port", reads=("port-own",))
def active_source_port(seen: Seen) -> Finding:
    """The active-mode data connection does not come from port L-1 (20 for
    control port 21; RFC 959 §3.3).

    ========================================  ==========================================
    port-own                                  status
    ========================================  ==========================================
    probe not run                             ``skipped`` (shared)
    probe failed before PORT (Failed)         ``inconclusive`` (shared)
    probe skipped (e.g. an IPv6 peer)         ``skipped`` (shared), its reason
    no command sent                           ``inconclusive``
    PORT refused (negative reply)             ``inconclusive``: no connection to measure
    PORT timeout, reset, closed, malformed    ``inconclusive``
    LIST did not start a transfer             ``inconclusive``
    no data connection arrived                ``inconclusive`` (``path.active-blocked``)
    it arrived from control port - 1          ``absent``
    it arrived from another port              ``present``
    ========================================  ==========================================

    The source port is the one seen here: a NAT in front of the server may
    have changed it, and the evidence says so.
    """
    quirk = "server.active-source-port"
    obs = seen.get("port-own")
    if not isinstance(obs, ActiveObs) or obs.exchange is None:
        return _no_command(quirk, "port-own")
    ex = obs.exchange
    evidence = [f"port-own: {ex.describe()}"]
    if not ex.positive:
        return Finding(quirk, "inconclusive", evidence + ["PORT was not accepted: no data connection to measure"])
    transfer = obs.transfer
    if transfer is None:
        return Finding(quirk, "inconclusive", evidence + ["no LIST was sent: no data connection to measure"])
    evidence.append(f"port-own, then LIST: {transfer.list_exchange.describe()}")
    if not transfer.expected:
        return Finding(quirk, "inconclusive", evidence + ["LIST did not start a transfer: no data connection"])
    if not transfer.connected or transfer.source is None:
        return Finding(quirk, "inconclusive", evidence + [
            "no active-mode data connection arrived" + (f" ({transfer.error})" if transfer.error else "")
            + ": nothing to measure"])
    source_port, expected = transfer.source[1], obs.control_port - 1
    evidence.append(f"the data connection came from {transfer.source[0]} port {source_port}; RFC 959 §3.3's "
                    f"default is the control port - 1 = {expected} (as seen here: a NAT in front of the "
                    "server may change it)")
    data = {"source_port": source_port, "expected": expected}
    if source_port == expected:
        return Finding(quirk, "absent", evidence, data=data)
    return Finding(quirk, "present", evidence,
                   f"client firewalls that admit active-mode data only from port {expected} drop this connection: "
                   "make the server connect from it (vsftpd connect_from_port_20=YES), or let the client's "
                   "firewall track FTP (a conntrack helper) instead of a source-port rule", data=data)


# --------------------------------------------------------------------------
# Login, listing, sessions
# --------------------------------------------------------------------------


@rule("server.cleartext-login", reads=("auth-tls",))
def cleartext_login(seen: Seen) -> Finding:
    """Credentials were sent in clear text; AUTH TLS (RFC 4217) offered or not.

    Decided from what was sent (``AuthTlsObs.password_sent_in_clear``), not
    from the user name alone.  AUTH TLS is "offered" on a 234/334 reply (RFC
    2228/4217), "refused" on a negative one, "unknown" without a reply; it
    shapes the evidence and advice, never the status: the status is about
    what crossed the wire, which the run itself knows.

    ============================================  ==========================================
    auth-tls                                      status
    ============================================  ==========================================
    probe not run                                 ``skipped`` (shared)
    probe failed (Failed)                         ``inconclusive`` (shared)
    a password crossed in clear, real user        ``present`` (whatever AUTH TLS answered)
    only the anonymous identity crossed in clear  ``absent``: no secret exposed; the
                                                  evidence says a real user's password
                                                  would cross the same way, and whether
                                                  AUTH TLS is offered
    no password crossed in clear                  ``absent``
    the login went inside TLS (FTPS target:       ``absent``: the evidence says so
    ``password_sent_in_tls``), none in clear
    AUTH TLS timeout, reset, malformed            no effect on the status: "unknown"
    ============================================  ==========================================
    """
    quirk = "server.cleartext-login"
    obs = seen.get("auth-tls")
    if not isinstance(obs, AuthTlsObs):
        return _no_command(quirk, "auth-tls")
    ex = obs.exchange
    if ex is not None and ex.outcome == "reply" and ex.reply is not None:
        offered = "offered" if ex.code in (234, 334) else ("refused" if ex.negative else "unknown")
    else:
        offered = "unknown"
    if obs.tls_mode == "implicit":
        offered = "offered"  # implicit FTPS: the port speaks TLS from the first byte
    evidence = [f"auth-tls: {ex.describe()}" if ex is not None else "auth-tls: AUTH TLS was not sent",
                f"FEAT lists AUTH TLS: {'yes' if obs.feat_auth_tls else 'no'}"]
    data = {"auth_tls": offered, "feat_auth_tls": obs.feat_auth_tls, "anonymous": obs.anonymous}
    enable = "enable AUTH TLS (RFC 4217: vsftpd ssl_enable=YES, pure-ftpd -Y 1, proftpd mod_tls) or move to SFTP"
    if offered == "offered":
        tls_line = "the server offers AUTH TLS: a client can protect the login"
    elif offered == "refused":
        tls_line = "the server refuses AUTH TLS: every login crosses in clear text"
    else:
        tls_line = "whether the server offers AUTH TLS is unknown (no usable reply)"
    if obs.password_sent_in_clear and not obs.anonymous:
        evidence += [f"USER {obs.user} and its password were sent in clear text (plain ftp://)", tls_line]
        advice = ("configure clients for explicit FTPS (AUTH TLS), and make the server require it "
                  "(vsftpd force_local_logins_ssl=YES)" if offered == "offered" else enable)
        return Finding(quirk, "present", evidence, advice, data=data)
    if obs.password_sent_in_clear:
        evidence += [f"only the anonymous login (USER {obs.user or 'anonymous'}) crossed in clear text: no secret was "
                     "exposed, but a real user's password would cross the same way unless the client uses "
                     "AUTH TLS", tls_line]
    else:
        evidence += ["no session of this run sent a password in clear text", tls_line]
    if obs.password_sent_in_tls and not obs.password_sent_in_clear:
        evidence.insert(0, f"the login (USER {obs.user}) went inside TLS (RFC 4217 §4)")
        return Finding(quirk, "absent", evidence, data={**data, "login_in_tls": True})
    advice = "" if offered == "offered" else "real users' passwords would cross in clear text: " + enable
    return Finding(quirk, "absent", evidence, advice, data=data)


@rule("server.list-unparseable", reads=("list-format",))
def list_unparseable(seen: Seen) -> Finding:
    """LIST output is neither Unix- nor DOS-style, and MLSD (RFC 3659) is missing.

    ============================================  ==========================================
    list-format                                   status
    ============================================  ==========================================
    probe not run                                 ``skipped`` (shared)
    probe failed (Failed)                         ``inconclusive`` (shared)
    no passive data connection                    ``inconclusive``
    LIST not sent, refused, timeout, reset,       ``inconclusive``: no listing to judge
    malformed reply
    unparseable lines, no MLSD                    ``present`` (even from a partial read)
    unparseable lines, MLSD offered               ``absent``: clients use MLSD
    every line parsed, listing complete           ``absent``
    every line parsed, read stopped at 1 MiB      ``absent`` (the evidence says so)
    every line parsed, data timed out             ``inconclusive``: the rest was not seen
    empty listing, MLSD offered                   ``absent``
    empty listing, no MLSD                        ``inconclusive``: nothing to judge
    ============================================  ==========================================
    """
    quirk = "server.list-unparseable"
    obs = seen.get("list-format")
    if not isinstance(obs, ListingObs):
        return _no_command(quirk, "list-format")
    if obs.no_passive:
        return Finding(quirk, "inconclusive", [f"no passive data connection for LIST: {obs.no_passive}"])
    ex = obs.list_exchange
    if ex is None:
        return _no_command(quirk, "list-format")
    evidence = [f"list-format: {ex.describe()}"]
    if not ex.positive:
        return Finding(quirk, "inconclusive", evidence + ["LIST was not answered with a transfer: no listing"])
    evidence += [f"LIST: {obs.lines} lines, {obs.bytes} bytes, style {obs.style}"
                 + (" (read stopped at 1 MiB)" if obs.truncated else "")
                 + (" (the data connection did not end within the timeout)" if obs.timed_out else ""),
                 f"MLSD offered in FEAT: {'yes' if obs.mlsd else 'no'}"]
    evidence += [f"unparseable line: '{escape(line)}'" for line in obs.unparseable]
    if obs.unparseable_count > len(obs.unparseable):
        evidence.append(f"{obs.unparseable_count} unparseable lines in all")
    data = {"style": obs.style, "mlsd": obs.mlsd, "unparseable": obs.unparseable_count}
    if obs.unparseable_count and not obs.mlsd:
        return Finding(quirk, "present", evidence,
                       "GUI clients may not parse this listing: make the server use Unix-style LIST output, or "
                       "enable MLSD (RFC 3659)", data=data)
    if obs.mlsd:
        return Finding(quirk, "absent", evidence, data=data)
    if not obs.lines:
        return Finding(quirk, "inconclusive", evidence + ["the listed directory is empty: nothing to judge"],
                       data=data)
    if obs.timed_out:
        return Finding(quirk, "inconclusive", evidence + ["the listing did not finish: the rest was not seen"],
                       data=data)
    return Finding(quirk, "absent", evidence, data=data)


@rule("server.connection-limit", reads=("session-limit",))
def connection_limit(seen: Seen) -> Finding:
    """The server limits concurrent sessions (421, "user N of M allowed").

    Only a refusal in words shows a limit: a 421 reply, or a reply that says
    "too many" (the executor's ``too-many``).  A timeout, reset, close or
    connect failure of the next session can be loss, a rate limit or a
    firewall: it shows no limit, so it leaves the verdict open.

    ============================================  ==========================================
    session-limit                                 status
    ============================================  ==========================================
    probe not run                                 ``skipped`` (shared)
    probe failed (Failed)                         ``inconclusive`` (shared)
    next session refused with 421                 ``present``, limit = sessions accepted
    next session refused "too many" in words      ``present``, limit = sessions accepted
    next session got another reply                ``inconclusive``, its text as evidence
    next session timed out, reset, closed,        ``inconclusive``
    or could not connect
    every session accepted (``tried`` of them)    ``absent``: no limit up to N sessions
    fewer accepted than tried, no refusal         ``inconclusive``
    ============================================  ==========================================

    A count refused at a login after the packet capture, running beside it,
    had sent PORT (``beside_data``) keeps its status and says the server
    may allow one session more (a data connection of ours may have counted).
    """
    quirk = "server.connection-limit"
    obs = seen.get("session-limit")
    if not isinstance(obs, SessionLimitObs):
        return _no_command(quirk, "session-limit")
    evidence = [f"{obs.accepted} of {obs.tried} concurrent sessions open at once"
                + (f" ({obs.held} of them held by this run)" if obs.held else "")]
    beside = ["a login was refused after a PORT of this run's packet capture went out: a server that "
              "counts data connections against its limit may allow one session more"
              ] if obs.beside_data else []
    if obs.refusal in ("421", "too-many"):
        evidence.append(f"session {obs.accepted + 1} was refused: {obs.refusal_text or obs.refusal}")
        return Finding(quirk, "present", evidence + beside,
                       f"the server allows {obs.accepted} concurrent session(s) from here; clients that open a "
                       "session per transfer, or several users behind one address, get 421: raise the limit if "
                       f"that is not intended ({LIMIT_OPTIONS})", data={"limit": obs.accepted})
    if obs.refusal is not None:
        what = {"other-reply": "got another reply", "timeout": "timed out", "reset": "was reset",
                "closed": "was closed", "connect": "could not connect"}.get(obs.refusal, obs.refusal)
        evidence.append(f"session {obs.accepted + 1} {what}"
                        + (f": {obs.refusal_text}" if obs.refusal_text else ""))
        return Finding(quirk, "inconclusive", evidence + beside + [
            "only a 421 or a 'too many' reply shows a limit; this may be loss, a rate limit or a firewall"],
                       data={"accepted": obs.accepted})
    if obs.tried and obs.accepted >= obs.tried:
        evidence.append(f"no limit up to {obs.tried} sessions (the most this run opens)")
        return Finding(quirk, "absent", evidence, data={"limit": None, "tested_up_to": obs.tried})
    return Finding(quirk, "inconclusive", evidence + beside + ["fewer sessions opened than wanted, and no refusal seen"],
                   data={"accepted": obs.accepted})
