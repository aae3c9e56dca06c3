"""The reflector under load and abuse, and a prober facing something that is not a reflector."""

import logging
import socket

import pytest
import trio

from ftpprobe.codec import Command
from ftpprobe.reflector import Reflector, ReflectorLimits, parse_reflection
from ftpprobe.transport import ControlSession

from conftest import run_cli


async def start(nursery, **limits):
    reflector = Reflector("127.0.0.1", (0,), ReflectorLimits(**limits))
    (port,) = await nursery.start(reflector.serve)
    return reflector, port


async def well_behaved_answer(port: int, source: str = "127.0.0.3") -> bytes:
    """A normal client's PASV round trip (from another address than the
    abusers): what the reflector received, as it reports it."""
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    async with ControlSession(trio.SocketStream(sock), "127.0.0.1", port, 5) as s:
        assert (await s.greet()).code == 220
        reply = await s.command(Command("PASV"))
        return parse_reflection(reply.text)["raw"]


async def test_reports_exact_bytes_peer_and_reads(nursery):
    _, port = await start(nursery)
    async with await ControlSession.open("127.0.0.1", port, 5) as s:
        await s.greet()
        ex = await s.exchange(Command("PORT", "127,0,0,1,4,1", trailer=b" "), cuts=(2,))
        seen = parse_reflection(ex.reply.text)
        assert seen["raw"] == b"PORT 127,0,0,1,4,1 \r\n"
        assert seen["peer"] == ("127.0.0.1", s.local_port)
        assert seen["reads"] == [2, 19]


async def test_flood_huge_lines_garbage_and_silent_readers_do_not_stop_service(nursery, caplog):
    caplog.set_level(logging.WARNING, "ftpprobe.reflect")
    reflector, port = await start(nursery, per_address=20, max_sessions=30, max_line=512, idle=2)
    hogs = []
    # 18 connections that never read and never send, 1 MB line, binary garbage
    for _ in range(18):
        hogs.append(await trio.open_tcp_stream("127.0.0.1", port))
    huge = await trio.open_tcp_stream("127.0.0.1", port)
    with trio.move_on_after(2):
        try:
            await huge.send_all(b"A" * (1 << 20))
        except trio.BrokenResourceError:
            pass  # cut off by the reflector: what we want
    garbage = await trio.open_tcp_stream("127.0.0.1", port)
    await garbage.send_all(bytes(range(256)) * 4 + b"\n")
    # a well-behaved client still gets its answer
    assert await well_behaved_answer(port) == b"PASV\r\n"
    # past the per-address cap, new sessions are refused with 421, logged once
    extra = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
    for conn in extra:
        assert (await conn.receive_some(100)).startswith(b"421 ")
    refusals = [r for r in caplog.records if "refused 127.0.0.1" in r.getMessage()]
    assert len(refusals) == 1
    for conn in hogs + extra + [huge, garbage]:
        await conn.aclose()
    with trio.fail_after(3):
        await reflector.wait_idle()
    assert reflector.sessions == 0 and not reflector.per_address  # every slot released
    assert not reflector.listeners  # the well-behaved client's passive listener went with its session


async def test_huge_line_is_cut_off(nursery):
    _, port = await start(nursery, max_line=512)
    conn = await trio.open_tcp_stream("127.0.0.1", port)
    await conn.receive_some(200)  # greeting
    with trio.move_on_after(2):
        try:
            await conn.send_all(b"B" * 100_000)
        except trio.BrokenResourceError:
            pass
    data = b""
    with trio.move_on_after(3):
        try:
            while chunk := await conn.receive_some(1000):
                data += chunk
        except trio.BrokenResourceError:
            pass
    assert b"500 line longer than 512 bytes" in data
    await conn.aclose()


async def test_connects_back_only_to_the_control_peer(nursery):
    """PORT naming a third party: LIST connects to the control peer's address only."""
    _, port = await start(nursery)
    trap = trio.socket.socket()
    await trap.bind(("127.0.0.2", 0))
    trap.listen(1)
    trap_port = trap.getsockname()[1]
    async with await ControlSession.open("127.0.0.1", port, 5) as s:
        await s.greet()
        await s.command(Command("PORT", f"127,0,0,2,{trap_port >> 8},{trap_port & 255}"))
        await s.send_raw([b"LIST\r\n"])
        first = await s.read_reply()
        assert first.code == 150 and f"127.0.0.1:{trap_port}" in first.text
        final = await s.read_reply()
        assert final.code == 425  # nothing listens on 127.0.0.1:trap_port
    with trio.move_on_after(0.3):
        await trap.accept()
        pytest.fail("the reflector connected to the third-party address")
    trap.close()


def test_fingerprint_against_a_non_reflector_fails_clearly(pyftpd):
    server = pyftpd()
    done = run_cli("fingerprint", "--timeout", "2", f"127.0.0.1:{server.port}")
    assert done.returncode == 3
    assert "is not an ftpprobe reflector" in done.stdout
    assert "Traceback" not in done.stderr


def test_fingerprint_against_an_unreachable_reflector_fails_clearly():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        done = run_cli("fingerprint", "--timeout", "2", f"127.0.0.1:{s.getsockname()[1]}")
    assert done.returncode == 3 and "Connection refused" in done.stdout


def test_reflect_without_permission_for_port_fails_clearly():
    import os
    if os.geteuid() == 0:
        pytest.skip("root may bind port 21")
    done = run_cli("reflect", "--listen", "127.0.0.1", "--ports", "21", timeout=10)
    assert done.returncode == 3 and "CAP_NET_BIND_SERVICE" in done.stderr
