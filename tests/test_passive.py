"""Passive mapping statistics (pure) and the estimator's error on known ranges."""

import random

import pytest

from ftpprobe.passive import PassiveSample, analyze, classify_allocation, format_ranges, split_outside


def samples_of(ports, reachable=lambda p: True):
    return [PassiveSample(order=i, session=0, command="PASV", port=p, address="192.0.2.1", reachable=reachable(p))
            for i, p in enumerate(ports)]


@pytest.mark.parametrize("low, high, n", [(10000, 65535, 60), (30000, 30099, 30), (50000, 50009, 20)])
def test_estimate_covers_true_range_within_stated_error(low, high, n):
    # 200 seeded trials: the true bound lies within 3 stated uncertainties nearly always.
    misses = 0
    for seed in range(200):
        rng = random.Random(seed)
        pmap = analyze(samples_of([rng.randint(low, high) for _ in range(n)]))
        assert pmap.allocation == "random"
        for est, true in ((pmap.estimate_low, low), (pmap.estimate_high, high)):
            if abs(est - true) > 3 * pmap.uncertainty:
                misses += 1
    assert misses <= 8  # < 2% of 400 bounds


def test_wide_range_is_mapped_from_few_samples():
    rng = random.Random(7)
    pmap = analyze(samples_of([rng.randint(10000, 65535) for _ in range(40)]))
    assert pmap.width > 40000 and pmap.outside == []


def test_kernel_chosen_ports_are_reported_not_averaged_in():
    rng = random.Random(3)
    ports = [rng.randint(30000, 30049) for _ in range(30)] + [45872, 51013]
    pmap = analyze(samples_of(ports))
    assert pmap.outside == [45872, 51013]
    assert 29990 <= pmap.estimate_low and pmap.estimate_high <= 30060


def test_allocation_patterns():
    assert classify_allocation([5000] * 5) == "fixed"
    assert classify_allocation([5000, 5001, 5002, 5004, 5005, 5006]) == "sequential"
    assert classify_allocation([5000, 5090, 5013, 5077, 5040]) == "random"
    assert classify_allocation([5000, 5001]) == "unknown"


def test_unreachable_runs_are_ranges_in_port_order():
    ports = list(range(30000, 30040))
    pmap = analyze(samples_of(ports, reachable=lambda p: not 30010 <= p <= 30019))
    assert pmap.unreachable_ranges == [(30010, 30019)]
    assert format_ranges(pmap.unreachable_ranges) == "30010-30019"
    assert pmap.reachable_share == 30 / 40


def test_split_outside_keeps_small_samples_whole():
    assert split_outside([1, 60000, 3]) == ([1, 3, 60000], [])
