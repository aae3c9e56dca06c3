"""Rules of the passive range: what the repeated PASV/EPSV of ``pasv-map`` show.

Every rule here reads the one probe ``pasv-map`` and the analysis of its
samples (:func:`ftpprobe.passive.analyze`, shared through
:attr:`RunFacts.passive_map`).  Shared outcomes (probe not run: ``skipped``;
its sessions failed: ``inconclusive``) are decided by :mod:`ftpprobe.rules`;
on top of them, every rule here gives ``inconclusive`` when not one passive
reply could be sampled (the sessions' errors are the evidence).
"""

from __future__ import annotations

from ..findings import Finding
from ..observations import PassiveMapObs, non_routable
from ..passive import PassiveMap, format_confidence, format_ranges
from . import Seen, rule

#: The passive range width over which forwarding by hand is impractical (ports).
WIDE_RANGE = 1000

SERVER_OPTIONS = ("vsftpd pasv_min_port/pasv_max_port, pure-ftpd -p MIN:MAX, "
                  "proftpd PassivePorts, pyftpdlib passive_ports")
ADDRESS_OPTIONS = ("vsftpd pasv_address, pure-ftpd -P, proftpd MasqueradeAddress, "
                   "pyftpdlib masquerade_address")


def _mapped(quirk: str, seen: Seen) -> tuple[PassiveMap | None, Finding | None]:
    """The analysed map, or the ``inconclusive`` finding saying why there is none."""
    obs = seen.get("pasv-map")
    pmap = seen.facts.passive_map
    if not isinstance(obs, PassiveMapObs) or not isinstance(pmap, PassiveMap):
        return None, Finding(quirk, "inconclusive", ["the passive map was not analysed"])
    if not pmap.samples:
        return None, Finding(quirk, "inconclusive",
                             ["no passive reply could be sampled"] + list(obs.errors[:3]))
    return pmap, None


def describe_range(pmap: PassiveMap) -> str:
    """One evidence line: samples, observed ports, the estimate and how it was made."""
    return (f"{pmap.samples} samples, {pmap.distinct_ports} distinct ports, observed "
            f"{pmap.observed_min}-{pmap.observed_max}, allocation {pmap.allocation}; {pmap.method}")


def forward_advice(pmap: PassiveMap) -> str:
    """What to forward, as far as the samples support it."""
    if pmap.needs_walk:
        return (f"the server hands out ports in sequence: it used {pmap.range_min}-{pmap.range_max}; run "
                f"map-pasv with more samples to find both ends, or pin the range ({SERVER_OPTIONS})")
    if pmap.confidence is None:
        return (f"forward at least {pmap.estimate_low}-{pmap.estimate_high} (too few samples for a confidence "
                f"claim: run map-pasv with more samples), or pin the range ({SERVER_OPTIONS})")
    return (f"forward exactly {pmap.estimate_low}-{pmap.estimate_high} on the site's router (covers the whole "
            f"range with {format_confidence(pmap.confidence)} confidence), or pin the range ({SERVER_OPTIONS})")


@rule("server.pasv-range", reads=("pasv-map",))
def pasv_range(seen: Seen) -> Finding:
    """The mapped range, always ``present`` (``info``) when there is one.

    ==========================================  ============
    pasv-map                                    status
    ==========================================  ============
    one or more 227/229 replies sampled         present
    no reply sampled (timeouts, resets, 5xx)    inconclusive
    not run / its sessions failed               skipped / inconclusive (shared)
    ==========================================  ============
    """
    quirk = "server.pasv-range"
    pmap, missing = _mapped(quirk, seen)
    if missing:
        return missing
    assert pmap is not None
    return Finding(quirk, "present", [describe_range(pmap)], forward_advice(pmap), data=pmap.to_dict())


@rule("server.pasv-range-wide", reads=("pasv-map",))
def pasv_range_wide(seen: Seen) -> Finding:
    """Too wide to forward by hand: more than :data:`WIDE_RANGE` ports.

    =====================================================  ============
    pasv-map (``width_low`` .. ``width``, ports)            status
    =====================================================  ============
    lower confidence bound of the width > 1000             present
    whole interval (upper bound) <= 1000                   absent
    the bounds straddle 1000, or no upper bound (a         inconclusive
    sequential allocator: only the used ports are known)
    no reply sampled                                       inconclusive
    =====================================================  ============
    """
    quirk = "server.pasv-range-wide"
    pmap, missing = _mapped(quirk, seen)
    if missing:
        return missing
    assert pmap is not None
    low = pmap.width_low or 0
    high = None if pmap.needs_walk else pmap.width
    evidence = [describe_range(pmap),
                f"width at least {low} ports" + (f", at most {high}" if high is not None else "")
                + f" (threshold {WIDE_RANGE})"]
    if low > WIDE_RANGE:
        return Finding(quirk, "present", evidence,
                       f"narrow the passive range to a few hundred ports and forward those ({SERVER_OPTIONS})")
    if high is not None and high <= WIDE_RANGE:
        return Finding(quirk, "absent", evidence)
    return Finding(quirk, "inconclusive", evidence + ["the samples cannot tell on which side of the threshold "
                                                      "the width lies: run map-pasv with more samples"])


@rule("server.pasv-outside-range", reads=("pasv-map",))
def pasv_outside_range(seen: Seen) -> Finding:
    """Ports apart from the main range (a fallback to kernel-chosen ports).

    ============================================================  ============
    pasv-map                                                       status
    ============================================================  ============
    a sampled port lies apart from the main range                  present
    none apart, and enough distinct ports to have seen one         absent
    none apart, too few distinct ports to tell                     inconclusive
    no reply sampled                                               inconclusive
    ============================================================  ============
    """
    quirk = "server.pasv-outside-range"
    pmap, missing = _mapped(quirk, seen)
    if missing:
        return missing
    assert pmap is not None
    if pmap.outside:
        return Finding(quirk, "present",
                       [f"ports {', '.join(map(str, pmap.outside[:10]))} lie apart from the main range "
                        f"{pmap.range_min}-{pmap.range_max}", describe_range(pmap)],
                       "the server falls back to kernel-chosen ports (range exhausted or busy?); those are not "
                       "forwarded: widen the range or lower the session limit")
    if not pmap.outside_decidable:
        return Finding(quirk, "inconclusive",
                       [f"{pmap.distinct_ports} distinct ports sampled; at least {pmap.outside_min_distinct} "
                        "are needed to notice ports apart from the range"])
    return Finding(quirk, "absent", [f"all {pmap.samples} sampled ports lie in one range"])


@rule("server.pasv-unreachable", reads=("pasv-map",))
def pasv_unreachable(seen: Seen) -> Finding:
    """Data connections to the advertised passive ports fail.

    =====================================================  ==========================
    data connections to sampled ports                      status
    =====================================================  ==========================
    every one connected                                    absent
    none connected (refused, timed out, reset)             present, critical
    some connected, some not                               present: the unreachable
                                                           runs of sampled ports
    none tried (no reply sampled)                          inconclusive
    =====================================================  ==========================

    A failed data connection is this finding's evidence, whatever the cause
    (refused, timeout): it is what a client meets.  ``absent`` says how large
    an unreachable share of the range could have gone unseen (95%): with
    pipelined sampling only the last port of each write is tried.
    """
    quirk = "server.pasv-unreachable"
    pmap, missing = _mapped(quirk, seen)
    if missing:
        return missing
    assert pmap is not None
    if not pmap.tried:
        return Finding(quirk, "inconclusive", ["no data connection was tried"])
    evidence = [f"{pmap.reachable} of {pmap.tried} data connections succeeded"]
    if pmap.reachable == pmap.tried:
        # How strong the absence is: had this share of the ports been unreachable,
        # one of the tried ports would have failed with 95% probability.
        share = 1 - 0.05 ** (1 / pmap.tried)
        tighten = ("--pipeline 1 (every sampled port tried) or more --samples" if pmap.pipelined
                   else "more --samples")
        evidence.append(f"an unreachable share of the range above {share:.0%} would have shown with 95% "
                        f"probability ({pmap.tried} ports tried; map with {tighten} to tighten it)")
        return Finding(quirk, "absent", evidence)
    evidence += [f"ports {run['first']}-{run['last']} unreachable ({run['samples']} failed connection(s))"
                 if run["first"] != run["last"] else
                 f"port {run['first']} unreachable ({run['samples']} failed connection(s))"
                 for run in pmap.unreachable_runs[:8]]
    data = {"unreachable_ranges": [list(r) for r in pmap.unreachable_ranges]}
    if pmap.reachable == 0:
        return Finding(quirk, "present", evidence,
                       f"no passive data connection is possible: forward {pmap.estimate_low}-{pmap.estimate_high} "
                       "to the server and open it in its firewall", severity="critical", data=data)
    return Finding(quirk, "present", evidence,
                   f"part of the range is not forwarded ({format_ranges(pmap.unreachable_ranges[:8])} among the "
                   f"sampled ports): forward all of {pmap.estimate_low}-{pmap.estimate_high} or shrink the server's "
                   f"range to what is forwarded ({SERVER_OPTIONS})", data=data)


def _addresses(pmap: PassiveMap) -> str:
    return ", ".join(f"{address} ({count}x)" for address, count in pmap.addresses.items())


@rule("server.pasv-private-address", reads=("pasv-map",))
def pasv_private_address(seen: Seen) -> Finding:
    """A 227 reply names a non-routable address while the control peer is routable.

    ==================================================  ============
    227 replies (addresses) / control peer               status
    ==================================================  ============
    a non-routable address, peer routable                present
    only routable addresses, peer routable               absent
    peer itself non-routable (a LAN vantage)             skipped
    only 229 replies (no address)                        skipped
    no reply sampled                                     inconclusive
    ==================================================  ============
    """
    quirk = "server.pasv-private-address"
    pmap, missing = _mapped(quirk, seen)
    if missing:
        return missing
    assert pmap is not None
    peer = seen.facts.peer
    if not pmap.addresses:
        return Finding(quirk, "skipped", ["only 229 replies (no address) were sampled"])
    if non_routable(peer):
        return Finding(quirk, "skipped", [f"the control peer {peer} is itself not routable: run from outside the site"])
    evidence = [f"227 replies named {_addresses(pmap)}; control peer {peer}"]
    if any(non_routable(a) for a in pmap.addresses):
        return Finding(quirk, "present", evidence,
                       f"announce the public address {peer} ({ADDRESS_OPTIONS}); clients that trust the 227 "
                       "address fail, EPSV (RFC 2428) avoids it")
    return Finding(quirk, "absent", evidence)


@rule("server.pasv-address-mismatch", reads=("pasv-map",))
def pasv_address_mismatch(seen: Seen) -> Finding:
    """A 227 reply names an address other than the control peer's.

    ==================================================  ============
    227 replies (addresses)                              status
    ==================================================  ============
    one differs from the control peer                    present
    all equal the control peer                           absent
    only 229 replies (no address)                        skipped
    no reply sampled                                     inconclusive
    ==================================================  ============
    """
    quirk = "server.pasv-address-mismatch"
    pmap, missing = _mapped(quirk, seen)
    if missing:
        return missing
    assert pmap is not None
    peer = seen.facts.peer
    if not pmap.addresses:
        return Finding(quirk, "skipped", ["only 229 replies (no address) were sampled"])
    evidence = [f"227 replies named {_addresses(pmap)}; control peer {peer}"]
    if any(a != peer for a in pmap.addresses):
        return Finding(quirk, "present", evidence,
                       f"announce {peer} in 227 replies ({ADDRESS_OPTIONS}); ftpprobe connected to the control "
                       "peer instead (--trust-pasv-address follows the announced address)")
    return Finding(quirk, "absent", evidence)


@rule("path.hairpin", reads=("pasv-map",))
def hairpin(seen: Seen) -> Finding:
    """From the LAN, the site's public address serves control but not data connections.

    ==================================================  ============
    run / data connections to the public address         status
    ==================================================  ============
    not run with --from-lan                              skipped
    none connected (control worked: the run logged in)   present
    one or more connected                                absent
    none tried                                           inconclusive
    ==================================================  ============
    """
    quirk = "path.hairpin"
    if not seen.facts.from_lan:
        return Finding(quirk, "skipped", ["decidable only from inside the site's LAN towards its public "
                                          "address: run with --from-lan"])
    pmap, missing = _mapped(quirk, seen)
    if missing:
        return missing
    assert pmap is not None
    peer = seen.facts.peer
    evidence = [f"the control connection to {peer} worked (greeting and login)",
                f"{pmap.reachable} of {pmap.tried} passive data connections to {peer} succeeded"]
    if not pmap.tried:
        return Finding(quirk, "inconclusive", evidence)
    if pmap.reachable == 0:
        inside = [a for a in pmap.addresses if a != peer]
        if inside:
            evidence.append(f"the server announces {', '.join(inside)} in its 227 replies")
        return Finding(quirk, "present", evidence,
                       f"enable hairpin NAT (NAT loopback) for the passive range {pmap.estimate_low}-"
                       f"{pmap.estimate_high} on the site's router, or let LAN clients use the server's "
                       "internal address (split DNS)")
    return Finding(quirk, "absent", evidence)
