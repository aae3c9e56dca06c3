"""The path rules (NAT, ALG, firewall through a reflector), decision table row
by row, on constructed observations: no network."""

from __future__ import annotations

import pytest

from ftpprobe.codec import Reply
from ftpprobe.observations import (ActiveObs, DataOutcome, Exchange, Failed, ReflectActiveObs, ReflectPassiveObs,
                                   Reflection, Skipped, TcpInfo, Transfer)
from ftpprobe.rules import RULES, RunFacts, decide
from ftpprobe.rules import path as path_rules
from ftpprobe.rules.path import fingerprint_rows

LAN, PUBLIC, REFLECTOR = "10.0.0.2", "198.51.100.1", "198.51.100.2"
LOCAL = (LAN, 40000)

PORT = b"PORT 10,0,0,2,156,64\r\n"            # 10.0.0.2:40000
PORT_NAT = b"PORT 198,51,100,1,156,64\r\n"    # rewritten, port kept
PORT_REMAP = b"PORT 198,51,100,1,156,65\r\n"  # rewritten, port changed
EPRT = b"EPRT |1|10.0.0.2|40000|\r\n"
EPRT_NAT = b"EPRT |1|198.51.100.1|40000|\r\n"

DROPPED = TcpInfo(outq=26, unacked=1, retransmits=4, total_retrans=4, last_data_recv_ms=5000)
HELD = TcpInfo(outq=0, unacked=0, retransmits=0, total_retrans=0, last_data_recv_ms=5000)
UNACKED_NO_RETRANS = TcpInfo(outq=26, unacked=1, retransmits=0, total_retrans=0)


def reply(code: int, text: str = "ok") -> Reply:
    raw = f"{code} {text}\r\n".encode()
    return Reply(code, (raw[:-2],), raw)


def answered(sent: bytes, code: int = 200, elapsed: float = 0.01) -> Exchange:
    return Exchange(sent, "reply", reply(code), elapsed=elapsed)


def no_reply(sent: bytes, outcome: str = "timeout", tcp: TcpInfo | None = DROPPED) -> Exchange:
    return Exchange(sent, outcome, tcp_info=tcp if outcome == "timeout" else None, elapsed=5.0,
                    error=outcome)


def act(probe: str = "alg-port-crlf", sent: bytes = PORT, arrived: bytes | None = PORT_NAT, *, code: int = 200,
        outcome: str = "reply", tcp: TcpInfo | None = DROPPED, retry: Exchange | None = None, seen: str = PUBLIC,
        control_port: int = 21, transfer: Transfer | None = None, elapsed: float = 0.01) -> ReflectActiveObs:
    ex = answered(sent, code, elapsed) if outcome == "reply" else no_reply(sent, outcome, tcp)
    reflection = Reflection(arrived, (seen, 40000), (len(arrived),)) if arrived is not None and outcome == "reply" \
        else None
    return ReflectActiveObs(probe, exchange=ex, retry=retry, sent=sent, reflection=reflection, local=LOCAL,
                            control_port=control_port, named=(LAN, 40000), transfer=transfer)


def pas(probe: str = "alg-pasv-crlf", sent: bytes = b"PASV\r\n", arrived: bytes | None = None, *, code: int = 227,
        outcome: str = "reply", declared=(REFLECTOR, 40001), advertised="same", data: DataOutcome | None = None,
        connected: bool | None = True, parse_error: str = "", tcp: TcpInfo | None = DROPPED,
        retry: Exchange | None = None, control_port: int = 21, seen: str = PUBLIC) -> ReflectPassiveObs:
    arrived = sent if arrived is None else arrived
    ex = answered(sent, code) if outcome == "reply" else no_reply(sent, outcome, tcp)
    if advertised == "same":
        advertised = declared
    if outcome != "reply" or code not in (227, 229) or parse_error:
        advertised, data = None, None
    elif data is None and connected is not None and advertised is not None:
        data = DataOutcome(REFLECTOR, advertised[1], connected, "" if connected else "timed out after 2 s")
    reflection = Reflection(arrived, (seen, 40000)) if outcome == "reply" else None
    return ReflectPassiveObs(probe, exchange=ex, retry=retry, sent=sent, reflection=reflection, local=LOCAL,
                             control_port=control_port, declared=declared if outcome == "reply" else None,
                             advertised=advertised, data=data, parse_error=parse_error)


def run(quirk: str, *observations, facts: RunFacts | None = None):
    return decide(RULES[quirk], {o.probe: o for o in observations}, facts or RunFacts(peer=REFLECTOR))


def failed(probe: str) -> Failed:
    return Failed(probe, error="connection refused", kind="connect")


def test_every_path_rule_has_a_decision_table():
    mine = [r for r in RULES.values() if r.decide.__module__ == path_rules.__name__]
    assert {r.quirk for r in mine} == {
        "nat.present", "nat.no-alg", "alg.port-rewrite", "alg.eprt-rewrite", "alg.port-remap", "alg.reply-rewrite",
        "alg.pasv-mangle", "alg.stall.bare-lf", "alg.stall.space-lf", "alg.stall.trailing-space", "alg.stall.split",
        "alg.first-command-blind", "alg.case-sensitive", "alg.foreign-ignored", "alg.port-21-only",
        "alg.canonicalizes", "path.active-blocked", "path.passive-blocked"}
    for r in mine:
        doc = r.decide.__doc__ or ""
        assert "=====" in doc and ("status" in doc), r.quirk


# -- nat.present ------------------------------------------------------------------


@pytest.mark.parametrize("observations, status", [
    ([act()], "present"),                                              # seen 198.51.100.1, local 10.0.0.2
    ([act(seen=LAN)], "absent"),                                       # the reflector saw our own address
    ([act(outcome="timeout"), pas()], "present"),                      # one report is enough
    ([act(outcome="timeout")], "inconclusive"),                        # no report: unknown, never absent
    ([act(outcome="reset")], "inconclusive"),
    ([act(arrived=None)], "inconclusive"),                             # a reply without a report
    ([failed("alg-port-crlf")], "inconclusive"),                       # shared: failed
    ([], "skipped"),                                                   # shared: not run
])
def test_nat_present(observations, status):
    f = run("nat.present", *observations)
    assert f.status == status
    if status == "present":
        assert any("10.0.0.2:40000" in e and "198.51.100.1:40000" in e for e in f.evidence)


def test_nat_present_ipv4_mapped_is_the_same_address():
    obs = act(seen="::ffff:10.0.0.2")
    assert run("nat.present", obs).status == "absent"


# -- nat.no-alg ---------------------------------------------------------------------


@pytest.mark.parametrize("obs, status", [
    (act(arrived=PORT), "present"),                   # NAT, PORT arrived as sent
    (act(arrived=PORT_NAT), "absent"),                # rewritten by an ALG
    (act(arrived=PORT, seen=LAN), "absent"),          # no NAT
    (act(arrived=b"PORT junk\r\n"), "inconclusive"),  # altered, address unreadable
    (act(arrived=None), "inconclusive"),              # reply without a report
    (act(outcome="timeout"), "inconclusive"),
    (act(outcome="reset"), "inconclusive"),
    (failed("alg-port-crlf"), "inconclusive"),
])
def test_nat_no_alg(obs, status):
    f = run("nat.no-alg", obs)
    assert f.status == status, f.evidence
    if status == "present":
        assert "passive mode" in f.advice


def test_nat_no_alg_address_kept_though_line_altered():
    # Other bytes changed (upper-cased verb) but the address arrived as sent: still no rewrite.
    f = run("nat.no-alg", act(sent=b"port 10,0,0,2,156,64\r\n", arrived=b"PORT 10,0,0,2,156,64\r\n"))
    assert f.status == "present"


# -- alg.port-rewrite / alg.eprt-rewrite / alg.port-remap ------------------------------


@pytest.mark.parametrize("arrived, outcome, status", [
    (PORT_NAT, "reply", "present"),
    (PORT, "reply", "absent"),
    (b"PORT 10,0,0,2,156,64 \r\n", "reply", "absent"),   # altered, same address
    (b"P@RT junk\r\n", "reply", "inconclusive"),
    (None, "reply", "inconclusive"),
    (None, "timeout", "inconclusive"),
    (None, "reset", "inconclusive"),
    (None, "closed", "inconclusive"),
])
def test_port_rewrite(arrived, outcome, status):
    f = run("alg.port-rewrite", act(arrived=arrived, outcome=outcome))
    assert f.status == status
    if status == "present":
        assert f.data == {"sent": "10.0.0.2:40000", "arrived": "198.51.100.1:40000"}
        assert "PORT 10,0,0,2,156,64\\r\\n" in f.evidence[0] and "PORT 198,51,100,1,156,64\\r\\n" in f.evidence[0]


def test_port_rewrite_not_run_and_failed():
    assert run("alg.port-rewrite").status == "skipped"
    assert run("alg.port-rewrite", failed("alg-port-crlf")).status == "inconclusive"


@pytest.mark.parametrize("obs, status", [
    (act("alg-eprt-crlf", EPRT, EPRT_NAT), "present"),
    (act("alg-eprt-crlf", EPRT, EPRT), "absent"),
    (act("alg-eprt-crlf", EPRT, outcome="timeout"), "inconclusive"),
    (Skipped("alg-eprt-crlf", reason="EPRT cannot name this address"), "skipped"),
])
def test_eprt_rewrite(obs, status):
    assert run("alg.eprt-rewrite", obs).status == status


@pytest.mark.parametrize("observations, status", [
    ([act(arrived=PORT_REMAP)], "present"),
    ([act(arrived=PORT_NAT)], "absent"),
    ([act(arrived=PORT_NAT), act("alg-eprt-crlf", EPRT, b"EPRT |1|198.51.100.1|40001|\r\n")], "present"),
    ([act(arrived=PORT)], "skipped"),                          # no rewrite: no ALG port to compare
    ([act(outcome="timeout")], "inconclusive"),
    ([act(arrived=PORT), act("alg-eprt-crlf", EPRT, outcome="timeout")], "inconclusive"),
])
def test_port_remap(observations, status):
    assert run("alg.port-remap", *observations).status == status


# -- alg.reply-rewrite / alg.pasv-mangle -------------------------------------------------


@pytest.mark.parametrize("observations, status", [
    ([pas()], "absent"),
    ([pas(advertised=("10.0.0.1", 40001))], "present"),
    ([pas(advertised=(REFLECTOR, 50000))], "present"),
    ([pas("alg-epsv", b"EPSV\r\n", code=229, declared=(None, 40002))], "absent"),
    ([pas("alg-epsv", b"EPSV\r\n", code=229, declared=(None, 40002), advertised=(None, 40003))], "present"),
    ([pas(declared=None, advertised=(REFLECTOR, 40001))], "inconclusive"),   # no declaration
    ([pas(parse_error="not h1,...,p2")], "inconclusive"),
    ([pas(code=500)], "inconclusive"),
    ([pas(outcome="timeout")], "inconclusive"),
    ([pas(outcome="reset"), pas("alg-epsv", b"EPSV\r\n", code=229, declared=(None, 40002))], "absent"),
])
def test_reply_rewrite(observations, status):
    f = run("alg.reply-rewrite", *observations)
    assert f.status == status
    assert not any("None" in e for e in f.evidence)


@pytest.mark.parametrize("observations, status", [
    ([pas(arrived=b"P@SW\r\n")], "present"),
    ([pas()], "absent"),
    ([pas("alg-pasv-lowercase", b"pasv\r\n", arrived=b"PASV\r\n")], "present"),
    ([pas(outcome="timeout")], "inconclusive"),
    ([pas(outcome="reset"), pas("alg-pasv-other-port", control_port=2121)], "absent"),
    ([failed("alg-pasv-crlf")], "inconclusive"),
])
def test_pasv_mangle(observations, status):
    f = run("alg.pasv-mangle", *observations)
    assert f.status == status
    if observations[0].probe == "alg-pasv-crlf" and status == "present":
        assert "P@SW" in f.advice


# -- stalls -------------------------------------------------------------------------------


TIMED_OUT_AGAIN = Exchange(b"PORT 10,0,0,2,156,64\n", "timeout", tcp_info=DROPPED, elapsed=5.0)
RETRY_ANSWERED = answered(b"PORT 10,0,0,2,156,64\n")
PORT_LF = b"PORT 10,0,0,2,156,64\n"


@pytest.mark.parametrize("variant, canonical, status", [
    # positive reply
    (act("alg-port-lf", PORT_LF, PORT_LF), act(), "absent"),
    # negative reply: the line arrived and was answered: no stall
    (act("alg-port-lf", PORT_LF, PORT_LF, code=500), act(), "absent"),
    # a slow reply is an answer, not a stall (the old 5x-baseline rule is gone)
    (act("alg-port-lf", PORT_LF, PORT_LF, elapsed=30.0), act(), "absent"),
    # timeout, dropped, retry timed out again: proven
    (act("alg-port-lf", PORT_LF, outcome="timeout", retry=TIMED_OUT_AGAIN), act(), "present"),
    # timeout, held (acknowledged, no answer), retry timed out: proven
    (act("alg-port-lf", PORT_LF, outcome="timeout", tcp=HELD, retry=TIMED_OUT_AGAIN), act(), "present"),
    # timeout once, retry answered: one lost packet is not a stall
    (act("alg-port-lf", PORT_LF, outcome="timeout", retry=RETRY_ANSWERED), act(), "inconclusive"),
    # timeout, not retried
    (act("alg-port-lf", PORT_LF, outcome="timeout"), act(), "inconclusive"),
    # timeout, no TCP_INFO
    (act("alg-port-lf", PORT_LF, outcome="timeout", tcp=None, retry=TIMED_OUT_AGAIN), act(), "inconclusive"),
    # timeout, unacknowledged but not retransmitted yet
    (act("alg-port-lf", PORT_LF, outcome="timeout", tcp=UNACKED_NO_RETRANS, retry=TIMED_OUT_AGAIN), act(),
     "inconclusive"),
    # timeout, retry reset
    (act("alg-port-lf", PORT_LF, outcome="timeout", retry=no_reply(PORT_LF, "reset")), act(), "inconclusive"),
    # reset: neither a stall nor proof the line passes
    (act("alg-port-lf", PORT_LF, outcome="reset"), act(), "inconclusive"),
    (act("alg-port-lf", PORT_LF, outcome="closed"), act(), "inconclusive"),
    # baseline failed: the canonical line did not answer on the same path
    (act("alg-port-lf", PORT_LF, outcome="timeout", retry=TIMED_OUT_AGAIN), act(outcome="timeout"), "inconclusive"),
    (act("alg-port-lf", PORT_LF, PORT_LF), act(outcome="timeout"), "inconclusive"),
    (act("alg-port-lf", PORT_LF, outcome="timeout", retry=TIMED_OUT_AGAIN), failed("alg-port-crlf"), "inconclusive"),
    # baseline not run
    (act("alg-port-lf", PORT_LF, outcome="timeout", retry=TIMED_OUT_AGAIN), None, "inconclusive"),
    # variant not run / failed
    (None, act(), "skipped"),
    (failed("alg-port-lf"), act(), "inconclusive"),
])
def test_stall_bare_lf_port(variant, canonical, status):
    f = run("alg.stall.bare-lf", *[o for o in (variant, canonical) if o is not None])
    assert f.status == status, f.evidence
    if status == "present":
        assert any("TCP_INFO" in e for e in f.evidence)
        assert any("retry in a new session" in e for e in f.evidence)
        how = variant.exchange.tcp_info.stall
        assert f.data == {"stalled": [{"command": "PORT", "how": how}]}
        if how == "dropped":
            assert f.advice == ("the router's FTP ALG drops PORT lines not ended by CRLF (Linux nf_conntrack_ftp "
                                "does this): clients must end lines with CRLF (RFC 959 §4.1), or passive mode "
                                "avoids PORT")
        else:
            assert "acknowledges PORT lines not ended by CRLF but never passes them on" in f.advice


def test_stall_bare_lf_pasv_dropped_and_port_answered():
    pasv_lf = pas("alg-pasv-lf", b"PASV\n", outcome="timeout",
                  retry=Exchange(b"PASV\n", "timeout", tcp_info=DROPPED, elapsed=5.0))
    f = run("alg.stall.bare-lf", act("alg-port-lf", PORT_LF, PORT_LF), act(), pasv_lf, pas())
    assert f.status == "present"
    assert f.data == {"stalled": [{"command": "PASV", "how": "dropped"}]}
    assert "drops PASV lines not ended by CRLF" in f.advice and "nf_conntrack_ftp" not in f.advice
    assert "PORT" not in f.advice


def test_stall_bare_lf_one_answered_one_undecided_is_inconclusive():
    pasv_lf = pas("alg-pasv-lf", b"PASV\n", outcome="timeout", retry=answered(b"PASV\n", 227))
    f = run("alg.stall.bare-lf", act("alg-port-lf", PORT_LF, PORT_LF), act(), pasv_lf, pas())
    assert f.status == "inconclusive"


def test_stall_bare_lf_pasv_canonical_broken():
    # PORT LF answered, but PASV's canonical line timed out: PASV LF's answer cannot be compared.
    f = run("alg.stall.bare-lf", act("alg-port-lf", PORT_LF, PORT_LF), act(),
            pas("alg-pasv-lf", b"PASV\n"), pas(outcome="timeout"))
    assert f.status == "inconclusive"


@pytest.mark.parametrize("variant, canonical, status", [
    (pas("alg-pasv-space-lf", b"PASV \n"), pas(), "absent"),
    (pas("alg-pasv-space-lf", b"PASV \n", outcome="timeout", tcp=HELD,
         retry=Exchange(b"PASV \n", "timeout", tcp_info=HELD)), pas(), "present"),
    (pas("alg-pasv-space-lf", b"PASV \n", outcome="timeout", retry=answered(b"PASV \n", 227)), pas(),
     "inconclusive"),
    (pas("alg-pasv-space-lf", b"PASV \n", outcome="timeout", retry=Exchange(b"PASV \n", "timeout")),
     pas(code=500), "inconclusive"),                  # baseline refused
    (pas("alg-pasv-space-lf", b"PASV \n"), None, "inconclusive"),
    (None, pas(), "skipped"),
])
def test_stall_space_lf(variant, canonical, status):
    f = run("alg.stall.space-lf", *[o for o in (variant, canonical) if o is not None])
    assert f.status == status, f.evidence
    if status == "present":
        assert f.data == {"stalled": [{"command": "PASV", "how": "held"}]}
        assert "a middlebox acknowledges PASV lines spelled 'PASV \\n'" in f.advice


@pytest.mark.parametrize("variant_outcome, retry, status", [
    ("reply", None, "absent"),
    ("timeout", TIMED_OUT_AGAIN, "present"),
    ("timeout", RETRY_ANSWERED, "inconclusive"),
    ("reset", None, "inconclusive"),
])
def test_stall_trailing_space(variant_outcome, retry, status):
    sent = b"PORT 10,0,0,2,156,64 \r\n"
    variant = act("alg-port-trailing-space", sent, PORT_NAT, outcome=variant_outcome, retry=retry)
    f = run("alg.stall.trailing-space", variant, act())
    assert f.status == status
    if status == "present":
        assert "drops PORT lines with a trailing space before CRLF" in f.advice


@pytest.mark.parametrize("verb_outcome, number_outcome, status", [
    ("reply", "reply", "absent"),
    ("timeout", "reply", "present"),
    ("reply", "timeout", "present"),
    ("reset", "reply", "inconclusive"),
])
def test_stall_split(verb_outcome, number_outcome, status):
    verb = act("alg-port-split-verb", PORT, PORT_NAT, outcome=verb_outcome, retry=TIMED_OUT_AGAIN)
    number = act("alg-port-split-number", PORT, PORT_NAT, outcome=number_outcome, retry=TIMED_OUT_AGAIN)
    f = run("alg.stall.split", verb, number, act())
    assert f.status == status
    if status == "present":
        assert "split across TCP segments" in f.advice and "one write" in f.advice


def test_stall_split_only_the_first_segment_reported_is_the_rest_held_back():
    """The reflector reports an unterminated line after a pause: 'PO' of a split PORT."""
    ex = Exchange(PORT, "reply", reply(200, "partial line"), segments=2, elapsed=0.6)
    partial = ReflectActiveObs("alg-port-split-verb", exchange=ex, sent=PORT,
                               reflection=Reflection(PORT[:2], (PUBLIC, 40000), (2,)), local=LOCAL,
                               control_port=21, named=(LAN, 40000))
    whole = act("alg-port-split-number", PORT, PORT_NAT)
    f = run("alg.stall.split", partial, whole, act())
    assert f.status == "present"
    assert any("received only 'PO'" in e for e in f.evidence), f.evidence
    # The same line arriving whole (in two reads) is no stall.
    complete = ReflectActiveObs("alg-port-split-verb", exchange=Exchange(PORT, "reply", reply(200), segments=2),
                                sent=PORT, reflection=Reflection(PORT_NAT, (PUBLIC, 40000), (2, len(PORT) - 2)),
                                local=LOCAL, control_port=21, named=(LAN, 40000))
    assert run("alg.stall.split", complete, whole, act()).status == "absent"


def test_stall_split_one_variant_failed_none_stalled():
    f = run("alg.stall.split", act("alg-port-split-verb", PORT, PORT_NAT), failed("alg-port-split-number"), act())
    assert f.status == "inconclusive"
    assert any("failed" in e for e in f.evidence)


# -- pairs: first-command-blind, case-sensitive, foreign-ignored ------------------------


@pytest.mark.parametrize("quirk, probe, sent, kept, rewritten", [
    ("alg.first-command-blind", "alg-port-first", PORT, PORT, PORT_NAT),
    ("alg.case-sensitive", "alg-port-lowercase", b"port 10,0,0,2,156,64\r\n", b"port 10,0,0,2,156,64\r\n",
     b"port 198,51,100,1,156,64\r\n"),
    ("alg.foreign-ignored", "alg-port-foreign", b"PORT 192,0,2,99,156,64\r\n", b"PORT 192,0,2,99,156,64\r\n",
     b"PORT 198,51,100,1,156,64\r\n"),
])
@pytest.mark.parametrize("row", ["present", "absent", "timeout", "reset", "no-report", "no-alg", "canonical-timeout",
                                 "canonical-no-report", "canonical-not-run", "not-run", "failed"])
def test_pair_rules(quirk, probe, sent, kept, rewritten, row):
    canonical = act()
    variant = act(probe, sent, kept)
    expected = row
    if row == "absent":
        variant = act(probe, sent, rewritten)
    elif row in ("timeout", "reset"):
        variant, expected = act(probe, sent, outcome=row), "inconclusive"
    elif row == "no-report":
        variant, expected = act(probe, sent, None), "inconclusive"
    elif row == "no-alg":
        canonical, expected = act(arrived=PORT), "skipped"
    elif row == "canonical-timeout":
        canonical, expected = act(outcome="timeout"), "inconclusive"
    elif row == "canonical-no-report":
        canonical, expected = act(arrived=None), "inconclusive"
    elif row == "canonical-not-run":
        canonical, expected = None, "inconclusive"
    elif row == "not-run":
        variant, expected = None, "skipped"
    elif row == "failed":
        variant, expected = failed(probe), "inconclusive"
    f = run(quirk, *[o for o in (canonical, variant) if o is not None])
    assert f.status == expected, f.evidence
    if expected == "present":
        assert f.advice


# -- alg.port-21-only ---------------------------------------------------------------


@pytest.mark.parametrize("at_21, other, status", [
    (PORT_NAT, PORT, "present"),
    (PORT_NAT, PORT_NAT, "absent"),
    (PORT, PORT_NAT, "absent"),
    (PORT, PORT, "skipped"),
    (None, PORT, "inconclusive"),        # no report on 21
    ("timeout", PORT, "inconclusive"),
    (PORT_NAT, "reset", "inconclusive"),
])
def test_port_21_only(at_21, other, status):
    def on(probe, arrived, port):
        if arrived in ("timeout", "reset"):
            return act(probe, outcome=arrived, control_port=port)
        return act(probe, arrived=arrived, control_port=port)
    f = run("alg.port-21-only", on("alg-port-crlf", at_21, 21), on("alg-port-other-port", other, 2121))
    assert f.status == status
    if status == "present":
        assert "2121" in f.advice


def test_port_21_only_main_port_other_than_21():
    # The run called 2121 main: the pair is told apart by control port, not by probe name.
    f = run("alg.port-21-only", act(arrived=PORT, control_port=2121),
            act("alg-port-other-port", arrived=PORT_NAT, control_port=21))
    assert f.status == "present"


def test_port_21_only_without_second_port():
    f = run("alg.port-21-only", act(), Skipped("alg-port-other-port", reason="no second control port given"))
    assert f.status == "skipped"


# -- alg.canonicalizes --------------------------------------------------------------


LOWER = b"port 10,0,0,2,156,64\r\n"


@pytest.mark.parametrize("observations, status", [
    # a non-canonical spelling rewritten and normalised (libalias regenerates the line)
    ([act("alg-port-lowercase", LOWER, PORT_NAT)], "present"),
    ([act("alg-port-lf", PORT_LF, PORT_NAT)], "present"),
    ([act("alg-port-trailing-space", b"PORT 10,0,0,2,156,64 \r\n", PORT_NAT)], "present"),
    # numbers only (nf_nat_ftp): case and ending kept
    ([act("alg-port-lowercase", LOWER, b"port 198,51,100,1,156,64\r\n")], "absent"),
    ([act("alg-port-lowercase", LOWER, b"port 198,51,100,1,156,64\r\n"),
      act("alg-port-lf", PORT_LF, outcome="timeout")], "absent"),
    # none rewritten
    ([act("alg-port-lowercase", LOWER, LOWER)], "skipped"),
    ([act("alg-port-lowercase", LOWER, LOWER), act("alg-port-lf", PORT_LF, outcome="timeout")], "inconclusive"),
    ([act("alg-port-lf", PORT_LF, outcome="timeout")], "inconclusive"),
    # the old fault: only the canonical line was rewritten -> cannot be decided (not "absent")
    ([act()], "skipped"),
])
def test_canonicalizes(observations, status):
    f = run("alg.canonicalizes", *observations)
    assert f.status == status, f.evidence


# -- path.active-blocked ------------------------------------------------------------


def transfer(*, expected=True, connected=False, list_code=150) -> Transfer:
    return Transfer(answered(b"LIST\r\n", list_code), expected=expected, connected=connected,
                    source=(REFLECTOR, 20) if connected else None, bytes=12 if connected else 0,
                    head=b"ftpprobe ok\r\n" if connected else b"",
                    error="" if connected else "no connection within 2 s",
                    final="226 done" if connected else "425 cannot open data connection")


def own(probe="port-own", *, code=200, outcome="reply", t: Transfer | None = None) -> ActiveObs:
    sent = PORT if probe == "port-own" else EPRT
    ex = answered(sent, code) if outcome == "reply" else no_reply(sent, outcome)
    return ActiveObs(probe, exchange=ex, listen=(LAN, 40000), control_port=21, transfer=t)


@pytest.mark.parametrize("observations, status", [
    # reflector vantage
    ([act(transfer=transfer(connected=True))], "absent"),
    ([act(transfer=transfer())], "present"),
    ([act(transfer=transfer(expected=False, list_code=550))], "inconclusive"),   # LIST refused: the old fault
    ([act(transfer=None)], "inconclusive"),                                      # LIST not sent
    ([act(code=500)], "inconclusive"),                                           # PORT refused
    ([act(outcome="timeout")], "inconclusive"),
    ([act(outcome="reset")], "inconclusive"),
    # server vantage
    ([own(t=transfer(connected=True))], "absent"),
    ([own(t=transfer())], "present"),
    ([own(t=transfer(expected=False, list_code=550))], "inconclusive"),
    ([own(code=500)], "inconclusive"),
    ([own(outcome="timeout")], "inconclusive"),
    ([own(t=transfer()), own("eprt-own", t=transfer(connected=True))], "absent"),
    ([own(code=500), own("eprt-own", t=transfer())], "present"),
    ([failed("port-own"), own("eprt-own", t=transfer())], "present"),
    ([failed("port-own")], "inconclusive"),
    ([], "skipped"),
])
def test_active_blocked(observations, status):
    f = run("path.active-blocked", *observations)
    assert f.status == status, f.evidence
    if status == "present":
        assert "passive mode" in f.advice
        assert any("no data connection arrived" in e for e in f.evidence)
    if status == "absent":
        assert any(f"arrived from {REFLECTOR}:20" in e for e in f.evidence)
    assert not any("None" in e for e in f.evidence)


# -- path.passive-blocked -----------------------------------------------------------


@pytest.mark.parametrize("observations, status, summary", [
    ([pas()], "absent", "1 of 1 connected"),
    ([pas(connected=False), pas("alg-epsv", b"EPSV\r\n", code=229, declared=(None, 40002), connected=False)],
     "present", "0 of 2 connected"),
    ([pas(connected=False), pas("alg-epsv", b"EPSV\r\n", code=229, declared=(None, 40002))], "absent",
     "1 of 2 connected"),
    ([pas(connected=False), pas("alg-pasv-other-port", control_port=2121, connected=False)], "present",
     "0 of 2 connected"),
    ([pas(code=500)], "inconclusive", "none tried"),                     # refused: no data connection invited
    ([pas(outcome="timeout")], "inconclusive", "none tried"),            # the control connection did not work
    ([pas(outcome="reset")], "inconclusive", "none tried"),
    ([pas(parse_error="227 without numbers")], "inconclusive", "none tried"),
    ([pas(connected=None)], "inconclusive", "none tried"),               # no data connection attempted
    # the 227 was rewritten to another port than the reflector's: its failure does not show a filter
    ([pas(advertised=(REFLECTOR, 50000), connected=False)], "inconclusive", "none tried"),
    ([pas(advertised=(REFLECTOR, 50000), connected=True)], "absent", "1 of 1"),
    ([pas(outcome="timeout"), pas("alg-epsv", b"EPSV\r\n", code=229, declared=(None, 40002), connected=False)],
     "present", "0 of 1 connected"),
    ([failed("alg-pasv-crlf"), pas("alg-epsv", b"EPSV\r\n", code=229, declared=(None, 40002), connected=False)],
     "present", "0 of 1 connected"),
    ([failed("alg-pasv-crlf")], "inconclusive", "failed"),
    ([], "skipped", "not run"),
])
def test_passive_blocked(observations, status, summary):
    f = run("path.passive-blocked", *observations)
    assert f.status == status, f.evidence
    assert summary in " ".join(f.evidence)
    if status == "present":
        assert f.evidence[0].startswith("passive data connections: 0 of")
        assert "while the control connection works" in f.evidence[0]
        assert f.data["failed"] and all(d["host"] == REFLECTOR for d in f.data["failed"])
        assert "egress filter" in f.advice
    if status in ("present", "absent"):
        assert f.evidence[0].startswith("passive data connections:")


# -- fingerprint rows ------------------------------------------------------------------


def test_fingerprint_rows_are_plain_text():
    observations = {o.probe: o for o in [
        act(),
        act("alg-port-lf", PORT_LF, outcome="timeout", retry=TIMED_OUT_AGAIN),
        act("alg-port-lowercase", LOWER, LOWER),
        pas(),
        pas("alg-epsv", b"EPSV\r\n", code=229, declared=(None, 40002), connected=False),
        act("alg-port-split-verb", PORT, outcome="timeout", retry=RETRY_ANSWERED),
        Failed("alg-eprt-crlf", error="connection refused", kind="connect"),
        Skipped("alg-port-other-port", reason="no second control port given"),
        own(t=transfer()),    # a server-vantage probe: not part of the fingerprint
    ]}
    rows = {r["probe"]: r for r in fingerprint_rows(observations)}
    assert list(rows) == sorted(rows) and "port-own" not in rows
    assert rows["alg-port-crlf"] == {
        "probe": "alg-port-crlf", "port": 21, "sent": "PORT 10,0,0,2,156,64\\r\\n",
        "arrived": "PORT 198,51,100,1,156,64\\r\\n", "reads": str(len(PORT_NAT)), "outcome": "rewritten",
        "detail": "10.0.0.2:40000 -> 198.51.100.1:40000", "error": ""}
    assert rows["alg-port-lf"]["outcome"] == "stalled (dropped)" and rows["alg-port-lf"]["arrived"] is None
    assert "TCP_INFO" in rows["alg-port-lf"]["detail"] and "retry" in rows["alg-port-lf"]["detail"]
    assert rows["alg-port-split-verb"]["outcome"] == "timeout"
    assert rows["alg-port-lowercase"]["outcome"] == "passed"
    assert rows["alg-pasv-crlf"]["detail"] == "227 declared 198.51.100.2:40001, received 198.51.100.2:40001; data connected"
    assert rows["alg-epsv"]["detail"].startswith("229 declared port 40002, received port 40002; data failed")
    assert rows["alg-eprt-crlf"]["outcome"] == "failed" and rows["alg-eprt-crlf"]["error"] == "connection refused"
    assert rows["alg-port-other-port"]["outcome"] == "skipped"
    for row in rows.values():
        for key, value in row.items():
            assert value is None or isinstance(value, (str, int)), (key, value)
            if isinstance(value, str):
                assert "None" not in value and "[" not in value and "(b'" not in value, (key, value)


def test_active_blocked_a_425_after_an_accepted_port_is_blocked_but_too_many_is_not():
    from ftpprobe.observations import ActiveObs

    def server_obs(code, text):
        listing = Exchange(b"LIST\r\n", "reply", reply(code, text))
        return ActiveObs("port-own", exchange=answered(b"PORT 10,0,0,2,156,64\r\n", 200),
                         listen=(LAN, 40000), control_port=21,
                         transfer=Transfer(listing, expected=False, error="LIST got no 1xx reply"))

    f = run("path.active-blocked", server_obs(425, "Failed to establish connection."))
    assert f.status == "present" and any("(425)" in e for e in f.evidence)
    assert run("path.active-blocked", server_obs(425, "Too many connections.")).status == "inconclusive"
    assert run("path.active-blocked", server_obs(550, "No such file")).status == "inconclusive"
