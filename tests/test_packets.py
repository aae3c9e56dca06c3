"""Packet readings and the packet rules on constructed data: no network, no capture."""

import socket
import struct
import subprocess
import sys

from ftpprobe.findings import QUIRKS
from ftpprobe.observations import (Exchange, Hop, HopsObs, Reflection, ResetCaptureObs, ResetSource, Skipped)
from ftpprobe.packet_actions import quote_state
from ftpprobe.packets import (ACK, PSH, RST, IcmpError, Segment, acknowledged_at, attribute_resets,
                              parse_ipv4)
from ftpprobe.rules import RULES, RunFacts, decide
from ftpprobe.rules.packets import hop_reading
from ftpprobe.codec import Reply

PEER, LOCAL = ("192.0.2.10", 21), ("10.0.0.2", 40000)


def test_importing_the_cli_does_not_import_scapy():
    code = "import sys, ftpprobe.cli, ftpprobe.packets; print(any(m.split('.')[0] == 'scapy' for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def ipv4_tcp(src, dst, sport, dport, seq, flags, payload=b"", ttl=64, ip_id=1, window=502):
    tcp = struct.pack("!HHIIHHHH", sport, dport, seq, 0, (5 << 12) | flags, window, 0, 0) + payload
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), ip_id, 0x4000, ttl, 6, 0,
                       socket.inet_aton(src), socket.inet_aton(dst)) + tcp


def test_parse_segment_and_icmp_quote():
    packet = ipv4_tcp(LOCAL[0], PEER[0], LOCAL[1], PEER[1], 1000, PSH | ACK, b"PORT 10,0,0,2,1,2\r\n", ttl=1)
    seg = parse_ipv4(packet + b"\0" * 6)  # link-layer padding ignored
    assert isinstance(seg, Segment) and seg.payload == b"PORT 10,0,0,2,1,2\r\n" and seg.ttl == 1
    icmp = bytes([11, 0, 0, 0, 0, 0, 0, 0]) + packet
    outer = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 7, 0, 63, 1, 0,
                        socket.inet_aton("10.0.1.2"), socket.inet_aton(LOCAL[0])) + icmp
    err = parse_ipv4(outer)
    assert isinstance(err, IcmpError) and err.type == 11 and err.src == "10.0.1.2"
    assert err.quoted.seq == 1000 and err.quoted.payload == seg.payload and err.quoted.complete
    # RFC 792's minimum: the IP header and 8 bytes: no payload quoted.
    short = parse_ipv4(outer[:20] + icmp[:8 + 28])
    assert short.quoted.seq == 1000 and short.quoted.payload == b""
    assert quote_state(seg.payload, short.quoted) == "not-quoted"
    assert quote_state(seg.payload, err.quoted) == "as-sent"


def test_a_line_is_acknowledged_only_by_its_own_connection():
    seq, line = 4_000_000_000, b"PORT 10,0,0,2,1,2\r\n"  # the end wraps past 2**32
    end = (seq + len(line)) % 2**32
    other = Segment(0.1, PEER[0], LOCAL[0], PEER[1], LOCAL[1] + 1, 7, end + 10, ACK, 502, 62, 1)
    before = Segment(0.2, PEER[0], LOCAL[0], PEER[1], LOCAL[1], 7, seq, ACK, 502, 62, 2)
    ours = Segment(0.3, PEER[0], LOCAL[0], PEER[1], LOCAL[1], 7, end, ACK, 502, 62, 3)
    sent = Segment(0.25, LOCAL[0], PEER[0], LOCAL[1], PEER[1], seq, 7, PSH | ACK, 502, 64, 4, line)
    # Another session to the same server port, whose ACK number would cover the line: not ours.
    assert acknowledged_at([other, before, sent], LOCAL, PEER, seq, len(line)) is None
    assert acknowledged_at([other, before, sent, ours], LOCAL, PEER, seq, len(line)) == 0.3


def from_peer(t, flags, ttl, ip_id, window=502):
    return Segment(t, PEER[0], LOCAL[0], PEER[1], LOCAL[1], 1, 1, flags, window, ttl, ip_id)


PEER_OWN = [from_peer(0.0, ACK, 62, 100), from_peer(0.1, PSH | ACK, 62, 101), from_peer(0.2, ACK, 62, 102)]


def test_attribution_table():
    (mb,) = attribute_resets(PEER_OWN + [from_peer(0.3, RST, 63, 0, window=0)], PEER, LOCAL)
    assert mb.sender == "middlebox" and mb.peer_ttls == (62,)
    (peer,) = attribute_resets(PEER_OWN + [from_peer(0.3, RST | ACK, 62, 103)], PEER, LOCAL)
    assert peer.sender == "peer" and peer.ip_id_match and peer.window_match
    (odd,) = attribute_resets(PEER_OWN + [from_peer(0.3, RST, 62, 0, window=0)], PEER, LOCAL)
    assert odd.sender == "unknown" and odd.ip_id_match is False
    (alone,) = attribute_resets([from_peer(0.3, RST, 62, 0)], PEER, LOCAL)
    assert alone.sender == "unknown"
    # Another connection's RST is not this one's.
    other = Segment(0.3, PEER[0], LOCAL[0], PEER[1], 40001, 1, 1, RST, 0, 63, 0)
    assert attribute_resets(PEER_OWN + [other], PEER, LOCAL) == ()


def reset_obs(outcome="reset", resets=(), lost=""):
    ex = Exchange(b"PORT 10,0,0,2,1,2\r\n", outcome,
                  reply=Reply(200, (b"200 ok",), b"200 ok\r\n") if outcome == "reply" else None)
    return ResetCaptureObs("port-reset-source", exchange=ex, peer=PEER, local=LOCAL, peer_packets=3, resets=resets,
                           lost=lost)


def rst(sender):
    return ResetSource(0.3, 63, 0, 0, sender)


def injected(obs):
    return decide(RULES["path.reset-injected"], {"port-reset-source": obs}, RunFacts())


def test_reset_injected_table():
    assert "path.reset-injected" in QUIRKS
    assert injected(reset_obs(resets=(rst("middlebox"),))).status == "present"
    assert injected(reset_obs(resets=(rst("peer"),))).status == "absent"
    assert injected(reset_obs(resets=(rst("peer"), rst("unknown")))).status == "inconclusive"
    assert injected(reset_obs("reply")).status == "absent"
    assert injected(reset_obs("timeout")).status == "inconclusive"  # never absent
    assert injected(reset_obs("reset")).status == "inconclusive"  # a reset the capture did not see
    # A capture that lost packets cannot show that no middlebox reset: never absent, still present.
    lost = "3 dropped by the kernel (receive buffer full)"
    for absent in (reset_obs("reply", lost=lost), reset_obs(resets=(rst("peer"),), lost=lost)):
        finding = injected(absent)
        assert finding.status == "inconclusive" and f"the capture lost packets: {lost}" in finding.evidence
        assert "may have been a middlebox's reset" in finding.evidence[-1]
    assert injected(reset_obs(resets=(rst("middlebox"),), lost=lost)).status == "present"
    skipped = injected(Skipped("port-reset-source", reason="packet capture needs root or the CAP_NET_RAW capability"))
    assert skipped.status == "skipped" and "CAP_NET_RAW" in skipped.evidence[0]


def test_port_reset_says_who_reset():
    from ftpprobe.observations import ActiveObs

    port_own = ActiveObs("port-own", exchange=Exchange(b"PORT 10,0,0,2,1,2\r\n", "reset", error="reset"))
    f = decide(RULES["server.port-reset"], {"port-own": port_own,
                                            "port-reset-source": reset_obs(resets=(rst("middlebox"),))}, RunFacts())
    assert f.status == "present" and any("sent by a middlebox" in e for e in f.evidence)


LINE = b"PORT 10,0,0,2,1,2\r\n"


def hops_obs(*hops, reached=3, arrived=b"PORT 198,51,100,1,1,2\r\n"):
    return HopsObs("alg-port-hops", sent=LINE, hops=hops, reached_ttl=reached,
                   reflection=Reflection(arrived, ("198.51.100.1", 40000)))


def test_hop_reading():
    r = hop_reading(hops_obs(Hop(1, "10.0.0.1", LINE, "as-sent"), Hop(2, "10.0.1.2", LINE, "as-sent")))
    assert (r.after_hop, r.address) == (2, "10.0.1.2")
    r = hop_reading(hops_obs(Hop(1, "10.0.0.1", LINE, "as-sent"), Hop(2)))  # hop 2 silent: 1 or 2
    assert r.after_hop is None and r.between == (1, 2)
    r = hop_reading(hops_obs(Hop(1, "10.0.0.1", b"PORT 1,2,3,4,1,2\r\n", "rewritten"), reached=2))
    assert r.after_hop == 0 and "before hop 1" in r.lines[-1]
    r = hop_reading(hops_obs(Hop(1, "10.0.0.1", LINE, "as-sent"), arrived=LINE, reached=2))
    assert r.after_hop is None and r.between == ()
    from dataclasses import replace

    lossy = replace(hops_obs(Hop(1, "10.0.0.1", LINE, "as-sent"), Hop(2)), lost="2 dropped by the kernel")
    assert any("the capture lost packets (2 dropped by the kernel)" in line for line in hop_reading(lossy).lines)
