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
