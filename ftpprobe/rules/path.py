"""Rules of the path: what NAT, an FTP ALG or a firewall between the prober
and a cooperating reflector (``ftpprobe reflect``) does to FTP.

The reflector reports the exact bytes and peer address it saw for each line
(:class:`~ftpprobe.observations.Reflection`) and declares out of band the
address its 227/229 named, so every rule here compares what was sent with
what arrived (:func:`ftpprobe.rewrite.compare`).  Shared outcomes (probe not
run: ``skipped``; its session failed: ``inconclusive``; a declared
``baseline`` that did not work: ``inconclusive``) are decided by
:mod:`ftpprobe.rules`; each rule's docstring gives the rest of its table.

Two principles hold in every table: a timeout, reset or close is never
``absent`` (no answer proves nothing about what the path does to a line),
and ``present`` carries the evidence QUIRKS.md asks for (the bytes sent and
as received, addresses and ports; for a stall the TCP_INFO counters and the
retry in a new session).

:func:`fingerprint_rows` is the ALG fingerprint table (variant against outcome).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Mapping

from ..codec import escape, parse_eprt, parse_port
from ..errors import ProtocolError
from ..findings import Finding
from ..observations import (ActiveObs, Address, Exchange, Failed, Observation, ReflectActiveObs, ReflectPassiveObs,
                            Skipped)
from ..observations import HopsObs
from ..rewrite import Comparison, compare
from . import Seen, rule

ReflectObs = ReflectActiveObs | ReflectPassiveObs

#: The canonical lines (CRLF, upper case, after a login, on the main control port).
PORT_CANONICAL, PASV_CANONICAL = "alg-port-crlf", "alg-pasv-crlf"
#: Every reflector probe whose 227/229 invites a passive data connection.
PASSIVE_PROBES = ("alg-pasv-crlf", "alg-epsv", "alg-pasv-other-port", "alg-pasv-lowercase", "alg-pasv-lf",
                  "alg-pasv-space-lf")
#: PORT lines spelled other than canonically (case, line ending, spacing).
NON_CANONICAL_PORT = ("alg-port-lowercase", "alg-port-lf", "alg-port-trailing-space")


# -- shared readings ------------------------------------------------------------


def show_address(address: Address | tuple[str | None, int] | None) -> str:
    """``192.0.2.1:21``, ``[2001:db8::1]:21``, ``port 40001`` (no address), ``?``."""
    if address is None:
        return "?"
    host, port = address
    if host is None:
        return f"port {port}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _same_host(a: str, b: str) -> bool:
    """Equal IP addresses (an IPv4-mapped IPv6 address equals its IPv4 address)."""
    try:
        x, y = ipaddress.ip_address(a), ipaddress.ip_address(b)
    except ValueError:
        return a == b
    x = getattr(x, "ipv4_mapped", None) or x
    y = getattr(y, "ipv4_mapped", None) or y
    return x == y


def line_address(line: bytes) -> tuple[str, int] | None:
    """The address and port a PORT/EPRT line names (any case, any ending), or ``None``."""
    parts = line.strip().split(None, 1)
    if len(parts) != 2 or parts[0].upper() not in (b"PORT", b"EPRT"):
        return None
    try:
        text = parts[1].decode("latin-1")
        host, port = parse_eprt(text) if parts[0].upper() == b"EPRT" else parse_port(text)
    except (ProtocolError, ValueError):
        return None
    return str(host), port


def _sent(obs: ReflectObs) -> bytes:
    return obs.sent or (obs.exchange.sent if obs.exchange is not None else b"")


@dataclass(frozen=True)
class Fate:
    """What the path did to one reflector probe's line.

    ``kind``: ``passed`` (arrived byte-identical), ``rewritten`` (address or
    port changed), ``mangled`` (other bytes changed), ``no-report`` (a reply
    without the reflector's report), or the exchange's outcome when no reply
    came (``timeout``, ``reset``, ``closed``, ``malformed``), or ``not-sent``.
    ``kept``: the address named arrived unchanged (``passed``, or ``mangled``
    with the same numbers).
    """

    kind: str
    evidence: str
    comparison: Comparison | None = None
    kept: bool = False

    @property
    def rewritten(self) -> bool | None:
        """True: rewritten; False: the address arrived as sent; None: undecided."""
        if self.kind == "rewritten":
            return True
        return False if self.kept else None


def fate(obs: ReflectObs) -> Fate:
    """Classify ``obs``'s line (see :class:`Fate`)."""
    ex = obs.exchange
    if ex is None:
        return Fate("not-sent", f"{obs.probe}: no command was sent")
    if ex.outcome != "reply":
        return Fate(ex.outcome, f"{obs.probe}: {ex.describe()}")
    if obs.reflection is None:
        return Fate("no-report", f"{obs.probe}: {ex.describe()}; the reply carried no reflector report")
    sent, arrived = _sent(obs), obs.reflection.arrived
    cmp = compare(sent, arrived)
    kept = cmp.outcome == "passed" or (cmp.outcome == "mangled" and line_address(sent) is not None
                                       and line_address(sent) == line_address(arrived))
    text = f"{obs.probe} (control port {obs.control_port}): {cmp.describe(sent, arrived)}"
    if cmp.outcome == "mangled" and kept:
        text += " (the address arrived as sent)"
    return Fate(cmp.outcome, text, cmp, kept)


def _reflect(seen: Seen, name: str) -> ReflectObs | None:
    obs = seen.get(name)
    return obs if isinstance(obs, (ReflectActiveObs, ReflectPassiveObs)) else None


def _not_usable(seen: Seen, names: tuple[str, ...]) -> list[str]:
    """Evidence for declared probes that failed (the mechanism decided the rest)."""
    return [f"probe {n} failed: {seen.failed[n].error}" for n in names if n in seen.failed]


# -- NAT --------------------------------------------------------------------------


NAT_READS = ("alg-port-crlf", "alg-pasv-crlf", "alg-eprt-crlf", "alg-epsv")


def _nat_evidence(obs: ReflectObs) -> tuple[bool | None, str]:
    """(NAT seen?, evidence) for one observation; None when it cannot tell."""
    if obs.reflection is None or obs.local is None:
        return None, fate(obs).evidence
    seen_at = obs.reflection.peer_seen
    translated = not _same_host(obs.local[0], seen_at[0])
    return translated, (f"{obs.probe}: the prober's end of the control connection is {show_address(obs.local)}; "
                        f"the reflector saw {show_address(seen_at)}")


@rule("nat.present", reads=NAT_READS)
def nat_present(seen: Seen) -> Finding:
    """The reflector sees another source address than the prober's own.

    Per probe (alg-port-crlf, alg-pasv-crlf, alg-eprt-crlf, alg-epsv):

    ================================================  ==============
    outcome                                           counts as
    ================================================  ==============
    a reply with a report: seen address != local      NAT
    a reply with a report: seen address == local      no NAT
    a reply without a report, timeout, reset          undecided
    ================================================  ==============

    ==========================  ==============
    the probes together         status
    ==========================  ==============
    any saw NAT                 present
    some decided, none saw NAT  absent
    none decided                inconclusive
    not run / all failed        shared
    ==========================  ==============
    """
    quirk = "nat.present"
    evidence, verdicts = [], []
    for name in NAT_READS:
        if (obs := _reflect(seen, name)) is None:
            continue
        translated, line = _nat_evidence(obs)
        evidence.append(line)
        verdicts.append(translated)
    evidence += _not_usable(seen, NAT_READS)
    if True in verdicts:
        return Finding(quirk, "present", evidence)
    if False in verdicts:
        return Finding(quirk, "absent", evidence)
    return Finding(quirk, "inconclusive", evidence + ["no reflector report arrived: the source address it saw "
                                                      "is unknown"])


@rule("nat.no-alg", reads=(PORT_CANONICAL,))
def nat_no_alg(seen: Seen) -> Finding:
    """NAT is present and the canonical PORT passes unrewritten.

    ==================================================  ==============
    alg-port-crlf                                       status
    ==================================================  ==============
    report: PORT rewritten                              absent
    report: address arrived as sent, seen addr != local present
    report: address arrived as sent, seen addr == local absent (no NAT)
    report: other bytes changed, address unparseable    inconclusive
    reply without a report                              inconclusive
    timeout / reset / closed                            inconclusive
    not run / failed                                    shared
    ==================================================  ==============
    """
    quirk = "nat.no-alg"
    obs = _reflect(seen, PORT_CANONICAL)
    if obs is None:
        return Finding(quirk, "inconclusive", ["alg-port-crlf gave no reflector observation"])
    line = fate(obs)
    translated, nat_line = _nat_evidence(obs)
    evidence = [line.evidence] + ([nat_line] if translated is not None else [])
    if line.rewritten is True:
        return Finding(quirk, "absent", evidence + ["an ALG rewrote PORT"])
    if line.rewritten is None or translated is None:
        return Finding(quirk, "inconclusive", evidence)
    if not translated:
        return Finding(quirk, "absent", evidence + ["no NAT: PORT needs no rewrite"])
    return Finding(quirk, "present", evidence,
                   "active mode (PORT/EPRT) cannot work through this NAT: use passive mode, or enable the router's "
                   "FTP helper (Linux: nf_conntrack_ftp + nf_nat_ftp with an nftables 'ct helper' on port 21)")


# -- rewriting of PORT / EPRT ------------------------------------------------------


def _rewrite_finding(quirk: str, seen: Seen, name: str) -> Finding:
    obs = _reflect(seen, name)
    if obs is None:
        return Finding(quirk, "inconclusive", [f"{name} gave no reflector observation"])
    line = fate(obs)
    if line.rewritten is True:
        assert line.comparison is not None
        return Finding(quirk, "present", [line.evidence],
                       data={"sent": show_address(line.comparison.sent_address),
                             "arrived": show_address(line.comparison.arrived_address)})
    if line.rewritten is False:
        return Finding(quirk, "absent", [line.evidence])
    return Finding(quirk, "inconclusive", [line.evidence])


@rule("alg.port-rewrite", reads=(PORT_CANONICAL, "alg-port-hops"))
def port_rewrite(seen: Seen) -> Finding:
    """The address in the canonical PORT line is rewritten in transit.

    ==================================================  ==============
    alg-port-crlf                                       status
    ==================================================  ==============
    report: address/port changed                        present
    report: byte-identical, or address arrived as sent  absent
    report: other bytes changed, address unparseable    inconclusive
    reply without a report                              inconclusive
    timeout / reset / closed                            inconclusive
    not run / failed                                    shared
    ==================================================  ==============

    With ``fingerprint --hops`` (probe ``alg-port-hops``, a packet capture)
    the evidence adds each hop's ICMP quote and the first hop after which
    the line is rewritten (``data["rewritten_after_hop"]``); the status
    stays the canonical line's.
    """
    finding = _rewrite_finding("alg.port-rewrite", seen, PORT_CANONICAL)
    hops = seen.get("alg-port-hops")
    if isinstance(hops, HopsObs):
        from .packets import hop_reading

        reading = hop_reading(hops)
        finding.evidence.extend(f"alg-port-hops: {line}" for line in reading.lines)
        finding.data.update({"rewritten_after_hop": reading.after_hop, "rewriting_hop_address": reading.address,
                             "hops": [{"ttl": h.ttl, "address": h.address, "state": h.state} for h in hops.hops]})
    return finding


@rule("alg.eprt-rewrite", reads=("alg-eprt-crlf",))
def eprt_rewrite(seen: Seen) -> Finding:
    """The address in an EPRT line (RFC 2428) is rewritten in transit.

    ==================================================  ==============
    alg-eprt-crlf                                       status
    ==================================================  ==============
    report: address/port changed                        present
    report: byte-identical, or address arrived as sent  absent
    report: other bytes changed, address unparseable    inconclusive
    reply without a report                              inconclusive
    timeout / reset / closed                            inconclusive
    skipped (EPRT cannot name the address) / not run    shared: skipped
    failed                                              shared: inconclusive
    ==================================================  ==============
    """
    return _rewrite_finding("alg.eprt-rewrite", seen, "alg-eprt-crlf")


@rule("alg.port-remap", reads=(PORT_CANONICAL, "alg-eprt-crlf"))
def port_remap(seen: Seen) -> Finding:
    """The ALG changed the port number too, not only the address.

    Per probe (alg-port-crlf, alg-eprt-crlf):

    ==================================================  ==============
    outcome                                             counts as
    ==================================================  ==============
    rewritten, port changed                             remapped
    rewritten, port kept                                kept
    address arrived as sent (no rewrite)                no rewrite
    timeout / reset / no report / unparseable           undecided
    ==================================================  ==============

    ====================================  ==============
    the probes together                   status
    ====================================  ==============
    any remapped                          present
    any kept, none remapped               absent
    all: no rewrite (nothing to compare)  skipped
    otherwise (undecided, none kept)      inconclusive
    ====================================  ==============
    """
    quirk = "alg.port-remap"
    evidence, kinds = [], []
    for name in (PORT_CANONICAL, "alg-eprt-crlf"):
        if (obs := _reflect(seen, name)) is None:
            continue
        line = fate(obs)
        evidence.append(line.evidence)
        if line.rewritten is True and line.comparison is not None:
            changed = line.comparison.sent_address[1] != line.comparison.arrived_address[1]
            kinds.append("remapped" if changed else "kept")
        else:
            kinds.append("no rewrite" if line.rewritten is False else "undecided")
    evidence += _not_usable(seen, (PORT_CANONICAL, "alg-eprt-crlf"))
    if "remapped" in kinds:
        return Finding(quirk, "present", evidence,
                       "the ALG allocated another port (the prober's was in use on the router): harmless while the "
                       "ALG also forwards that port to the client")
    if "kept" in kinds:
        return Finding(quirk, "absent", evidence)
    if kinds and all(k == "no rewrite" for k in kinds):
        return Finding(quirk, "skipped", evidence + ["no PORT/EPRT line was rewritten: no ALG port to compare"])
    return Finding(quirk, "inconclusive", evidence)


# -- 227/229 replies and the PASV command ------------------------------------------


@rule("alg.reply-rewrite", reads=(PASV_CANONICAL, "alg-epsv"))
def reply_rewrite(seen: Seen) -> Finding:
    """A 227/229 reply is rewritten on its way to the prober.

    Per probe (alg-pasv-crlf, alg-epsv):

    =====================================================  ==============
    outcome                                                counts as
    =====================================================  ==============
    227/229 received != what the reflector declared        rewritten
    227/229 received == declared                           unchanged
    227/229 without a declaration, or unparseable          undecided
    another reply (e.g. 5xx), timeout, reset               undecided
    =====================================================  ==============

    =============================  ==============
    the probes together            status
    =============================  ==============
    any rewritten                  present
    any unchanged, none rewritten  absent
    none decided                   inconclusive
    =============================  ==============
    """
    quirk = "alg.reply-rewrite"
    evidence, rewritten, decided = [], [], False
    for name in (PASV_CANONICAL, "alg-epsv"):
        obs = seen.get(name)
        if not isinstance(obs, ReflectPassiveObs):
            continue
        ex = obs.exchange
        if ex is None or ex.reply is None or ex.code not in (227, 229):
            evidence.append(f"{name}: " + (ex.describe() if ex is not None else "no command was sent"))
            continue
        if obs.parse_error:
            evidence.append(f"{name}: {ex.describe()}; the reply could not be parsed ({obs.parse_error})")
            continue
        if obs.declared is None or obs.advertised is None:
            evidence.append(f"{name}: {ex.describe()}; the reply carried no reflector declaration")
            continue
        decided = True
        dec, adv = obs.declared, obs.advertised
        same = adv[1] == dec[1] and (dec[0] is None or (adv[0] is not None and _same_host(adv[0], dec[0])))
        evidence.append(f"{name}: the reflector declared {show_address(dec)}, the prober received "
                        f"{show_address(adv)}" + ("" if same else " (rewritten)"))
        if not same:
            rewritten.append({"probe": name, "declared": show_address(dec), "received": show_address(adv)})
    evidence += _not_usable(seen, (PASV_CANONICAL, "alg-epsv"))
    if rewritten:
        return Finding(quirk, "present", evidence,
                       "a middlebox rewrites 227/229 replies: the address and port a server announces are not what "
                       "clients see", data={"rewritten": rewritten})
    if decided:
        return Finding(quirk, "absent", evidence)
    return Finding(quirk, "inconclusive", evidence or ["no 227/229 with a reflector declaration arrived"])


PASV_MANGLE_READS = (PASV_CANONICAL, "alg-pasv-lowercase", "alg-pasv-other-port")


@rule("alg.pasv-mangle", reads=PASV_MANGLE_READS)
def pasv_mangle(seen: Seen) -> Finding:
    """The PASV command itself is altered in transit (e.g. to ``P@SW``).

    Per probe (alg-pasv-crlf, alg-pasv-lowercase, alg-pasv-other-port):

    ==================================================  ==============
    outcome                                             counts as
    ==================================================  ==============
    report: arrived bytes differ from those sent        altered
    report: arrived byte-identical                      intact
    reply without a report, timeout, reset              undecided
    ==================================================  ==============

    ========================  ==============
    the probes together       status
    ========================  ==============
    any altered               present
    any intact, none altered  absent
    none decided              inconclusive
    ========================  ==============
    """
    quirk = "alg.pasv-mangle"
    evidence, altered, intact = [], [], False
    for name in PASV_MANGLE_READS:
        if (obs := _reflect(seen, name)) is None:
            continue
        line = fate(obs)
        evidence.append(line.evidence)
        if line.kind in ("mangled", "rewritten"):
            altered.append(obs)
        intact |= line.kind == "passed"
    evidence += _not_usable(seen, PASV_MANGLE_READS)
    if altered:
        psw = any(o.reflection is not None and o.reflection.arrived.upper().startswith(b"P@SW") for o in altered)
        advice = ("the router alters PASV" + (" to P@SW (the SMC Barricade bug)" if psw else "")
                  + ": update its firmware or disable its FTP ALG"
                  + ("; vsftpd and pure-ftpd accept P@SW as PASV as a workaround" if psw else ""))
        return Finding(quirk, "present", evidence, advice)
    if intact:
        return Finding(quirk, "absent", evidence)
    return Finding(quirk, "inconclusive", evidence)


# -- stalls --------------------------------------------------------------------------


@dataclass(frozen=True)
class Stall:
    """One variant's verdict: ``state`` is ``stalled``, ``answered`` or
    ``undecided``; ``command`` the verb sent (PORT/PASV/EPRT); ``how``
    ``dropped`` or ``held`` for a stall."""

    state: str
    evidence: tuple[str, ...]
    command: str = ""
    how: str = ""


def _verb(line: bytes) -> str:
    parts = line.split(None, 1)
    return parts[0].decode("latin-1").upper() if parts else "?"


def judge_stall(variant: ReflectObs, canonical: Observation | None, canonical_name: str,
                canonical_missing: str = "not run") -> Stall:
    """Did ``variant`` stall, as QUIRKS.md's "a stall is proven" asks?

    ===================================================================  ==========
    variant (the canonical line on the same path got a positive reply)  state
    ===================================================================  ==========
    any reply (positive or negative; however slow)                       answered
    timeout; TCP_INFO dropped or held; retry in a new session timed out  stalled
    timeout without TCP_INFO, or unacknowledged without retransmission   undecided
    timeout, retry answered (one lost packet) / retry reset / no retry   undecided
    reset / closed / malformed                                           undecided
    anything, the canonical line did not answer positively (or not run)  undecided
    a split line of which the reflector reports only a strict prefix    stalled
    (it reports an unterminated line after a pause): the rest held back  (held)
    ===================================================================  ==========
    """
    ex = variant.exchange
    if ex is None:
        return Stall("undecided", (f"{variant.probe}: no command was sent",))
    command = _verb(_sent(variant) or ex.sent)
    lines = [f"{variant.probe}: {ex.describe()}"]
    base_ex = getattr(canonical, "exchange", None) if canonical is not None else None
    if not isinstance(base_ex, Exchange) or not base_ex.positive:
        why = base_ex.describe() if isinstance(base_ex, Exchange) else canonical_missing
        lines.append(f"canonical {canonical_name} on the same path did not work ({why}): nothing to compare with")
        return Stall("undecided", tuple(lines), command)
    lines.append(f"canonical {canonical_name}: {base_ex.describe()} in {base_ex.elapsed:.3g} s")
    sent = _sent(variant) or ex.sent
    reflection = getattr(variant, "reflection", None)
    if (ex.outcome == "reply" and ex.segments > 1 and reflection is not None
            and reflection.arrived != sent and sent.startswith(reflection.arrived)):
        lines.append(f"the reflector received only '{escape(reflection.arrived)}' of '{escape(sent)}' "
                     f"(reads {', '.join(map(str, reflection.reads)) or '?'} bytes): the rest was held back")
        return Stall("stalled", tuple(lines), command, "held")
    if ex.outcome == "reply":
        return Stall("answered", tuple(lines), command)
    if ex.outcome != "timeout":
        lines.append(f"{variant.probe}: a {ex.outcome} is not a stall (the connection did not hang), nor proof "
                     "that the line passes")
        return Stall("undecided", tuple(lines), command)
    how = ex.tcp_info.stall if ex.tcp_info is not None else "unknown"
    if how == "unknown":
        lines.append("no TCP_INFO showing the bytes unacknowledged with retransmissions, or acknowledged: "
                     "a timeout alone is not a proven stall")
        return Stall("undecided", tuple(lines), command)
    retry = variant.retry
    if retry is None:
        lines.append("not retried in a new session: one lost packet is not a stall")
        return Stall("undecided", tuple(lines), command, how)
    lines.append(f"{variant.probe}: retry in a new session: {retry.describe()}")
    if retry.outcome != "timeout":
        lines.append("the retry did not stall: one lost packet is not a stall")
        return Stall("undecided", tuple(lines), command, how)
    lines.append(f"{command} {how}: " + ("the segment was never acknowledged and was retransmitted (dropped on "
                                         "the way)" if how == "dropped" else
                                         "the bytes were acknowledged but no answer came (held back by a "
                                         "middlebox)"))
    return Stall("stalled", tuple(lines), command, how)


#: For each stall quirk: (variant, its canonical line on the same path), the
#: spelling in words, and the client-side fix.
STALLS: dict[str, tuple[tuple[tuple[str, str], ...], str, str]] = {
    "alg.stall.bare-lf": ((("alg-port-lf", PORT_CANONICAL), ("alg-pasv-lf", PASV_CANONICAL)),
                          "not ended by CRLF", "clients must end lines with CRLF (RFC 959 §4.1)"),
    "alg.stall.space-lf": ((("alg-pasv-space-lf", PASV_CANONICAL),),
                           "spelled 'PASV \\n' (a space, a bare LF)",
                           "clients must send 'PASV\\r\\n' (some signage and media players do not)"),
    "alg.stall.trailing-space": ((("alg-port-trailing-space", PORT_CANONICAL),),
                                 "with a trailing space before CRLF", "clients must not send a trailing space"),
    "alg.stall.split": ((("alg-port-split-verb", PORT_CANONICAL), ("alg-port-split-number", PORT_CANONICAL)),
                        "split across TCP segments", "clients must send each command in one write"),
}


def stall_advice(stalled: list[Stall], spelling: str, fix: str) -> str:
    """Advice from exactly which command stalled and how."""
    parts = []
    for command in dict.fromkeys(s.command for s in stalled):
        hows = {s.how for s in stalled if s.command == command}
        if "dropped" in hows:
            who = "the router's FTP ALG drops"
            if command in ("PORT", "EPRT"):
                who_note = " (Linux nf_conntrack_ftp does this)"
            else:
                who_note = ""
            parts.append(f"{who} {command} lines {spelling}{who_note}")
        if "held" in hows:
            parts.append(f"a middlebox acknowledges {command} lines {spelling} but never passes them on "
                         "(an inspecting proxy or firewall waiting for a line it can parse)")
    commands = {s.command for s in stalled}
    alternatives = []
    if commands & {"PORT", "EPRT"}:
        alternatives.append("passive mode avoids PORT")
    if "PASV" in commands:
        alternatives.append("disabling the router's FTP ALG/inspection avoids it")
    return "; ".join(parts) + f": {fix}" + (", or " + ", or ".join(alternatives) if alternatives else "")


def _stall_rule(quirk: str) -> None:
    pairs, spelling, fix = STALLS[quirk]
    variants = tuple(v for v, _ in pairs)
    canonicals = tuple(dict.fromkeys(c for _, c in pairs))
    single = len(canonicals) == 1

    def decide(seen: Seen) -> Finding:
        evidence: list[str] = []
        verdicts: list[Stall] = []
        for variant, canonical in pairs:
            obs = _reflect(seen, variant)
            if obs is None:
                continue
            base = seen.baseline if single else seen.get(canonical)
            missing = f"failed: {seen.failed[canonical].error}" if canonical in seen.failed else "not run"
            verdict = judge_stall(obs, base, canonical, missing)
            verdicts.append(verdict)
            evidence.extend(verdict.evidence)
        evidence += _not_usable(seen, variants)
        stalled = [v for v in verdicts if v.state == "stalled"]
        if stalled:
            return Finding(quirk, "present", evidence, stall_advice(stalled, spelling, fix),
                           data={"stalled": [{"command": s.command, "how": s.how} for s in stalled]})
        variant_failed = any(v in seen.failed for v in variants)
        if verdicts and all(v.state == "answered" for v in verdicts) and not variant_failed:
            return Finding(quirk, "absent", evidence)
        if not verdicts:
            return Finding(quirk, "inconclusive" if variant_failed else "skipped",
                           evidence or [f"probe {', '.join(variants)} was not run"])
        return Finding(quirk, "inconclusive", evidence)

    decide.__doc__ = STALL_DOC.format(quirk=quirk, variants=", ".join(variants), canonicals=", ".join(canonicals))
    reads = variants if single else variants + canonicals
    rule(quirk, reads=reads, baseline=canonicals[0] if single else None)(decide)


STALL_DOC = """{quirk}: the variant ({variants}) stalls the control connection while
    the canonical line on the same path ({canonicals}) answers.

    Each variant is judged by :func:`judge_stall` (a stall is proven: bytes
    sent, TCP_INFO dropped or held, canonical answered, retry in a new
    session stalled again).  Then:

    ==============================================================  ============
    the variants that ran                                           status
    ==============================================================  ============
    any stalled                                                     present
    all answered (positive or negative reply)                       absent
    a timeout once, retry answered                                  inconclusive
    a timeout without TCP_INFO, or not retried                      inconclusive
    a reset / close                                                 inconclusive
    the canonical line did not answer (or failed, or not run)       inconclusive
    a variant failed (no session), none stalled                     inconclusive
    not run                                                         skipped
    ==============================================================  ============

    A slow reply is an answer, never a stall.
    """

for _quirk in STALLS:
    _stall_rule(_quirk)


# -- what the ALG parses -------------------------------------------------------------


def _pair(quirk: str, seen: Seen, variant: str, advice: str) -> Finding:
    base = _reflect(seen, PORT_CANONICAL)
    obs = _reflect(seen, variant)
    if base is None or obs is None:
        return Finding(quirk, "inconclusive", ["no reflector observation to compare"])
    base_line, line = fate(base), fate(obs)
    return judge_pair(quirk, base_line, line, [base_line.evidence, line.evidence], advice)


def judge_pair(quirk: str, base_line: Fate, line: Fate, evidence: list[str], advice: str,
               undecided: tuple[str, ...] = ()) -> Finding:
    """Canonical PORT line against a variant, each as :func:`fate` read it:
    the variant arrived as sent where the canonical line was rewritten:
    ``present`` (with ``advice``); rewritten too: ``absent``; no ALG rewrote
    the canonical line: ``skipped``; anything else ``inconclusive`` (with
    ``undecided`` added when the variant's fate is what is unknown)."""
    if base_line.rewritten is False:
        return Finding(quirk, "skipped", evidence + ["no ALG rewrote the canonical PORT line: nothing to compare with"])
    if base_line.rewritten is None:
        return Finding(quirk, "inconclusive", evidence)
    if line.rewritten is True:
        return Finding(quirk, "absent", evidence)
    if line.rewritten is False:
        return Finding(quirk, "present", evidence, advice)
    return Finding(quirk, "inconclusive", evidence + list(undecided))


PAIR_DOC = """{quirk}: the canonical PORT (alg-port-crlf) is rewritten but {variant} is not.

    ==============================================================  ============
    alg-port-crlf / {variant}                                       status
    ==============================================================  ============
    rewritten / arrived with the address as sent                    present
    rewritten / rewritten                                           absent
    rewritten / timeout, reset, no report, unparseable              inconclusive
    arrived as sent (no ALG) / anything                             skipped
    no report or unparseable / anything                             inconclusive
    no positive reply (timeout, reset, refused) / anything          inconclusive (baseline)
    not run / failed                                                shared
    ==============================================================  ============
    """


def _pair_rule(quirk: str, variant: str, advice: str) -> None:
    def decide(seen: Seen) -> Finding:
        return _pair(quirk, seen, variant, advice)

    decide.__doc__ = PAIR_DOC.format(quirk=quirk, variant=variant)
    rule(quirk, reads=(variant,), baseline=PORT_CANONICAL)(decide)


_pair_rule("alg.first-command-blind", "alg-port-first",
           "the ALG parses only lines that follow a LF it saw (Linux nf_conntrack_ftp's find_nl_seq): clients must "
           "not send PORT as their first line")
_pair_rule("alg.case-sensitive", "alg-port-lowercase",
           "clients that send lower-case 'port' get no rewrite: use upper case or passive mode")
_pair_rule("alg.foreign-ignored", "alg-port-foreign",
           "expected of a safe ALG (no pinholes for third parties); a client configured with its external address "
           "gets no rewrite and needs a forwarded port")


@rule("alg.port-21-only", reads=(PORT_CANONICAL, "alg-port-other-port"))
def port_21_only(seen: Seen) -> Finding:
    """The ALG acts on control port 21 but not on another port.

    The two PORT lines are told apart by their control port (whichever the run
    called main).

    ==============================================================  ============
    PORT on port 21 / PORT on the other port                        status
    ==============================================================  ============
    rewritten / arrived as sent                                     present
    rewritten / rewritten                                           absent
    arrived as sent / rewritten                                     absent
    arrived as sent / arrived as sent (no ALG on either)            skipped
    timeout, reset, no report, unparseable on either                inconclusive
    no PORT on port 21, or none on another port                     skipped
    ==============================================================  ============
    """
    quirk = "alg.port-21-only"
    pair = [o for n in (PORT_CANONICAL, "alg-port-other-port") if (o := _reflect(seen, n)) is not None]
    on_21 = [o for o in pair if o.control_port == 21]
    other = [o for o in pair if o.control_port != 21]
    evidence = [fate(o).evidence for o in pair] + _not_usable(seen, (PORT_CANONICAL, "alg-port-other-port"))
    if not on_21 or not other:
        status = "inconclusive" if seen.failed else "skipped"
        return Finding(quirk, status, evidence + ["needs one PORT on control port 21 and one on another port "
                                                  "(--other-port)"])
    at_21, elsewhere = fate(on_21[0]).rewritten, fate(other[0]).rewritten
    if at_21 is None or elsewhere is None:
        return Finding(quirk, "inconclusive", evidence)
    if at_21 and not elsewhere:
        return Finding(quirk, "present", evidence,
                       f"the ALG is bound to port 21: servers on port {other[0].control_port} need passive mode or a "
                       "helper on that port (nftables: tcp dport PORT ct helper set ...)")
    if not at_21 and not elsewhere:
        return Finding(quirk, "skipped", evidence + ["no ALG rewrote PORT on either port"])
    return Finding(quirk, "absent", evidence)


@rule("alg.canonicalizes", reads=NON_CANONICAL_PORT)
def canonicalizes(seen: Seen) -> Finding:
    """The ALG regenerates the whole line (case, spacing, line ending) rather
    than only the numbers.  Decidable only from a PORT spelled non-canonically
    (lower case, bare LF, trailing space) that was rewritten: a canonical line
    looks the same either way.

    Per probe (alg-port-lowercase, alg-port-lf, alg-port-trailing-space):

    ==============================================================  ============
    outcome                                                         counts as
    ==============================================================  ============
    rewritten, other bytes normalised (e.g. 'port' -> 'PORT')       normalised
    rewritten, only the numbers changed                             numbers-only
    arrived as sent (not rewritten)                                 no rewrite
    timeout / reset / no report                                     undecided
    ==============================================================  ============

    ====================================  ==============
    the probes together                   status
    ====================================  ==============
    any normalised                        present
    any numbers-only, none normalised     absent
    none rewritten, any undecided/failed  inconclusive
    none rewritten, all arrived as sent   skipped
    ====================================  ==============
    """
    quirk = "alg.canonicalizes"
    evidence, kinds = [], []
    for name in NON_CANONICAL_PORT:
        if (obs := _reflect(seen, name)) is None:
            continue
        line = fate(obs)
        evidence.append(line.evidence)
        if line.rewritten is True and line.comparison is not None:
            kinds.append("normalised" if line.comparison.canonical else "numbers-only")
        else:
            kinds.append("no rewrite" if line.rewritten is False else "undecided")
    evidence += _not_usable(seen, NON_CANONICAL_PORT)
    if "normalised" in kinds:
        return Finding(quirk, "present", evidence,
                       "the ALG regenerates whole lines (as BSD libalias and userland proxies do): servers see its "
                       "spelling, not the client's")
    if "numbers-only" in kinds:
        return Finding(quirk, "absent", evidence + ["only the numbers of a non-canonical line were rewritten"])
    if "undecided" in kinds or seen.failed:
        return Finding(quirk, "inconclusive", evidence + ["no non-canonically spelled PORT was rewritten"])
    return Finding(quirk, "skipped", evidence + ["no non-canonically spelled PORT was rewritten: cannot tell"])


# -- data connections ----------------------------------------------------------------


#: alg-eprt-crlf too: over IPv6 PORT cannot run and EPRT (RFC 2428) carries active mode.
ACTIVE_READS = ("port-own", "eprt-own", PORT_CANONICAL, "alg-eprt-crlf")


def _active_state(obs: ActiveObs | ReflectActiveObs) -> tuple[str, list[str]]:
    """``arrived``, ``blocked`` or ``undecided``, with evidence lines."""
    ex = obs.exchange
    if ex is None:
        return "undecided", [f"{obs.probe}: no command was sent"]
    lines = [f"{obs.probe}: {ex.describe()}"]
    if ex.outcome != "reply":
        return "undecided", lines + [f"{obs.probe}: PORT/EPRT got no reply: active mode was not tried"]
    if not ex.positive:
        return "undecided", lines + [f"{obs.probe}: PORT/EPRT was refused: active mode was not tried"]
    t = obs.transfer
    if t is None:
        return "undecided", lines + [f"{obs.probe}: LIST was not sent"]
    lines.append(f"{obs.probe}: {t.list_exchange.describe()}")
    refusal = t.list_exchange.reply.text.lower() if t.list_exchange.reply is not None else ""
    if (not t.expected and not t.connected and t.list_exchange.code == 425
            and "too many" not in refusal and "limit" not in refusal):
        # vsftpd, proftpd and pure-ftpd connect before they answer LIST, and
        # answer 425 ("can't open data connection") when that failed.
        return "blocked", lines + [f"{obs.probe}: the peer tried the data connection and could not open it "
                                   "(425), and none arrived here"]
    if not t.expected:
        return "undecided", lines + [f"{obs.probe}: the peer did not start a transfer (no 1xx reply to LIST), so no "
                                     "data connection was due"]
    if t.connected:
        head = f", first bytes '{escape(t.head[:60])}'" if t.head else ""
        return "arrived", lines + [f"{obs.probe}: the data connection arrived from {show_address(t.source)}, "
                                   f"{t.bytes} bytes{head}"]
    listen = getattr(obs, "listen", None)
    where = f" at {show_address(listen)}" if listen is not None else ""
    why = t.error or "no connection"
    final = f"; then '{t.final}'" if t.final else ""
    return "blocked", lines + [f"{obs.probe}: the peer accepted the transfer but no data connection arrived{where} "
                               f"({why}){final}"]


@rule("path.active-blocked", reads=ACTIVE_READS)
def active_blocked(seen: Seen) -> Finding:
    """The peer's active-mode data connection to the prober never arrives.
    One rule for both vantages: port-own / eprt-own (a server, ActiveObs)
    and alg-port-crlf (a reflector, ReflectActiveObs).

    Per probe:

    ==============================================================  ============
    outcome                                                         counts as
    ==============================================================  ============
    PORT/EPRT accepted, LIST 1xx (transfer expected), connected     arrived
    PORT/EPRT accepted, LIST 1xx, no connection arrived             blocked
    PORT/EPRT accepted, LIST 425 (the peer's connect failed; not    blocked
    a "too many connections" refusal), no connection arrived
    PORT/EPRT accepted, LIST refused otherwise, or not sent         undecided
    PORT/EPRT refused (4xx/5xx)                                     undecided
    PORT/EPRT timeout / reset / closed                              undecided
    ==============================================================  ============

    =========================  ==============
    the probes together        status
    =========================  ==============
    any arrived                absent
    any blocked, none arrived  present
    none arrived or blocked    inconclusive
    =========================  ==============

    The last evidence line says why when inconclusive.
    """
    quirk = "path.active-blocked"
    evidence, states = [], []
    for name in ACTIVE_READS:
        obs = seen.get(name)
        if not isinstance(obs, (ActiveObs, ReflectActiveObs)):
            continue
        state, lines = _active_state(obs)
        states.append(state)
        evidence += lines
    evidence += _not_usable(seen, ACTIVE_READS)
    if "arrived" in states:
        return Finding(quirk, "absent", evidence)
    if "blocked" in states:
        return Finding(quirk, "present", evidence,
                       "the path drops inbound active-mode data connections: use passive mode, or let the peer "
                       "connect in (an FTP ALG / helper on the router, or a forwarded port)")
    return Finding(quirk, "inconclusive", evidence or ["no active-mode transfer was tried"])


def _passive_state(obs: ReflectPassiveObs) -> tuple[str, str]:
    """``connected``, ``failed`` or ``undecided`` with one evidence line."""
    ex = obs.exchange
    if ex is None:
        return "undecided", f"{obs.probe}: no command was sent"
    if ex.outcome != "reply" or ex.code not in (227, 229):
        return "undecided", f"{obs.probe}: {ex.describe()}: no data connection was invited"
    if obs.parse_error:
        return "undecided", f"{obs.probe}: {ex.describe()}: the reply could not be parsed ({obs.parse_error})"
    if obs.advertised is None or obs.data is None:
        return "undecided", f"{obs.probe}: {ex.describe()}: no data connection was attempted"
    data = obs.data
    line = f"{obs.probe}: {data.describe()}"
    if data.connected:
        return "connected", line
    if obs.declared is not None and obs.declared[1] != obs.advertised[1]:
        return "undecided", (f"{line}, but the reply was rewritten on its way (the reflector declared port "
                             f"{obs.declared[1]}): the connection went to another port than the reflector's")
    return "failed", line


@rule("path.passive-blocked", reads=PASSIVE_PROBES)
def passive_blocked(seen: Seen) -> Finding:
    """The prober's passive data connections to the ports the reflector
    advertised fail, while the control connection works (the 227/229 arrived).

    Per probe (every reflector PASV/EPSV probe):

    ==============================================================  ============
    outcome                                                         counts as
    ==============================================================  ============
    227/229 arrived, data connection connected                      connected
    227/229 arrived, data connection failed (timeout, refused)      failed
    227/229 arrived with another port than declared, failed         undecided
    227/229 unparseable, or no connection attempted                 undecided
    another reply (e.g. 5xx), timeout, reset, closed                undecided
    ==============================================================  ============

    ==========================  ==============
    the probes together         status
    ==========================  ==============
    any connected               absent
    any failed, none connected  present
    none connected or failed    inconclusive
    ==========================  ==============

    The first evidence line counts the connections ("0 of 2 connected").
    """
    quirk = "path.passive-blocked"
    lines, states, failed = [], [], []
    for name in PASSIVE_PROBES:
        obs = seen.get(name)
        if not isinstance(obs, ReflectPassiveObs):
            continue
        state, line = _passive_state(obs)
        states.append(state)
        lines.append(line)
        if state == "failed" and obs.data is not None:
            failed.append({"probe": name, "host": obs.data.host, "port": obs.data.port, "error": obs.data.error})
    lines += _not_usable(seen, PASSIVE_PROBES)
    tried = states.count("connected") + states.count("failed")
    summary = f"passive data connections: {states.count('connected')} of {tried} connected"
    if "connected" in states:
        return Finding(quirk, "absent", [summary] + lines)
    if "failed" in states:
        ports = ", ".join(dict.fromkeys(show_address((f["host"], f["port"])) for f in failed))
        return Finding(quirk, "present", [summary + f" (to {ports}) while the control connection works"] + lines,
                       "the path blocks connections to the data ports a server advertises while its control port "
                       "passes: an egress filter (allow outbound TCP to the server's passive range) or a firewall "
                       "that opens data ports only for its FTP helper's expectations (attach the helper to this "
                       "control port); active mode may work instead", data={"failed": failed})
    return Finding(quirk, "inconclusive", ["passive data connections: none tried (no 227/229 invited one, or it "
                                           "went to another port than the reflector's)"] + lines)


# -- the ALG fingerprint table ----------------------------------------------------------


def _row_outcome(obs: ReflectObs) -> str:
    ex = obs.exchange
    if ex is not None and ex.outcome == "timeout":
        retried = obs.retry is not None and obs.retry.outcome == "timeout"
        how = ex.tcp_info.stall if ex.tcp_info is not None else "unknown"
        return f"stalled ({how})" if retried and how != "unknown" else "timeout"
    kind = fate(obs).kind
    return {"no-report": "no report", "not-sent": "not sent"}.get(kind, kind)


def _row_detail(obs: ReflectObs) -> str:
    ex = obs.exchange
    if ex is None:
        return ""
    if ex.outcome != "reply":
        detail = ex.describe()
        if obs.retry is not None:
            detail += f"; retry: {obs.retry.describe()}"
        return detail
    line = fate(obs)
    if line.kind == "rewritten" and line.comparison is not None:
        return f"{show_address(line.comparison.sent_address)} -> {show_address(line.comparison.arrived_address)}"
    if isinstance(obs, ReflectPassiveObs):
        if obs.parse_error:
            return f"{ex.code}: unparseable ({obs.parse_error})"
        if obs.advertised is not None:
            text = f"{ex.code} declared {show_address(obs.declared)}, received {show_address(obs.advertised)}"
            if obs.data is not None:
                text += "; data " + ("connected" if obs.data.connected else f"failed ({obs.data.error or '?'})")
            return text
    if isinstance(obs, ReflectActiveObs) and obs.transfer is not None:
        t = obs.transfer
        if t.connected:
            return f"data connection from {show_address(t.source)}"
        if t.expected:
            return f"no data connection ({t.error or '?'})"
    if line.kind == "no-report":
        return ex.describe()
    return ""


def fingerprint_rows(observations: Mapping[str, Observation]) -> list[dict]:
    """The ALG fingerprint: one row per reflector probe, sorted by name.

    Keys: ``probe``, ``port`` (control port, int or ``None``), ``sent`` and
    ``arrived`` (escaped bytes; ``arrived`` ``None`` when no report came),
    ``reads`` (the read sizes the reflector saw, e.g. ``"2,25"``),
    ``outcome`` (passed, rewritten, mangled, no report, timeout, stalled
    (dropped|held), reset, closed, malformed, not sent, failed, skipped),
    ``detail`` and ``error`` (plain text, ``""`` when none).
    """
    rows = []
    for name in sorted(observations):
        obs = observations[name]
        if isinstance(obs, (ReflectActiveObs, ReflectPassiveObs)):
            reflection = obs.reflection
            rows.append({"probe": name, "port": obs.control_port, "sent": escape(_sent(obs)),
                         "arrived": escape(reflection.arrived) if reflection is not None else None,
                         "reads": ",".join(str(n) for n in reflection.reads) if reflection is not None else "",
                         "outcome": _row_outcome(obs), "detail": _row_detail(obs), "error": ""})
        elif isinstance(obs, (Failed, Skipped)) and name.startswith("alg-"):
            failed = isinstance(obs, Failed)
            rows.append({"probe": name, "port": None, "sent": "", "arrived": None, "reads": "",
                         "outcome": "failed" if failed else "skipped", "detail": "" if failed else obs.reason,
                         "error": obs.error if failed else ""})
    return rows
