"""Output for people: progress on a terminal only, text that fits 80 columns, no Python reprs."""

import os
import pty
import re
import select
import subprocess
import sys

from conftest import run_cli


def _run_with_terminal_stderr(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal (stdout a pipe, as under a pager)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "ftpprobe", *args], stdout=subprocess.PIPE,
                            stderr=slave, env={**os.environ, "COLUMNS": "80"})
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            proc.kill()
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    out = proc.stdout.read().decode()
    proc.wait(timeout)
    os.close(master)
    return proc.returncode, out, b"".join(chunks).decode(errors="replace")


def test_progress_bar_on_a_terminal_and_nothing_under_cron(pyftpd):
    server = pyftpd(passive_ports=(55000, 55099))
    code, out, err = _run_with_terminal_stderr("map-pasv", "--samples", "120", "--timeout", "2", server.url)
    assert code in (0, 1), out + err
    assert re.search(r"passive samples.*120/120", err), err
    assert out.startswith(("OK:", "WARNING:"))
    # Not a terminal (cron, a pipe): no progress at all; --json: only JSON on stdout.
    done = run_cli("map-pasv", "--samples", "40", "--timeout", "2", server.url)
    assert done.stderr == ""
    code, out, err = _run_with_terminal_stderr("map-pasv", "--json", "--samples", "40", "--timeout", "2",
                                               server.url)
    assert "passive samples" not in err and out.lstrip().startswith("{")


def test_report_fits_80_columns_without_python_reprs(pyftpd):
    server = pyftpd(passive_ports=(55100, 55109))
    done = run_cli("probe", "--timeout", "1.5", "-v", server.url, env={**os.environ, "COLUMNS": "80"})
    lines = done.stdout.splitlines()
    assert lines[0].startswith(("OK:", "WARNING:"))
    assert max(len(line) for line in lines) <= 80, max(lines, key=len)
    assert not re.search(r"\[['\d]|None\b|b'", done.stdout), done.stdout


def test_fingerprint_without_a_reflector_says_how_to_start_one():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        done = run_cli("fingerprint", "--timeout", "1", f"127.0.0.1:{port}")
    assert done.returncode == 3
    assert "ftpprobe reflect --listen 0.0.0.0" in done.stdout


def test_probe_catalog_listing_fits_80_columns():
    done = run_cli("probes", env={**os.environ, "COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "  pasv-space-lf" in lines and "Through a reflector (fingerprint):" in lines
