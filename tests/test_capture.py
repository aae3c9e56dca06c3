"""The packet capture (ftpprobe.packets.Capture): its filter on packets built
by scapy, and real captures of real TCP connections on loopback (those need
root or CAP_NET_RAW, and skip with the reason otherwise)."""

import socket
import subprocess
import sys
import threading

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from ftpprobe.packets import ACK, FIN, SYN, Capture, bpf_filter, packet_filter, permission_problem

HOST, OTHER = "192.0.2.10", "198.51.100.7"


def test_the_filter_keeps_what_its_tcpdump_expression_names():
    keep = packet_filter(HOST, 21)
    assert bpf_filter(HOST, 21) == f"tcp and host {HOST} and port 21"
    assert keep(bytes(IP(src="10.0.0.2", dst=HOST) / TCP(sport=40000, dport=21)))
    assert keep(bytes(IP(src=HOST, dst="10.0.0.2") / TCP(sport=21, dport=40000, flags="R")))
    assert not keep(bytes(IP(src="10.0.0.2", dst=HOST) / TCP(sport=40000, dport=2121)))  # another port
    assert not keep(bytes(IP(src="10.0.0.2", dst=OTHER) / TCP(sport=40000, dport=21)))  # another host
    assert not keep(bytes(IP(src="10.0.0.2", dst=HOST) / UDP(sport=40000, dport=21)))  # not TCP
    assert not keep(bytes(IP(src=OTHER, dst="10.0.0.2") / ICMP(type=11)))  # ICMP not asked for
    # Options move the ports: the header length is read, not assumed.
    assert keep(bytes(IP(src="10.0.0.2", dst=HOST, options=b"\x01" * 8) / TCP(sport=40000, dport=21)))
    assert not keep(b"") and not keep(b"\x45" + b"\0" * 10) and not keep(b"\x00" * 40)


def test_the_filter_with_icmp_any_protocol_and_ipv6():
    with_icmp = packet_filter(HOST, 21, icmp=True)
    assert with_icmp(bytes(IP(src=OTHER, dst="10.0.0.2") / ICMP(type=11)))  # a router's time-exceeded
    anything = packet_filter(HOST, any_protocol=True)
    assert anything(bytes(IP(src="10.0.0.2", dst=HOST) / UDP(sport=5, dport=53)))
    assert not anything(bytes(IP(src="10.0.0.2", dst=OTHER) / UDP(sport=5, dport=53)))
    v6 = packet_filter("2001:db8::10", 21)
    assert v6(bytes(IPv6(src="2001:db8::2", dst="2001:db8::10") / TCP(sport=40000, dport=21)))
    assert not v6(bytes(IPv6(src="2001:db8::2", dst="2001:db8::10") / TCP(sport=40000, dport=22)))
    assert not v6(bytes(IPv6(src="2001:db8::2", dst="2001:db8::11") / TCP(sport=40000, dport=21)))
    assert not v6(bytes(IP(src="10.0.0.2", dst=HOST) / TCP(sport=40000, dport=21)))


def test_capturing_does_not_import_scapy():
    code = ("import sys; from ftpprobe.packets import Capture, permission_problem\n"
            "if permission_problem() is None:\n"
            "    c = Capture('127.0.0.1', 9); c.start(); c.stop()\n"
            "print(any(m.split('.')[0] == 'scapy' for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


needs_capture = pytest.mark.skipif(permission_problem() is not None, reason=str(permission_problem()))


@needs_capture
def test_a_loopback_capture_holds_each_segment_once_in_order(tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    noise = socket.create_server(("127.0.0.1", 0))  # another port on the same host: filtered out

    def echo(server):
        conn, _ = server.accept()
        with conn:
            conn.sendall(conn.recv(1024))

    cap = Capture("127.0.0.1", port, pcap=str(tmp_path / "lo.pcap"))
    cap.start()
    try:
        threads = [threading.Thread(target=echo, args=(s,)) for s in (listener, noise)]
        for t in threads:
            t.start()
        for target in (noise, listener):
            with socket.create_connection(target.getsockname()) as client:
                client.sendall(b"NOOP\r\n")
                assert client.recv(1024) == b"NOOP\r\n"
                if target is listener:
                    local = client.getsockname()
        for t in threads:
            t.join(5)
    finally:
        cap.stop()
    segments = cap.connection(local, ("127.0.0.1", port))
    assert cap.interface == "lo" and all(port in (s.sport, s.dport) for s in cap.segments)
    syns = [s for s in segments if s.flags & SYN]
    assert [(s.sport, s.flags & (SYN | ACK)) for s in syns] == [(local[1], SYN), (port, SYN | ACK)]
    payloads = [s.payload for s in segments if s.payload]
    assert payloads == [b"NOOP\r\n", b"NOOP\r\n"]  # once each way: loopback's outgoing copies skipped
    assert sum(1 for s in segments if s.flags & FIN) == 2
    assert f"on lo: {cap.packets} packets" in cap.filter_note and cap.packets == len(cap.segments)

    from scapy.all import TCP as ScapyTCP, Raw, rdpcap

    written = rdpcap(str(tmp_path / "lo.pcap"))
    assert len(written) == cap.packets
    assert [bytes(p[Raw].load) for p in written if ScapyTCP in p and Raw in p] == payloads


@needs_capture
def test_an_empty_capture_writes_a_valid_pcap_file(tmp_path):
    cap = Capture("127.0.0.1", 9, pcap=str(tmp_path / "empty.pcap"))
    cap.start()
    cap.stop()
    from scapy.all import rdpcap

    assert len(rdpcap(str(tmp_path / "empty.pcap"))) == 0
    assert cap.filter_note.endswith("(no packet matched): 0 packets")
