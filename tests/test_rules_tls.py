"""The FTPS rules' decision tables (ftpprobe/rules/tls.py), row by row, on
constructed observations: no network."""

import time

import pytest

from ftpprobe.codec import Reply
from ftpprobe.observations import (AuthTlsObs, CertificateInfo, DataOutcome, Exchange, Failed, TlsHandshake, TlsObs,
                                   TlsTransfer, TlsVersionOutcome, TlsVersionsObs)
from ftpprobe.rules import RULES, RunFacts, decide
from ftpprobe.rules.tls import certificate_problems, name_matches

NOW = 1_800_000_000.0
DAY = 86400.0
PUBLIC, PRIVATE = "203.0.113.1", "192.168.1.10"


def reply(code: int, text: str = "OK") -> Reply:
    line = f"{code} {text}".encode()
    return Reply(code, (line,), line + b"\r\n")


def ex(sent: bytes, code: int | None, text: str = "", outcome: str = "reply") -> Exchange:
    r = reply(code, text) if code is not None else None
    return Exchange(sent=sent, outcome=outcome if code is None else "reply", reply=r)


def pasv(address: str, port: int) -> Exchange:
    h = address.replace(".", ",")
    return ex(b"PASV\r\n", 227, f"Entering Passive Mode ({h},{port >> 8},{port & 255})")


def cert(**kw) -> CertificateInfo:
    base = dict(subject="CN=203.0.113.1", issuer="CN=test CA", names=(PUBLIC,), not_before=NOW - 10 * DAY,
                not_after=NOW + 90 * DAY, key_type="EC secp256r1", key_bits=256, signature_hash="sha256",
                self_signed=False, fingerprint="ab" * 32)
    return CertificateInfo(**{**base, **kw})


def transfer(address=PRIVATE, port=30005, connected=True, reused=True, final=226, reuse=True) -> TlsTransfer:
    return TlsTransfer(passive=pasv(address, port), advertised=(address, port),
                       data=DataOutcome(PUBLIC, port, connected, error="" if connected else "connection refused"),
                       reuse_offered=reuse,
                       handshake=TlsHandshake(True, version="TLSv1.3") if connected else None,
                       session_reused=reused if connected else None,
                       list_exchange=ex(b"LIST\r\n", 150, "Here comes the listing") if connected else None,
                       final=reply(final, "done") if connected and final else None)


def tls_obs(**kw) -> TlsObs:
    base = dict(mode="explicit", host=PUBLIC, observed_at=NOW, clear_passive=pasv(PUBLIC, 30001),
                clear_advertised=(PUBLIC, 30001), clear_data=DataOutcome(PUBLIC, 30001, True),
                auth=ex(b"AUTH TLS\r\n", 234, "Proceed"), handshake=TlsHandshake(True, version="TLSv1.3",
                                                                                 verified=True),
                certificate=cert(), login_in_tls=True, transfer=transfer(),
                no_reuse=transfer(port=30007, reused=False, final=522, reuse=False))
    return TlsObs("tls", **{**base, **kw})


def run(quirk: str, *observations, warn_days: int = 14):
    obs = {o.probe: o for o in observations}
    return decide(RULES[quirk], obs, RunFacts(peer=PUBLIC, cert_warn_days=warn_days))


# -- server.pasv-relies-on-alg -------------------------------------------------------


@pytest.mark.parametrize("label, observation, status", [
    ("not run", None, "skipped"),
    ("probe failed", Failed("tls", error="connect refused", kind="connect"), "inconclusive"),
    ("AUTH TLS refused", tls_obs(auth=ex(b"AUTH TLS\r\n", 530, "no"), handshake=None, transfer=None), "skipped"),
    ("AUTH TLS timeout", tls_obs(auth=ex(b"AUTH TLS\r\n", None, outcome="timeout"), handshake=None), "inconclusive"),
    ("handshake failed", tls_obs(handshake=TlsHandshake(False, alert="X", error="control: TLS handshake failed: X"),
                                 transfer=None), "inconclusive"),
    ("implicit: no plain session", tls_obs(mode="implicit", auth=None, clear_skipped="implicit FTPS",
                                           clear_passive=None, clear_advertised=None, clear_data=None), "skipped"),
    ("plain PASV refused", tls_obs(clear_passive=ex(b"PASV\r\n", 500), clear_advertised=None, clear_data=None),
     "inconclusive"),
    ("plain 229 only", tls_obs(clear_advertised=(None, 30001)), "skipped"),
    ("session stopped before PASV", tls_obs(transfer=None, stopped="login refused"), "inconclusive"),
    ("PASV inside TLS timed out", tls_obs(transfer=TlsTransfer(passive=ex(b"PASV\r\n", None, outcome="timeout"))),
     "inconclusive"),
    ("same address", tls_obs(transfer=transfer(address=PUBLIC)), "absent"),
    ("different address", tls_obs(), "present"),
])
def test_pasv_relies_on_alg_table(label, observation, status):
    f = run("server.pasv-relies-on-alg", *([observation] if observation else []))
    assert f.status == status, (label, f.evidence)


def test_pasv_relies_on_alg_evidence_and_advice():
    f = run("server.pasv-relies-on-alg", tls_obs())
    assert "in clear text the 227 names 203.0.113.1, inside TLS 192.168.1.10" in " ".join(f.evidence)
    assert "announce 203.0.113.1" in f.advice and "private address" in f.advice
    assert f.data == {"clear": PUBLIC, "tls": PRIVATE}


# -- server.tls-data-unreachable ---------------------------------------------------------


@pytest.mark.parametrize("label, observation, status", [
    ("AUTH TLS refused", tls_obs(auth=ex(b"AUTH TLS\r\n", 502, "no"), handshake=None), "skipped"),
    ("no plain session", tls_obs(clear_skipped="a password would cross", clear_data=None), "skipped"),
    ("no plain data tried", tls_obs(clear_data=None), "inconclusive"),
    ("plain data fails too", tls_obs(clear_data=DataOutcome(PUBLIC, 30001, False, "timed out")), "inconclusive"),
    ("no TLS data tried", tls_obs(transfer=None, no_reuse=None, stopped="PROT P refused"), "inconclusive"),
    ("TLS data refused", tls_obs(transfer=transfer(connected=False), no_reuse=None), "present"),
    ("second TLS data refused", tls_obs(no_reuse=transfer(port=30009, connected=False)), "present"),
    ("TLS data connected", tls_obs(), "absent"),
])
def test_tls_data_unreachable_table(label, observation, status):
    f = run("server.tls-data-unreachable", observation)
    assert f.status == status, (label, f.evidence)
    if status == "present":
        assert "forward the server's whole passive range" in f.advice


# -- server.tls-certificate ----------------------------------------------------------------


def refused(code, message):
    return TlsHandshake(False, verify_code=code, verify_message=message,
                        error=f"control: the server's certificate was refused: {message}")


@pytest.mark.parametrize("label, observation, status, kinds, severity", [
    ("AUTH TLS refused", tls_obs(auth=ex(b"AUTH TLS\r\n", 534, "no"), handshake=None), "skipped", None, None),
    ("handshake timeout", tls_obs(handshake=TlsHandshake(False, error="TLS handshake: no answer within 5 s"),
                                  certificate=None), "inconclusive", None, None),
    ("no certificate", tls_obs(certificate=None), "inconclusive", None, None),
    ("expired", tls_obs(handshake=refused(10, "certificate has expired"), unverified=TlsHandshake(True),
                        certificate=cert(not_after=NOW - 3 * DAY)), "present", ["expired"], "critical"),
    ("not yet valid", tls_obs(handshake=refused(9, "certificate is not yet valid"), unverified=TlsHandshake(True),
                              certificate=cert(not_before=NOW + DAY)), "present", ["not-yet-valid"], "critical"),
    ("other name", tls_obs(handshake=refused(64, "IP address mismatch"), unverified=TlsHandshake(True),
                           certificate=cert(names=("ftp.example.net",))), "present", ["other-name"], "warning"),
    ("self-signed", tls_obs(handshake=refused(18, "self-signed certificate"), unverified=TlsHandshake(True),
                            certificate=cert(self_signed=True, issuer="CN=203.0.113.1")),
     "present", ["self-signed"], "warning"),
    ("untrusted CA", tls_obs(handshake=refused(20, "unable to get local issuer certificate"),
                             unverified=TlsHandshake(True)), "present", ["untrusted"], "warning"),
    ("weak RSA key", tls_obs(certificate=cert(key_type="RSA", key_bits=1024)), "present", ["weak-key"], "warning"),
    ("SHA-1 signature", tls_obs(certificate=cert(signature_hash="sha1")), "present", ["weak-signature"], "warning"),
    ("expires in 5 days", tls_obs(certificate=cert(not_after=NOW + 5 * DAY)), "present", ["expires-soon"],
     "warning"),
    ("fine", tls_obs(), "absent", None, None),
])
def test_tls_certificate_table(label, observation, status, kinds, severity):
    f = run("server.tls-certificate", observation)
    assert f.status == status, (label, f.evidence)
    if kinds:
        assert f.data["problems"] == kinds
        assert f.severity == severity
    if status in ("present", "absent"):
        text = "\n".join(f.evidence)
        for field in ("subject: CN=", "issuer: CN=", "names: ", "valid from "):
            assert field in text


def test_certificate_warn_days_is_the_callers():
    observation = tls_obs(certificate=cert(not_after=NOW + 20 * DAY))
    assert run("server.tls-certificate", observation).status == "absent"
    assert run("server.tls-certificate", observation, warn_days=30).status == "present"


def test_name_matching():
    assert name_matches("203.0.113.1", ("203.0.113.1",))
    assert not name_matches("203.0.113.1", ("ftp.example.net",))
    assert name_matches("ftp.example.net", ("*.example.net",))
    assert not name_matches("a.b.example.net", ("*.example.net",))
    assert not name_matches("ftp.example.net", ("203.0.113.1",))
    assert certificate_problems(cert(), PUBLIC, NOW) == []


# -- server.tls-protocol ---------------------------------------------------------------------


def versions(**outcomes) -> TlsVersionsObs:
    names = {"v10": "TLSv1", "v11": "TLSv1.1", "v12": "TLSv1.2", "v13": "TLSv1.3"}
    return TlsVersionsObs("tls-versions", versions=tuple(TlsVersionOutcome(names[k], v) for k, v in outcomes.items()))


MODERN = dict(v10="refused", v11="refused", v12="accepted", v13="accepted")
NOT_DEMANDED = tls_obs(no_reuse=transfer(port=30007, reused=False, final=226, reuse=False))


@pytest.mark.parametrize("label, observations, status", [
    ("neither run", (), "skipped"),
    ("no TLS", (versions(v10="no-tls", v11="no-tls", v12="no-tls", v13="no-tls"),), "skipped"),
    ("TLS 1.0 accepted", (versions(**{**MODERN, "v10": "accepted"}), NOT_DEMANDED), "present"),
    ("reuse demanded", (versions(**MODERN), tls_obs()), "present"),
    ("a version timed out", (versions(**{**MODERN, "v11": "timeout"}), NOT_DEMANDED), "inconclusive"),
    ("a version reset", (versions(**{**MODERN, "v10": "reset"}),), "inconclusive"),
    ("modern, reuse not demanded", (versions(**MODERN), NOT_DEMANDED), "absent"),
    ("modern, versions only", (versions(**MODERN),), "absent"),
    ("reuse not demanded, no scan", (NOT_DEMANDED,), "absent"),
    ("second transfer timed out", (versions(**MODERN), tls_obs(no_reuse=TlsTransfer(
        passive=pasv(PRIVATE, 30007), advertised=(PRIVATE, 30007), data=DataOutcome(PUBLIC, 30007, True),
        reuse_offered=False, handshake=TlsHandshake(False, error="data: TLS handshake: no answer within 5 s"),
        list_exchange=ex(b"LIST\r\n", 150), final_error="no complete reply within 5 s"))), "absent"),
])
def test_tls_protocol_table(label, observations, status):
    f = run("server.tls-protocol", *observations)
    assert f.status == status, (label, f.evidence)


def test_tls_protocol_evidence():
    f = run("server.tls-protocol", versions(**{**MODERN, "v11": "accepted"}), tls_obs())
    assert f.severity == "warning" and f.data["reuse_demanded"] is True and "TLSv1.1" in f.advice
    assert f.evidence[:2] == ["session reuse demanded on data connections", "old versions accepted: TLSv1.1"]
    assert "522" in f.advice
    timed_out = run("server.tls-protocol", versions(**MODERN), tls_obs(no_reuse=None))
    assert "whether session reuse is demanded was not decided" in timed_out.evidence


# -- server.cleartext-login: the login inside TLS -------------------------------------------


def test_cleartext_login_absent_when_the_login_went_inside_tls():
    obs = AuthTlsObs("auth-tls", exchange=ex(b"AUTH TLS\r\n", 234, "Proceed"), feat_auth_tls=True, user="alice",
                     anonymous=False, password_sent_in_clear=False, password_sent_in_tls=True, tls_mode="explicit")
    f = run("server.cleartext-login", obs)
    assert f.status == "absent" and f.advice == ""
    assert f.evidence[0] == "the login (USER alice) went inside TLS (RFC 4217 §4)"
    clear = AuthTlsObs("auth-tls", exchange=ex(b"AUTH TLS\r\n", 234, "Proceed"), user="alice", anonymous=False,
                       password_sent_in_clear=True, password_sent_in_tls=True)
    assert run("server.cleartext-login", clear).status == "present"  # one clear login is enough
