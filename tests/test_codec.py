"""The codec, fed whole and one byte at a time (h11's habit)."""

import ipaddress

import pytest
from hypothesis import given, strategies as st

from ftpprobe.codec import (
    NEED_DATA, Command, Reply, ReplyReader, encode_eprt, encode_port, escape, parse_227, parse_229,
    parse_eprt, parse_passive, parse_port, parse_replies,
)
from ftpprobe.errors import ProtocolError

BANNER_40 = b"".join(b"230-line %d of the banner\r\n" % i for i in range(39)) + b"230 Login successful.\r\n"


def byte_by_byte(data: bytes, **limits) -> list[Reply]:
    reader, out = ReplyReader(**limits), []
    for i in range(len(data)):
        reader.feed(data[i:i + 1])
        while (reply := reader.next_reply()) is not NEED_DATA:
            out.append(reply)
    return out


@pytest.mark.parametrize("feed", [parse_replies, byte_by_byte])
def test_multiline_banner_of_40_lines(feed):
    (reply,) = feed(BANNER_40)
    assert reply.code == 230
    assert len(reply.lines) == 40
    assert reply.lines[-1] == b"230 Login successful."
    assert reply.raw == BANNER_40


@pytest.mark.parametrize("feed", [parse_replies, byte_by_byte])
def test_multiline_with_inner_lines_that_look_like_codes(feed):
    data = b"211-Features:\r\n EPSV\r\n211-not the end\r\n220 other code\r\n211 End\r\n226 next\n"
    first, second = feed(data)
    assert (first.code, len(first.lines), second.code) == (211, 5, 226)


def test_bare_lf_and_code_without_text():
    assert [r.code for r in parse_replies(b"200 ok\n226\r\n")] == [200, 226]


def test_reader_returns_need_data_until_line_ends():
    reader = ReplyReader()
    reader.feed(b"227 Entering Passive Mode (1,2,3,4,5,6)")
    assert reader.next_reply() is NEED_DATA
    reader.feed(b"\r\n")
    assert reader.next_reply().code == 227


def test_line_longer_than_limit_is_an_error_even_before_its_end():
    reader = ReplyReader(max_line=100)
    reader.feed(b"220 " + b"A" * 200)
    with pytest.raises(ProtocolError, match="longer than 100"):
        reader.next_reply()
    with pytest.raises(ProtocolError):  # stays failed
        reader.next_reply()


def test_endless_multiline_reply_is_bounded():
    reader = ReplyReader(max_reply=10_000)
    with pytest.raises(ProtocolError, match="no final line"):
        for _ in range(2000):  # 20 kB of lines, never a final one
            reader.feed(b"220-more\r\n")
            assert reader.next_reply() is NEED_DATA


def test_garbage_first_line():
    with pytest.raises(ProtocolError, match="not an FTP reply"):
        parse_replies(b"SSH-2.0-OpenSSH\r\n")


@pytest.mark.parametrize("text, expected", [
    ("227 Entering Passive Mode (192,168,1,2,117,48)", ("192.168.1.2", 30000)),
    ("227 Entering Passive Mode 10,0,0,1,4,1", ("10.0.0.1", 1025)),   # no parentheses
    ("227 =127,0,0,1,195,80", ("127.0.0.1", 50000)),                   # as some servers do
])
def test_parse_227_anywhere_after_the_code(text, expected):
    addr, port = parse_227(text)
    assert (str(addr), port) == expected


@pytest.mark.parametrize("text", ["227 (1,2,3,4,300,1)", "227 (256,2,3,4,1,1)", "227 (1,2,3,4,0,0)", "227 nothing"])
def test_parse_227_rejects(text):
    with pytest.raises(ProtocolError):
        parse_227(text)


def test_parse_229_and_other_delimiters():
    assert parse_229("229 Entering Extended Passive Mode (|||6446|)") == 6446
    assert parse_229("229 ok (!!!1025!)") == 1025
    for bad in ("229 (|||0|)", "229 (|||65536|)", "229 (||6446|)", "229 no"):
        with pytest.raises(ProtocolError):
            parse_229(bad)


def test_parse_passive_dispatches_on_the_reply_code():
    (pasv,) = parse_replies(b"227 Entering Passive Mode (192,0,2,7,117,48)\r\n")
    (epsv,) = parse_replies(b"229 Entering Extended Passive Mode (|||6446|)\r\n")
    (refused,) = parse_replies(b"500 no\r\n")
    assert parse_passive(pasv) == (ipaddress.IPv4Address("192.0.2.7"), 30000)
    assert parse_passive(epsv) == (None, 6446)
    with pytest.raises(ProtocolError, match="expected a 227 reply, got 500"):
        parse_passive(refused)


def test_port_and_eprt_round_trip_ipv4_and_ipv6():
    assert encode_port("192.0.2.7", 30000) == "192,0,2,7,117,48"
    assert parse_port("192,0,2,7,117,48") == (ipaddress.IPv4Address("192.0.2.7"), 30000)
    assert encode_eprt("132.235.1.2", 6275) == "|1|132.235.1.2|6275|"      # RFC 2428 §2 example
    assert encode_eprt("1080::8:800:200C:417A", 5282) == "|2|1080::8:800:200c:417a|5282|"
    assert parse_eprt("|2|1080::8:800:200C:417A|5282|") == (ipaddress.IPv6Address("1080::8:800:200c:417a"), 5282)
    with pytest.raises(ProtocolError):
        parse_eprt("|1|::1|21|")  # family does not match
    with pytest.raises(ValueError):
        encode_port("::1", 21)


def test_command_carries_exact_bytes_and_splits():
    assert Command("PASV", trailer=b" ", line_ending=b"\n").encode() == b"PASV \n"
    assert Command("P@SW").encode() == b"P@SW\r\n"
    port = Command("PORT", "10,0,0,2,4,1")
    assert port.segments([2]) == [b"PO", b"RT 10,0,0,2,4,1\r\n"]
    assert b"".join(port.segments([8, -3])) == port.encode()
    with pytest.raises(ValueError):
        port.segments([0])


def test_secret_argument_never_displayed():
    cmd = Command("PASS", "hunter2", secret=True)
    assert "hunter2" not in cmd.display()
    assert cmd.encode() == b"PASS hunter2\r\n"


def test_escape_is_unambiguous():
    assert escape(b"PASV \n") == "PASV \\n"
    assert escape(b"a\\b\x00\r") == "a\\\\b\\x00\\r"


@given(st.binary(max_size=2000))
def test_fuzz_reader_raises_only_protocol_error(data):
    for feed in (parse_replies, lambda d: byte_by_byte(d, max_line=256, max_reply=4096)):
        try:
            feed(data)
        except ProtocolError:
            pass


@given(st.lists(st.tuples(st.integers(100, 599), st.lists(st.text("abc -=", max_size=20), max_size=5)), min_size=1, max_size=5))
def test_fuzz_generated_replies_round_trip(replies):
    wire = b""
    for code, inner in replies:
        if inner:
            wire += b"%d-start\r\n" % code + b"".join(b" " + t.encode() + b"\r\n" for t in inner)
        wire += b"%d end\r\n" % code
    assert [r.code for r in parse_replies(wire)] == [c for c, _ in replies]
    assert [r.code for r in byte_by_byte(wire)] == [c for c, _ in replies]


@given(st.ip_addresses(v=4), st.integers(1, 65535))
def test_fuzz_port_round_trip(addr, port):
    assert parse_port(encode_port(addr, port)) == (addr, port)
    assert parse_227(f"227 Entering Passive Mode ({encode_port(addr, port)})") == (addr, port)
    assert parse_eprt(encode_eprt(addr, port)) == (addr, port)


@given(st.text(max_size=300))
def test_fuzz_address_parsers_raise_only_protocol_error(text):
    for parse in (parse_227, parse_229, parse_port, parse_eprt):
        try:
            parse(text)
        except ProtocolError:
            pass


@given(st.lists(st.binary(min_size=1, max_size=600), max_size=40))
def test_fuzz_reader_buffer_stays_bounded(chunks):
    """Whatever arrives, the reader holds at most max_line + one chunk, or fails."""
    reader = ReplyReader(max_line=512, max_reply=4096)
    try:
        for chunk in chunks:
            reader.feed(chunk)
            while reader.next_reply() is not NEED_DATA:
                pass
            assert len(reader.buffered) <= 4096 + 512 + 600
    except ProtocolError:
        pass
