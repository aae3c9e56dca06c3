"""One client's reset, half-close or flood never ends the reflector or the emulated
middlebox, and the reflector's resources stay bounded (issue 9).

Real trio sockets against a real :class:`Reflector` (and a :class:`Middlebox` in
front of one) started in the test process.  Under trio >= 0.25 a nursery raises
an ExceptionGroup, so an ``except`` around a nursery no longer catches one
client's reset: every test here ends with a normal client being served, and a
server that died of the abuse fails the test (its error reaches the test's
nursery).
"""

import json
import logging
import os
import re
import socket
import struct
from dataclasses import dataclass

import pytest
import trio

from ftpprobe.codec import Command, parse_passive
from ftpprobe.middlebox import Middlebox
from ftpprobe.reflector import Reflector, ReflectorLimits
from ftpprobe.transport import ControlSession

# Limits high enough that the flood tests exercise resets, not admission.
GENEROUS = dict(max_sessions=1000, per_address=1000, rate=100_000)


@dataclass
class Path:
    """Where a client connects: straight to the reflector, or through a middlebox."""

    port: int
    reflector: Reflector
    middlebox: Middlebox | None = None

    async def settle(self) -> None:
        """Wait until every session the abusers opened has been dealt with."""
        if self.middlebox is not None:
            await self.middlebox.wait_idle()
        await self.reflector.wait_idle()


@pytest.fixture(params=["reflector", "middlebox"])
async def path(request, nursery, caplog):
    """A reflector with :data:`GENEROUS` limits, alone or behind a transparent middlebox.

    Fails the test if either logged an error (their last-resort handler logs
    a bug in a session instead of dying of it: that must not hide one here).
    """
    caplog.set_level(logging.WARNING, "ftpprobe")
    reflector = Reflector("127.0.0.1", (0,), ReflectorLimits(**GENEROUS))
    (port,) = await nursery.start(reflector.serve)
    box = None
    if request.param == "middlebox":
        box = Middlebox("127.0.0.1", port, ())
        port = await nursery.start(box.serve)
    yield Path(port, reflector, box)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors


def reset(sock) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def connect(port: int, source: str = "127.0.0.1") -> trio.socket.SocketType:
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    return sock


async def read_reply_to(sock, code: bytes) -> bytes:
    """Read until a final reply line starting with ``code`` and a space arrived."""
    data = b""
    while not re.search(rb"(^|\n)" + code + rb" [^\n]*\n", data):
        chunk = await sock.recv(4096)
        assert chunk, f"connection closed before a {code!r} reply; got {data!r}"
        data += chunk
    return data


async def assert_serves(port: int) -> None:
    """A normal client, from another address than the abusers: greeting, login,
    PASV answered with a 227 whose data connection delivers the reflector's token."""
    with trio.fail_after(10):
        sock = await connect(port, "127.0.0.3")
        async with ControlSession(trio.SocketStream(sock), "127.0.0.1", port, 5) as s:
            assert (await s.greet()).code == 220
            await s.login("anonymous", "probe@example.net")
            reply = await s.command(Command("PASV"))
            assert reply.code == 227, reply.text
            token = re.search(r"declared=[0-9a-f]+\.([0-9a-f]{16})", reply.text).group(1)
            address, data_port = parse_passive(reply)
            data = await trio.open_tcp_stream(str(address), data_port)
            received = b""
            async with data:
                while chunk := await data.receive_some(100):
                    received += chunk
            assert received == f"ftpprobe-token {token}\r\n".encode()


async def test_reset_mid_line(path):
    with trio.fail_after(10):
        sock = await connect(path.port)
        await read_reply_to(sock, b"220")
        await sock.send(b"USER anonym")  # part of a line, then RST
        reset(sock)
        await path.settle()
        await assert_serves(path.port)


async def test_reset_right_after_pasv(path):
    with trio.fail_after(10):
        sock = await connect(path.port)
        await read_reply_to(sock, b"220")
        await sock.send(b"PASV\r\n")
        reset(sock)  # the reflector answers into a reset connection
        await path.settle()
        assert path.reflector.listeners == 0  # the session's listener went with it
        await assert_serves(path.port)


async def test_reset_while_the_reflector_connects_back(path):
    with trio.fail_after(10), trio.socket.socket() as trap:
        # Direct, the reflector connects back to this listener; through the
        # box (no pinhole) to 127.0.0.2 where nothing listens: a 425.  Either
        # way the client is gone by the time the reflector replies.
        await trap.bind(("127.0.0.1", 0))
        trap.listen(1)
        trap_port = trap.getsockname()[1]
        sock = await connect(path.port)
        await read_reply_to(sock, b"220")
        await sock.send(f"PORT 127,0,0,1,{trap_port >> 8},{trap_port & 255}\r\n".encode())
        await read_reply_to(sock, b"200")
        await sock.send(b"LIST\r\n")
        await read_reply_to(sock, b"150")  # sent before the reflector connects
        reset(sock)
        await path.settle()
        await assert_serves(path.port)


async def test_half_close_gets_its_answers_and_the_service_goes_on(path):
    """A client that shuts down its sending side still reads: it gets the reply
    to its complete line and the report of its unterminated last one."""
    with trio.fail_after(10):
        sock = await connect(path.port)
        await sock.send(b"PASV\r\nNOOP")
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := await sock.recv(4096):
            received += chunk
        sock.close()
        assert b"\r\n227 Entering Passive Mode" in received
        assert f"raw={b'NOOP'.hex()} ".encode() in received
        await path.settle()
        await assert_serves(path.port)


async def test_500_clients_that_reset_at_once(path):
    async def resetter(count: int) -> None:
        for _ in range(count):
            reset(await connect(path.port))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(resetter, 50)
        # Accepted in order: once the normal client is served, all 500 were accepted.
        await assert_serves(path.port)
        await path.settle()
    assert path.reflector.sessions == 0 and not path.reflector.per_address
    assert path.reflector.listeners == 0


# -- bounded resources -------------------------------------------------------------

def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# What one reflector session may hold: its control connection, its one passive
# listener and the data connection that listener accepted.
FDS_PER_SESSION = 3


async def test_pasv_flood_keeps_descriptors_bounded(nursery):
    """8 sessions from one address sending PASV as fast as they can for 10 s:
    at most FDS_PER_SESSION descriptors per reflector session (the flooders'
    own sockets are in this process too), and a normal client is served."""
    flooders, duration = 8, 10.0
    reflector = Reflector("127.0.0.1", (0,))  # the default limits: 8 sessions per address
    (port,) = await nursery.start(reflector.serve)
    baseline = open_fds()
    # 9 reflector sessions (the flooders and the normal client), 8 flooder
    # sockets, the normal client's control and data sockets.
    bound = baseline + 9 * FDS_PER_SESSION + flooders + 2
    peak = baseline
    pasvs = 0

    async def flood() -> None:
        nonlocal pasvs
        sock = await connect(port)
        with sock:
            await read_reply_to(sock, b"220")
            while True:
                await sock.send(b"PASV\r\n")
                await read_reply_to(sock, b"227")
                pasvs += 1

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, open_fds())
            await trio.sleep(0.01)  # a sampling period, not a synchronisation

    with trio.fail_after(duration + 20):
        async with trio.open_nursery() as inner:
            inner.start_soon(sample)
            for _ in range(flooders):
                inner.start_soon(flood)
            await trio.sleep(duration / 2)
            await assert_serves(port)  # in the middle of the flood
            assert reflector.listeners <= flooders + 1
            await trio.sleep(duration / 2)
            inner.cancel_scope.cancel()
        await reflector.wait_idle()
    assert pasvs > 1000  # the flood really ran
    assert peak <= bound, f"{peak - baseline} descriptors over the baseline, bound {bound - baseline}"
    assert reflector.listeners == 0


async def test_a_new_pasv_closes_the_previous_listener(nursery):
    with trio.fail_after(10):
        reflector = Reflector("127.0.0.1", (0,))
        (port,) = await nursery.start(reflector.serve)
        async with await ControlSession.open("127.0.0.1", port, 5) as s:
            await s.greet()
            _, first = parse_passive(await s.command(Command("PASV")))
            _, second = parse_passive(await s.command(Command("EPSV")))
            with pytest.raises(OSError):
                await trio.open_tcp_stream("127.0.0.1", first)
            assert reflector.listeners == 1
            async with await trio.open_tcp_stream("127.0.0.1", second) as data:
                assert (await data.receive_some(100)).startswith(b"ftpprobe-token ")


async def test_global_listener_cap(nursery):
    with trio.fail_after(10):
        reflector = Reflector("127.0.0.1", (0,), ReflectorLimits(max_listeners=2))
        (port,) = await nursery.start(reflector.serve)
        sessions = [await ControlSession.open("127.0.0.1", port, 5) for _ in range(3)]
        for s in sessions:
            await s.greet()
        assert (await sessions[0].command(Command("PASV"))).code == 227
        assert (await sessions[1].command(Command("PASV"))).code == 227
        refused = await sessions[2].command(Command("PASV"))
        assert refused.code == 425 and "too many passive listeners" in refused.text
        await sessions[0].command(Command("QUIT"))  # its listener is closed before the 221
        await sessions[0].aclose()
        assert (await sessions[2].command(Command("PASV"))).code == 227
        for s in sessions[1:]:
            await s.aclose()


async def test_journal_rotates_at_its_size_cap(nursery, tmp_path):
    journal = tmp_path / "journal.jsonl"
    with trio.fail_after(20):
        reflector = Reflector("127.0.0.1", (0,), ReflectorLimits(journal_bytes=4096), str(journal))
        (port,) = await nursery.start(reflector.serve)
        async with await ControlSession.open("127.0.0.1", port, 5) as s:
            await s.greet()
            for i in range(60):  # each entry is about 200 bytes: 12 kB in all
                await s.command(Command("NOOP", str(i)))
    rotated = tmp_path / "journal.jsonl.1"
    assert rotated.exists()
    assert journal.stat().st_size <= 4096 and rotated.stat().st_size <= 4096
    entries = [json.loads(line) for line in journal.read_text().splitlines()]
    assert b"NOOP 59\r\n".hex() in [e["raw"] for e in entries]  # the newest lines are kept


async def test_address_tables_stay_bounded(nursery):
    """300 addresses, each admitted once and refused once (rate 1 a minute):
    the rate and refusal tables keep at most ``tracked_addresses`` entries and
    ``per_address`` only the addresses with a session open."""
    with trio.fail_after(30):
        reflector = Reflector("127.0.0.1", (0,), ReflectorLimits(rate=1, tracked_addresses=100))
        (port,) = await nursery.start(reflector.serve)
        for i in range(300):
            source = f"127.1.{i >> 8}.{i & 255}"
            first = await connect(port, source)
            with first:
                await read_reply_to(first, b"220")
                second = await connect(port, source)
                with second:
                    await read_reply_to(second, b"421")
            await reflector.wait_idle()
            assert len(reflector.recent) <= 100 and len(reflector.refused_logged) <= 100
        assert not reflector.per_address
        assert f"127.1.1.{299 & 255}" in reflector.recent  # the newest are remembered
        await assert_serves(port)
