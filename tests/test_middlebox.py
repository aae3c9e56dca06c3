"""Emulated middleboxes (fast, loopback, no root) between the prober and a real reflector."""


from ftpprobe.middlebox import Middlebox
from ftpprobe.reflector import Reflector
from ftpprobe.runner import run_probes
from ftpprobe.target import Target


async def fingerprint_through(nursery, personalities, journal=None):
    reflector = Reflector("127.0.0.1", (0, 0), journal=journal)
    main, other = await nursery.start(reflector.serve)
    box = Middlebox("127.0.0.1", main, personalities)
    port = await nursery.start(box.serve)
    other_box = Middlebox("127.0.0.1", other, ())
    other_port = await nursery.start(other_box.serve)
    report = await run_probes(Target("127.0.0.1", port), timeout=1.5, vantage="reflector", other_port=other_port)
    return {f.id: f for f in report.findings}, report


async def test_stall_after_space_lf(nursery):
    f, report = await fingerprint_through(nursery, ("stall-space-lf",))
    assert f["alg.stall.space-lf"].status == "present"
    assert "stalled" in " ".join(f["alg.stall.space-lf"].evidence)
    assert f["alg.stall.bare-lf"].status == "absent"  # 'PASV\n' without the space passes
    assert f["nat.present"].status == "present"       # the box connects from 127.0.0.2
    nursery.cancel_scope.cancel()


async def test_psw_mangle(nursery):
    f, report = await fingerprint_through(nursery, ("psw",))
    assert f["alg.pasv-mangle"].status == "present"
    assert "reflector received 'P@SW\\r\\n'" in " ".join(f["alg.pasv-mangle"].evidence)
    nursery.cancel_scope.cancel()


async def test_canonical_port_rewrite_with_working_pinhole(nursery, tmp_path):
    f, report = await fingerprint_through(nursery, ("canonical-port",), journal=str(tmp_path / "j"))
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
    nursery.cancel_scope.cancel()
