"""Router fingerprints in health checks: a site that names a reflector gets the
fingerprint, the baseline records it, and a changed ALG shows as change.alg-changed.

Real peers: pyftpdlib as the site, a real reflector, emulated middleboxes in
front of it as two router "firmwares"."""

import trio

from ftpprobe.fleet import Site, baseline_entry, check_sites, compare_baseline
from ftpprobe.middlebox import Middlebox
from ftpprobe.reflector import Reflector
from ftpprobe.target import Target


async def _check_through(pyftpd_server, personalities):
    """One check of the site whose reflector sits behind a middlebox with ``personalities``."""
    async with trio.open_nursery() as nursery:
        main, _other = await nursery.start(Reflector("127.0.0.1", (0, 0)).serve)
        port = await nursery.start(Middlebox("127.0.0.1", main, personalities).serve)
        site = Site("shop", Target(pyftpd_server.host, pyftpd_server.port), timeout=1.0, samples=4,
                    reflector=f"127.0.0.1:{port}")
        [result] = await check_sites([site], site_deadline=60)
        nursery.cancel_scope.cancel()
    return result


def _baseline(result):
    return {"format": "ftpprobe-baseline", "version": 1, "saved": "yesterday",
            "sites": {"shop": baseline_entry(result)}}


async def test_a_changed_alg_is_reported_and_an_unchanged_one_is_not(pyftpd):
    server = pyftpd(passive_ports=(56000, 56009))
    with trio.fail_after(120):
        before = await _check_through(server, ("canonical-port",))
        assert before.router is not None and not before.router.error
        baseline = _baseline(before)
        recorded = baseline["sites"]["shop"]["fingerprint"]
        assert recorded["alg-port-crlf"] == "rewritten"

        same = await _check_through(server, ("canonical-port",))
        assert [c.id for c in compare_baseline(same, baseline)] == []

        after = await _check_through(server, ())  # "firmware update": the ALG is gone
        changes = {c.id: c for c in compare_baseline(after, baseline)}
    change = changes["change.alg-changed"]
    assert change.status == "present"
    assert "alg-port-crlf: rewritten at the baseline of yesterday, passed now" in change.evidence
