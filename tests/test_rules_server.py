"""The server-vantage rules (ftpprobe.rules.server), decision table by decision table.

Observations are built by hand (no network) and go through
:func:`ftpprobe.rules.decide`, so the shared outcomes (not run, failed,
baseline missing) are exercised with each rule.
"""

from __future__ import annotations

import pytest

from ftpprobe.catalog import load_catalog
from ftpprobe.codec import Reply
from ftpprobe.findings import QUIRKS
from ftpprobe.observations import (ActiveObs, AuthTlsObs, BounceObs, CommandObs, DataOutcome, Exchange, Failed,
                                   ListingObs, PassiveObs, SessionLimitObs, Skipped, TcpInfo, Transfer)
from ftpprobe.rules import RULES, RunFacts, decide
from ftpprobe.rules import server

# -- building blocks ----------------------------------------------------------


def reply(code: int, text: str = "OK") -> Reply:
    line = f"{code} {text}".encode()
    return Reply(code, (line,), line + b"\r\n")


def said(sent: bytes, code: int, text: str = "OK", segments: int = 1) -> Exchange:
    return Exchange(sent, "reply", reply(code, text), segments=segments, elapsed=0.01)


def silent(sent: bytes, outcome: str = "timeout", tcp_info: TcpInfo | None = None, segments: int = 1,
           error: str = "") -> Exchange:
    return Exchange(sent, outcome, None, segments=segments, elapsed=5.0, tcp_info=tcp_info, error=error)


PASV_227 = "Entering Passive Mode (127,0,0,1,200,10)."
CANONICAL = CommandObs("pasv-crlf", exchange=said(b"PASV\r\n", 227, PASV_227))
HELD = TcpInfo(outq=0, unacked=0, retransmits=0, total_retrans=0, last_data_recv_ms=5000)
DROPPED = TcpInfo(outq=7, unacked=1, retransmits=3, total_retrans=3, last_data_recv_ms=5000)


def run(quirk: str, *observations, facts: RunFacts | None = None):
    finding = decide(RULES[quirk], {o.probe: o for o in observations}, facts or RunFacts(peer="192.0.2.10"))
    assert finding.id == quirk
    for line in finding.evidence:  # escaped bytes, never Python reprs
        assert "b'" not in line and 'b"' not in line, line
    if finding.status == "present":
        assert finding.evidence and finding.advice
    return finding


def text(finding) -> str:
    return "\n".join(finding.evidence)


# -- the six PASV variants, compared with canonical PASV ----------------------

VARIANTS = [
    # quirk, probe, exact bytes, TCP segments, how the bytes show in evidence
    ("server.bare-lf-rejected", "pasv-lf", b"PASV\n", 1, "sent 'PASV\\n'"),
    ("server.space-lf-rejected", "pasv-space-lf", b"PASV \n", 1, "sent 'PASV \\n'"),
    ("server.cr-rejected", "pasv-cr", b"PASV\r", 1, "sent 'PASV\\r'"),
    ("server.trailing-space-rejected", "pasv-trailing-space", b"PASV \r\n", 1, "sent 'PASV \\r\\n'"),
    ("server.split-rejected", "pasv-split", b"PASV\r\n", 2, "sent 'PASV\\r\\n' in 2 segments"),
    ("server.case-sensitive", "pasv-lowercase", b"pasv\r\n", 1, "sent 'pasv\\r\\n'"),
]


def _variant_rows(sent: bytes, segs: int):
    ok = said(sent, 227, PASV_227, segs)
    t = silent(sent, segments=segs)
    held_500 = said(b"NOOP\r\n", 500, f'Command "{sent.decode().rstrip()}\\nNOOP" not understood.')
    return [
        # id, observation fields, expected status, a phrase the evidence must hold
        ("positive", dict(exchange=ok), "absent", "227 Entering"),
        ("positive-other-code", dict(exchange=said(sent, 202, "Command not implemented", segs)), "inconclusive",
         "not clear"),
        ("negative-5xx", dict(exchange=said(sent, 500, "Unknown command", segs)), "present", "500 Unknown command"),
        ("negative-4xx", dict(exchange=said(sent, 421, "Too busy", segs)), "inconclusive", "transient"),
        # held until a line ending (the nudge NOOP\r\n) followed, then parsed as one reply: decided, no retry
        ("held-then-500", dict(exchange=silent(sent, tcp_info=HELD, segments=segs), nudge=held_500, alive_after=True),
         "present", "only once a line ending followed did the server answer"),
        ("held-then-227", dict(exchange=silent(sent, segments=segs), nudge=said(b"NOOP\r\n", 227, PASV_227),
                               alive_after=True), "present", "parsing what it held as '227 Entering"),
        ("held-bytes-unacknowledged", dict(exchange=silent(sent, tcp_info=DROPPED, segments=segs), nudge=held_500,
                                           alive_after=True), "inconclusive", "not yet acknowledged"),
        # a late reply to the line and one to the nudge: a reply like any other
        ("late-reply-then-noop", dict(exchange=ok, nudge=said(b"NOOP\r\n", 200, "NOOP ok"), alive_after=True),
         "absent", "227 Entering"),
        # nothing answered even the nudge: a real stall, decided as before
        ("nudge-unanswered-timeout-twice-alive", dict(exchange=t, nudge=silent(b"NOOP\r\n"), retry=t,
                                                      alive_after=True), "present", "NOOP sent afterwards was answered"),
        ("nudge-unanswered-no-retry", dict(exchange=t, nudge=silent(b"NOOP\r\n")), "inconclusive", "no retry"),
        ("nudge-unanswered-connection-dead", dict(exchange=t, nudge=silent(b"NOOP\r\n"), retry=t,
                                                  alive_after=False), "inconclusive", "whole connection stalled"),
        ("timeout-no-retry", dict(exchange=t), "inconclusive", "no retry"),
        ("timeout-retry-answered", dict(exchange=t, retry=ok), "inconclusive", "lost packet"),
        ("timeout-retry-refused", dict(exchange=t, retry=said(sent, 500, "Unknown", segs)), "inconclusive",
         "lost packet"),
        ("timeout-retry-reset", dict(exchange=t, retry=silent(sent, "reset", segments=segs)), "inconclusive",
         "-> reset"),
        ("timeout-twice-no-noop", dict(exchange=t, retry=t), "inconclusive", "no NOOP was sent"),
        ("timeout-twice-alive", dict(exchange=t, retry=t, alive_after=True), "present", "NOOP sent afterwards was answered"),
        ("timeout-twice-held", dict(exchange=silent(sent, tcp_info=HELD, segments=segs),
                                    retry=silent(sent, tcp_info=HELD, segments=segs), alive_after=True), "present",
         "0 bytes unacknowledged"),
        ("timeout-twice-dropped", dict(exchange=silent(sent, tcp_info=DROPPED, segments=segs), retry=t),
         "inconclusive", "never acknowledged"),
        ("timeout-twice-connection-dead", dict(exchange=t, retry=t, alive_after=False), "inconclusive",
         "whole connection stalled"),
        ("reset", dict(exchange=silent(sent, "reset", segments=segs, error="Connection reset by peer")),
         "inconclusive", "-> reset (Connection reset by peer)"),
        ("reset-twice", dict(exchange=silent(sent, "reset", segments=segs), retry=silent(sent, "reset", segments=segs)),
         "inconclusive", "reset on this line"),
        ("closed", dict(exchange=silent(sent, "closed", segments=segs)), "inconclusive", "-> closed"),
        ("malformed", dict(exchange=silent(sent, "malformed", segments=segs, error="not a reply line")),
         "inconclusive", "could not be read"),
        ("no-command", dict(), "inconclusive", "no command was sent"),
    ]


VARIANT_CASES = [pytest.param(q, p, fields, status, phrase, shown, id=f"{p}-{row}")
                 for q, p, sent, segs, shown in VARIANTS
                 for row, fields, status, phrase in _variant_rows(sent, segs)]


@pytest.mark.parametrize("quirk, probe, fields, status, phrase, shown", VARIANT_CASES)
def test_variant_decision_table(quirk, probe, fields, status, phrase, shown):
    finding = run(quirk, CommandObs(probe, **fields), CANONICAL)
    assert finding.status == status, finding
    assert phrase in text(finding)
    if fields:
        assert f"{probe}: {shown}" in text(finding)
    # the canonical line is always shown next to the variant
    assert "canonical pasv-crlf: sent 'PASV\\r\\n' -> '227 Entering Passive Mode (127,0,0,1,200,10).\\r\\n'" \
        in finding.evidence
    assert finding.severity == QUIRKS[quirk][0]
    if status != "present":
        assert finding.advice == ""


@pytest.mark.parametrize("quirk, probe, sent, segs, shown", VARIANTS)
def test_variant_shared_outcomes(quirk, probe, sent, segs, shown):
    variant = CommandObs(probe, exchange=said(sent, 500, "Unknown command", segs))
    # not run
    assert run(quirk, CANONICAL).status == "skipped"
    # failed before the variant
    failed = run(quirk, Failed(probe, error="login refused: 530", kind="login"), CANONICAL)
    assert failed.status == "inconclusive" and "probe " + probe + " failed: login refused: 530" in text(failed)
    # skipped by the executor
    assert run(quirk, Skipped(probe, reason="not here"), CANONICAL).status == "skipped"
    # baseline not run
    alone = run(quirk, variant)
    assert alone.status == "inconclusive" and "canonical pasv-crlf was not run" in text(alone)
    # baseline failed
    base_failed = run(quirk, variant, Failed("pasv-crlf", error="connect: refused", kind="connect"))
    assert base_failed.status == "inconclusive" and "canonical pasv-crlf failed" in text(base_failed)
    # baseline refused, or timed out: the variant cannot be compared
    for broken in (said(b"PASV\r\n", 500, "Passive mode disabled"), silent(b"PASV\r\n")):
        cmp = run(quirk, variant, CommandObs("pasv-crlf", exchange=broken))
        assert cmp.status == "inconclusive" and "did not work either" in text(cmp)


@pytest.mark.parametrize("quirk", [q for q, *_ in VARIANTS])
def test_variant_docstring_has_the_decision_table(quirk):
    doc = RULES[quirk].decide.__doc__ or ""
    for row in ("not run", "failed", "baseline failed", "positive reply", "negative reply 5xx", "timeout",
                "reset", "malformed"):
        assert row in doc, row


# -- P@SW -----------------------------------------------------------------------

PSW = b"P@SW\r\n"


@pytest.mark.parametrize("fields, status, phrase", [
    (dict(exchange=said(PSW, 227, PASV_227)), "present", "sent 'P@SW\\r\\n' -> '227 Entering"),
    (dict(exchange=said(PSW, 202, "Superfluous")), "absent", "not 227"),
    (dict(exchange=said(PSW, 500, "Unknown command")), "absent", "refuses P@SW"),
    (dict(exchange=said(PSW, 421, "Busy")), "inconclusive", "transient"),
    (dict(exchange=silent(PSW)), "inconclusive", "no answer"),
    (dict(exchange=silent(PSW), retry=silent(PSW)), "inconclusive", "psw-alias again, in a new session"),
    (dict(exchange=silent(PSW), retry=said(PSW, 500, "Unknown")), "inconclusive", "no answer"),
    (dict(exchange=silent(PSW, "reset")), "inconclusive", "reset on P@SW"),
    (dict(exchange=silent(PSW, "closed")), "inconclusive", "closed on P@SW"),
    (dict(exchange=silent(PSW, "malformed")), "inconclusive", "could not be read"),
    (dict(), "inconclusive", "no command was sent"),
], ids=["227", "202", "500", "421", "timeout", "timeout-twice", "timeout-retry-500", "reset", "closed",
        "malformed", "no-command"])
def test_psw_alias(fields, status, phrase):
    finding = run("server.psw-alias", CommandObs("psw-alias", **fields))
    assert finding.status == status
    assert phrase in text(finding)


def test_psw_alias_needs_no_baseline_and_shares_the_rest():
    assert RULES["server.psw-alias"].baseline is None
    assert run("server.psw-alias").status == "skipped"
    assert run("server.psw-alias", Failed("psw-alias", error="timeout", kind="timeout")).status == "inconclusive"


# -- EPSV -------------------------------------------------------------------------

EPSV = b"EPSV\r\n"
E229 = "Entering Extended Passive Mode (|||40001|)"


@pytest.mark.parametrize("obs, status, phrase", [
    (PassiveObs("epsv", exchange=said(EPSV, 229, E229), advertised=(None, 40001),
                data=DataOutcome("192.0.2.10", 40001, True)), "absent", "port 40001: connected"),
    (PassiveObs("epsv", exchange=said(EPSV, 229, E229), advertised=(None, 40001),
                data=DataOutcome("192.0.2.10", 40001, False, "timed out")), "absent", "failed (timed out)"),
    (PassiveObs("epsv", exchange=said(EPSV, 229, "Extended (|||x|)"), parse_error="no port"), "inconclusive",
     "cannot be parsed: no port"),
    (PassiveObs("epsv", exchange=said(EPSV, 202, "Not implemented")), "present", "202 Not implemented"),
    (PassiveObs("epsv", exchange=said(EPSV, 200, "OK")), "inconclusive", "not 200"),
    (PassiveObs("epsv", exchange=said(EPSV, 500, "Unknown command")), "present", "500 Unknown command"),
    (PassiveObs("epsv", exchange=said(EPSV, 522, "Network protocol not supported")), "present", "522"),
    (PassiveObs("epsv", exchange=said(EPSV, 425, "Cannot open")), "inconclusive", "transient"),
    (PassiveObs("epsv", exchange=silent(EPSV, tcp_info=HELD)), "inconclusive", "-> timeout; TCP_INFO"),
    (PassiveObs("epsv", exchange=silent(EPSV, "reset")), "inconclusive", "-> reset"),
    (PassiveObs("epsv", exchange=silent(EPSV, "closed")), "inconclusive", "-> closed"),
    (PassiveObs("epsv", exchange=silent(EPSV, "malformed")), "inconclusive", "could not be read"),
    (PassiveObs("epsv"), "inconclusive", "no command was sent"),
    (Failed("epsv", error="connect refused", kind="connect"), "inconclusive", "probe epsv failed"),
    (Skipped("epsv", reason="EPSV not tried"), "skipped", "EPSV not tried"),
], ids=["229-connected", "229-data-failed", "229-unparsed", "202", "200", "500", "522", "425", "timeout", "reset",
        "closed", "malformed", "no-command", "failed", "skipped"])
def test_epsv_unsupported(obs, status, phrase):
    finding = run("server.epsv-unsupported", obs)
    assert finding.status == status
    assert phrase in text(finding)


def test_epsv_not_run():
    assert run("server.epsv-unsupported").status == "skipped"


# -- PORT to a third party (bounce) ---------------------------------------------

FOREIGN = b"PORT 192,0,2,1,156,64\r\n"


@pytest.mark.parametrize("fields, status, phrase", [
    (dict(exchange=said(FOREIGN, 200, "PORT command successful")), "present", "200 PORT command successful"),
    (dict(exchange=said(FOREIGN, 500, "Illegal PORT command")), "absent", "500 Illegal PORT"),
    (dict(exchange=said(FOREIGN, 501, "Rejected data connection to foreign address")), "absent", "501"),
    (dict(exchange=said(FOREIGN, 425, "I won't open a connection to 192.0.2.1")), "absent", "425"),
    (dict(exchange=said(FOREIGN, 421, "Service closing")), "inconclusive", "closing the session"),
    (dict(exchange=silent(FOREIGN)), "inconclusive", "no reply (timeout)"),
    (dict(exchange=silent(FOREIGN, "reset")), "inconclusive", "no reply (reset)"),
    (dict(exchange=silent(FOREIGN, "closed")), "inconclusive", "no reply (closed)"),
    (dict(exchange=silent(FOREIGN, "malformed")), "inconclusive", "could not be read"),
    (dict(), "inconclusive", "no command was sent"),
], ids=["200", "500", "501", "425", "421", "timeout", "reset", "closed", "malformed", "no-command"])
def test_port_foreign_accepted(fields, status, phrase):
    finding = run("server.port-foreign-accepted", BounceObs("port-foreign", foreign=("192.0.2.1", 40000), **fields))
    assert finding.status == status
    assert phrase in text(finding)
    if fields:
        assert "sent 'PORT 192,0,2,1,156,64\\r\\n'" in text(finding)
        assert "no transfer command was sent after it" in finding.evidence


def test_port_foreign_shared_outcomes():
    assert run("server.port-foreign-accepted").status == "skipped"
    assert run("server.port-foreign-accepted", Failed("port-foreign", error="x", kind="reset")).status == "inconclusive"
    skipped = run("server.port-foreign-accepted", Skipped("port-foreign", reason="PORT cannot name an IPv6 address"))
    assert skipped.status == "skipped" and "IPv6" in text(skipped)


# -- PORT / EPRT resets ----------------------------------------------------------

PORT_OWN = b"PORT 127,0,0,1,195,80\r\n"
EPRT_OWN = b"EPRT |1|127.0.0.1|50000|\r\n"


def active(probe: str, exchange: Exchange | None, transfer: Transfer | None = None, control_port: int = 21):
    return ActiveObs(probe, exchange=exchange, listen=("127.0.0.1", 50000), control_port=control_port,
                     transfer=transfer)


@pytest.mark.parametrize("observations, status, phrase", [
    ([active("port-own", said(PORT_OWN, 200, "PORT ok"))], "absent", "-> '200 PORT ok"),
    ([active("port-own", said(PORT_OWN, 500, "Illegal"))], "absent", "-> '500 Illegal"),
    ([active("port-own", silent(PORT_OWN, "reset"))], "present", "-> reset"),
    ([active("port-own", silent(PORT_OWN, "closed"))], "present", "-> closed"),
    ([active("port-own", silent(PORT_OWN))], "inconclusive", "-> timeout"),
    ([active("port-own", silent(PORT_OWN, "malformed"))], "inconclusive", "neither a reset"),
    ([active("port-own", None)], "inconclusive", "no command was sent"),
    ([active("port-own", said(PORT_OWN, 200, "ok")), active("eprt-own", said(EPRT_OWN, 200, "ok"))], "absent",
      "eprt-own: sent 'EPRT |1|127.0.0.1|50000|\\r\\n'"),
    ([active("port-own", said(PORT_OWN, 200, "ok")), active("eprt-own", silent(EPRT_OWN, "reset"))], "present",
      "eprt-own"),
    ([active("port-own", said(PORT_OWN, 200, "ok")), active("eprt-own", silent(EPRT_OWN))], "inconclusive",
      "timeout"),
    ([active("port-own", said(PORT_OWN, 200, "ok")), Failed("eprt-own", error="session reset", kind="reset")],
     "inconclusive", "probe eprt-own failed: session reset"),
    ([Skipped("port-own", reason="IPv6"), active("eprt-own", said(EPRT_OWN, 200, "ok"))], "absent", "eprt-own"),
    ([active("port-own", said(PORT_OWN, 200, "ok"),
             Transfer(silent(b"LIST\r\n", "reset"), expected=False))], "absent", "then LIST: sent 'LIST\\r\\n' -> reset"),
    ([Failed("port-own", error="x", kind="connect"), Failed("eprt-own", error="y", kind="connect")],
     "inconclusive", "probe port-own failed"),
    ([Skipped("port-own", reason="IPv6 peer")], "skipped", "IPv6 peer"),
    ([], "skipped", "not run"),
], ids=["port-200", "port-500", "port-reset", "port-closed", "port-timeout", "port-malformed", "no-command",
        "both-answered", "eprt-reset", "eprt-timeout", "eprt-failed", "port-skipped", "list-reset", "both-failed",
        "skipped", "not-run"])
def test_port_reset(observations, status, phrase):
    finding = run("server.port-reset", *observations)
    assert finding.status == status
    assert phrase in text(finding)


# -- active-mode source port ------------------------------------------------------

LIST_150 = said(b"LIST\r\n", 150, "Here comes the directory listing")


@pytest.mark.parametrize("obs, status, phrase", [
    (active("port-own", said(PORT_OWN, 200, "ok"), Transfer(LIST_150, True, True, ("192.0.2.10", 20), 120)),
     "absent", "port 20; RFC 959"),
    (active("port-own", said(PORT_OWN, 200, "ok"), Transfer(LIST_150, True, True, ("192.0.2.10", 2120), 9),
            control_port=2121), "absent", "2120"),
    (active("port-own", said(PORT_OWN, 200, "ok"), Transfer(LIST_150, True, True, ("192.0.2.10", 40123), 120)),
     "present", "port 40123"),
    (active("port-own", said(PORT_OWN, 200, "ok"), Transfer(LIST_150, True, False, error="accept timed out")),
     "inconclusive", "accept timed out"),
    (active("port-own", said(PORT_OWN, 200, "ok"), Transfer(said(b"LIST\r\n", 425, "Can't open"), False)),
     "inconclusive", "did not start a transfer"),
    (active("port-own", said(PORT_OWN, 200, "ok")), "inconclusive", "no LIST was sent"),
    (active("port-own", said(PORT_OWN, 500, "Illegal")), "inconclusive", "not accepted"),
    (active("port-own", silent(PORT_OWN)), "inconclusive", "-> timeout"),
    (active("port-own", silent(PORT_OWN, "reset")), "inconclusive", "-> reset"),
    (active("port-own", silent(PORT_OWN, "malformed")), "inconclusive", "-> malformed"),
    (active("port-own", None), "inconclusive", "no command was sent"),
    (Failed("port-own", error="login failed", kind="login"), "inconclusive", "probe port-own failed"),
    (Skipped("port-own", reason="IPv6 peer"), "skipped", "IPv6"),
], ids=["port-20", "control-port-2121", "other-port", "no-connection", "list-refused", "no-list", "port-refused",
        "timeout", "reset", "malformed", "no-command", "failed", "skipped"])
def test_active_source_port(obs, status, phrase):
    finding = run("server.active-source-port", obs)
    assert finding.status == status
    assert phrase in text(finding)


def test_active_source_port_not_run():
    assert run("server.active-source-port").status == "skipped"


# -- clear-text login -------------------------------------------------------------

AUTH = b"AUTH TLS\r\n"


@pytest.mark.parametrize("fields, status, phrase, auth_tls", [
    (dict(exchange=said(AUTH, 234, "Proceed"), feat_auth_tls=True, user="alice", anonymous=False,
          password_sent_in_clear=True), "present", "USER alice and its password were sent in clear text", "offered"),
    (dict(exchange=said(AUTH, 500, "Unknown"), user="alice", anonymous=False, password_sent_in_clear=True),
     "present", "refuses AUTH TLS", "refused"),
    (dict(exchange=silent(AUTH), user="alice", anonymous=False, password_sent_in_clear=True), "present",
     "unknown", "unknown"),
    (dict(exchange=silent(AUTH, "reset"), user="alice", anonymous=False, password_sent_in_clear=True), "present",
     "-> reset", "unknown"),
    (dict(exchange=said(AUTH, 500, "Unknown"), user="anonymous", anonymous=True, password_sent_in_clear=True),
     "absent", "a real user's password would cross the same way", "refused"),
    (dict(exchange=said(AUTH, 234, "Proceed"), feat_auth_tls=True, user="anonymous", anonymous=True,
          password_sent_in_clear=True), "absent", "offers AUTH TLS", "offered"),
    (dict(exchange=said(AUTH, 234, "Proceed"), user="alice", anonymous=False, password_sent_in_clear=False),
     "absent", "no session of this run sent a password", "offered"),
    (dict(exchange=silent(AUTH, "malformed"), user="anonymous", anonymous=True, password_sent_in_clear=False),
     "absent", "unknown", "unknown"),
    (dict(user="alice", anonymous=False, password_sent_in_clear=True), "present", "AUTH TLS was not sent", "unknown"),
], ids=["user-tls-offered", "user-tls-refused", "user-auth-timeout", "user-auth-reset", "anonymous-no-tls",
        "anonymous-tls-offered", "nothing-in-clear", "auth-malformed", "auth-not-sent"])
def test_cleartext_login(fields, status, phrase, auth_tls):
    finding = run("server.cleartext-login", AuthTlsObs("auth-tls", **fields))
    assert finding.status == status
    assert phrase in text(finding)
    assert finding.data["auth_tls"] == auth_tls
    if status == "present" and auth_tls != "offered":
        assert "enable AUTH TLS" in finding.advice
    if status == "absent" and auth_tls != "offered":
        assert "real users' passwords would cross in clear text" in finding.advice


def test_cleartext_login_judges_what_was_sent_not_the_user_name():
    # a user called "anonymous" that is not the anonymous login still exposed a password
    obs = AuthTlsObs("auth-tls", user="anonymous", anonymous=False, password_sent_in_clear=True)
    assert run("server.cleartext-login", obs).status == "present"


def test_cleartext_login_shared_outcomes():
    assert run("server.cleartext-login").status == "skipped"
    assert run("server.cleartext-login", Failed("auth-tls", error="x", kind="connect")).status == "inconclusive"


# -- LIST format ------------------------------------------------------------------

LIST_OK = said(b"LIST\r\n", 150, "Opening data connection")
WEIRD = (b"FILE1     DAT  12-JAN-2020 4 blocks", b"\x1b[1mBOLD\x1b[0m")


@pytest.mark.parametrize("fields, status, phrase", [
    (dict(list_exchange=LIST_OK, lines=10, bytes=600, style="unix"), "absent", "10 lines, 600 bytes, style unix"),
    (dict(list_exchange=LIST_OK, lines=10, bytes=600, style="dos"), "absent", "style dos"),
    (dict(list_exchange=LIST_OK, lines=3, bytes=90, style="none", unparseable=WEIRD, unparseable_count=3),
     "present", "unparseable line: '\\x1b[1mBOLD\\x1b[0m'"),
    (dict(list_exchange=LIST_OK, lines=3, bytes=90, style="none", unparseable=WEIRD, unparseable_count=3,
          mlsd=True), "absent", "MLSD offered in FEAT: yes"),
    (dict(list_exchange=LIST_OK, lines=3, bytes=90, style="none", unparseable=WEIRD, unparseable_count=3,
          timed_out=True), "present", "did not end within the timeout"),
    (dict(list_exchange=LIST_OK, lines=5, bytes=300, style="unix", timed_out=True), "inconclusive",
     "did not finish"),
    (dict(list_exchange=LIST_OK, lines=9000, bytes=1 << 20, style="unix", truncated=True), "absent",
     "read stopped at 1 MiB"),
    (dict(list_exchange=LIST_OK, lines=0), "inconclusive", "empty"),
    (dict(list_exchange=LIST_OK, lines=0, mlsd=True), "absent", "MLSD offered in FEAT: yes"),
    (dict(no_passive="227 names 10.0.0.5, connection timed out"), "inconclusive", "no passive data connection"),
    (dict(list_exchange=said(b"LIST\r\n", 550, "No such directory")), "inconclusive", "not answered with a transfer"),
    (dict(list_exchange=silent(b"LIST\r\n")), "inconclusive", "-> timeout"),
    (dict(list_exchange=silent(b"LIST\r\n", "reset")), "inconclusive", "-> reset"),
    (dict(list_exchange=silent(b"LIST\r\n", "malformed")), "inconclusive", "-> malformed"),
    (dict(), "inconclusive", "no command was sent"),
], ids=["unix", "dos", "unparseable", "unparseable-mlsd", "unparseable-partial", "timed-out", "truncated", "empty",
        "empty-mlsd", "no-passive", "list-refused", "list-timeout", "list-reset", "list-malformed", "no-command"])
def test_list_unparseable(fields, status, phrase):
    finding = run("server.list-unparseable", ListingObs("list-format", **fields))
    assert finding.status == status
    assert phrase in text(finding)


def test_list_unparseable_counts_lines_beyond_the_shown_ones():
    obs = ListingObs("list-format", list_exchange=LIST_OK, lines=40, style="none", unparseable=WEIRD,
                     unparseable_count=40)
    assert "40 unparseable lines in all" in run("server.list-unparseable", obs).evidence


def test_list_unparseable_shared_outcomes():
    assert run("server.list-unparseable").status == "skipped"
    assert run("server.list-unparseable", Failed("list-format", error="x", kind="login")).status == "inconclusive"


# -- session limit ----------------------------------------------------------------


@pytest.mark.parametrize("fields, status, phrase", [
    (dict(tried=8, accepted=3, refusal="421", refusal_text="421 Too many users, sorry"), "present",
     "session 4 was refused: 421 Too many users, sorry"),
    (dict(tried=8, held=1, accepted=2, refusal="too-many",
          refusal_text="530 Sorry, the maximum number of clients (2) from your host are already connected"),
     "present", "maximum number of clients"),
    (dict(tried=8, accepted=8), "absent", "no limit up to 8 sessions (the most this run opens)"),
    (dict(tried=8, accepted=4, refusal="timeout", refusal_text="no greeting in 5 s"), "inconclusive", "timed out"),
    (dict(tried=8, accepted=4, refusal="reset"), "inconclusive", "was reset"),
    (dict(tried=8, accepted=4, refusal="closed"), "inconclusive", "was closed"),
    (dict(tried=8, accepted=4, refusal="connect", refusal_text="connection refused"), "inconclusive",
     "could not connect"),
    (dict(tried=8, accepted=4, refusal="other-reply", refusal_text="530 Login incorrect"), "inconclusive",
     "530 Login incorrect"),
    (dict(tried=8, accepted=5), "inconclusive", "no refusal seen"),
    (dict(tried=12, held=1, accepted=3, refusal="too-many", refusal_text="530 Too many users", beside_data=True),
     "present", "may allow one session more"),
], ids=["421", "too-many", "all-accepted", "timeout", "reset", "closed", "connect", "other-reply", "short",
        "beside-a-data-connection"])
def test_connection_limit(fields, status, phrase):
    finding = run("server.connection-limit", SessionLimitObs("session-limit", **fields))
    assert finding.status == status
    assert phrase in text(finding)
    if status == "present":
        assert finding.data["limit"] == fields["accepted"]


def test_connection_limit_shared_outcomes():
    assert run("server.connection-limit").status == "skipped"
    assert run("server.connection-limit", Failed("session-limit", error="x", kind="connect")).status == "inconclusive"


# -- every rule: its docstring and declarations -------------------------------------

SERVER_RULES = [q for q, r in RULES.items() if r.decide.__module__ == server.__name__]


def test_this_module_decides_exactly_its_ids():
    assert set(SERVER_RULES) == {
        "server.epsv-unsupported", "server.port-foreign-accepted", "server.port-reset", "server.active-source-port",
        "server.cleartext-login", "server.list-unparseable", "server.connection-limit", "server.bare-lf-rejected",
        "server.case-sensitive", "server.psw-alias", "server.space-lf-rejected", "server.cr-rejected",
        "server.trailing-space-rejected", "server.split-rejected"}


@pytest.mark.parametrize("quirk", SERVER_RULES)
def test_every_rule_has_a_decision_table(quirk):
    doc = RULES[quirk].decide.__doc__ or ""
    assert "=====" in doc and "status" in doc
    for row in ("not run", "failed", "(shared)"):
        assert row in doc, row
    if RULES[quirk].baseline:
        assert "baseline failed" in doc


# -- the integration check: catalog and rules agree -------------------------------


def test_catalog_and_rules_agree():
    """Every probe a rule reads exists; every id a probe decides has exactly one rule, which reads that probe;
    every rule decides an id some probe names.  Passes once every vantage's rules exist."""
    catalog = {p.name: p for p in load_catalog()}
    for quirk, rule_ in RULES.items():
        for name in rule_.reads + ((rule_.baseline,) if rule_.baseline else ()):
            assert name in catalog, f"rule {quirk} reads {name}, which is not in the probe catalog"
    for probe in catalog.values():
        for quirk in probe.decides:
            assert quirk in RULES, f"probe {probe.name} decides {quirk}, which no rule decides"
            assert probe.name in RULES[quirk].reads, f"probe {probe.name} decides {quirk}, whose rule does not read it"
    decided = {q for p in catalog.values() for q in p.decides}
    assert set(RULES) <= decided, f"rules no probe names: {sorted(set(RULES) - decided)}"
