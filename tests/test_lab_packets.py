"""Packet-level evidence against the real kernel (issue 11), in network namespaces.

* Two routers in a row, only the second running the kernel FTP helper: the
  TTL walk (``fingerprint --hops``) names the second router, by its address.
* A router that injects TCP resets for PORT (nftables ``reject with tcp
  reset`` on the payload) against a server that really resets: the
  attribution tells them apart (``path.reset-injected``).
* ``--pcap``: the file read back with scapy holds the control exchange.
* Without CAP_NET_RAW the same commands work and the packet probes say
  ``skipped`` with the reason.
"""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import RouterLab, ftpprobe_in, helper_rules, reflector_in, running

pytestmark = pytest.mark.root
TESTS = str(Path(__file__).resolve().parent)


class ChainLab(RouterLab):
    """Two routers in a row; only the second runs the FTP helper and masquerades::

        lan 10.0.0.2 --- 10.0.0.1 r1 10.0.1.1 --- 10.0.1.2 r2 198.51.100.1 --- 198.51.100.2 out
    """

    LAN, R1_LAN, R1_MID, R2_MID, R2_WAN, OUT = ("10.0.0.2", "10.0.0.1", "10.0.1.1", "10.0.1.2",
                                                 "198.51.100.1", "198.51.100.2")
    sides = (("lan", LAN, R1_LAN, "lan0"), ("out", OUT, R2_WAN, "wan0"))

    def __init__(self) -> None:
        super().__init__()
        self.r2 = self.rtr.replace("fl-rtr-", "fl-r2-")
        self.names = (*self.names, self.r2)
        self.lan, self.out = self.host["lan"], self.host["out"]

    def _build(self) -> None:
        from lab import sh

        for name in self.names:
            sh("ip", "netns", "add", name)
            self.ns(name, "ip", "link", "set", "lo", "up")
        r1, r2 = self.rtr, self.r2
        for router in (r1, r2):
            self.ns(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        links = ((self.lan, "veth0", self.LAN, r1, "lan0", self.R1_LAN),
                 (r1, "mid0", self.R1_MID, r2, "mid0", self.R2_MID),
                 (r2, "wan0", self.R2_WAN, self.out, "veth0", self.OUT))
        for a, a_if, a_addr, b, b_if, b_addr in links:
            sh("ip", "link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b)
            for ns, ifname, addr in ((a, a_if, a_addr), (b, b_if, b_addr)):
                self.ns(ns, "ip", "addr", "add", f"{addr}/24", "dev", ifname)
                self.ns(ns, "ip", "link", "set", ifname, "up")
        self.ns(self.lan, "ip", "route", "add", "default", "via", self.R1_LAN)
        self.ns(r1, "ip", "route", "add", "default", "via", self.R2_MID)
        self.ns(r2, "ip", "route", "add", "10.0.0.0/24", "via", self.R1_MID)
        self.ns(self.out, "ip", "route", "add", "default", "via", self.R2_WAN)
        sh("ip", "netns", "exec", r2, "nft", "-f", "-", input=f"""table ip lab {{{helper_rules(21)}
  chain post {{
    type nat hook postrouting priority 100; policy accept;
    oifname "wan0" masquerade
  }}
}}
""")


class ResetLab(RouterLab):
    """A client, a router, a server; the router may inject resets for PORT::

        lan 10.0.0.2 --- 10.0.0.1 rtr 203.0.113.1 --- 203.0.113.10 srv

    ``inject``: the router answers a segment whose payload starts with
    ``PORT`` with ``reject with tcp reset`` (the segment never reaches the
    server)."""

    LAN, RTR_LAN, RTR_SRV, SERVER = "10.0.0.2", "10.0.0.1", "203.0.113.1", "203.0.113.10"
    sides = (("lan", LAN, RTR_LAN, "lan0"), ("srv", SERVER, RTR_SRV, "srv0"))

    def __init__(self, inject: bool) -> None:
        super().__init__()
        self.inject = inject
        self.lan, self.srv = self.host["lan"], self.host["srv"]

    def rules(self) -> str:
        # @ih: the transport payload; 0x504f5254 is "PORT".
        match = 'tcp dport 21 @ih,0,32 0x504f5254 reject with tcp reset' if self.inject else ""
        return f"""table ip lab {{
  chain forward_filter {{
    type filter hook forward priority 0; policy accept;
    {match}
  }}
}}
"""


def _findings(report):
    return {f["id"]: f for f in report["findings"]}


def test_hops_name_the_second_router():
    with running(ChainLab()) as lab, reflector_in(lab, lab.out, lab.OUT):
        code, report = ftpprobe_in(lab, lab.lan, "fingerprint", "--hops", "--only", "alg-port-crlf", lab.OUT,
                                   timeout="3")
    f = _findings(report)["alg.port-rewrite"]
    assert f["status"] == "present", f
    evidence = "\n".join(f["evidence"])
    assert f["data"]["rewritten_after_hop"] == 2, evidence
    assert f["data"]["rewriting_hop_address"] == lab.R2_MID, evidence
    hops = f["data"]["hops"]
    assert [h["address"] for h in hops[:2]] == [lab.R1_LAN, lab.R2_MID], hops
    assert all(h["state"] == "as-sent" for h in hops[:2]), hops  # the helper rewrites on the way out of r2
    assert "PORT 10,0,0,2," in evidence and "PORT 198,51,100,1," in evidence


@pytest.fixture
def server_in():
    procs = []

    def start(lab, namespace, address, scenario="reset-after-port"):
        # hostile.py's scenario on port 21 (HostileServer picks a free port).
        code = (f"import sys, time, socketserver, threading, socket; sys.path.insert(0, {TESTS!r}); import hostile\n"
                f"scenario = hostile.SCENARIOS[{scenario!r}]\n"
                "class H(socketserver.BaseRequestHandler):\n"
                "    def handle(self):\n"
                "        try: scenario(self.request, None)\n"
                "        except OSError: pass\n"
                "socketserver.ThreadingTCPServer.allow_reuse_address = True\n"
                f"srv = socketserver.ThreadingTCPServer(({address!r}, 21), H); srv.daemon_threads = True\n"
                "print('listening', flush=True); srv.serve_forever()\n")
        p = subprocess.Popen(["ip", "netns", "exec", namespace, sys.executable, "-c", code],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "listening"
        return p

    yield start
    for p in procs:
        p.terminate()
        p.wait(5)


@pytest.mark.parametrize("inject", [True, False], ids=["router-injects", "server-resets"])
def test_who_reset(inject, server_in, tmp_path):
    pcap = tmp_path / "run.pcap"
    with running(ResetLab(inject)) as lab:
        server_in(lab, lab.srv, lab.SERVER)
        code, report = ftpprobe_in(lab, lab.lan, "probe", "--only", "port-own,port-reset-source",
                                   "--pcap", str(pcap), f"ftp://{lab.SERVER}/")
    f = _findings(report)
    injected, port_reset = f["path.reset-injected"], f["server.port-reset"]
    assert port_reset["status"] == "present", port_reset  # from the socket both look the same
    senders = {r["sender"] for r in injected["data"]["resets"]}
    if inject:
        assert injected["status"] == "present", injected
        assert "middlebox" in senders
        assert any("sent by a middlebox" in e for e in port_reset["evidence"]), port_reset
    else:
        assert injected["status"] == "absent", injected
        assert senders == {"peer"}
        assert any("sent by the peer itself" in e for e in port_reset["evidence"]), port_reset
    # The pcap holds the control exchange.
    from scapy.all import TCP, Raw, rdpcap

    packets = rdpcap(str(pcap))
    payloads = b"".join(bytes(p[Raw].load) for p in packets if TCP in p and Raw in p)
    assert b"220 hostile ready" in payloads and b"USER anonymous" in payloads and b"PORT " in payloads
    assert any(p[TCP].flags & 0x04 for p in packets if TCP in p)  # the reset itself


def test_without_cap_net_raw_the_packet_probes_are_skipped(server_in, tmp_path):
    if not shutil.which("capsh"):
        pytest.skip("capsh not found (apt-get install libcap2-bin)")
    pcap = tmp_path / "none.pcap"
    with running(ResetLab(False)) as lab:
        server_in(lab, lab.srv, lab.SERVER)
        done = lab.ns(lab.lan, "capsh", "--drop=cap_net_raw", "--", "-c",
                      f"{sys.executable} -m ftpprobe probe --only port-own,port-reset-source --pcap {pcap} "
                      f"--json --timeout 2 ftp://{lab.SERVER}/", check=False)
    report = json.loads(done.stdout)
    f = _findings(report)
    assert f["path.reset-injected"]["status"] == "skipped"
    assert "CAP_NET_RAW" in " ".join(f["path.reset-injected"]["evidence"])
    assert f["server.port-reset"]["status"] == "present"  # everything else as before
    assert done.returncode == 1, done.stderr
    assert "no capture written" in done.stderr and "CAP_NET_RAW" in done.stderr
    assert not pcap.exists() or pcap.stat().st_size == 0
