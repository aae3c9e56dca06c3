"""Deadlines that mean what they say, and resets at any moment (issue: runs right
when peers misbehave).  Real peers: the scriptable hostile server and pyftpdlib."""

import time

import pytest
import trio

from ftpprobe.catalog import load_catalog
from ftpprobe.runner import run_probes
from ftpprobe.target import Target

from conftest import run_cli
from hostile import HostileServer

TIMEOUT = 1.5


def _target(server) -> Target:
    return Target(server.host, server.port)


@pytest.mark.parametrize("scenario, phase", [
    ("greets-late", "preflight (connect, greeting, login)"),     # the greeting comes after the deadline
    ("silent-after-greeting", "preflight (connect, greeting, login)"),  # USER is never answered
])
async def test_deadline_before_greeting_and_login_fails_the_run(scenario, phase):
    with HostileServer(scenario, late=5) as server:
        started = time.monotonic()
        report = await run_probes(_target(server), timeout=5, deadline=1.0)
        elapsed = time.monotonic() - started
    assert report.error == f"run deadline of 1 s passed during the {phase}"
    assert report.exit_code == 3
    assert report.findings == []
    assert elapsed < 2.5


async def test_deadline_during_the_probes_fails_the_run_and_keeps_what_was_decided(pyftpd):
    server = pyftpd(passive_ports=(53000, 53999))
    probes = [p for p in load_catalog(vantage="server") if p.name in ("epsv", "pasv-map")]
    report = await run_probes(Target(server.host, server.port, server.user, server.password),
                              probes=probes, timeout=TIMEOUT, deadline=2.0, samples=100000)
    assert report.exit_code == 3
    assert report.error.startswith("run deadline of 2 s passed during the probes; unfinished: pasv-map")
    f = {x.id: x for x in report.findings}
    assert f["server.epsv-unsupported"].status == "absent"   # decided before the deadline
    assert f["server.pasv-range"].status == "inconclusive"    # cut short: never "absent"
    assert "deadline" in f["server.pasv-range"].evidence[0]


def test_check_site_deadline_before_login_is_critical():
    with HostileServer("silent-after-greeting") as server:
        done = run_cli("check", "--site-deadline", "1", "--timeout", "5", server.url, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout.startswith("FTPPROBE CRITICAL"), done.stdout
    assert "deadline" in done.stdout
    assert "Traceback" not in done.stderr


async def test_reset_after_227_or_229_gives_inconclusive_with_the_reset_as_evidence():
    with HostileServer("reset-after-pasv") as server:
        with trio.fail_after(60):
            report = await run_probes(_target(server), timeout=TIMEOUT, samples=4)
    assert report.error == ""
    f = {x.id: x for x in report.findings}
    # PASV answered, then reset: the variant rules compare accepted replies, so they still decide ...
    assert f["server.bare-lf-rejected"].status in ("present", "absent")
    # ... while a rule that needed the session after the reply says what happened.
    listing = f["server.list-unparseable"]
    assert listing.status == "inconclusive"
    assert any("reset" in line or "closed" in line for line in listing.evidence), listing.evidence


async def test_reset_in_the_middle_of_a_multiline_reply():
    with HostileServer("reset-mid-multiline") as server:
        with trio.fail_after(60):
            report = await run_probes(_target(server), timeout=TIMEOUT, samples=4)
    assert report.error == ""
    f = {x.id: x for x in report.findings}
    epsv = f["server.epsv-unsupported"]
    assert epsv.status == "inconclusive", epsv
    assert "reset" in " ".join(epsv.evidence)
    assert f["server.port-reset"].status == "present"  # PORT answered by a reset


def test_reset_after_port_from_the_command_line_is_a_finding_not_a_crash():
    with HostileServer("reset-after-port") as server:
        done = run_cli("probe", "--json", "--timeout", str(TIMEOUT), "--samples", "2", server.url, timeout=60)
    assert "Traceback" not in done.stderr
    assert '"server.port-reset"' in done.stdout
