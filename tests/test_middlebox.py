"""Emulated middleboxes (fast, loopback, no root) between the prober and a real reflector."""

from ftpprobe.demo import emulated_router_fingerprint


async def fingerprint_through(personalities):
    """The router fingerprint through a middlebox with ``personalities`` in front of
    a real reflector (the demo's own set-up): (findings by id, report)."""
    report = await emulated_router_fingerprint(personalities, timeout=1.5)
    return {f.id: f for f in report.findings}, report


async def test_stall_after_space_lf():
    f, report = await fingerprint_through(("stall-space-lf",))
    assert f["alg.stall.space-lf"].status == "present"
    assert "held back by a middlebox" in " ".join(f["alg.stall.space-lf"].evidence)  # a proven stall
    assert f["alg.stall.bare-lf"].status == "absent"  # 'PASV\n' without the space passes
    assert f["nat.present"].status == "present"       # the box connects from 127.0.0.2


async def test_psw_mangle():
    f, report = await fingerprint_through(("psw",))
    assert f["alg.pasv-mangle"].status == "present"
    assert "reflector received 'P@SW\\r\\n'" in " ".join(f["alg.pasv-mangle"].evidence)


async def test_canonical_port_rewrite_with_working_pinhole():
    f, report = await fingerprint_through(("canonical-port",))
    assert f["alg.port-rewrite"].status == "present"
    assert f["alg.port-remap"].status == "present"        # the box allocates its own port
    assert f["alg.canonicalizes"].status == "present"     # 'port ... ' arrives as 'PORT ...\r\n'
    assert f["alg.case-sensitive"].status == "absent"
    assert f["alg.foreign-ignored"].status == "present"
    assert f["path.active-blocked"].status == "absent"    # the pinhole forwarded the data connection
    assert f["nat.no-alg"].status == "absent"
    rows = {r["probe"]: r for r in report.fingerprint}
    assert rows["alg-port-lowercase"]["outcome"] == "rewritten"
    assert rows["alg-port-lowercase"]["arrived"].startswith("PORT 127,0,0,2,")
    assert rows["alg-port-lf"]["arrived"].endswith("\\r\\n")


# -- implementation personalities: the fingerprint names each family (alg.implementation) --


async def test_libalias_personality_is_named_libalias():
    f, _ = await fingerprint_through(("libalias",))
    impl = f["alg.implementation"]
    assert impl.status == "present" and impl.data["implementation"] == "libalias", impl.evidence
    # ParseFtpPortCommand looks only at the start of a packet; NewFtpMessage drops the rest of it.
    assert f["alg.pipeline-blind"].status == "present"
    assert "alg-port-then-noop" in impl.data["agree"] and "alg-port-low" in impl.data["agree"]


async def test_userland_proxy_personality_is_named_a_proxy():
    f, _ = await fingerprint_through(("userland-proxy",))
    impl = f["alg.implementation"]
    assert impl.status == "present" and impl.data["implementation"] == "userland-proxy", impl.evidence
    assert "alg-tcp-identity" in impl.data["agree"]  # its own TCP connection: another MSS at the reflector
    assert f["alg.pipeline-blind"].status == "absent"  # whole lines: the pipelined PORT is rewritten too


async def test_strict_firewall_personality_is_named_strict():
    f, _ = await fingerprint_through(("strict-firewall",))
    impl = f["alg.implementation"]
    assert impl.status == "present" and impl.data["implementation"] == "strict-firewall", impl.evidence
    assert "alg-syst" in impl.data["agree"]  # the SYST reply masked with X
    assert f["alg.pipeline-blind"].status == "inconclusive"  # closed, never judged


async def test_plain_nat_is_no_alg_and_a_mix_is_unknown():
    f, _ = await fingerprint_through(())
    assert f["alg.implementation"].status == "absent"
    assert f["alg.implementation"].data["implementation"] == "none"
    f, _ = await fingerprint_through(("strict-firewall", "userland-proxy"))
    assert f["alg.implementation"].status == "inconclusive"
    assert f["alg.implementation"].data["implementation"] == "unknown"
    assert f["alg.implementation"].evidence[0].startswith("unknown: no signature matches well")
