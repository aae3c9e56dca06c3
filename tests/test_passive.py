"""Passive mapping statistics (pure): the range interval's coverage, proven by
seeded simulation, allocation order within sessions, reachability runs."""

import json
import math
import random

import pytest

from ftpprobe.passive import (PassiveSample, analyze, classify_allocation, confidence_bounds, extension,
                              format_ranges, outside_min_distinct, split_outside, width_lower_bound)


def samples_of(ports, reachable=lambda p: True, sessions=None):
    """Samples in issue order; ``sessions``: the session of each (default all 0)."""
    sessions = sessions or [0] * len(ports)
    return [PassiveSample(order=i, session=s, command="PASV", port=p, address="192.0.2.1", reachable=reachable(p))
            for i, (p, s) in enumerate(zip(ports, sessions))]


def random_allocator(rng, low, high, n, sessions):
    """n draws uniform on low..high (inclusive), each asked by a random one of ``sessions``."""
    return [PassiveSample(order=i, session=rng.randrange(sessions), command="PASV", port=rng.randint(low, high))
            for i in range(n)]


def allowed_misses(rate, trials):
    """Expected miss share plus 3 binomial standard deviations of the share over ``trials``."""
    return rate + 3 * math.sqrt(rate * (1 - rate) / trials)


# (true low, true high, samples, concurrent sessions): the check default (10 samples, 2 sessions) on a
# 20-port and a 10-port range, a probe on a 1000-port and on the widest range, a fixed port, and 3 samples.
COMBOS = [(40100, 40119, 10, 2), (50000, 50009, 10, 2), (30000, 30999, 20, 4), (10000, 65535, 60, 4),
          (21000, 21000, 8, 1), (40000, 40499, 3, 1)]


@pytest.mark.parametrize("low, high, n, sessions", COMBOS)
def test_interval_covers_the_true_range_with_the_stated_confidence(low, high, n, sessions):
    # 2000 seeded trials per combination; a trial misses when [estimate_low, estimate_high] does not
    # contain all of [low, high].  The interval promises misses <= 1%: allow 1% + 3 sigma of a binomial
    # share over 2000 trials (+0.67 points).
    trials, confidence = 2000, 0.99
    rng = random.Random(f"{low}-{high}-{n}")
    misses = claims = 0
    for _ in range(trials):
        pmap = analyze(random_allocator(rng, low, high, n, sessions))
        claims += pmap.confidence == confidence
        misses += not (pmap.estimate_low <= low and high <= pmap.estimate_high)
    assert misses / trials <= allowed_misses(1 - confidence, trials), (misses, trials)
    assert claims >= 0.97 * trials  # the claim is made (allocation judged random/fixed) nearly always


def test_interval_math_and_json():
    # n = 10 at 99%: t = 0.005 ** (-1/9) - 1 = 0.80; observed 40102-40117 (16 ports) -> 12 ports each side
    assert extension(10, 15) == 12
    assert confidence_bounds(40102, 40117, 10) == (40090, 40129)
    assert confidence_bounds(3, 60000, 2) == (1, 65535)  # clamped to the port space
    ports = [40102, 40117, 40105, 40111, 40109, 40103, 40116, 40108, 40110, 40114]
    pmap = analyze(samples_of(ports, sessions=[0, 1] * 5))
    assert (pmap.allocation, pmap.confidence, pmap.estimate_low, pmap.estimate_high) == ("random", 0.99, 40090, 40129)
    assert pmap.range_samples == 10 and pmap.uncertainty == 12 and pmap.needs_walk is False
    d = json.loads(json.dumps(pmap.to_dict()))
    assert d["confidence"] == 0.99 and d["width"] == 40 and d["width_low"] == 16 and "99%" in d["method"]
    other = analyze(samples_of(ports, sessions=[0, 1] * 5), confidence=0.9)
    assert other.confidence == 0.9 and other.width < pmap.width


def test_width_lower_bound_holds_with_the_stated_confidence():
    # server.pasv-range-wide fires on width_low > 1000: a 1000-port range must (nearly) never exceed it.
    trials, misses = 2000, 0
    rng = random.Random(11)
    for _ in range(trials):
        n = rng.choice([2, 3, 10, 60])
        pmap = analyze(random_allocator(rng, 30000, 30999, n, 1))
        misses += pmap.width_low > 1000
    assert misses / trials <= allowed_misses(0.01, trials)
    rng = random.Random(12)
    wide = analyze(random_allocator(rng, 10000, 65535, 40, 4))
    assert wide.width > 40000 and wide.width_low > 40000 and wide.outside == []
    assert width_lower_bound(10000, 60000, 2) > 50001  # with 2 samples the span is likely short of the width


def test_kernel_chosen_ports_are_reported_not_averaged_in():
    rng = random.Random(3)
    ports = [rng.randint(30000, 30049) for _ in range(30)] + [45872, 51013]
    pmap = analyze(samples_of(ports))
    assert pmap.outside == [45872, 51013] and pmap.outside_decidable
    assert (pmap.range_min, pmap.range_max, pmap.range_samples) == (min(ports[:30]), max(ports[:30]), 30)
    assert 29990 <= pmap.estimate_low and pmap.estimate_high <= 30060


def test_outside_range_needs_enough_distinct_ports():
    # below 11 distinct ports split_outside cannot set one port apart at all (ln D + 7 >= D - 1)
    assert outside_min_distinct() == 11
    assert split_outside(list(range(30000, 30090, 10)) + [60000]) == (list(range(30000, 30090, 10)) + [60000], [])
    few = analyze(samples_of([30000 + 7 * i for i in range(10)]))
    assert few.outside == [] and few.outside_decidable is False and few.outside_min_distinct == 11
    rng = random.Random(4)
    many = analyze(samples_of([rng.randint(30000, 30999) for _ in range(30)]))
    assert many.outside == [] and many.outside_decidable is True


def test_allocation_patterns():
    assert classify_allocation([5000] * 5) == "fixed"
    assert classify_allocation(list(range(5000, 5020))) == "sequential"
    assert classify_allocation([5000, 5090, 5013, 5077, 5040]) == "random"
    assert classify_allocation([5000, 5001]) == "unknown"
    # six ports of a 7-port stretch: a random allocator does that easily, so no verdict
    assert classify_allocation([5000, 5001, 5002, 5004, 5005, 5006]) == "unknown"
    # a wrap from the top of the range to the bottom is excused
    assert classify_allocation([[5100 + i for i in range(50, 60)] + [5100 + i for i in range(8)]]) == "sequential"


def test_sequential_allocator_judged_within_sessions_and_not_estimated():
    # One server counter shared by 4 concurrent sessions: each session sees steps of about 4, while the
    # global issue order (when each session sent PASV) interleaves them arbitrarily.
    rng = random.Random(5)
    turns = [i % 4 for i in range(24)]
    for i in range(0, 24, 3):  # jitter: sessions do not take strict turns
        j = min(23, i + 1)
        turns[i], turns[j] = turns[j], turns[i]
    issue = sorted(range(24), key=lambda i: i + rng.uniform(-3, 3))  # order numbers, not allocation order
    per_session_orders = {s: sorted(issue[i] for i in range(24) if turns[i] == s) for s in range(4)}
    samples = []
    for i, s in enumerate(turns):  # port 40500 + i was the i-th allocation
        samples.append(PassiveSample(order=per_session_orders[s].pop(0), session=s, command="PASV", port=40500 + i))
    global_order = [p.port for p in sorted(samples, key=lambda p: p.order)]
    assert classify_allocation(global_order) != "sequential"  # across sessions the order is noise
    pmap = analyze(samples)
    assert pmap.allocation == "sequential" and pmap.needs_walk and pmap.sessions == 4
    assert pmap.confidence is None and pmap.uncertainty is None
    assert (pmap.estimate_low, pmap.estimate_high) == (40500, 40523) == (pmap.observed_min, pmap.observed_max)
    assert pmap.width_low == 24 and "walk" in pmap.method


def test_few_samples_make_no_claim():
    one = analyze(samples_of([40000]))
    assert one.confidence is None and (one.estimate_low, one.estimate_high) == (40000, 40000)
    assert analyze([]).confidence is None


def test_unreachable_runs_are_ranges_in_port_order():
    ports = list(range(30000, 30040))
    pmap = analyze(samples_of(ports, reachable=lambda p: not 30010 <= p <= 30019))
    assert pmap.unreachable_ranges == [(30010, 30019)]
    assert pmap.unreachable_runs == [{"first": 30010, "last": 30019, "samples": 10}]
    assert format_ranges(pmap.unreachable_ranges) == "30010-30019"
    assert pmap.reachable_share == 30 / 40


def test_unreachable_runs_never_span_unsampled_ports():
    # 30011 was never sampled: nothing is known about it, so 30010 and 30012 are separate runs
    ports = [30000, 30010, 30012, 30013, 30013, 30014, 30020]
    pmap = analyze(samples_of(ports, reachable=lambda p: p not in (30010, 30012, 30013, 30014)))
    assert pmap.unreachable_ranges == [(30010, 30010), (30012, 30014)]
    assert pmap.unreachable_runs == [{"first": 30010, "last": 30010, "samples": 1},
                                     {"first": 30012, "last": 30014, "samples": 4}]
    # a port seen both reachable and not is flaky, not a forwarding gap
    flaky = samples_of([30001, 30002]) + [PassiveSample(order=9, session=0, command="PASV", port=30001,
                                                        reachable=False)]
    assert analyze(flaky).unreachable_ranges == []


def test_split_outside_keeps_small_samples_whole():
    assert split_outside([1, 60000, 3]) == ([1, 3, 60000], [])
