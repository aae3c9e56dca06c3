"""IPv6 paths through a real Linux router (network namespaces, nftables, the kernel FTP helper).

* A stateful IPv6 firewall without NAT (documentation prefixes 2001:db8::/32):
  the router forwards new connections from the LAN only; the reflector's
  active-mode data connection back to the prober (after EPRT |2|) passes only
  as the kernel helper's expectation (``ct state related``).  Helper on:
  path.active-blocked absent; helper off: present.
* NAT66 masquerade (LAN fd00::/8) with the helper: EPRT |2| is rewritten to
  the router's address (alg.eprt-rewrite), and the fingerprint names Linux.

The prober's URL is a literal address (``[2001:db8:2::2]``); the reflector
listens on every address (dual stack, the default).
"""

import time

import pytest

from lab import NatLab, ftpprobe_in, running, sh

pytestmark = pytest.mark.root

import subprocess  # noqa: E402
import sys  # noqa: E402
import contextlib  # noqa: E402


class V6Lab(NatLab):
    """:class:`NatLab` plus IPv6: ``lan`` LAN6, the router RTR6_LAN / RTR6_WAN,
    ``out`` OUT6, each /64, no DAD (addresses usable at once)."""

    LAN6, RTR6_LAN, RTR6_WAN, OUT6 = "2001:db8:1::2", "2001:db8:1::1", "2001:db8:2::1", "2001:db8:2::2"

    def __init__(self, helper_port, nat66=False):
        super().__init__(helper_port=helper_port)
        self.nat66 = nat66
        if nat66:
            self.LAN6, self.RTR6_LAN = "fd00::2", "fd00::1"

    def _build(self) -> None:
        super()._build()
        self.ns(self.rtr, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        for host, address, router_address, router_if in ((self.lan, self.LAN6, self.RTR6_LAN, "lan0"),
                                                         (self.out, self.OUT6, self.RTR6_WAN, "wan0")):
            self.ns(host, "ip", "-6", "addr", "add", f"{address}/64", "dev", "veth0", "nodad")
            self.ns(host, "ip", "-6", "route", "add", "default", "via", router_address)
            self.ns(self.rtr, "ip", "-6", "addr", "add", f"{router_address}/64", "dev", router_if, "nodad")
        # Neighbour discovery needs the link-local addresses, which stay
        # tentative for about a second (duplicate address detection).
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(
                "tentative" in self.ns(n, "ip", "-6", "addr", check=False).stdout for n in self.names):
            time.sleep(0.1)

    def rules(self) -> str:
        helper = ""
        if self.helper_port is not None:
            helper = f"""
  ct helper ftp-std {{ type "ftp" protocol tcp; }}
  chain helpers {{
    type filter hook prerouting priority -150; policy accept;
    tcp dport {self.helper_port} ct helper set "ftp-std"
  }}"""
        nat = """
  chain post {
    type nat hook postrouting priority 100; policy accept;
    oifname "wan0" masquerade
  }""" if self.nat66 else ""
        return f"""table ip6 lab6 {{{helper}{nat}
  chain filter6 {{
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    iifname "lan0" accept
    meta l4proto ipv6-icmp accept
  }}
}}
"""


@contextlib.contextmanager
def reflector6(lab):
    """``ftpprobe reflect`` in ``out`` on every address (the default), ports 21 and 2121."""
    args = ["ip", "netns", "exec", lab.out, sys.executable, "-m", "ftpprobe", "reflect", "--ports", "21,2121"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for _ in range(50):
            listening = lab.ns(lab.out, "ss", "-ltn", check=False).stdout
            if "]:2121" in listening and "0.0.0.0:2121" in listening:
                break
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        proc.wait(5)


def fingerprint6(helper_port, nat66=False):
    with running(V6Lab(helper_port, nat66)) as lab, reflector6(lab):
        code, report = ftpprobe_in(lab, lab.lan, "fingerprint", "--other-port", "2121", f"[{lab.OUT6}]")
    return code, report, {x["id"]: x for x in report["findings"]}


def test_firewall_with_helper_opens_active_mode():
    _, report, f = fingerprint6(21)
    assert not report["error"], report["error"]
    blocked = f["path.active-blocked"]
    assert blocked["status"] == "absent", blocked
    assert any("EPRT |2|2001:db8:1::2|" in e for e in blocked["evidence"]), blocked["evidence"]
    assert f["nat.present"]["status"] == "absent"  # no NAT on this path
    assert f["alg.eprt-rewrite"]["status"] == "absent"  # nothing to rewrite without NAT
    assert report["verdict"]["active"]["state"] == "works", report["verdict"]
    assert report["verdict"]["passive"]["state"] == "works", report["verdict"]  # EPSV, outbound


def test_firewall_without_helper_blocks_active_mode():
    _, report, f = fingerprint6(None)
    assert f["path.active-blocked"]["status"] == "present", f["path.active-blocked"]
    assert report["verdict"]["active"]["state"] == "fails", report["verdict"]


def test_nat66_with_helper_rewrites_eprt_and_is_named_linux():
    _, report, f = fingerprint6(21, nat66=True)
    assert f["nat.present"]["status"] == "present"
    rewrite = f["alg.eprt-rewrite"]
    assert rewrite["status"] == "present", rewrite
    assert rewrite["data"]["arrived"].startswith("[2001:db8:2::1]:"), rewrite["data"]
    assert f["path.active-blocked"]["status"] == "absent", f["path.active-blocked"]
    impl = f["alg.implementation"]
    assert impl["status"] == "present" and impl["data"]["implementation"] == "linux", impl
