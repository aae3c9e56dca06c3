"""FTPS peers for the tests: a test CA made during the run (``cryptography``),
and vsftpd, pure-ftpd and proftpd from Debian with TLS on.

vsftpd and pure-ftpd come through :mod:`peers` (``apt-get download`` +
``dpkg -x``); proftpd needs ``proftpd-core``, its TLS module
(``proftpd-mod-crypto``) and four libraries the machine may lack, all
unpacked into ``tests/.peers/proftpd/`` and run with ``LD_LIBRARY_PATH``.
Callers skip with the reason (:class:`peers.Unavailable`) where a server
cannot run.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from peers import PEERS, DebianServer, Unavailable, binary, stop

DAY = dt.timedelta(days=1)


class CertAuthority:
    """A certificate authority made for one test run, in ``folder``.

    :meth:`issue` writes a server certificate and key (PEM) signed by it;
    ``ca_file`` is what a client trusts (``SSL_CERT_FILE``).
    """

    def __init__(self, folder: Path) -> None:
        try:
            from cryptography import x509
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.hazmat.primitives.asymmetric import ec
        except ImportError as exc:  # pragma: no cover - the test extra brings it
            raise Unavailable(f"the cryptography package is needed for the test CA: {exc}") from None
        self.x509, self.hashes, self.serialization, self.ec = x509, hashes, serialization, ec
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ftpprobe test CA")])
        now = dt.datetime.now(dt.timezone.utc)
        self.name = name
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - DAY).not_valid_after(now + 365 * DAY)
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.ca_file = folder / "ca.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, label: str, names: list[str], *, valid_from: dt.timedelta = -DAY,
              valid_to: dt.timedelta = 90 * DAY) -> tuple[Path, Path]:
        """A server certificate for ``names`` (IP addresses or DNS names),
        valid from now + ``valid_from`` to now + ``valid_to``; returns
        ``(cert.pem, key.pem)``."""
        x509, ser = self.x509, self.serialization
        key = self.ec.generate_private_key(self.ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        alt = []
        for n in names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                alt.append(x509.DNSName(n))
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, names[0])]))
                .issuer_name(self.name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now + valid_from).not_valid_after(now + valid_to)
                .add_extension(x509.SubjectAlternativeName(alt), critical=False)
                .sign(self.key, self.hashes.SHA256()))
        cert_path, key_path = self.folder / f"{label}.crt", self.folder / f"{label}.key"
        cert_path.write_bytes(cert.public_bytes(ser.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.TraditionalOpenSSL,
                                               ser.NoEncryption()))
        os.chmod(key_path, 0o600)
        return cert_path, key_path


def vsftpd_tls(cert: Path, key: Path, *, reuse: bool = True, implicit: bool = False,
               public: str | None = None) -> dict:
    """vsftpd options for FTPS with the anonymous account (``extra`` of
    :class:`peers.DebianServer`); ``public``: the address to announce."""
    conf = {"ssl_enable": "YES", "rsa_cert_file": cert, "rsa_private_key_file": key,
            "allow_anon_ssl": "YES", "force_anon_logins_ssl": "NO", "force_anon_data_ssl": "NO",
            "require_ssl_reuse": "YES" if reuse else "NO", "ssl_ciphers": "HIGH",
            "implicit_ssl": "YES" if implicit else "NO"}
    if public:
        conf["pasv_address"] = public
    return conf


class PureFtpdTls(DebianServer):
    """pure-ftpd with ``-Y 1`` (TLS accepted) and the given certificate."""

    def __init__(self, cert: Path, key: Path, pasv, **kw) -> None:
        super().__init__("pure-ftpd", pasv, **kw)
        self.cert, self.key = cert, key

    def __enter__(self):
        real = subprocess.Popen

        def popen(cmd, *args, **kw):  # add the TLS options to the command DebianServer builds
            if isinstance(cmd, list) and any(str(c).endswith("pure-ftpd") for c in cmd):
                cmd = [*cmd, "-Y", "1", "-2", f"{self.cert},{self.key}"]
            return real(cmd, *args, **kw)

        subprocess.Popen = popen
        try:
            return super().__enter__()
        finally:
            subprocess.Popen = real


PROFTPD_DEBS = ("proftpd-core", "proftpd-mod-crypto", "libhiredis0.14", "libmemcached11", "libmemcachedutil2",
                "libpcre2-posix3", "libhashkit2")


def proftpd_root() -> Path:
    """The unpacked proftpd (binary, modules, libraries), fetched once."""
    root = PEERS / "proftpd"
    if (root / "usr/sbin/proftpd").exists() and (root / "usr/lib/proftpd/mod_tls.so").exists():
        return root
    if not shutil.which("apt-get") or not shutil.which("dpkg"):
        raise Unavailable("apt-get/dpkg not found (Debian-based machine needed)")
    PEERS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        got = subprocess.run(["apt-get", "download", *PROFTPD_DEBS], cwd=tmp, capture_output=True, text=True)
        if got.returncode:
            raise Unavailable(f"apt-get download proftpd failed: {got.stderr.strip()[-200:]}")
        for deb in Path(tmp).glob("*.deb"):
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return root


class ProftpdTls:
    """proftpd 1.3.8 with mod_tls, anonymous login, passive range ``pasv``,
    in network namespace ``netns`` on ``host`` port 21.  ``reuse``: keep
    proftpd's default demand for TLS session reuse on data connections."""

    def __init__(self, cert: Path, key: Path, pasv: tuple[int, int], *, host: str, netns: str,
                 public: str | None = None, reuse: bool = True) -> None:
        if os.geteuid() != 0:
            raise Unavailable("proftpd needs root here")
        self.cert, self.key, self.pasv, self.host, self.netns = cert, key, pasv, host, netns
        self.public, self.reuse = public, reuse

    def __enter__(self) -> "ProftpdTls":
        root = proftpd_root()
        if subprocess.run(["id", "ftp"], capture_output=True).returncode:
            subprocess.run(["useradd", "-r", "-M", "-d", str(PEERS), "-s", "/usr/sbin/nologin", "ftp"],
                           check=True, capture_output=True)
        self.dir = tempfile.TemporaryDirectory(prefix="ftpprobe-proftpd-")
        run = Path(self.dir.name)
        home = run / "home"
        home.mkdir()
        (home / "readme.txt").write_text("hello from proftpd\n")
        os.chmod(run, 0o755)
        os.chmod(home, 0o755)
        group = "nogroup" if subprocess.run(["getent", "group", "nogroup"], capture_output=True).returncode == 0 \
            else "nobody"
        conf = f"""
ServerType standalone
ServerName "ftpprobe test proftpd"
DefaultServer on
Port 21
DefaultAddress {self.host}
SocketBindTight on
UseIPv6 off
User nobody
Group {group}
ModulePath {root}/usr/lib/proftpd
LoadModule mod_tls.c
PidFile {run}/proftpd.pid
ScoreboardFile {run}/scoreboard
DelayTable none
WtmpLog off
UseReverseDNS off
AuthPAM off
AuthOrder mod_auth_unix.c
RequireValidShell off
PassivePorts {self.pasv[0]} {self.pasv[1]}
{f"MasqueradeAddress {self.public}" if self.public else ""}
TLSEngine on
TLSProtocol TLSv1.2 TLSv1.3
TLSRSACertificateFile {self.cert}
TLSRSACertificateKeyFile {self.key}
TLSVerifyClient off
TLSRequired off
TLSLog {run}/tls.log
{"" if self.reuse else "TLSOptions NoSessionReuseRequired"}
<Anonymous {home}>
  User ftp
  Group {group}
  UserAlias anonymous ftp
  RequireValidShell off
</Anonymous>
"""
        # proftpd reads its EC key as TLSECCertificateFile; RSA directives take either in 1.3.8
        conf = conf.replace("TLSRSACertificateFile", "TLSECCertificateFile").replace(
            "TLSRSACertificateKeyFile", "TLSECCertificateKeyFile")
        (run / "proftpd.conf").write_text(conf)
        env = {**os.environ, "LD_LIBRARY_PATH": str(root / "usr/lib/x86_64-linux-gnu")}
        check = subprocess.run([str(root / "usr/sbin/proftpd"), "-t", "-c", str(run / "proftpd.conf")],
                               capture_output=True, text=True, env=env)
        if check.returncode:
            self.dir.cleanup()
            raise Unavailable(f"proftpd refuses its configuration: {(check.stderr or check.stdout).strip()[-300:]}")
        cmd = ["ip", "netns", "exec", self.netns, str(root / "usr/sbin/proftpd"), "-n", "-q", "-c",
               str(run / "proftpd.conf")]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        time.sleep(0.8)
        if self.proc.poll() is not None:
            out = self.proc.stdout.read().decode(errors="replace")[-300:]
            self.dir.cleanup()
            raise Unavailable(f"proftpd exited with {self.proc.returncode}: {out}")
        return self

    def __exit__(self, *exc) -> None:
        stop(self.proc)
        self.dir.cleanup()


__all__ = ["CertAuthority", "vsftpd_tls", "PureFtpdTls", "ProftpdTls", "Unavailable", "DebianServer", "binary"]
