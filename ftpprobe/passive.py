"""Passive port range mapping: pure statistics over PASV/EPSV samples.

The prober (:mod:`ftpprobe.executors`) collects :class:`PassiveSample` values;
:func:`analyze` turns them into a :class:`PassiveMap`: observed bounds, a
confidence interval for the true range, allocation pattern, reachability,
ports outside the main range and the advertised addresses.  No I/O here.
Ports are integers 1..65535 and every port range is inclusive.

Confidence interval for the range (:func:`confidence_bounds`)
-------------------------------------------------------------
Model: a random allocator hands out ports ``X_1..X_n`` independently and
uniformly from the integers ``a..b`` (``N = b - a + 1`` ports); ``m`` and
``M`` are the sample minimum and maximum, ``R = M - m``.

Embed each draw in a continuous one: ``X_i = floor(Y_i)`` with ``Y_i``
uniform on ``[a, b + 1)``.  The lower gap ``G_lo = Y_(1) - a``, the span
``S = Y_(n) - Y_(1)`` and the upper gap ``G_hi = b + 1 - Y_(n)``, divided by
``N``, are Dirichlet(1, n - 1, 1); equivalently ``G_lo : S : G_hi =
E_0 : Gamma(n - 1) : E_n`` with independent exponentials.  Hence, exactly
and whatever ``N`` is::

    P(G_hi > t * S) = E[exp(-t * Gamma(n - 1))] = (1 + t) ** -(n - 1)

and the same for ``G_lo``.  Since ``Y_(n) < M + 1`` and ``Y_(1) >= m``:
``b - M < G_hi`` and ``S < R + 1``, so on the event ``G_hi <= t * S`` we get
``b - M < t * (R + 1)``, i.e. ``b <= M + floor(t * (R + 1))`` (an integer
strictly below a bound is at most its floor).  Likewise
``a >= m - floor(t * (R + 1))``.  Splitting the miss probability ``1 - c``
evenly between the two ends (Bonferroni) gives::

    t = ((1 - c) / 2) ** (-1 / (n - 1)) - 1
    estimate_low  = m - floor(t * (R + 1)),  estimate_high = M + floor(t * (R + 1))

and ``P(estimate_low <= a and b <= estimate_high) >= c`` (the exact joint
miss of the continuous model is ``2(1+t)^-(n-1) - (1+2t)^-(n-1)``, a little
under ``1 - c``; discreteness only adds slack; clamping to 1..65535 cannot
lose coverage).  Example: n = 10, c = 0.99 gives t = 0.80, so 10 samples
seen over 40102-40117 (R + 1 = 16) give 40090-40129.  Coverage is checked by
seeded simulation in ``tests/test_passive.py``.

Lower bound of the width (:func:`width_lower_bound`): ``S / N`` is
Beta(n - 1, 2), ``P(S <= q N) = n q^(n-1) - (n-1) q^n``; with ``q_c`` its
``c``-quantile and ``S > R - 1``, ``N >= floor((R - 1) / q_c) + 1`` with
confidence ``c``; never less than the observed ``R + 1`` (which is certain).

These bounds assume independent draws.  For a sequential allocator (each port
the previous plus a little) the sample extremes say nothing about where the
range ends: only the observed bounds are reported, with ``needs_walk``.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field, fields

#: Default confidence that [estimate_low, estimate_high] covers the true range.
DEFAULT_CONFIDENCE = 0.99
#: Sequential test: a step counts as "small" when 0 < step mod width <=
#: max(SMALL_STEP, 2 * sessions) (with k concurrent sessions the others take
#: about k - 1 ports between two of one session's samples).
SMALL_STEP = 4
#: A sequential verdict also needs the small steps to be this unlikely for a
#: random allocator (binomial tail), so narrow random ranges are not mislabeled.
SEQUENTIAL_LEVEL = 0.001
#: :func:`split_outside` margin (see its docstring).
OUTSIDE_MARGIN = 7.0
LOWEST_PORT, HIGHEST_PORT = 1, 65535


@dataclass
class PassiveSample:
    """One passive-mode answer.

    ``order``: global issue order (0, 1, ...); ``session``: which control
    session asked; ``command``: ``"PASV"`` or ``"EPSV"``; ``address``: the
    address a 227 reply advertised (``None`` for 229); ``port``: advertised
    port (1..65535); ``reachable``: did a data connection to the control
    peer's address and that port succeed (``None``: not tried);
    ``error``: why not; ``pipelined``: the reply answered one of several
    commands sent in one write (an ALG that inspects only the first command
    or reply of a segment may have left it unrewritten, so its address is
    no evidence: :func:`analyze` counts ``addresses`` from unpipelined
    replies only).
    """

    order: int
    session: int
    command: str
    port: int
    address: str | None = None
    reachable: bool | None = None
    error: str = ""
    pipelined: bool = False


@dataclass
class PassiveMap:
    """The result of :func:`analyze`.  Port bounds are inclusive.

    ``observed_min``/``observed_max``: extremes of all sampled ports;
    ``range_min``/``range_max``/``range_samples``: extremes and sample count
    of the main range (without ``outside`` ports), what the estimate and a
    baseline comparison are computed from.

    ``estimate_low``/``estimate_high``: for a random (or fixed) allocator, the
    interval that covers the whole true range with probability
    ``confidence`` (e.g. 0.99; see the module docstring); ``uncertainty``:
    ports it reaches past ``range_min``/``range_max`` on each side.  When
    ``confidence`` is ``None`` no such claim is made: for a sequential
    allocator (``needs_walk``: walk the range with more samples to find its
    ends) or a single sample the estimate is the observed main range; for an
    undetermined allocation order it is the interval a random allocator would
    need, without the claim.  ``width_low``: lower
    bound of the number of ports in the range, at ``confidence`` when that is
    set, else certain (the observed span); :attr:`width` is the upper one.

    ``allocation``: ``random`` / ``sequential`` / ``fixed`` / ``unknown``,
    judged within each of the ``sessions`` control sessions
    (:func:`classify_allocation`).

    ``outside``: sampled ports that lie apart from the main range (not used
    for the bounds); ``outside_decidable``: whether a port apart from the
    range could have been recognized in this sample at all (see
    :func:`outside_min_distinct`; ``outside_min_distinct`` is the number of
    distinct ports that needs).

    ``tried``/``reachable``: samples whose port was tried with a data
    connection / reached; ``pipelined``: samples answered within a write of
    several PASV/EPSV (of which only the last port could be tried).

    ``unreachable_ranges``: runs of consecutive sampled ports, in port order,
    whose data connections all failed, as ``(first, last)`` pairs; a run
    never spans a port that was not sampled.  ``unreachable_runs``: the same
    runs as ``{"first", "last", "samples"}`` with how many failed data
    connections support each.
    """

    samples: int = 0
    errors: int = 0
    observed_min: int | None = None
    observed_max: int | None = None
    distinct_ports: int = 0
    range_min: int | None = None
    range_max: int | None = None
    range_samples: int = 0
    estimate_low: int | None = None
    estimate_high: int | None = None
    uncertainty: int | None = None
    confidence: float | None = None
    width_low: int | None = None
    method: str = ""
    allocation: str = "unknown"
    needs_walk: bool = False
    sessions: int = 0
    reachable: int = 0
    tried: int = 0
    pipelined: int = 0
    outside: list[int] = field(default_factory=list)
    outside_decidable: bool = False
    outside_min_distinct: int = 0
    unreachable_ranges: list[tuple[int, int]] = field(default_factory=list)
    unreachable_runs: list[dict] = field(default_factory=list)
    addresses: dict[str, int] = field(default_factory=dict)
    commands: dict[str, int] = field(default_factory=dict)

    @property
    def reachable_share(self) -> float | None:
        """Share of tried ports that were reachable, 0.0..1.0 (None if none tried)."""
        return self.reachable / self.tried if self.tried else None

    @property
    def width(self) -> int | None:
        """Ports in ``estimate_low..estimate_high`` (inclusive): the upper
        bound of the range's width at ``confidence``."""
        if self.estimate_low is None or self.estimate_high is None:
            return None
        return self.estimate_high - self.estimate_low + 1

    def to_dict(self) -> dict:
        """Every field (lists and dicts copied: the dict shares nothing
        mutable with the map), ``reachable_share`` and ``width``;
        ``unreachable_ranges`` as lists."""
        d = {}
        for name in _MAP_FIELDS:
            value = getattr(self, name)
            if isinstance(value, list):
                value = [dict(v) if isinstance(v, dict) else v for v in value]
            elif isinstance(value, dict):
                value = dict(value)
            d[name] = value
        d["reachable_share"] = self.reachable_share
        d["width"] = self.width
        d["unreachable_ranges"] = [list(r) for r in self.unreachable_ranges]
        return d


_MAP_FIELDS = tuple(f.name for f in fields(PassiveMap))


def format_ranges(ranges: list[tuple[int, int]]) -> str:
    """``[(30010, 30019), (30042, 30042)]`` -> ``"30010-30019, 30042"``."""
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges)


def format_confidence(confidence: float) -> str:
    """``0.99`` -> ``"99%"``, ``0.9995`` -> ``"99.95%"``."""
    return f"{confidence * 100:.10g}%"


# -- the statistics -----------------------------------------------------------


def extension(n: int, span: int, confidence: float = DEFAULT_CONFIDENCE) -> int:
    """Ports to add beyond each observed end: ``floor(t * (span + 1))`` with
    ``t = ((1 - confidence) / 2) ** (-1 / (n - 1)) - 1`` (module docstring).
    ``n``: samples (>= 2, repeats count); ``span``: observed max - min."""
    if n < 2:
        raise ValueError("a confidence interval needs at least 2 samples")
    if not 0 < confidence < 1:
        raise ValueError("confidence must lie strictly between 0 and 1")
    t = ((1 - confidence) / 2) ** (-1 / (n - 1)) - 1
    reach = t * (span + 1)
    return HIGHEST_PORT if reach >= HIGHEST_PORT else math.floor(reach)


def confidence_bounds(low: int, high: int, n: int, confidence: float = DEFAULT_CONFIDENCE) -> tuple[int, int]:
    """``(L, H)`` covering a uniform allocator's whole true range with
    probability >= ``confidence``, from the observed min ``low``, max ``high``
    and ``n`` samples; clamped to 1..65535."""
    ext = extension(n, high - low, confidence)
    return max(LOWEST_PORT, low - ext), min(HIGHEST_PORT, high + ext)


@functools.lru_cache(maxsize=256)  # pure, and asked again for every site of a fleet
def _span_quantile(n: int, confidence: float) -> float:
    """The ``confidence``-quantile of Beta(n - 1, 2), the span of ``n`` uniform
    draws on [0, 1]: solves ``n q^(n-1) - (n-1) q^n = confidence`` (bisection)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if n * mid ** (n - 1) - (n - 1) * mid ** n < confidence:
            lo = mid
        else:
            hi = mid
    return hi


def width_lower_bound(low: int, high: int, n: int, confidence: float = DEFAULT_CONFIDENCE) -> int:
    """Lower bound of the range's width in ports (``N = b - a + 1``) at
    ``confidence``: ``max(R + 1, floor((R - 1) / q_c) + 1)`` (module docstring)."""
    span = high - low
    if n < 2 or span < 2:
        return span + 1
    return max(span + 1, math.floor((span - 1) / _span_quantile(n, confidence)) + 1)


def outside_min_distinct(margin: float = OUTSIDE_MARGIN) -> int:
    """Fewest distinct sampled ports among which :func:`split_outside` can set
    one port apart from the rest at all.

    With ``D`` distinct ports, one of them ``d`` ports beyond a main range of
    span ``S``, the mean gap is ``(S + d) / (D - 1)``; the split needs
    ``d > (ln D + margin) (S + d) / (D - 1)``, possible for some ``d`` only when
    ``ln D + margin < D - 1``: ``D >= 11`` for ``margin`` 7.  Below that (and
    below the 4 that :func:`split_outside` needs) "no port outside the range"
    is not evidence of anything, so ``server.pasv-outside-range`` is
    inconclusive.
    """
    d = 4
    while math.log(d) + margin >= d - 1:
        d += 1
    return d


def split_outside(ports: list[int], min_gap: int = 100, margin: float = OUTSIDE_MARGIN) -> tuple[list[int], list[int]]:
    """Split distinct ports into (main range, outside).

    Sorted ports are cut where a gap exceeds ``max(min_gap, (ln n + margin) *
    mean gap)``; the cluster with most ports is the main range.  For n ports
    drawn uniformly, P(largest gap > k * mean) is about n * e**-k, so with
    ``margin`` 7 a uniform range is wrongly split about once in a thousand
    runs, while a fallback to kernel-chosen ports far from the range stands
    out.  Fewer than 4 distinct ports are never split.
    """
    distinct = sorted(set(ports))
    if len(distinct) < 4:
        return distinct, []
    gaps = [b - a for a, b in zip(distinct, distinct[1:])]
    threshold = max(min_gap, (math.log(len(distinct)) + margin) * statistics.mean(gaps))
    clusters: list[list[int]] = [[distinct[0]]]
    for gap, port in zip(gaps, distinct[1:]):
        if gap > threshold:
            clusters.append([])
        clusters[-1].append(port)
    main = set(max(clusters, key=len))
    return sorted(main), [p for p in distinct if p not in main]


def _binomial_tail(trials: int, at_least: int, p: float) -> float:
    """P(X >= at_least) for X ~ Binomial(trials, p)."""
    if p >= 1:
        return 1.0
    return sum(math.comb(trials, k) * p ** k * (1 - p) ** (trials - k) for k in range(at_least, trials + 1))


def classify_allocation(ports_in_order: list[int] | list[list[int]]) -> str:
    """``"fixed"`` (one port), ``"sequential"``, ``"random"`` or ``"unknown"``.

    Takes one session's ports in the order asked, or a list of such lists
    (one per concurrent session).  Order is judged only between consecutive
    samples of the same session: across concurrent sessions the issue order
    says nothing about the server's allocation order.

    A step (next port - previous) is "small" when it is
    1..``max(SMALL_STEP, 2 * sessions)`` (the other sessions take ports in
    between).  One wrap per session (from the top of the observed range to
    its bottom, small modulo the observed width) is excused: neither
    evidence for nor against.  Sequential: at least 80% of the steps small or
    excused, and that many small steps unlikely (< ``SEQUENTIAL_LEVEL``) for a
    random allocator, for which a step is small with probability at most
    ``limit / width``.  80% or more small steps that a random allocator makes
    easily (a narrow range) give ``"unknown"``; so do fewer than 2 steps or
    fewer than 3 samples.
    """
    sessions = [ports_in_order] if ports_in_order and isinstance(ports_in_order[0], int) else ports_in_order
    sessions = [list(s) for s in sessions if s]  # type: ignore[union-attr]
    ports = [p for s in sessions for p in s]
    if len(ports) < 3:
        return "unknown"
    if len(set(ports)) == 1:
        return "fixed"
    width = max(ports) - min(ports) + 1
    limit = max(SMALL_STEP, 2 * len(sessions))
    steps = small = excused = 0
    for session in sessions:
        wrapped = False
        for a, b in zip(session, session[1:]):
            steps += 1
            if 0 < b - a <= limit:
                small += 1
            elif b < a and not wrapped and b - a + width <= limit:
                wrapped = True
                excused += 1
    if steps < 2:
        return "unknown"
    if small + excused < 0.8 * steps:
        return "random"
    if _binomial_tail(steps - excused, small, min(1.0, limit / width)) < SEQUENTIAL_LEVEL:
        return "sequential"
    return "unknown"


def _unreachable(samples: list[PassiveSample]) -> list[tuple[int, int, int]]:
    """(first, last, failed samples) runs of consecutive unreachable sampled ports."""
    status: dict[int, bool] = {}
    tries: Counter[int] = Counter()
    for s in samples:
        if s.reachable is None:
            continue
        # A port seen both reachable and not counts as reachable (a flaky port is not a forwarding gap).
        status[s.port] = status.get(s.port, False) or bool(s.reachable)
        tries[s.port] += 1
    runs: list[tuple[int, int, int]] = []
    for port in sorted(p for p, ok in status.items() if not ok):
        if runs and runs[-1][1] == port - 1:  # adjacent: nothing unsampled in between
            first, _, count = runs[-1]
            runs[-1] = (first, port, count + tries[port])
        else:
            runs.append((port, port, tries[port]))
    return runs


def unreachable_runs(samples: list[PassiveSample]) -> list[tuple[int, int]]:
    """Runs of consecutive unreachable sampled ports in port order, as
    (first, last); a port that was not sampled ends a run (nothing is known
    about it)."""
    return [(first, last) for first, last, _ in _unreachable(samples)]


def analyze(samples: list[PassiveSample], errors: int = 0, confidence: float = DEFAULT_CONFIDENCE) -> PassiveMap:
    """Summarize samples into a :class:`PassiveMap` (see the module docstring).

    ``confidence``: the probability with which ``estimate_low..estimate_high``
    must cover the true range (and ``width_low`` lie under its width)."""
    result = PassiveMap(samples=len(samples), errors=errors, outside_min_distinct=outside_min_distinct())
    if not samples:
        result.method = "no passive reply to sample"
        return result
    ordered = sorted(samples, key=lambda s: s.order)
    ports = [s.port for s in ordered]
    main, outside = split_outside(ports)
    result.outside = outside
    result.observed_min, result.observed_max = min(ports), max(ports)
    result.distinct_ports = len(set(ports))
    result.outside_decidable = bool(outside) or result.distinct_ports >= result.outside_min_distinct
    out = set(outside)
    by_session: dict[int, list[int]] = defaultdict(list)
    for s in ordered:
        if s.port not in out:
            by_session[s.session].append(s.port)
    result.sessions = len(by_session)
    result.allocation = classify_allocation(list(by_session.values()))
    main_ports = [p for p in ports if p not in out]
    lo, hi, n = min(main_ports), max(main_ports), len(main_ports)
    result.range_min, result.range_max, result.range_samples = lo, hi, n
    result.estimate_low, result.estimate_high, result.width_low = lo, hi, hi - lo + 1
    if result.allocation == "sequential":
        result.needs_walk = True
        result.method = ("observed bounds only: sequential allocation (ports are not independent draws, so no "
                         "confidence claim); walk the range with more samples to find its ends")
    elif n < 2:
        result.method = "observed bounds only: one sample in the range, no confidence claim"
    elif result.allocation == "unknown":
        # Could be a random allocator or a sequential one: give the interval a random one
        # would need (better advice than the observed ends) but claim no confidence.
        result.estimate_low, result.estimate_high = confidence_bounds(lo, hi, n, confidence)
        result.uncertainty = extension(n, hi - lo, confidence)
        result.method = (f"observed {lo}-{hi} extended by {result.uncertainty} port(s) each side as a uniform "
                         f"range would need at {format_confidence(confidence)}, but no confidence claim: the "
                         "allocation order is undetermined (too few samples within one session, or too narrow a "
                         "range to tell sequential from random)")
    else:
        result.estimate_low, result.estimate_high = confidence_bounds(lo, hi, n, confidence)
        result.uncertainty = extension(n, hi - lo, confidence)
        result.confidence = confidence
        result.width_low = width_lower_bound(lo, hi, n, confidence)
        what = "fixed port (a uniform range of one port)" if result.allocation == "fixed" else "random allocation"
        result.method = (f"{format_confidence(confidence)} confidence interval for a uniform range from {n} samples "
                         f"({what}): observed {lo}-{hi} extended by {result.uncertainty} port(s) each side")
    return _finish(result, samples)


def _finish(result: PassiveMap, samples: list[PassiveSample]) -> PassiveMap:
    tried = [s for s in samples if s.reachable is not None]
    result.tried = len(tried)
    result.reachable = sum(1 for s in tried if s.reachable)
    runs = _unreachable(samples)
    result.unreachable_ranges = [(first, last) for first, last, _ in runs]
    result.unreachable_runs = [{"first": first, "last": last, "samples": count} for first, last, count in runs]
    # Pipelined 227 replies may have passed an ALG unrewritten: no address evidence.
    result.addresses = dict(Counter(s.address for s in samples if s.address and not s.pipelined))
    result.commands = dict(Counter(s.command for s in samples))
    result.pipelined = sum(1 for s in samples if s.pipelined)
    return result


# -- comparing two analyses (ftpprobe check --baseline) -------------------------

#: The highest false-alarm rate of ``change.pasv-range-moved`` per site and check
#: when the range did not change (:func:`ftpprobe.fleet.compare_baseline`).
RANGE_MOVED_FALSE_ALARM = 0.001


@dataclass
class RangeClaim:
    """What one passive analysis lets us claim about the true range.

    ``kind`` ``"interval"``: ``low..high`` covers the whole true range with
    probability at least ``confidence`` (``None`` for a version-1 baseline,
    whose confidence was never stated); ``"observed"``: ports ``low`` and
    ``high`` were handed out, nothing is claimed about where the range ends.
    ``sampled``: the sampled main range as text; ``samples``: how many."""

    low: int
    high: int
    kind: str
    confidence: float | None
    sampled: str
    samples: int | None = None
    allocation: str | None = None

    def describe(self) -> str:
        if self.kind == "observed":
            return (f"ports {self.low}-{self.high} were handed out ({self.allocation} allocation, "
                    "no confidence claim)")
        if self.confidence is None:
            return (f"the estimate ±3 uncertainties is {self.low}-{self.high} "
                    "(version-1 baseline, no stated confidence)")
        return f"the {format_confidence(self.confidence)} interval is {self.low}-{self.high} ({self.samples} samples)"


def range_claim(p: dict, confidence: float) -> RangeClaim | None:
    """The claim an analysis dict (``PassiveMap.to_dict()`` or a baseline's
    ``passive`` entry) supports, or ``None`` when it holds no range.

    With ``range_min``/``range_max``/``range_samples`` and a ``confidence``
    (random or fixed allocation, 2+ samples): the interval recomputed at
    ``confidence`` by :func:`confidence_bounds`; without a confidence claim
    (sequential or undetermined allocation): the observed ports.  A version-1
    baseline without those keys: its estimate widened by 3 stated
    uncertainties (the old comparison's tolerance) as an interval of unstated
    confidence, or, when it stated no uncertainty and was not a fixed port,
    its estimate as observed ports (its estimate was the observed bounds).
    """
    if not p or p.get("estimate_low") is None or p.get("estimate_high") is None:
        return None
    allocation = p.get("allocation")
    if p.get("range_samples"):
        low, high, n = p["range_min"], p["range_max"], p["range_samples"]
        sampled = f"{low}-{high}"
        if p.get("confidence") is not None and n >= 2:
            return RangeClaim(*confidence_bounds(low, high, n, confidence), "interval", confidence, sampled, n,
                              allocation)
        return RangeClaim(low, high, "observed", None, sampled, n, allocation)
    unc = p.get("uncertainty")
    low, high = p["estimate_low"], p["estimate_high"]
    if unc or allocation == "fixed":
        return RangeClaim(max(LOWEST_PORT, low - 3 * (unc or 0)), min(HIGHEST_PORT, high + 3 * (unc or 0)),
                          "interval", None, f"{low}-{high} (estimated)", allocation=allocation)
    return RangeClaim(low, high, "observed", None, f"{low}-{high}", allocation=allocation)
