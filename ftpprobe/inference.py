"""Inference: observations in, findings out.  Pure functions, no network.

Each rule decides one quirk id of the catalog from the observations of the
probes named in the probe files' ``decides`` lists.  A rule whose probe did
not run or failed returns ``skipped`` or ``inconclusive`` with the reason.
"""

from __future__ import annotations

import ipaddress
from typing import Callable

from .executors import Observation
from .findings import Finding
from .codec import escape
from .passive import PassiveMap, analyze, format_ranges
from .rewrite import compare

Observations = dict[str, Observation]
Rule = Callable[[Observations, dict], Finding]
RULES: dict[str, Rule] = {}

#: The passive range width over which forwarding by hand is impractical.
WIDE_RANGE = 1000

SERVER_OPTIONS = ("vsftpd pasv_min_port/pasv_max_port, pure-ftpd -p MIN:MAX, "
                  "proftpd PassivePorts, pyftpdlib passive_ports")
ADDRESS_OPTIONS = ("vsftpd pasv_address, pure-ftpd -P, proftpd MasqueradeAddress, "
                   "pyftpdlib masquerade_address")


def rule(quirk: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        RULES[quirk] = fn
        return fn
    return register


def _missing(quirk: str, obs: Observation | None, probe: str) -> Finding | None:
    """A skipped/inconclusive finding if the probe did not run or failed."""
    if obs is None:
        return Finding(quirk, "skipped", [f"probe {probe} was not run"])
    if obs.error:
        return Finding(quirk, "inconclusive", [f"probe {probe} failed: {obs.error}"])
    return None


def _reply_code(obs: Observation) -> int | None:
    ex = obs.first
    return ex.reply.code if ex is not None and ex.reply is not None else None


def _variant_rule(quirk: str, probe: str, *, present_when: str, advice: str) -> Rule:
    """Rule for a server command variant, compared with canonical PASV.

    ``present_when="refused"``: present if the variant gets no positive reply
    while canonical PASV did; ``"accepted"``: present if the variant gets a
    positive reply.
    """

    def decide(observations: Observations, context: dict) -> Finding:
        obs = observations.get(probe)
        if (missing := _missing(quirk, obs, probe)):
            return missing
        assert obs is not None
        ex = obs.first
        evidence = [ex.describe()] if ex else []
        code = _reply_code(obs)
        accepted = code is not None and 200 <= code < 300
        if present_when == "accepted":
            return Finding(quirk, "present" if accepted else "absent", evidence, advice if accepted else "")
        baseline = observations.get("pasv-crlf")
        if baseline is None or _reply_code(baseline) is None or not 200 <= (_reply_code(baseline) or 0) < 300:
            base = baseline.first.describe() if baseline and baseline.first else "not run"
            return Finding(quirk, "inconclusive", evidence + [f"canonical PASV: {base}"],
                           "canonical PASV did not work either; fix that first")
        evidence.append(f"canonical: {baseline.first.describe()}")  # type: ignore[union-attr]
        return Finding(quirk, "absent" if accepted else "present", evidence, "" if accepted else advice)

    return decide


RULES["server.bare-lf-rejected"] = _variant_rule(
    "server.bare-lf-rejected", "pasv-lf", present_when="refused",
    advice="clients that end lines with a bare LF (seed 000's signage box) fail here; "
           "they must send CRLF (RFC 959 §4.1)")
RULES["server.case-sensitive"] = _variant_rule(
    "server.case-sensitive", "pasv-lowercase", present_when="refused",
    advice="RFC 959 §5.3 makes commands case-insensitive; upgrade or reconfigure the server")
RULES["server.psw-alias"] = _variant_rule(
    "server.psw-alias", "psw-alias", present_when="accepted",
    advice="harmless; it lets clients behind an SMC Barricade that mangles PASV work")


@rule("server.epsv-unsupported")
def _epsv(observations: Observations, context: dict) -> Finding:
    quirk, obs = "server.epsv-unsupported", observations.get("epsv")
    if (missing := _missing(quirk, obs, "epsv")):
        return missing
    assert obs is not None
    ex = obs.first
    evidence = [ex.describe()] if ex else []
    if ex is None or ex.reply is None or 400 <= ex.reply.code < 500:
        return Finding(quirk, "inconclusive", evidence, "no answer, or only a transient 4xx refusal")
    if ex.reply.code != 229:
        return Finding(quirk, "present", evidence,
                       "enable EPSV: it names no address, so NAT cannot break it the way it breaks 227 replies")
    if "connected" in obs.data:
        evidence.append(f"data connection to {obs.data['data_host']} port {obs.data['port']}: "
                        + ("connected" if obs.data["connected"] else obs.data["data_error"]))
    return Finding(quirk, "absent", evidence)


@rule("server.port-foreign-accepted")
def _bounce(observations: Observations, context: dict) -> Finding:
    quirk, obs = "server.port-foreign-accepted", observations.get("port-foreign")
    if (missing := _missing(quirk, obs, "port-foreign")):
        return missing
    assert obs is not None
    ex = obs.first
    evidence = [ex.describe() if ex else "no exchange", "no transfer command was sent after it"]
    code = _reply_code(obs)
    if code is None:
        return Finding(quirk, "inconclusive", evidence)
    if 200 <= code < 300:
        return Finding(quirk, "present", evidence,
                       "refuse PORT to addresses other than the client's (FTP bounce, CERT CA-1997-27): "
                       "vsftpd port_promiscuous=NO, pyftpdlib permit_foreign_addresses=False")
    return Finding(quirk, "absent", evidence)


def _active_obs(observations: Observations) -> list[Observation]:
    return [o for name in ("port-own", "eprt-own") if (o := observations.get(name)) and not o.error]


@rule("server.port-reset")
def _port_reset(observations: Observations, context: dict) -> Finding:
    quirk, obs = "server.port-reset", observations.get("port-own")
    if (missing := _missing(quirk, obs, "port-own")):
        return missing
    assert obs is not None
    ex = obs.first
    if ex is None:
        return Finding(quirk, "skipped", [obs.data.get("skipped", "PORT was not sent")])
    if ex.outcome in ("reset", "closed"):
        return Finding(quirk, "present", [ex.describe()],
                       "the server or a firewall in front of it kills sessions on PORT; use passive mode (PASV/EPSV)")
    return Finding(quirk, "absent", [ex.describe()])


def _active_blocked(observations: Observations, context: dict) -> Finding:
    quirk = "path.active-blocked"
    tried = _active_obs(observations)
    if not tried:
        return _missing(quirk, observations.get("port-own"), "port-own") or Finding(quirk, "skipped", ["no active probe ran"])
    evidence, arrived, accepted = [], False, False
    for obs in tried:
        ex = obs.first
        if ex is None:
            continue
        evidence.append(ex.describe())
        if ex.reply is not None and ex.reply.code == 200:
            accepted = True
            if obs.data.get("connected"):
                arrived = True
                src = obs.data.get("source", ["?", "?"])
                evidence.append(f"data connection arrived from {src[0]} port {src[1]}, {obs.data.get('bytes', 0)} bytes")
            else:
                evidence.append(obs.data.get("accept_error", "LIST did not start a transfer"))
    if not accepted:
        return Finding(quirk, "inconclusive", evidence, "the server refused PORT/EPRT, so active mode was not tried")
    if arrived:
        return Finding(quirk, "absent", evidence)
    return Finding(quirk, "present", evidence,
                   "use passive mode; for active mode the prober's firewall/NAT must let the server connect in "
                   "(an FTP ALG on the router, or a forwarded port)")


@rule("server.active-source-port")
def _active_source(observations: Observations, context: dict) -> Finding:
    quirk, obs = "server.active-source-port", observations.get("port-own")
    if (missing := _missing(quirk, obs, "port-own")):
        return missing
    assert obs is not None
    if not obs.data.get("connected"):
        return Finding(quirk, "inconclusive", ["no active-mode data connection arrived to measure"])
    source_port = obs.data["source"][1]
    expected = obs.data["control_port"] - 1
    evidence = [f"data connection from port {source_port}; RFC 959 §3.3 default is control port - 1 = {expected}"]
    if source_port == expected:
        return Finding(quirk, "absent", evidence)
    return Finding(quirk, "present", evidence,
                   "client firewalls that only admit active data from port 20 will drop this; "
                   "vsftpd connect_from_port_20=YES, or open the client firewall by conntrack expectation instead")


@rule("server.cleartext-login")
def _cleartext(observations: Observations, context: dict) -> Finding:
    quirk, obs = "server.cleartext-login", observations.get("auth-tls")
    if (missing := _missing(quirk, obs, "auth-tls")):
        return missing
    assert obs is not None
    ex = obs.first
    offered = ex is not None and ex.reply is not None and ex.reply.code == 234
    evidence = [ex.describe() if ex else "AUTH TLS not sent",
                f"FEAT lists AUTH TLS: {'yes' if obs.data.get('feat_auth_tls') else 'no'}"]
    if obs.data.get("anonymous"):
        evidence.append("this probe logged in anonymously: no secret was exposed")
        return Finding(quirk, "absent", evidence,
                       "" if offered else "the server offers no AUTH TLS: real users' passwords cross in clear text")
    evidence.append(f"USER {obs.data.get('user')} and its password were sent in clear text (ftp://)")
    advice = ("the server offers AUTH TLS (RFC 4217): configure clients for explicit FTPS" if offered else
              "enable AUTH TLS (RFC 4217: vsftpd ssl_enable, pure-ftpd -Y 1) or move to SFTP")
    return Finding(quirk, "present", evidence, advice)


@rule("server.list-unparseable")
def _listing(observations: Observations, context: dict) -> Finding:
    quirk, obs = "server.list-unparseable", observations.get("list-format")
    if (missing := _missing(quirk, obs, "list-format")):
        return missing
    assert obs is not None
    d = obs.data
    if "no_passive" in d:
        return Finding(quirk, "inconclusive", [f"no passive data connection for LIST: {d['no_passive']}"])
    if "list_failed" in d:
        return Finding(quirk, "inconclusive", [f"LIST was not answered with a transfer: {d['list_failed']}"])
    evidence = [f"LIST: {d.get('lines', 0)} lines, {d.get('bytes', 0)} bytes, style {d.get('style')}"
                + (" (read stopped at 1 MiB)" if d.get("truncated") else ""),
                f"MLSD offered in FEAT: {'yes' if d.get('mlsd') else 'no'}"]
    evidence += [f"unparseable line: '{l}'" for l in d.get("unparseable", [])]
    if d.get("unparseable_count") and not d.get("mlsd"):
        return Finding(quirk, "present", evidence,
                       "GUI clients cannot parse this listing; enable Unix-style LIST or MLSD (RFC 3659)")
    if not d.get("lines") and not d.get("mlsd"):
        return Finding(quirk, "inconclusive", evidence + ["the listed directory is empty"])
    return Finding(quirk, "absent", evidence)


@rule("server.connection-limit")
def _limit(observations: Observations, context: dict) -> Finding:
    quirk, obs = "server.connection-limit", observations.get("session-limit")
    if (missing := _missing(quirk, obs, "session-limit")):
        return missing
    assert obs is not None
    d = obs.data
    evidence = [f"{d['accepted']} of {d['tried']} concurrent sessions accepted"]
    if "refused" in d:
        evidence.append(d["refused"])
        return Finding(quirk, "present", evidence,
                       f"the server allows about {d['accepted']} concurrent session(s) from here; clients that open "
                       "a session per transfer (or several users) hit 421: raise the limit if that is not intended",
                       data={"limit": d["accepted"]})
    return Finding(quirk, "absent", evidence)


# -- passive mapping ---------------------------------------------------------


def passive_map(observations: Observations) -> PassiveMap | None:
    """The analyzed passive mapping, or None if pasv-map did not run."""
    obs = observations.get("pasv-map")
    if obs is None or obs.error:
        return None
    return analyze(obs.data["samples"], errors=len(obs.data["errors"]))


def _map_or_missing(quirk: str, observations: Observations,
                    context: dict) -> tuple[PassiveMap | None, Finding | None]:
    """The passive map that :func:`infer` analyzed once for every rule, or the
    finding that says why there is none."""
    obs = observations.get("pasv-map")
    if (missing := _missing(quirk, obs, "pasv-map")):
        return None, missing
    pmap = context["passive_map"]
    assert pmap is not None and obs is not None
    if not pmap.samples:
        return None, Finding(quirk, "inconclusive", ["no passive reply could be sampled"] + obs.data["errors"][:3])
    return pmap, None


def _describe_range(pmap: PassiveMap) -> str:
    est = f"{pmap.estimate_low}-{pmap.estimate_high}"
    unc = f" (±{pmap.uncertainty})" if pmap.uncertainty else ""
    return (f"{pmap.samples} samples, observed {pmap.observed_min}-{pmap.observed_max} "
            f"({pmap.distinct_ports} distinct), estimated {est}{unc} by {pmap.method}, allocation {pmap.allocation}")


@rule("server.pasv-range")
def _range(observations: Observations, context: dict) -> Finding:
    quirk = "server.pasv-range"
    pmap, missing = _map_or_missing(quirk, observations, context)
    if missing:
        return missing
    assert pmap is not None
    return Finding(quirk, "present", [_describe_range(pmap)],
                   f"forward exactly {pmap.estimate_low}-{pmap.estimate_high} on the site's router, or pin the range "
                   f"({SERVER_OPTIONS})", data=pmap.to_dict())


@rule("server.pasv-range-wide")
def _wide(observations: Observations, context: dict) -> Finding:
    quirk = "server.pasv-range-wide"
    pmap, missing = _map_or_missing(quirk, observations, context)
    if missing:
        return missing
    assert pmap is not None and pmap.width is not None
    evidence = [_describe_range(pmap), f"estimated width {pmap.width} ports (threshold {WIDE_RANGE})"]
    if pmap.width > WIDE_RANGE:
        return Finding(quirk, "present", evidence,
                       f"narrow the passive range to a few hundred ports and forward those ({SERVER_OPTIONS})")
    return Finding(quirk, "absent", evidence)


@rule("server.pasv-outside-range")
def _outside(observations: Observations, context: dict) -> Finding:
    quirk = "server.pasv-outside-range"
    pmap, missing = _map_or_missing(quirk, observations, context)
    if missing:
        return missing
    assert pmap is not None
    if pmap.outside:
        return Finding(quirk, "present",
                       [f"ports {', '.join(map(str, pmap.outside[:10]))} lie apart from the main range "
                        f"{pmap.estimate_low}-{pmap.estimate_high}", _describe_range(pmap)],
                       "the server falls back to kernel-chosen ports (range exhausted or busy?); "
                       "those are not forwarded: widen the range or lower the session limit")
    return Finding(quirk, "absent", [f"all {pmap.samples} sampled ports lie in one range"])


@rule("server.pasv-unreachable")
def _unreachable(observations: Observations, context: dict) -> Finding:
    quirk = "server.pasv-unreachable"
    pmap, missing = _map_or_missing(quirk, observations, context)
    if missing:
        return missing
    assert pmap is not None
    if not pmap.tried:
        return Finding(quirk, "inconclusive", ["no data connection was tried"])
    evidence = [f"{pmap.reachable} of {pmap.tried} data connections succeeded"]
    if pmap.reachable == pmap.tried:
        return Finding(quirk, "absent", evidence)
    ranges = format_ranges(pmap.unreachable_ranges)
    evidence.append(f"{ranges} unreachable")
    if pmap.reachable == 0:
        return Finding(quirk, "present", evidence,
                       f"no passive data connection is possible: forward {pmap.estimate_low}-{pmap.estimate_high} "
                       "to the server and open it in its firewall", severity="critical",
                       data={"unreachable_ranges": pmap.unreachable_ranges})
    return Finding(quirk, "present", evidence,
                   f"part of the range is not forwarded: forward all of {pmap.estimate_low}-{pmap.estimate_high} "
                   f"or shrink the server's range to what is forwarded ({SERVER_OPTIONS})",
                   data={"unreachable_ranges": pmap.unreachable_ranges})


#: Addresses a 227 reply must not advertise to the internet (QUIRKS.md): RFC 1918,
#: loopback, link-local, CGNAT (RFC 6598) and IPv6 unique-local.  Not ``is_private``,
#: which also counts the documentation ranges the labs use as "the internet".
NON_ROUTABLE = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "169.254.0.0/16", "100.64.0.0/10",
    "::1/128", "fe80::/10", "fc00::/7"))


def _non_routable(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return any(addr.version == net.version and addr in net for net in NON_ROUTABLE)


@rule("server.pasv-private-address")
def _private(observations: Observations, context: dict) -> Finding:
    quirk = "server.pasv-private-address"
    pmap, missing = _map_or_missing(quirk, observations, context)
    if missing:
        return missing
    assert pmap is not None
    peer = ipaddress.ip_address(context["peer"])
    if not pmap.addresses:
        return Finding(quirk, "skipped", ["only 229 replies (no address) were sampled"])
    if _non_routable(peer):
        return Finding(quirk, "skipped", [f"the control peer {peer} is itself not routable: run from outside the site"])
    private = [a for a in pmap.addresses if _non_routable(ipaddress.ip_address(a))]
    evidence = [f"227 replies advertised {', '.join(f'{a} ({n}x)' for a, n in pmap.addresses.items())}; "
                f"control peer {peer}"]
    if private:
        return Finding(quirk, "present", evidence,
                       f"announce the public address {peer} ({ADDRESS_OPTIONS}); clients that trust the 227 "
                       "address fail, EPSV (RFC 2428) avoids it")
    return Finding(quirk, "absent", evidence)


@rule("server.pasv-address-mismatch")
def _mismatch(observations: Observations, context: dict) -> Finding:
    quirk = "server.pasv-address-mismatch"
    pmap, missing = _map_or_missing(quirk, observations, context)
    if missing:
        return missing
    assert pmap is not None
    peer = context["peer"]
    if not pmap.addresses:
        return Finding(quirk, "skipped", ["only 229 replies (no address) were sampled"])
    other = [a for a in pmap.addresses if a != peer]
    evidence = [f"227 replies advertised {', '.join(pmap.addresses)}; control peer {peer}"]
    if other:
        return Finding(quirk, "present", evidence,
                       f"announce {peer} in 227 replies ({ADDRESS_OPTIONS}); ftpprobe connected to the control "
                       "peer instead (use --trust-pasv-address to follow the advertised address)")
    return Finding(quirk, "absent", evidence)


@rule("path.hairpin")
def _hairpin(observations: Observations, context: dict) -> Finding:
    quirk = "path.hairpin"
    if not context.get("from_lan"):
        return Finding(quirk, "skipped", ["decidable only from inside the site's LAN towards its public "
                                          "address: run with --from-lan"])
    pmap, missing = _map_or_missing(quirk, observations, context)
    if missing:
        return missing
    assert pmap is not None
    peer = context["peer"]
    evidence = [f"the control connection to {peer} worked (greeting and login)",
                f"{pmap.reachable} of {pmap.tried} passive data connections to {peer} succeeded"]
    if pmap.tried and pmap.reachable == 0:
        inside = [a for a in pmap.addresses if a != peer]
        if inside:
            evidence.append(f"the server advertises {', '.join(inside)} in its 227 replies")
        return Finding(quirk, "present", evidence,
                       f"enable hairpin NAT (NAT loopback) for the passive range {pmap.estimate_low}-"
                       f"{pmap.estimate_high} on the site's router, or let LAN clients use the server's "
                       "internal address (split DNS)")
    if not pmap.tried:
        return Finding(quirk, "inconclusive", evidence)
    return Finding(quirk, "absent", evidence)


def infer(observations: Observations, decided: list[str], context: dict) -> list[Finding]:
    """Run the rule of every quirk id in ``decided`` (in that order).

    ``context`` carries facts of the run, e.g. ``peer`` (the control peer's
    address as a string) and ``passive_map`` (:func:`passive_map`; computed
    here when absent, so the passive rules share one analysis).  Raises
    ``KeyError`` for an id without a rule (a catalog defect caught by the tests).
    """
    context = {**context}
    if "passive_map" not in context:
        context["passive_map"] = passive_map(observations)
    return [RULES[quirk](observations, context) for quirk in decided]


# -- the reflector vantage: NAT and ALG ---------------------------------------


def comparison(obs: Observation | None):
    """What the path did to the probe's line (:class:`ftpprobe.rewrite.Comparison`), or None."""
    if obs is None or "arrived" not in obs.data:
        return None
    return compare(bytes.fromhex(obs.data["sent"]), bytes.fromhex(obs.data["arrived"]))


def variant_outcome(obs: Observation | None) -> str:
    """rewritten / passed / mangled / stalled / reset / refused / error / skipped."""
    if obs is None:
        return "skipped"
    if obs.error:
        return "error"
    if "skipped" in obs.data:
        return "skipped"
    ex = obs.first
    if ex is None:
        return "error"
    if ex.outcome == "timeout":
        return "stalled"
    if ex.outcome in ("reset", "closed"):
        return "reset"
    cmp = comparison(obs)
    return cmp.outcome if cmp else "refused"


def _line_evidence(obs: Observation) -> str:
    cmp = comparison(obs)
    if cmp is not None:
        return cmp.describe(bytes.fromhex(obs.data["sent"]), bytes.fromhex(obs.data["arrived"]))
    ex = obs.first
    return ex.describe() if ex is not None else (obs.error or obs.data.get("skipped", "not run"))


def _rewritten(observations: Observations, name: str) -> bool | None:
    """True if the probe's line was rewritten, False if it passed unchanged, None if undecided."""
    outcome = variant_outcome(observations.get(name))
    return {"rewritten": True, "passed": False}.get(outcome)


def _alg_pair_rule(quirk: str, variant: str, *, advice: str, baseline: str = "alg-port-crlf") -> Rule:
    """Present when the baseline PORT is rewritten but the variant is not."""

    def decide(observations: Observations, context: dict) -> Finding:
        base, var = _rewritten(observations, baseline), _rewritten(observations, variant)
        evidence = [_line_evidence(o) for n in (baseline, variant) if (o := observations.get(n))]
        if base is not True:
            return Finding(quirk, "skipped", evidence + ["no ALG rewrote the canonical PORT line"])
        if var is None:
            return Finding(quirk, "inconclusive", evidence)
        return Finding(quirk, "absent" if var else "present", evidence, "" if var else advice)

    return decide


RULES["alg.first-command-blind"] = _alg_pair_rule(
    "alg.first-command-blind", "alg-port-first",
    advice="the ALG only parses lines that follow a LF it saw (nf_conntrack_ftp find_nl_seq): "
           "clients must not send PORT as their first line")
RULES["alg.case-sensitive"] = _alg_pair_rule(
    "alg.case-sensitive", "alg-port-lowercase", advice="clients that send lower-case 'port' get no rewrite; use PASV")
RULES["alg.foreign-ignored"] = _alg_pair_rule(
    "alg.foreign-ignored", "alg-port-foreign",
    advice="expected for a safe ALG (no pinholes for third parties); a client configured with its "
           "external address gets no rewrite and needs a forwarded port")


@rule("alg.port-21-only")
def _port_21_only(observations: Observations, context: dict) -> Finding:
    """Compare the PORT line on control port 21 with the one on the other port,
    whichever of the two the run called main."""
    quirk = "alg.port-21-only"
    pair = [o for n in ("alg-port-crlf", "alg-port-other-port") if (o := observations.get(n)) and not o.error]
    on_21 = [o for o in pair if o.data.get("control_port") == 21]
    other = [o for o in pair if o.data.get("control_port") not in (None, 21)]
    evidence = [f"control port {o.data.get('control_port')}: {_line_evidence(o)}" for o in pair]
    if not on_21 or not other:
        return Finding(quirk, "skipped", evidence + ["needs one PORT on control port 21 and one on another port"])
    at_21, elsewhere = _rewritten(observations, on_21[0].probe), _rewritten(observations, other[0].probe)
    if at_21 is None or elsewhere is None:
        return Finding(quirk, "inconclusive", evidence)
    if at_21 and not elsewhere:
        return Finding(quirk, "present", evidence,
                       "the ALG is bound to port 21; servers on another control port need passive mode "
                       "or a helper on that port (nftables: tcp dport PORT ct helper set ...)")
    return Finding(quirk, "absent", evidence)


def _rewrite_rule(quirk: str, variant: str, *, remap: bool = False) -> Rule:
    def decide(observations: Observations, context: dict) -> Finding:
        obs = observations.get(variant)
        if (missing := _missing(quirk, obs, variant)):
            return missing
        assert obs is not None
        cmp, evidence = comparison(obs), [_line_evidence(obs)]
        if cmp is None:
            return Finding(quirk, "inconclusive", evidence)
        if remap:
            if cmp.outcome != "rewritten":
                return Finding(quirk, "skipped", evidence + ["the line was not rewritten"])
            changed = cmp.sent_address[1] != cmp.arrived_address[1]
            return Finding(quirk, "present" if changed else "absent", evidence,
                           "the ALG allocated another port (it was in use): harmless when the ALG also "
                           "forwards it" if changed else "")
        return Finding(quirk, "present" if cmp.outcome == "rewritten" else "absent", evidence)

    return decide


RULES["alg.port-rewrite"] = _rewrite_rule("alg.port-rewrite", "alg-port-crlf")
RULES["alg.eprt-rewrite"] = _rewrite_rule("alg.eprt-rewrite", "alg-eprt-crlf")
RULES["alg.port-remap"] = _rewrite_rule("alg.port-remap", "alg-port-crlf", remap=True)


def _stall_rule(quirk: str, variants: tuple[str, ...], baselines: dict[str, str], advice: str) -> Rule:
    """Present when a variant got no answer (or only after retransmission)
    while the canonical line on the same path did answer."""

    def decide(observations: Observations, context: dict) -> Finding:
        evidence, stalled, decided = [], False, False
        for name in variants:
            obs, base = observations.get(name), observations.get(baselines[name])
            if obs is None or base is None or obs.error or base.error or not obs.first or not base.first:
                continue
            base_ok = base.first.outcome == "reply"
            evidence.append(f"{name}: {obs.first.describe()}")
            if not base_ok:
                evidence.append(f"canonical {baselines[name]} did not answer either: {base.first.describe()}")
                continue
            decided = True
            slow = obs.first.outcome == "reply" and obs.first.elapsed > max(1.0, 5 * base.first.elapsed)
            if obs.first.outcome == "timeout" or slow:
                stalled = True
                evidence.append(f"canonical {baselines[name]} answered in {base.first.elapsed:g} s; "
                                f"this variant {'stalled' if not slow else f'answered only after {obs.first.elapsed:g} s'}")
        if not decided:
            return Finding(quirk, "inconclusive", evidence or ["no variant could be compared with a canonical line"])
        return Finding(quirk, "present" if stalled else "absent", evidence, advice if stalled else "")

    return decide


RULES["alg.stall.bare-lf"] = _stall_rule(
    "alg.stall.bare-lf", ("alg-port-lf", "alg-pasv-lf"),
    {"alg-port-lf": "alg-port-crlf", "alg-pasv-lf": "alg-pasv-crlf"},
    "the ALG drops lines it cannot parse to their CR: clients must end lines with CRLF (RFC 959 §4.1), "
    "or disable the router's FTP ALG")
RULES["alg.stall.space-lf"] = _stall_rule(
    "alg.stall.space-lf", ("alg-pasv-space-lf",), {"alg-pasv-space-lf": "alg-pasv-crlf"},
    "the router stalls on 'PASV \\n' (seed 000): fix the client, or disable the router's FTP ALG")
RULES["alg.stall.trailing-space"] = _stall_rule(
    "alg.stall.trailing-space", ("alg-port-trailing-space",), {"alg-port-trailing-space": "alg-port-crlf"},
    "the ALG drops PORT lines with a trailing space: fix the client or use passive mode")
RULES["alg.stall.split"] = _stall_rule(
    "alg.stall.split", ("alg-port-split-verb", "alg-port-split-number"),
    {"alg-port-split-verb": "alg-port-crlf", "alg-port-split-number": "alg-port-crlf"},
    "the ALG drops a segment holding part of a PORT line (nf_conntrack_ftp: 'partial matching'): "
    "clients must send each command in one write")


@rule("nat.present")
def _nat(observations: Observations, context: dict) -> Finding:
    seen = [(o.data["local"], o.data["peer_seen"]) for o in observations.values() if "peer_seen" in o.data]
    if not seen:
        return Finding("nat.present", "inconclusive", ["no reflector report was received"])
    local, peer = seen[0]
    evidence = [f"prober's local address {local[0]} port {local[1]}; the reflector saw {peer[0]} port {peer[1]}"]
    if local[0] != peer[0]:
        return Finding("nat.present", "present", evidence)
    return Finding("nat.present", "absent", evidence)


@rule("nat.no-alg")
def _no_alg(observations: Observations, context: dict) -> Finding:
    nat = _nat(observations, context)
    base = _rewritten(observations, "alg-port-crlf")
    obs = observations.get("alg-port-crlf")
    evidence = nat.evidence + ([_line_evidence(obs)] if obs else [])
    if nat.status != "present" or base is None:
        return Finding("nat.no-alg", "absent" if nat.status == "absent" else "inconclusive", evidence)
    if base:
        return Finding("nat.no-alg", "absent", evidence)
    return Finding("nat.no-alg", "present", evidence,
                   "active mode (PORT/EPRT) cannot work through this NAT: use passive mode, or enable the "
                   "router's FTP helper (nf_conntrack_ftp + nf_nat_ftp)")


@rule("path.active-blocked")
def _path_active_blocked(observations: Observations, context: dict) -> Finding:
    if "alg-port-crlf" not in observations:
        return _active_blocked(observations, context)  # the server vantage
    obs = observations["alg-port-crlf"]
    if (missing := _missing("path.active-blocked", obs, "alg-port-crlf")):
        return missing
    evidence = [_line_evidence(obs)]
    active = obs.data.get("active")
    if not active:
        return Finding("path.active-blocked", "inconclusive", evidence + ["PORT was not accepted; LIST not sent"])
    if active.get("connected"):
        src = active.get("source", ["?", "?"])
        evidence.append(f"the reflector's data connection arrived from {src[0]} port {src[1]}: '{active.get('head', '')}'")
        return Finding("path.active-blocked", "absent", evidence)
    evidence.append(active.get("accept_error", "no data connection"))
    evidence.append(f"reflector: {active.get('final', '')}")
    return Finding("path.active-blocked", "present", evidence,
                   "the path drops inbound active-mode data connections: use passive mode, or an FTP ALG / "
                   "forwarded port on the router")


@rule("alg.canonicalizes")
def _canonicalizes(observations: Observations, context: dict) -> Finding:
    rewritten = [(n, c) for n, o in observations.items() if (c := comparison(o)) and c.outcome == "rewritten"]
    if not rewritten:
        return Finding("alg.canonicalizes", "skipped", ["no line was rewritten"])
    canonical = [n for n, c in rewritten if c.canonical]
    evidence = [_line_evidence(observations[n]) for n, _ in rewritten[:4]]
    if canonical:
        return Finding("alg.canonicalizes", "present", evidence,
                       "the ALG rewrites whole lines; servers see its spelling, not the client's")
    return Finding("alg.canonicalizes", "absent", evidence)


@rule("alg.pasv-mangle")
def _pasv_mangle(observations: Observations, context: dict) -> Finding:
    names = [n for n in ("alg-pasv-crlf", "alg-pasv-lowercase", "alg-pasv-other-port") if n in observations]
    decided = [(n, variant_outcome(observations[n])) for n in names]
    evidence = [_line_evidence(observations[n]) for n in names]
    if any(outcome == "mangled" for _, outcome in decided):
        return Finding("alg.pasv-mangle", "present", evidence,
                       "the router alters PASV (e.g. to P@SW, seed 003): update its firmware or disable its FTP "
                       "ALG; servers such as vsftpd and pure-ftpd accept P@SW as a workaround")
    if any(outcome == "passed" for _, outcome in decided):
        return Finding("alg.pasv-mangle", "absent", evidence)
    return Finding("alg.pasv-mangle", "inconclusive", evidence)


@rule("alg.reply-rewrite")
def _reply_rewrite(observations: Observations, context: dict) -> Finding:
    evidence, rewritten, decided = [], False, False
    for name in ("alg-pasv-crlf", "alg-epsv"):
        obs = observations.get(name)
        if obs is None or not obs.data.get("declared") or not obs.data.get("advertised"):
            continue
        decided = True
        adv, dec = obs.data["advertised"], obs.data["declared"]
        same = adv[1] == dec[1] and (dec[0] is None or adv[0] == dec[0])
        evidence.append(f"{name}: the reflector declared {dec[0] or '(no address)'}:{dec[1]}, the prober "
                        f"received {adv[0] or '(no address)'}:{adv[1]}" + ("" if same else " (rewritten)"))
        rewritten |= not same
    if not decided:
        return Finding("alg.reply-rewrite", "inconclusive", evidence or ["no 227/229 with a declaration arrived"])
    return Finding("alg.reply-rewrite", "present" if rewritten else "absent", evidence,
                   "a middlebox rewrites 227/229 replies: a server's own announced address is not what clients see"
                   if rewritten else "")


def fingerprint_rows(observations: Observations) -> list[dict]:
    """The ALG fingerprint: one row per reflector variant (probe, sent, arrived, outcome, detail)."""
    rows = []
    for name in sorted(observations):
        obs = observations[name]
        if "sent" not in obs.data and not name.startswith("alg-"):
            continue
        sent = bytes.fromhex(obs.data["sent"]) if "sent" in obs.data else b""
        arrived = bytes.fromhex(obs.data["arrived"]) if "arrived" in obs.data else None
        ex = obs.first
        detail = ""
        if ex is not None and ex.outcome != "reply":
            detail = ex.describe()
        elif (cmp := comparison(obs)) and cmp.outcome == "rewritten":
            detail = f"{cmp.sent_address[0]}:{cmp.sent_address[1]} -> {cmp.arrived_address[0]}:{cmp.arrived_address[1]}"
        elif obs.data.get("advertised"):
            detail = f"227/229 {obs.data['advertised']} declared {obs.data.get('declared')}"
        rows.append({"probe": name, "port": obs.data.get("control_port"), "sent": escape(sent),
                     "arrived": escape(arrived) if arrived is not None else None,
                     "reads": obs.data.get("reads"), "outcome": variant_outcome(obs), "detail": detail,
                     "error": obs.error})
    return rows
