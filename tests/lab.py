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

import os
import shutil
import subprocess
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


class NatLab:
    """LAN client behind a masquerading Linux router, an outside host.

    ``helper_port``: control port the kernel FTP helper is attached to (None:
    no helper).  Namespace names are unique per lab, so labs can coexist.
    """

    LAN, RTR_LAN, RTR_WAN, OUT = "10.0.0.2", "10.0.0.1", "198.51.100.1", "198.51.100.2"

    def __init__(self, helper_port: int | None = 21) -> None:
        self.helper_port = helper_port
        tag = uuid.uuid4().hex[:6]
        self.lan, self.rtr, self.out = f"fp-lan-{tag}", f"fp-rtr-{tag}", f"fp-out-{tag}"

    def ns(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", name, *args, check=check)

    def __enter__(self) -> "NatLab":
        check_lab()
        try:
            self._build()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _build(self) -> None:
        for name in (self.lan, self.rtr, self.out):
            sh("ip", "netns", "add", name)
            self.ns(name, "ip", "link", "set", "lo", "up")
        sh("ip", "link", "add", "veth-lan", "netns", self.lan, "type", "veth", "peer", "name", "lan0", "netns", self.rtr)
        sh("ip", "link", "add", "veth-out", "netns", self.out, "type", "veth", "peer", "name", "wan0", "netns", self.rtr)
        self.ns(self.lan, "ip", "addr", "add", f"{self.LAN}/24", "dev", "veth-lan")
        self.ns(self.lan, "ip", "link", "set", "veth-lan", "up")
        self.ns(self.lan, "ip", "route", "add", "default", "via", self.RTR_LAN)
        self.ns(self.rtr, "ip", "addr", "add", f"{self.RTR_LAN}/24", "dev", "lan0")
        self.ns(self.rtr, "ip", "addr", "add", f"{self.RTR_WAN}/24", "dev", "wan0")
        self.ns(self.rtr, "ip", "link", "set", "lan0", "up")
        self.ns(self.rtr, "ip", "link", "set", "wan0", "up")
        self.ns(self.rtr, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.ns(self.out, "ip", "addr", "add", f"{self.OUT}/24", "dev", "veth-out")
        self.ns(self.out, "ip", "link", "set", "veth-out", "up")
        helper = ""
        if self.helper_port is not None:
            helper = f"""
  ct helper ftp-std {{ type "ftp" protocol tcp; }}
  chain pre {{
    type filter hook prerouting priority -150; policy accept;
    tcp dport {self.helper_port} ct helper set "ftp-std"
  }}"""
        rules = f"""table ip lab {{{helper}
  chain post {{
    type nat hook postrouting priority 100; policy accept;
    oifname "wan0" masquerade
  }}
}}
"""
        sh("ip", "netns", "exec", self.rtr, "nft", "-f", "-", input=rules)

    def __exit__(self, *exc) -> None:
        for name in (self.lan, self.rtr, self.out):
            sh("ip", "netns", "del", name, check=False)


class SiteLab:
    """An outside prober, a site router doing DNAT, and a server inside.

    Topology::

        out 203.0.113.2 --- 203.0.113.1 rtr 192.168.1.1 --- 192.168.1.10 srv

    The router forwards the control port ``control_port`` to the server's port
    21, forwards the passive ports ``forward`` (an inclusive range, or None) to
    the server, masquerades the server's outbound traffic, and attaches the
    kernel FTP helper to the control port when ``helper`` is true.
    """

    PROBER, PUBLIC, RTR_LAN, SERVER = "203.0.113.2", "203.0.113.1", "192.168.1.1", "192.168.1.10"

    def __init__(self, *, helper: bool, forward: tuple[int, int] | None, control_port: int = 21) -> None:
        self.helper, self.forward, self.control_port = helper, forward, control_port
        tag = uuid.uuid4().hex[:6]
        self.out, self.rtr, self.srv = f"fs-out-{tag}", f"fs-rtr-{tag}", f"fs-srv-{tag}"

    ns = NatLab.ns

    def __enter__(self) -> "SiteLab":
        check_lab()
        try:
            self._build()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _build(self) -> None:
        for name in (self.out, self.rtr, self.srv):
            sh("ip", "netns", "add", name)
            self.ns(name, "ip", "link", "set", "lo", "up")
        sh("ip", "link", "add", "veth-out", "netns", self.out, "type", "veth", "peer", "name", "wan0", "netns", self.rtr)
        sh("ip", "link", "add", "veth-srv", "netns", self.srv, "type", "veth", "peer", "name", "lan0", "netns", self.rtr)
        self.ns(self.out, "ip", "addr", "add", f"{self.PROBER}/24", "dev", "veth-out")
        self.ns(self.out, "ip", "link", "set", "veth-out", "up")
        self.ns(self.rtr, "ip", "addr", "add", f"{self.PUBLIC}/24", "dev", "wan0")
        self.ns(self.rtr, "ip", "addr", "add", f"{self.RTR_LAN}/24", "dev", "lan0")
        self.ns(self.rtr, "ip", "link", "set", "wan0", "up")
        self.ns(self.rtr, "ip", "link", "set", "lan0", "up")
        self.ns(self.rtr, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.ns(self.srv, "ip", "addr", "add", f"{self.SERVER}/24", "dev", "veth-srv")
        self.ns(self.srv, "ip", "link", "set", "veth-srv", "up")
        self.ns(self.srv, "ip", "route", "add", "default", "via", self.RTR_LAN)
        helper = forward = ""
        if self.helper:
            helper = f"""
  ct helper ftp-std {{ type "ftp" protocol tcp; }}
  chain helpers {{
    type filter hook prerouting priority -150; policy accept;
    tcp dport {self.control_port} ct helper set "ftp-std"
  }}"""
        if self.forward:
            forward = f'\n    iifname "wan0" tcp dport {self.forward[0]}-{self.forward[1]} dnat to {self.SERVER}'
        rules = f"""table ip site {{{helper}
  chain pre {{
    type nat hook prerouting priority -100; policy accept;
    iifname "wan0" tcp dport {self.control_port} dnat to {self.SERVER}:21{forward}
  }}
  chain post {{
    type nat hook postrouting priority 100; policy accept;
    oifname "wan0" masquerade
  }}
}}
"""
        sh("ip", "netns", "exec", self.rtr, "nft", "-f", "-", input=rules)

    def __exit__(self, *exc) -> None:
        for name in (self.out, self.rtr, self.srv):
            sh("ip", "netns", "del", name, check=False)
