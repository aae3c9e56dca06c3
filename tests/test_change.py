"""change.pasv-range-moved: no flapping (false alarms <= 0.1% per site and check, by seeded
simulation), real moves detected, version-1 baselines still compared.  Pure: no servers."""

import json
import math
import random

from ftpprobe.fleet import Site, SiteResult, baseline_entry, compare_baseline, load_baseline, save_baseline
from ftpprobe.passive import RANGE_MOVED_FALSE_ALARM, PassiveSample, analyze
from ftpprobe.runner import ProbeReport
from ftpprobe.target import parse_target

SITE = Site("shop", parse_target("ftp://192.0.2.10/", use_netrc=False, environ={}))
SAMPLES = SITE.samples  # the check's default sample count per site (10)
SESSIONS = 2  # check_sites' default sessions per site


def result_of(samples):
    report = ProbeReport(SITE.target.url, "2024-01-01T00:00:00+00:00", peer="192.0.2.10",
                         passive=analyze(samples).to_dict())
    return SiteResult(SITE, report)


def draw(rng, low, high, n=SAMPLES, sessions=SESSIONS):
    """A random allocator on low..high (inclusive), n samples over concurrent sessions."""
    return [PassiveSample(order=i, session=rng.randrange(sessions), command="PASV", port=rng.randint(low, high),
                          address="192.0.2.10", reachable=True) for i in range(n)]


def baseline_of(*results, path):
    save_baseline(str(path), list(results))
    return load_baseline(str(path))


def baseline_with(then):
    """A baseline holding one check's result, through JSON as a saved file would be."""
    return json.loads(json.dumps({"format": "ftpprobe-baseline", "version": 1, "saved": "then",
                                  "sites": {"shop": baseline_entry(then)}}))


def moved(now, baseline):
    return [f for f in compare_baseline(now, baseline) if f.id == "change.pasv-range-moved"]


def test_unchanged_range_false_alarms_at_most_one_in_a_thousand():
    # 6000 seeded (baseline, now) pairs of checks of an unchanged range at the default 10 samples over
    # 2 sessions, on a 10-, 20-, 100- and 5000-port range.  The promise is <= 0.1% false alarms; allow
    # 0.001 + 3 sigma of a binomial share over 6000 trials = 0.001 + 3 * sqrt(0.001 * 0.999 / 6000)
    # (about 0.0022, i.e. 13 alarms).
    assert RANGE_MOVED_FALSE_ALARM == 0.001
    trials = 6000
    ranges = [(50000, 50009), (40100, 40119), (30000, 30099), (20000, 24999)]
    rng = random.Random(2024)
    alarms = 0
    for trial in range(trials):
        low, high = ranges[trial % len(ranges)]
        alarms += bool(moved(result_of(draw(rng, low, high)), baseline_with(result_of(draw(rng, low, high)))))
    limit = RANGE_MOVED_FALSE_ALARM + 3 * math.sqrt(RANGE_MOVED_FALSE_ALARM * (1 - RANGE_MOVED_FALSE_ALARM) / trials)
    assert alarms / trials <= limit, (alarms, trials)


def test_a_real_move_is_detected():
    # 2 x 500 seeded trials: the range moves from 40100-40119 to the disjoint 40200-40219 (10 samples each);
    # and a wider site from 30000-30099 to 31000-31099.
    rng = random.Random(7)
    for (old_low, old_high), (new_low, new_high) in [((40100, 40119), (40200, 40219)),
                                                     ((30000, 30099), (31000, 31099))]:
        detected = 0
        for _ in range(500):
            base = baseline_with(result_of(draw(rng, old_low, old_high)))
            detected += bool(moved(result_of(draw(rng, new_low, new_high)), base))
        assert detected >= 0.99 * 500, (old_low, detected)


def test_move_says_what_changed(tmp_path):
    old = [40100, 40119, 40105, 40111, 40108, 40103, 40116, 40110, 40114, 40102]
    new = [p + 100 for p in old]
    sessions = [0, 1] * 5
    base = baseline_of(result_of([PassiveSample(i, s, "PASV", p) for i, (p, s) in enumerate(zip(old, sessions))]),
                       path=tmp_path / "b.json")
    saved_passive = base["sites"]["shop"]["passive"]
    assert saved_passive["confidence"] == 0.99 and saved_passive["range_samples"] == 10
    assert (saved_passive["range_min"], saved_passive["range_max"]) == (40100, 40119)
    [finding] = moved(result_of([PassiveSample(i, s, "PASV", p) for i, (p, s) in enumerate(zip(new, sessions))]),
                      base)
    assert finding.evidence[0].startswith("passive range moved from 40100-40119 to 40200-40219")
    assert "99.95% interval" in finding.evidence[1] and "do not overlap" in finding.evidence[1]
    assert finding.advice.startswith("the server's passive range changed: forward 40184-40235 (the new range at 99%")
    assert finding.data["new"] == [40184, 40235] and finding.data["confidence"] == 0.9995
    # the same range again: nothing
    again = result_of([PassiveSample(i, s, "PASV", p) for i, (p, s) in enumerate(zip(old[::-1], sessions))])
    assert moved(again, base) == []


def test_version_1_baseline_still_compares(tmp_path):
    # written before the interval keys existed: estimate +-3 uncertainties stands in for the interval
    path = tmp_path / "v1.json"
    path.write_text(json.dumps({"format": "ftpprobe-baseline", "version": 1, "saved": "2023-05-01", "sites": {
        "shop": {"url": SITE.target.url, "up": True, "findings": {},
                 "passive": {"estimate_low": 40098, "estimate_high": 40121, "uncertainty": 2,
                             "addresses": {"192.0.2.10": 10}, "allocation": "random"}}}}))
    base = load_baseline(str(path))
    rng = random.Random(9)
    assert moved(result_of(draw(rng, 40100, 40119)), base) == []
    [finding] = moved(result_of(draw(rng, 40300, 40319)), base)
    assert finding.evidence[0].startswith("passive range moved from 40098-40121 (estimated) to 403")
    assert "version-1 baseline" in finding.evidence[1]


def test_sequential_ports_alone_prove_no_move():
    def walk(start, n=10):  # a sequential allocator: consecutive ports over 2 sessions
        return [PassiveSample(i, i % 2, "PASV", start + i) for i in range(n)]

    then = result_of(walk(40000))
    assert then.report.passive["allocation"] == "sequential"
    base = baseline_with(then)
    # the allocator walked on: the ports differ, but nothing says the range moved
    assert moved(result_of(walk(40500)), base) == []
    # against a random allocator's interval, ports handed out outside it do show a move
    rng = random.Random(3)
    [finding] = moved(result_of(walk(40000)), baseline_with(result_of(draw(rng, 41000, 41019))))
    assert "no confidence claim" in finding.evidence[1]
