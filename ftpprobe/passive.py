"""Passive port range mapping: pure statistics over PASV/EPSV samples.

The prober (:mod:`ftpprobe.executors`) collects :class:`PassiveSample` values;
:func:`analyze` turns them into a :class:`PassiveMap`: observed and estimated
bounds, allocation pattern, reachability, ports outside the main range and
the advertised addresses.  No I/O here.

Bounds estimate: for ports drawn uniformly from an inclusive range [a, b],
the minimum-variance unbiased estimators from the sample minimum ``m`` and
maximum ``M`` of ``n`` draws are ``a = m - (M - m)/(n - 1)`` and
``b = M + (M - m)/(n - 1)`` (the two-sided "German tank" estimator); their
standard error is about ``(M - m)/(n - 1)``, which is the uncertainty stated.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field


@dataclass
class PassiveSample:
    """One passive-mode answer.

    ``order``: global issue order (0, 1, ...); ``session``: which control
    session asked; ``command``: ``"PASV"`` or ``"EPSV"``; ``address``: the
    address a 227 reply advertised (``None`` for 229); ``port``: advertised
    port (1..65535); ``reachable``: did a data connection to the control
    peer's address and that port succeed (``None``: not tried);
    ``error``: why not.
    """

    order: int
    session: int
    command: str
    port: int
    address: str | None = None
    reachable: bool | None = None
    error: str = ""


@dataclass
class PassiveMap:
    """The result of :func:`analyze`.  Port bounds are inclusive.

    ``estimate_low``/``estimate_high`` are the estimated true bounds (clamped
    to 1..65535) with ``uncertainty`` ports either side and ``method`` naming
    how they were obtained; ``outside`` lists sampled ports that lie apart from
    the main range (not used for the bounds); ``unreachable_ranges`` are runs
    of sampled ports, in port order, whose data connection failed, as
    ``(first, last)`` pairs.
    """

    samples: int = 0
    errors: int = 0
    observed_min: int | None = None
    observed_max: int | None = None
    distinct_ports: int = 0
    estimate_low: int | None = None
    estimate_high: int | None = None
    uncertainty: int | None = None
    method: str = ""
    allocation: str = "unknown"
    reachable: int = 0
    tried: int = 0
    outside: list[int] = field(default_factory=list)
    unreachable_ranges: list[tuple[int, int]] = field(default_factory=list)
    addresses: dict[str, int] = field(default_factory=dict)
    commands: dict[str, int] = field(default_factory=dict)

    @property
    def reachable_share(self) -> float | None:
        """Share of tried ports that were reachable, 0.0..1.0 (None if none tried)."""
        return self.reachable / self.tried if self.tried else None

    @property
    def width(self) -> int | None:
        """Estimated number of ports in the range (inclusive bounds)."""
        if self.estimate_low is None or self.estimate_high is None:
            return None
        return self.estimate_high - self.estimate_low + 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["reachable_share"] = self.reachable_share
        d["width"] = self.width
        d["unreachable_ranges"] = [list(r) for r in self.unreachable_ranges]
        return d


def format_ranges(ranges: list[tuple[int, int]]) -> str:
    """``[(30010, 30019), (30042, 30042)]`` -> ``"30010-30019, 30042"``."""
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges)


def split_outside(ports: list[int], min_gap: int = 100, margin: float = 7.0) -> tuple[list[int], list[int]]:
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


def classify_allocation(ports_in_order: list[int]) -> str:
    """``"fixed"`` (one port), ``"sequential"`` (mostly +1..+4 steps, wrapping
    allowed), ``"random"``, or ``"unknown"`` (fewer than 3 samples)."""
    if len(ports_in_order) < 3:
        return "unknown"
    if len(set(ports_in_order)) == 1:
        return "fixed"
    steps = [b - a for a, b in zip(ports_in_order, ports_in_order[1:])]
    small = sum(1 for s in steps if 0 < s <= 4)
    wraps = sum(1 for s in steps if s < 0)
    if small + min(wraps, 1) >= 0.8 * len(steps):
        return "sequential"
    return "random"


def unreachable_runs(samples: list[PassiveSample]) -> list[tuple[int, int]]:
    """Runs of unreachable sampled ports in port order, as (first, last)."""
    tried = sorted({(s.port, bool(s.reachable)) for s in samples if s.reachable is not None})
    # A port seen both reachable and not counts as reachable (a flaky port is not a forwarding gap).
    status: dict[int, bool] = {}
    for port, ok in tried:
        status[port] = status.get(port, False) or ok
    runs: list[tuple[int, int]] = []
    current: list[int] = []
    for port in sorted(status):
        if not status[port]:
            current.append(port)
        elif current:
            runs.append((current[0], current[-1]))
            current = []
    if current:
        runs.append((current[0], current[-1]))
    return runs


def analyze(samples: list[PassiveSample], errors: int = 0) -> PassiveMap:
    """Summarize samples into a :class:`PassiveMap` (see the module docstring)."""
    result = PassiveMap(samples=len(samples), errors=errors)
    if not samples:
        result.method = "no passive reply to sample"
        return result
    ordered = sorted(samples, key=lambda s: s.order)
    ports = [s.port for s in ordered]
    main, outside = split_outside(ports)
    result.outside = outside
    result.observed_min, result.observed_max = min(ports), max(ports)
    result.distinct_ports = len(set(ports))
    result.allocation = classify_allocation([p for p in ports if p not in set(outside)])
    main_samples = [p for p in ports if p not in set(outside)]
    lo, hi, n = min(main_samples), max(main_samples), len(main_samples)
    if result.allocation == "fixed":
        result.estimate_low, result.estimate_high, result.uncertainty = lo, hi, 0
        result.method = "fixed port: every reply named the same port"
    elif result.allocation == "sequential" or n < 2:
        result.estimate_low, result.estimate_high, result.uncertainty = lo, hi, None
        result.method = "observed bounds (sequential allocation: the range may extend past them)"
    else:
        spread = (hi - lo) / (n - 1)
        result.estimate_low = max(1, round(lo - spread))
        result.estimate_high = min(65535, round(hi + spread))
        result.uncertainty = max(1, round(spread))
        result.method = f"minimum-variance unbiased estimator for a uniform range over {n} samples"
    tried = [s for s in samples if s.reachable is not None]
    result.tried = len(tried)
    result.reachable = sum(1 for s in tried if s.reachable)
    result.unreachable_ranges = unreachable_runs(samples)
    result.addresses = dict(Counter(s.address for s in samples if s.address))
    result.commands = dict(Counter(s.command for s in samples))
    return result
