"""Real Debian FTP servers for the tests: vsftpd 3.0.3 and pure-ftpd 1.0.50.

They conflict as installed packages, so the binaries are fetched with
``apt-get download`` and unpacked with ``dpkg -x`` into ``tests/.peers/``
(cached between runs), then started on loopback with their own config and a
known passive range.  Needs root (pure-ftpd's anonymous account is the
system user ``ftp``, created here if missing) and apt access; callers skip
with the reason otherwise.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PEERS = Path(__file__).parent / ".peers"
PACKAGES = {"vsftpd": "usr/sbin/vsftpd", "pure-ftpd": "usr/sbin/pure-ftpd"}


class Unavailable(Exception):
    """The server cannot run here; the message is the skip reason."""


def binary(package: str) -> Path:
    """Path of the unpacked binary, downloading the .deb once."""
    path = PEERS / "root" / PACKAGES[package]
    if path.exists():
        return path
    if not shutil.which("apt-get") or not shutil.which("dpkg"):
        raise Unavailable("apt-get/dpkg not found (Debian-based machine needed)")
    PEERS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        got = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
        if got.returncode:
            raise Unavailable(f"apt-get download {package} failed: {got.stderr.strip()[-200:]}")
        for deb in Path(tmp).glob("*.deb"):
            os.chmod(tmp, 0o755)
            subprocess.run(["dpkg", "-x", str(deb), str(PEERS / "root")], check=True)
    if not path.exists():
        raise Unavailable(f"{package}: {PACKAGES[package]} not in the package")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(host: str, port: int, proc: subprocess.Popen, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Unavailable(f"server exited with {proc.returncode}: {proc.stdout.read().decode(errors='replace')[-300:]}")
        try:
            socket.create_connection((host, port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise Unavailable(f"server did not listen on {host}:{port} within {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    """End a server process: terminate, and kill it if it is not gone within 5 s."""
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()


class DebianServer:
    """Start ``vsftpd`` or ``pure-ftpd`` on ``host`` with passive range
    ``pasv`` (inclusive) and at most ``max_clients`` sessions."""

    def __init__(self, package: str, pasv: tuple[int, int], max_clients: int = 10, host: str = "127.0.0.1",
                 netns: str | None = None, port: int | None = None, extra: dict | None = None) -> None:
        if os.geteuid() != 0:
            raise Unavailable(f"{package} needs root here (anonymous account, chroot)")
        self.package, self.pasv, self.max_clients, self.host = package, pasv, max_clients, host
        self.netns, self.extra = netns, extra or {}
        self.port = port or free_port()

    def __enter__(self) -> "DebianServer":
        exe = binary(self.package)
        self.dir = tempfile.TemporaryDirectory(prefix=f"ftpprobe-{self.package}-")
        root = Path(self.dir.name)
        home = root / "home"
        home.mkdir()
        (home / "readme.txt").write_text("hello from a real server\n")
        os.chmod(root, 0o755)
        os.chmod(home, 0o755)
        if self.package == "vsftpd":
            (root / "empty").mkdir()
            conf = {
                "listen": "YES", "listen_address": self.host, "listen_port": self.port,
                "background": "NO", "run_as_launching_user": "YES", "seccomp_sandbox": "NO",
                "anonymous_enable": "YES", "no_anon_password": "YES", "anon_root": home,
                "local_enable": "NO", "write_enable": "NO", "xferlog_enable": "NO",
                "pasv_enable": "YES", "pasv_min_port": self.pasv[0], "pasv_max_port": self.pasv[1],
                "secure_chroot_dir": root / "empty", "connect_from_port_20": "NO",
                "max_clients": self.max_clients, **self.extra,
            }
            (root / "vsftpd.conf").write_text("".join(f"{k}={v}\n" for k, v in conf.items()))
            cmd = [str(exe), str(root / "vsftpd.conf")]
        else:
            if subprocess.run(["id", "ftp"], capture_output=True).returncode:
                subprocess.run(["useradd", "-r", "-M", "-d", str(PEERS), "-s", "/usr/sbin/nologin", "ftp"],
                               check=True, capture_output=True)
            subprocess.run(["usermod", "-d", str(home), "ftp"], check=True, capture_output=True)
            cmd = [str(exe), "-S", f"{self.host},{self.port}", "-p", f"{self.pasv[0]}:{self.pasv[1]}",
                   "-e", "-A", "-H", "-c", str(self.max_clients), "-C", str(self.max_clients)]
            # -H: no reverse DNS of clients (inside a namespace it would time out)
            if "masquerade" in self.extra:
                cmd += ["-P", self.extra["masquerade"]]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if not self.netns:
            wait_listening(self.host, self.port, self.proc)
        else:
            time.sleep(0.5)
        return self

    def __exit__(self, *exc) -> None:
        stop(self.proc)
        self.dir.cleanup()

    @property
    def url(self) -> str:
        return f"ftp://{self.host}:{self.port}/"
