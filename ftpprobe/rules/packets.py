"""Rules and readings from packet captures (:mod:`ftpprobe.packets`).

``path.reset-injected`` is decided here; :func:`reset_evidence` adds who reset
to ``server.port-reset`` and :func:`hop_reading` the rewriting hop to
``alg.port-rewrite``.  Pure: observations in, findings out.  Shared outcomes
(probe not run, failed, or skipped for want of CAP_NET_RAW) are decided by
:mod:`ftpprobe.rules`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..codec import escape
from ..findings import Finding
from ..observations import HopsObs, Observation, ResetCaptureObs
from ..rewrite import compare
from . import Seen, rule

RESET_PROBE, HOPS_PROBE = "port-reset-source", "alg-port-hops"


@rule("path.reset-injected", reads=(RESET_PROBE,))
def reset_injected(seen: Seen) -> Finding:
    """A TCP reset on the control connection came from a middlebox, not from the peer.

    Each RST captured on the connection is attributed from its IP TTL, IP ID
    and TCP window against the peer's own packets
    (:func:`ftpprobe.packets.attribute_resets`).

    ==============================================  ===============================
    port-reset-source                               status
    ==============================================  ===============================
    not run / failed / skipped (no CAP_NET_RAW)     shared
    no command sent                                 ``inconclusive``
    any RST attributed to a middlebox               ``present``
    RSTs, every one attributed to the peer          ``absent``
    RSTs, some of unclear sender, none middlebox    ``inconclusive``
    no RST; PORT answered or the peer closed        ``absent``
    no RST; PORT timed out                          ``inconclusive``: never absent
    no RST captured, yet the socket saw a reset     ``inconclusive`` (capture missed it)
    an ``absent`` row, but the capture lost packets ``inconclusive``: a lost one may be a RST
    ==============================================  ===============================
    """
    quirk = "path.reset-injected"
    obs = seen.get(RESET_PROBE)
    if not isinstance(obs, ResetCaptureObs) or obs.exchange is None:
        return Finding(quirk, "inconclusive", [f"{RESET_PROBE}: no command was sent"])
    ex = obs.exchange
    evidence = [f"{RESET_PROBE}: {ex.describe()}"]
    evidence += [r.describe() for r in obs.resets]
    evidence.append(f"captured {obs.peer_packets} packet(s) from the peer {obs.peer[0]}:{obs.peer[1]}"
                    if obs.peer else "captured no connection")
    if obs.capture:
        evidence.append(f"capture: {obs.capture}")
    if obs.lost:
        evidence.append(f"the capture lost packets: {obs.lost}")
    data = {"resets": [{"sender": r.sender, "ttl": r.ttl, "ip_id": r.ip_id, "window": r.window,
                        "peer_ttls": list(r.peer_ttls)} for r in obs.resets]}
    senders = {r.sender for r in obs.resets}
    if "middlebox" in senders:
        return Finding(quirk, "present", evidence,
                       "a firewall or router between here and the server resets the FTP control connection "
                       "(it matched the PORT command): allow active-mode FTP in that device, or use passive mode",
                       data=data)
    if senders == {"peer"}:
        return _unless_lost(Finding(quirk, "absent", evidence + ["the reset came from the server itself"], data=data),
                            obs)
    if senders:
        return Finding(quirk, "inconclusive", evidence, data=data)
    if ex.outcome == "reset":
        return Finding(quirk, "inconclusive", evidence + ["the connection was reset but no RST was captured"])
    if ex.outcome in ("reply", "closed"):
        return _unless_lost(Finding(quirk, "absent", evidence + ["no TCP reset on the control connection"]), obs)
    return Finding(quirk, "inconclusive", evidence + ["no answer is no proof that nothing resets"])


def _unless_lost(finding: Finding, obs: ResetCaptureObs) -> Finding:
    """``finding`` (``absent``), or ``inconclusive`` when the capture lost
    packets: one of them may have been a middlebox's RST."""
    if not obs.lost:
        return finding
    return Finding(finding.id, "inconclusive",
                   [*finding.evidence, "but a packet the capture lost may have been a middlebox's reset"],
                   data=finding.data)


def reset_evidence(obs: Observation | None) -> list[str]:
    """Who sent the resets of a ``port-reset-source`` capture, as evidence lines ([] without one)."""
    if not isinstance(obs, ResetCaptureObs):
        return []
    if not obs.resets:
        return [f"{RESET_PROBE} (packet capture): no RST arrived on its control connection"]
    return [f"{RESET_PROBE} (packet capture): {r.describe()}" for r in obs.resets]


@dataclass(frozen=True)
class HopReading:
    """Where along the path a line was rewritten.

    ``after_hop``: the TTL (hop number) after which the line is rewritten (0:
    before the first router, i.e. on this host or its first link); ``None``
    when undecided or not rewritten; ``address``: that hop's address;
    ``between``: hop numbers it could be when silent or short quotes leave a
    gap; ``lines``: one evidence line per hop.
    """

    after_hop: int | None
    address: str | None
    between: tuple[int, ...]
    lines: tuple[str, ...]


def hop_reading(obs: HopsObs) -> HopReading:
    """Read the hops of a ``hops`` observation: what each hop quoted, what the
    reflector received, and the first hop after which the line differs.

    The line as seen after hop k is hop k+1's quote, or the reflector's report
    for the last hop.  The rewriter is the last hop whose view was as sent
    before the first view that differs; hops in between that were silent or
    quoted too little leave a range (``between``).
    """
    views: list[tuple[int, str | None, str]] = [(h.ttl, h.address, h.state) for h in obs.hops]
    lines = []
    for h in obs.hops:
        if h.address is None:
            lines.append(f"hop {h.ttl}: no ICMP time-exceeded")
        else:
            lines.append(f"hop {h.ttl} {h.address}: {h.state}" + (f", quoted '{escape(h.quoted)}'" if h.quoted else
                                                                   ", no payload quoted"))
    if obs.reached_ttl is not None and obs.reflection is not None:
        cmp = compare(obs.sent, obs.reflection.arrived)
        state = "as-sent" if cmp.outcome == "passed" else "rewritten"
        views.append((obs.reached_ttl, "reflector", state))
        lines.append(f"reflector (TTL {obs.reached_ttl}): received '{escape(obs.reflection.arrived)}'")
    elif obs.reached_ttl is None:
        lines.append(f"the line did not reach the reflector within {len(obs.hops)} hops")
    if obs.lost:
        lines.append(f"the capture lost packets ({obs.lost}): a hop shown silent may have answered")
    first = next((i for i, v in enumerate(views) if v[2] == "rewritten"), None)
    if first is None:
        return HopReading(None, None, (), tuple(lines))
    last_clean = next((i for i in range(first - 1, -1, -1) if views[i][2] == "as-sent"), None)
    start = views[last_clean][0] if last_clean is not None else 0
    candidates = tuple(range(start, views[first][0]))
    if len(candidates) == 1:
        address = views[last_clean][1] if last_clean is not None else None
        where = f"hop {start} ({address})" if address else "this host or its first link (before hop 1)"
        return HopReading(start, address, candidates, (*lines, f"the line is rewritten after {where}"))
    return HopReading(None, None, candidates,
                      (*lines, f"the line is rewritten somewhere after hops {candidates[0]}-{candidates[-1]}"))
