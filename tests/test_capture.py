"""The packet capture (ftpprobe.packets.Capture): its filter on packets built
by scapy, and real captures of real TCP connections on loopback (those need
root or CAP_NET_RAW, and skip with the reason otherwise)."""

import socket
import subprocess
import sys
import threading
import time

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from ftpprobe.packets import (ACK, ARPHRD_LOOPBACK, FIN, PACKET_OUTGOING, SYN, Capture, bpf_filter, packet_filter,
                              parse_ipv4, permission_problem)

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
        listener.close()
        noise.close()
    segments = cap.connection(local, ("127.0.0.1", port))
    assert cap.interfaces == {"lo"} and cap.kernel_filter and all(port in (s.sport, s.dport) for s in cap.segments)
    syns = [s for s in segments if s.flags & SYN]
    assert [(s.sport, s.flags & (SYN | ACK)) for s in syns] == [(local[1], SYN), (port, SYN | ACK)]
    payloads = [s.payload for s in segments if s.payload]
    assert payloads == [b"NOOP\r\n", b"NOOP\r\n"]  # once each way: loopback's outgoing copies skipped
    assert sum(1 for s in segments if s.flags & FIN) == 2
    assert cap.filter_note.endswith(f"in the kernel on lo: {cap.packets} packets")
    assert cap.packets == len(cap.segments)

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


def test_fragments_and_tso_packets_as_tcpdump_reads_them():
    from scapy.layers.inet import fragment

    whole = IP(src="10.0.0.2", dst=HOST) / TCP(sport=40000, dport=2121, flags="PA") / (b"\x00\x15" * 400)
    first, later = fragment(whole, fragsize=400)[:2]
    keep = packet_filter(HOST, 21)
    # A later fragment's bytes are payload, not ports: here they read as port 21, and are not kept.
    assert bytes(later)[20:22] == b"\x00\x15" and not keep(bytes(later))
    assert parse_ipv4(bytes(later)) is None and parse_ipv4(bytes(first)).dport == 2121
    assert packet_filter(HOST, any_protocol=True)(bytes(later))  # "host" alone keeps every fragment
    # An IP total length of 0 (a TSO/BIG TCP packet handed to a capture whole): the whole packet.
    big = bytearray(bytes(IP(src=HOST, dst="10.0.0.2") / TCP(sport=21, dport=40000) / (b"x" * 1000)))
    big[2:4] = b"\x00\x00"
    assert len(parse_ipv4(bytes(big)).payload) == 1000


def test_a_packet_seen_again_on_another_interface_counts_once():
    cap = Capture(HOST, 21)
    ours_out = bytes(IP(src="10.0.0.2", dst=HOST, id=7) / TCP(sport=40000, dport=21, flags="S"))
    ours_in = bytes(IP(src=HOST, dst="10.0.0.2") / TCP(sport=21, dport=40000, flags="SA"))
    forwarded = bytes(IP(src="192.168.1.5", dst=HOST) / TCP(sport=50000, dport=21, flags="S"))
    cap.take(forwarded, "lan0", when=1.0)  # a LAN client's session to the same server, forwarded by this host
    cap.take(ours_out, "br0", PACKET_OUTGOING, when=1.001)
    cap.take(ours_out, "eth0", PACKET_OUTGOING, when=1.0011)  # the bridge's port shows it again
    cap.take(ours_in, "wan2", when=1.02)  # the reply comes back by another uplink
    cap.take(ours_in, "br0", when=1.0201)
    assert [(s.src, s.sport) for s in cap.segments] == [("192.168.1.5", 50000), ("10.0.0.2", 40000), (HOST, 21)]
    assert cap.interfaces == {"lan0", "br0", "wan2"} and cap.packets == 3
    cap.take(ours_out, "lo", PACKET_OUTGOING, ARPHRD_LOOPBACK, when=1.03)  # loopback's outgoing copy
    assert cap.packets == 3
    cap.take(ours_out, "br0", PACKET_OUTGOING, when=1.3)  # the same bytes sent again later: a retransmission
    cap.take(ours_out, "br0", PACKET_OUTGOING, when=1.31)  # and at once again on the same interface
    cap.take(ours_out, "wan2", PACKET_OUTGOING, when=1.6)  # and again, after a route change
    assert cap.packets == 6 and cap.interfaces == {"lan0", "br0", "wan2"} and cap.losses() == ""
    cap.take(ours_in, "eth1", protocol=0x86DD, when=1.7)  # an IPv4 packet in a frame that says IPv6
    cap.take(ours_in, "eth1", protocol=0x0806, when=1.7)  # or ARP
    assert cap.packets == 6
    cap.take(ours_in, "eth1", protocol=0x0800, when=1.7)
    assert cap.packets == 7
    cap.take(ours_in, "wan2", when=2.0, cut=True)  # longer than a read: its headers kept, the loss said
    assert cap.truncated == 1 and cap.losses() == "1 cut at 262144 bytes"


def test_the_kernel_filter_returns_whole_packets_or_nothing():
    from ftpprobe.packets import bpf_program

    for host, options in [("192.0.2.1", dict(port=21, icmp=True)), ("2001:db8::1", dict(port=21)),
                          ("192.0.2.1", dict(any_protocol=True)), ("2001:db8::1", dict())]:
        returns = {k for code, _, _, k in bpf_program(host, **options) if code == 0x06}
        assert returns == {0, 0xFFFFFFFF}  # never cut at a snap length: a read must see MSG_TRUNC


def _icmp_echo(host: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as raw:
        raw.sendto(bytes(ICMP(type=8, id=0x4242, seq=1)), (host, 0))


@needs_capture
@pytest.mark.parametrize("family, options", [
    (socket.AF_INET, dict()), (socket.AF_INET, dict(icmp=True)), (socket.AF_INET, dict(any_protocol=True)),
    (socket.AF_INET, dict(port=None)), (socket.AF_INET6, dict()), (socket.AF_INET6, dict(any_protocol=True)),
], ids=["v4-port", "v4-port-icmp", "v4-host", "v4-tcp", "v6-port", "v6-host"])
def test_the_kernel_filter_keeps_what_the_python_filter_keeps(family, options):
    import contextlib
    import random

    from ftpprobe.packets import ETH_P_ALL, attach_bpf, bpf_program

    # An address of this test's own (127/8 is all loopback), so no other traffic matches.
    host = "::1" if family == socket.AF_INET6 else f"127.{random.randrange(1, 255)}.{random.randrange(256)}.7"
    with contextlib.ExitStack() as stack:
        try:
            listeners = [stack.enter_context(socket.create_server((host, 0), family=family)) for _ in range(2)]
        except OSError as exc:
            pytest.skip(f"no {host} here: {exc}")
        port = listeners[0].getsockname()[1]
        options = {"port": port, **options}
        everything, filtered = (stack.enter_context(socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM,
                                                                   socket.htons(ETH_P_ALL))) for _ in range(2))
        attach_bpf(filtered, bpf_program(host, **options))
        for sock in (everything, filtered):  # what was queued before the filter was attached
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while True:
                    sock.recv(1 << 18)
        for listener in listeners:  # TCP to the probed port and to another one, and UDP to the probed one
            with socket.create_connection(listener.getsockname()[:2]) as client:
                client.sendall(b"NOOP\r\n")
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.sendto(b"x", (host, port))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.3", 0))
            udp.sendto(b"x", ("127.0.0.2", 9))  # between two other hosts
        if family == socket.AF_INET:
            _icmp_echo(host)
        time.sleep(0.2)
        seen = {}
        for name, sock in (("everything", everything), ("filtered", filtered)):
            seen[name] = []
            with contextlib.suppress(BlockingIOError):
                while True:
                    data, address = sock.recvfrom(1 << 18)
                    seen[name].append((data, address[3] == ARPHRD_LOOPBACK and address[2] == PACKET_OUTGOING))
    assert not any(outgoing for _, outgoing in seen["filtered"])  # loopback's outgoing copies dropped in the kernel
    keep = packet_filter(host, **options)
    kept = [data for data, outgoing in seen["everything"] if not outgoing and keep(data)]
    assert [data for data, _ in seen["filtered"]] == kept
    assert len(kept) >= 4 and len(seen["everything"]) > len(kept)  # it kept some and dropped some


@needs_capture
def test_packet_times_are_the_kernels_not_when_python_read_them():
    listener = socket.create_server(("127.0.0.1", 0))  # the kernel answers for it: no accept() needed
    port = listener.getsockname()[1]
    sender = subprocess.Popen([sys.executable, "-c", (
        "import socket, sys, time\n"
        f"s = socket.create_connection(('127.0.0.1', {port}))\n"
        "sys.stdin.readline()\n"
        "for i in range(5):\n"
        "    s.sendall(b'NOOP\\r\\n'); time.sleep(0.1)\n")], stdin=subprocess.PIPE)
    cap = Capture("127.0.0.1", port)
    cap.start()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(5)  # the reading thread gets no turn while this thread computes
    try:
        sender.stdin.write(b"go\n")
        sender.stdin.flush()
        until = time.monotonic() + 0.8
        while time.monotonic() < until:
            pass
    finally:
        sys.setswitchinterval(interval)
        sender.stdin.close()
        sender.wait(5)
        cap.stop()
        listener.close()
    times = [s.time for s in cap.segments if s.payload]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(times) == 5 and all(0.08 < gap < 0.3 for gap in gaps), gaps


@needs_capture
def test_a_capture_that_cannot_start_closes_what_it_opened(monkeypatch, tmp_path):
    import os

    from ftpprobe.packets import CaptureError

    before = sorted(os.listdir("/proc/self/fd"))

    def out_of_descriptors():
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(socket, "socketpair", out_of_descriptors)
    cap = Capture("127.0.0.1", 9, pcap=str(tmp_path / "x.pcap"))
    with pytest.raises(CaptureError, match="cannot open a packet capture: Too many open files"):
        cap.start()
    assert sorted(os.listdir("/proc/self/fd")) == before


@needs_capture
def test_packets_past_the_cap_are_counted_and_said(monkeypatch, tmp_path):
    from scapy.all import rdpcap

    import ftpprobe.packets

    monkeypatch.setattr(ftpprobe.packets, "MAX_PACKETS", 3)
    listener = socket.create_server(("127.0.0.1", 0))
    cap = Capture("127.0.0.1", listener.getsockname()[1], pcap=str(tmp_path / "cap.pcap"))
    cap.start()
    try:
        with socket.create_connection(listener.getsockname()) as client:
            client.sendall(b"NOOP\r\n")
            time.sleep(0.05)
    finally:
        cap.stop()
        listener.close()
    assert cap.packets == 3 and cap.over_cap >= 2  # SYN, SYN-ACK, ACK kept; the data and FINs not
    assert f"{cap.over_cap} past the cap of 3 packets" in cap.losses()
    assert cap.filter_note.endswith(": 3 packets") and len(rdpcap(str(tmp_path / "cap.pcap"))) == 3


@needs_capture
def test_a_capture_whose_thread_cannot_start_says_so_and_closes_everything(monkeypatch, tmp_path):
    import os

    from ftpprobe.packets import CaptureError

    before = sorted(os.listdir("/proc/self/fd"))

    def no_thread(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", no_thread)
    cap = Capture("127.0.0.1", 9, pcap=str(tmp_path / "x.pcap"))
    with pytest.raises(CaptureError, match="can't start new thread"):
        cap.start()
    assert sorted(os.listdir("/proc/self/fd")) == before


@needs_capture
def test_stop_gives_up_on_a_stalled_pcap_writer_and_the_thread_closes_it_later(monkeypatch):
    import ftpprobe.packets

    monkeypatch.setattr(ftpprobe.packets, "STOP_WAIT", 0.3)

    class StalledWriter:  # a pcap file on a pipe nobody reads
        def __init__(self):
            self.release, self.closed = threading.Event(), False

        def write_packet(self, *args, **kwargs):
            self.release.wait(10)

        def close(self):
            self.closed = True

    host = "127.0.9.9"  # one packet only, and nothing else to or from this address
    cap = Capture(host, any_protocol=True)
    cap.start()
    writer = cap._writer = StalledWriter()
    thread = cap._thread
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        sink.bind((host, 0))
        udp.sendto(b"x", sink.getsockname())
        time.sleep(0.05)
    began = time.monotonic()
    cap.stop()
    assert time.monotonic() - began < 1.0 and "did not stop within 0.3 s" in cap.losses()
    writer.release.set()
    thread.join(2)  # with no packet left to read, it must still notice the stop
    assert not thread.is_alive() and writer.closed and cap.packets == 1


@needs_capture
def test_the_permission_check_closes_its_trial_socket_off_the_callers_thread(monkeypatch):
    """Closing a packet socket waits for an RCU grace period, so the check
    hands the close to a thread; with no thread to spare it closes the socket
    itself.  Either way no descriptor stays open."""
    import os

    from ftpprobe.packets import permission_problem

    check = permission_problem.__wrapped__  # past the process-wide cache
    before = sorted(os.listdir("/proc/self/fd"))
    assert check() is None
    deadline = time.monotonic() + 2
    while sorted(os.listdir("/proc/self/fd")) != before and time.monotonic() < deadline:
        time.sleep(0.005)
    assert sorted(os.listdir("/proc/self/fd")) == before

    def no_thread(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", no_thread)
    assert check() is None
    assert sorted(os.listdir("/proc/self/fd")) == before
