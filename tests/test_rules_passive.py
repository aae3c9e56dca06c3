"""Decision tables of the passive-range rules (ftpprobe/rules/passive.py), row by
row on constructed observations: no network."""

import random

import pytest

from ftpprobe.observations import Failed, PassiveMapObs
from ftpprobe.passive import PassiveSample, analyze
from ftpprobe.rules import RULES, RunFacts, decide

PEER = "198.51.100.10"


def sampled(ports, *, reachable=True, address=PEER, sessions=1):
    """Samples handed out in this order, spread round-robin over ``sessions``."""
    return [PassiveSample(order=i, session=i % sessions, command="PASV", port=p, address=address,
                          reachable=reachable(p) if callable(reachable) else reachable)
            for i, p in enumerate(ports)]


def run(quirk, samples=None, *, observation=None, peer=PEER, from_lan=False):
    obs = observation or PassiveMapObs("pasv-map", samples=tuple(samples), wanted=len(samples))
    pmap = analyze(list(obs.samples)) if isinstance(obs, PassiveMapObs) else None
    return decide(RULES[quirk], {"pasv-map": obs}, RunFacts(peer=peer, from_lan=from_lan, passive_map=pmap))


def uniform(low, high, n, seed=7):
    rng = random.Random(seed)
    return [rng.randint(low, high) for _ in range(n)]


ALL = ["server.pasv-range", "server.pasv-range-wide", "server.pasv-outside-range", "server.pasv-unreachable",
       "server.pasv-private-address", "server.pasv-address-mismatch", "path.hairpin"]


@pytest.mark.parametrize("quirk", ALL)
def test_shared_rows_not_run_failed_and_no_reply(quirk):
    assert decide(RULES[quirk], {}, RunFacts(peer=PEER)).status == "skipped"
    failed = Failed("pasv-map", error="control connection to x port 21: no answer within 5 s", kind="connect")
    f = run(quirk, observation=failed, from_lan=True)
    assert f.status == "inconclusive" and "no answer within 5 s" in f.evidence[0]
    empty = PassiveMapObs("pasv-map", errors=("session 0: sent 'PASV\\r\\n' -> timeout",), wanted=10)
    f = run(quirk, observation=empty, from_lan=True)
    assert f.status == "inconclusive", f


def test_range_present_with_a_confidence_stated_advice():
    f = run("server.pasv-range", sampled(uniform(40000, 40099, 60), sessions=3))
    assert f.status == "present"
    assert f.data["confidence"] == 0.99
    assert "covers the whole range with 99% confidence" in f.advice


def test_range_sequential_says_walk_it_and_claims_nothing():
    f = run("server.pasv-range", sampled(list(range(40000, 40040))))
    assert f.status == "present" and f.data["confidence"] is None
    assert "in sequence" in f.advice and "40000-40039" in f.advice


@pytest.mark.parametrize("ports, status", [
    (uniform(10000, 65535, 200), "present"),   # width's lower bound far over 1000
    (uniform(40000, 40099, 60), "absent"),     # whole interval under 1000
    (uniform(40000, 40900, 6), "inconclusive"),  # bounds straddle the threshold
])
def test_range_wide(ports, status):
    assert run("server.pasv-range-wide", sampled(ports, sessions=2)).status == status


def test_range_wide_sequential_within_threshold_is_inconclusive():
    assert run("server.pasv-range-wide", sampled(list(range(40000, 40030)))).status == "inconclusive"


def test_outside_range_rows():
    main = uniform(40000, 40099, 80)
    assert run("server.pasv-outside-range", sampled(main + [51234], sessions=2)).status == "present"
    assert run("server.pasv-outside-range", sampled(main, sessions=2)).status == "absent"
    assert run("server.pasv-outside-range", sampled([40001, 40050], sessions=2)).status == "inconclusive"


def test_unreachable_rows():
    ports = uniform(40000, 40099, 50)
    assert run("server.pasv-unreachable", sampled(ports)).status == "absent"
    f = run("server.pasv-unreachable", sampled(ports, reachable=False))
    assert f.status == "present" and f.severity == "critical"
    f = run("server.pasv-unreachable", sampled(ports, reachable=lambda p: p < 40050))
    assert f.status == "present" and f.severity == "warning"
    assert any("unreachable (" in line for line in f.evidence)
    f = run("server.pasv-unreachable", sampled(ports, reachable=None))
    assert f.status == "inconclusive"


def test_private_address_and_mismatch_rows():
    ports = uniform(40000, 40099, 20)
    private = sampled(ports, address="192.168.1.10")
    assert run("server.pasv-private-address", private).status == "present"
    assert run("server.pasv-address-mismatch", private).status == "present"
    own = sampled(ports)
    assert run("server.pasv-private-address", own).status == "absent"
    assert run("server.pasv-address-mismatch", own).status == "absent"
    only_229 = sampled(ports, address=None)
    assert run("server.pasv-private-address", only_229).status == "skipped"
    assert run("server.pasv-address-mismatch", only_229).status == "skipped"
    assert run("server.pasv-private-address", private, peer="10.0.0.5").status == "skipped"


def test_hairpin_rows():
    ports = uniform(40000, 40099, 20)
    assert run("path.hairpin", sampled(ports)).status == "skipped"  # not --from-lan
    assert run("path.hairpin", sampled(ports, reachable=False), from_lan=True).status == "present"
    assert run("path.hairpin", sampled(ports), from_lan=True).status == "absent"
    assert run("path.hairpin", sampled(ports, reachable=None), from_lan=True).status == "inconclusive"
