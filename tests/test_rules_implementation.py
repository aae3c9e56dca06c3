"""alg.implementation and alg.pipeline-blind on constructed observations (no network)."""

from ftpprobe.codec import Reply
from ftpprobe.observations import (Exchange, Failed, ReflectActiveObs, ReflectReplyObs, ReflectVariantObs, Reflection,
                                   SynObs, SynSeen, TcpInfo)
from ftpprobe.rules import RULES, RunFacts, decide
from ftpprobe.rules.implementation import load_signatures, outcome, score

LOCAL = ("10.0.0.2", 40000)


def reply(code=200, text="ok"):
    return Reply(code, (text.encode(),), f"{code} {text}\r\n".encode())


def port(name, sent, arrived, cls=ReflectActiveObs, **kw):
    ex = Exchange(sent, "reply", reply()) if arrived is not None else kw.pop("ex")
    refl = Reflection(arrived, ("198.51.100.1", 5000)) if arrived is not None else None
    return cls(name, exchange=ex, sent=sent, reflection=refl, local=LOCAL, **kw)


SENT = b"PORT 10,0,0,2,156,64\r\n"
REWRITTEN = b"PORT 198,51,100,1,156,64\r\n"


def test_every_signature_entry_names_a_source_and_a_catalog_probe():
    from ftpprobe.catalog import load_catalog

    names = {p.name for p in load_catalog()}
    for sig in load_signatures():
        for probe, want in sig.expect.items():
            assert probe in names, (sig.name, probe)
            assert ".c " in want.source or "Cisco" in want.source or sig.name == "none" or "netfilter" in want.source \
                or "libalias" in want.source or "firewall" in want.source, (sig.name, probe, want.source)


def test_words():
    assert outcome(port("alg-port-crlf", SENT, REWRITTEN)) == "rewritten"
    assert outcome(port("alg-port-lowercase", b"port 10,0,0,2,156,64\r\n", REWRITTEN)) == "normalised"
    assert outcome(port("alg-port-first", SENT, SENT)) == "passed"
    stalled = Exchange(SENT, "timeout", tcp_info=TcpInfo(outq=22, total_retrans=3))
    assert outcome(ReflectActiveObs("alg-port-lf", exchange=stalled, retry=stalled, sent=SENT)) == "stalled"
    # One timeout without a retry that stalled too decides nothing.
    assert outcome(ReflectActiveObs("alg-port-lf", exchange=stalled, sent=SENT)) is None
    assert outcome(ReflectActiveObs("alg-port-low", exchange=Exchange(SENT, "reset"), sent=SENT)) == "closed"
    lost = port("alg-port-then-noop", SENT, REWRITTEN, ReflectVariantObs, companion_sent=b"NOOP x\r\n",
                companion=Exchange(SENT, "timeout"))
    assert outcome(lost) == "rewritten-companion-lost"
    syst = ReflectReplyObs("alg-syst", exchange=Exchange(b"SYST\r\n", "reply", reply(215, "XXXXXXXXXXXX")),
                           expected="UNIX Type: L8")
    assert outcome(syst) == "masked"
    assert outcome(SynObs("alg-tcp-identity", sent_mss=1000, seen=SynSeen(63, 64240, 1460))) == "new"
    assert outcome(SynObs("alg-tcp-identity", sent_mss=1000, seen=SynSeen(63, 64240, 1000))) == "same"
    assert outcome(SynObs("alg-tcp-identity", sent_mss=1000, seen=None)) is None


def test_scores_rank_the_exact_signature_first():
    sigs = load_signatures()
    for sig in sigs:
        words = {probe: want.outcomes[0] for probe, want in sig.expect.items()}
        best = score(words, sigs)[0]
        assert best.signature.name == sig.name and best.share == 1.0


def decide_implementation(observations):
    return decide(RULES["alg.implementation"], observations, RunFacts())


def test_rule_table():
    linux = {"alg-port-crlf": port("alg-port-crlf", SENT, REWRITTEN),
             "alg-port-first": port("alg-port-first", SENT, SENT),
             "alg-port-lowercase": port("alg-port-lowercase", b"port 10,0,0,2,156,64\r\n",
                                        b"port 198,51,100,1,156,64\r\n"),
             "alg-port-foreign": port("alg-port-foreign", b"PORT 192,0,2,99,1,1\r\n", b"PORT 192,0,2,99,1,1\r\n"),
             "alg-port-pipelined": port("alg-port-pipelined", SENT, SENT, ReflectVariantObs,
                                        companion_sent=b"NOOP\r\n", position="before"),
             "alg-port-low": port("alg-port-low", b"PORT 10,0,0,2,3,255\r\n", b"PORT 198,51,100,1,3,255\r\n",
                                  ReflectVariantObs)}
    f = decide_implementation(linux)
    assert f.status == "present" and f.data["implementation"] == "linux", f.evidence
    assert any("nf_conntrack_ftp.c" in e for e in f.evidence)
    # Too few probes decided: unknown (inconclusive), never a guess.
    f = decide_implementation({k: linux[k] for k in ("alg-port-crlf", "alg-port-first")})
    assert f.status == "inconclusive" and f.data["implementation"] == "unknown"
    # Nothing decided at all.
    f = decide_implementation({"alg-port-crlf": ReflectActiveObs("alg-port-crlf", exchange=Exchange(SENT, "timeout"),
                                                                 sent=SENT)})
    assert f.status == "inconclusive"
    # All failed: the shared table.
    assert decide_implementation({"alg-port-crlf": Failed("alg-port-crlf", error="x")}).status == "inconclusive"
    # Plain forwarding: no ALG.
    plain = {n: port(n, SENT, SENT) for n in ("alg-port-crlf", "alg-port-first", "alg-port-lf",
                                               "alg-port-trailing-space", "alg-port-split-verb", "alg-port-low")}
    f = decide_implementation(plain)
    assert f.status == "absent" and f.data["implementation"] == "none"


def test_pipeline_blind_table():
    rule = RULES["alg.pipeline-blind"]
    base = port("alg-port-crlf", SENT, REWRITTEN)

    def run(pipelined, canonical=base):
        return decide(rule, {"alg-port-crlf": canonical, "alg-port-pipelined": pipelined}, RunFacts()).status

    piped = lambda arrived, **kw: port("alg-port-pipelined", SENT, arrived, ReflectVariantObs,  # noqa: E731
                                       companion_sent=b"NOOP\r\n", position="before", **kw)
    assert run(piped(SENT)) == "present"
    assert run(piped(REWRITTEN)) == "absent"
    assert run(piped(None, ex=Exchange(SENT, "reset"))) == "inconclusive"
    assert run(piped(None, ex=Exchange(SENT, "timeout"))) == "inconclusive"
    assert run(piped(SENT), canonical=port("alg-port-crlf", SENT, SENT)) == "skipped"
    timed_out = ReflectActiveObs("alg-port-crlf", exchange=Exchange(SENT, "timeout"), sent=SENT)
    assert run(piped(SENT), canonical=timed_out) == "inconclusive"
    assert decide(rule, {}, RunFacts()).status == "skipped"
