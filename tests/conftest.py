import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Subprocesses (the CLI, servers in network namespaces) run this checkout's
# code, not whatever version of ftpprobe is installed.
ROOT = str(Path(__file__).resolve().parent.parent)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)

from ftpprobe.demo import PyftpdlibServer


@pytest.fixture
def pyftpd():
    """A factory of real pyftpdlib servers on loopback, stopped after the test."""
    servers = []

    def start(**options) -> PyftpdlibServer:
        server = PyftpdlibServer(**options).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)


def run_cli(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m ftpprobe ARGS`` as a user would; never longer than ``timeout``."""
    return subprocess.run([sys.executable, "-m", "ftpprobe", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def drawn(passive: dict, wanted: int) -> bool:
    """A pasv-map collected its ``wanted`` samples: one more per session when a
    raced data connection failed (not counted, its verb asked again unraced)."""
    return wanted <= passive["samples"] <= wanted + passive["sessions"]


def findings_by_id(report: dict) -> dict[str, dict]:
    return {f["id"]: f for f in report["findings"]}


def run_json(*args: str, **kw) -> tuple[int, dict]:
    done = run_cli(*args, "--json", **kw)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)
