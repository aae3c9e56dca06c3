import json
import subprocess
import sys

import pytest

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


def findings_by_id(report: dict) -> dict[str, dict]:
    return {f["id"]: f for f in report["findings"]}


def run_json(*args: str, **kw) -> tuple[int, dict]:
    done = run_cli(*args, "--json", **kw)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)
