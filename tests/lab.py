"""The kernel lab: network namespaces, veth pairs, nftables NAT and the real
Linux FTP helper (nf_conntrack_ftp / nf_nat_ftp).

Topology (addresses from the documentation and private ranges; nothing leaves
the machine)::

    lan 10.0.0.2 --- 10.0.0.1 rtr 198.51.100.1 --- 198.51.100.2 out

``rtr`` masquerades the LAN; the FTP helper is attached with an nftables
``ct helper`` object on the chosen control port (or not at all), in a
prerouting chain at priority -150 (after conntrack, before DNAT).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid


class LabUnavailable(Exception):
    """Namespaces cannot be built here; the message is the skip reason."""


def sh(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True, input=input)


def check_lab() -> None:
    if os.geteuid() != 0:
        raise LabUnavailable("the kernel lab needs root (network namespaces, nftables)")
    for tool in ("ip", "nft"):
        if not shutil.which(tool):
            raise LabUnavailable(f"{tool} not found (apt-get install iproute2 nftables)")
    probe = f"ftpprobe-check-{uuid.uuid4().hex[:6]}"
    done = sh("ip", "netns", "add", probe, check=False)
    if done.returncode:
        raise LabUnavailable(f"cannot create a network namespace: {done.stderr.strip()}")
    sh("ip", "netns", "del", probe, check=False)


class RouterLab:
    """Base: hosts joined through one Linux router, each host on its own veth
    and /24.

    Subclasses set ``sides`` (namespace prefix, host address, router address,
    router interface) and :meth:`rules` (the router's nftables ruleset).
    Namespace names are unique per lab, so labs can coexist; everything is
    removed on exit.  ``self.host[prefix]`` names each host's namespace.
    """

    sides: tuple[tuple[str, str, str, str], ...]

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.rtr = f"fl-rtr-{tag}"
        self.host = {prefix: f"fl-{prefix}-{tag}" for prefix, *_ in self.sides}
        self.names = (self.rtr, *self.host.values())

    def ns(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", name, *args, check=check)

    def __enter__(self):
        check_lab()
        try:
            self._build()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _build(self) -> None:
        for name in self.names:
            sh("ip", "netns", "add", name)
            self.ns(name, "ip", "link", "set", "lo", "up")
        self.ns(self.rtr, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for prefix, address, router_address, router_if in self.sides:
            host = self.host[prefix]
            sh("ip", "link", "add", "veth0", "netns", host, "type", "veth", "peer", "name", router_if, "netns", self.rtr)
            self.ns(host, "ip", "addr", "add", f"{address}/24", "dev", "veth0")
            self.ns(host, "ip", "link", "set", "veth0", "up")
            self.ns(host, "ip", "route", "add", "default", "via", router_address)
            self.ns(self.rtr, "ip", "addr", "add", f"{router_address}/24", "dev", router_if)
            self.ns(self.rtr, "ip", "link", "set", router_if, "up")
        sh("ip", "netns", "exec", self.rtr, "nft", "-f", "-", input=self.rules())

    def rules(self) -> str:
        raise NotImplementedError

    def __exit__(self, *exc) -> None:
        for name in self.names:
            sh("ip", "netns", "del", name, check=False)


def helper_rules(port: int | None) -> str:
    """An nftables ct helper object for the kernel FTP helper on ``port``,
    assigned in prerouting at priority -150 (after conntrack, before DNAT)."""
    if port is None:
        return ""
    return f"""
  ct helper ftp-std {{ type "ftp" protocol tcp; }}
  chain helpers {{
    type filter hook prerouting priority -150; policy accept;
    tcp dport {port} ct helper set "ftp-std"
  }}"""


class NatLab(RouterLab):
    """LAN client behind a masquerading Linux router, an outside host::

        lan 10.0.0.2 --- 10.0.0.1 rtr 198.51.100.1 --- 198.51.100.2 out

    ``helper_port``: control port the kernel FTP helper is attached to (None: no helper).
    """

    LAN, RTR_LAN, RTR_WAN, OUT = "10.0.0.2", "10.0.0.1", "198.51.100.1", "198.51.100.2"
    sides = (("lan", LAN, RTR_LAN, "lan0"), ("out", OUT, RTR_WAN, "wan0"))

    def __init__(self, helper_port: int | None = 21) -> None:
        super().__init__()
        self.helper_port = helper_port
        self.lan, self.out = self.host["lan"], self.host["out"]

    def rules(self) -> str:
        return f"""table ip lab {{{helper_rules(self.helper_port)}
  chain post {{
    type nat hook postrouting priority 100; policy accept;
    oifname "wan0" masquerade
  }}
}}
"""


class SiteLab(RouterLab):
    """An outside prober, a site router doing DNAT, a server inside, and a LAN client::

        out 203.0.113.2 --- 203.0.113.1 rtr 192.168.1.1 --- 192.168.1.10 srv
                                            192.168.2.1 --- 192.168.2.20 lan

    The router forwards the control port ``control_port`` to the server's port
    21, forwards the passive ports ``forward`` (an inclusive range, or None) to
    the server, masquerades the server's outbound traffic, and attaches the
    kernel FTP helper to the control port (or to ``helper_port``) when
    ``helper`` is true.  ``hairpin``: which forwards also apply to LAN clients that use the public
    address: ``"none"``, ``"control"`` (the control port only) or ``"full"``.
    """

    PROBER, PUBLIC, RTR_LAN, SERVER = "203.0.113.2", "203.0.113.1", "192.168.1.1", "192.168.1.10"
    RTR_CLIENTS, CLIENT = "192.168.2.1", "192.168.2.20"
    sides = (("out", PROBER, PUBLIC, "wan0"), ("srv", SERVER, RTR_LAN, "lan0"), ("lan", CLIENT, RTR_CLIENTS, "lan1"))

    def __init__(self, *, helper: bool, forward: tuple[int, int] | None, control_port: int = 21,
                 hairpin: str = "none", helper_port: int | None = None) -> None:
        super().__init__()
        self.forward, self.control_port, self.hairpin = forward, control_port, hairpin
        # the port the kernel helper watches: the control port unless told otherwise
        self.helper_port = (helper_port or control_port) if helper else None
        self.out, self.srv, self.lan = self.host["out"], self.host["srv"], self.host["lan"]

    def rules(self) -> str:
        # A forward applies to traffic from the internet (wan0), and with hairpin
        # NAT also to LAN clients that use the public address.
        outside = 'iifname "wan0"'
        control_match = f"ip daddr {self.PUBLIC}" if self.hairpin in ("control", "full") else outside
        range_match = f"ip daddr {self.PUBLIC}" if self.hairpin == "full" else outside
        forward = ""
        if self.forward:
            forward = f"\n    {range_match} tcp dport {self.forward[0]}-{self.forward[1]} dnat to {self.SERVER}"
        return f"""table ip site {{{helper_rules(self.helper_port)}
  chain pre {{
    type nat hook prerouting priority -100; policy accept;
    {control_match} tcp dport {self.control_port} dnat to {self.SERVER}:21{forward}
  }}
  chain post {{
    type nat hook postrouting priority 100; policy accept;
    oifname "wan0" masquerade
  }}
}}
"""


@contextlib.contextmanager
def running(lab: RouterLab):
    """Build ``lab`` for the duration of the block, or skip the test with the
    reason it cannot be built here."""
    import pytest

    try:
        lab.__enter__()
    except LabUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield lab
    finally:
        lab.__exit__(None, None, None)


@contextlib.contextmanager
def reflector_in(lab: RouterLab, namespace: str, address: str, journal: str | None = None):
    """``ftpprobe reflect`` on ``address`` ports 21 and 2121 inside ``namespace``,
    waited for until it listens, stopped after the block."""
    args = ["ip", "netns", "exec", namespace, sys.executable, "-m", "ftpprobe", "reflect", "--listen", address,
            "--ports", "21,2121", *(["--journal", journal] if journal else [])]
    reflector = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for _ in range(50):
            if f"{address}:2121" in lab.ns(namespace, "ss", "-ltn", check=False).stdout:
                break
            time.sleep(0.1)
        yield reflector
    finally:
        reflector.terminate()
        reflector.wait(5)


def ftpprobe_in(lab: RouterLab, namespace: str, *args: str, timeout: str = "2") -> tuple[int, dict]:
    """Run ``ftpprobe ARGS --json --timeout T`` inside ``namespace``: (exit code, report)."""
    done = lab.ns(namespace, sys.executable, "-m", "ftpprobe", *args, "--json", "--timeout", timeout, check=False)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)
