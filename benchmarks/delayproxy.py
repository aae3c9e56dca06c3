"""A delaying TCP proxy for nftables-redirected connections (see ../shared/DESIGN.md, "Latency").

Every TCP connection that an nftables ``redirect`` rule sends to ``PORT`` is
forwarded to its original destination (``SO_ORIGINAL_DST``); each chunk is
delivered ``DELAY`` seconds after it arrived, in both directions, so a round
trip costs ``2 * DELAY`` more (control and data connections alike).  The
proxy's own upstream connections carry the socket mark ``MARK`` so the
redirect rule can leave them alone.  The client's connect completes at the
proxy (not delayed); a refused upstream connect shows as a close.

Run: python delayproxy.py PORT DELAY MARK   (prints "ready" when listening)
"""

from __future__ import annotations

import asyncio
import collections
import socket
import struct
import sys

SO_ORIGINAL_DST = 80


class Half(asyncio.Protocol):
    """One side of a proxied connection; forwards what it receives to ``peer`` late."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self.loop, self.delay = loop, delay
        self.peer: Half | None = None
        self.transport: asyncio.Transport | None = None
        self.queue: collections.deque = collections.deque()  # (due, bytes | None for EOF)
        self.timer: asyncio.TimerHandle | None = None
        self.pending: list = []  # arrived before the peer was connected

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _push(self, item) -> None:
        if self.peer is None:
            self.pending.append(item)
            return
        self.peer.queue.append((self.loop.time() + self.delay, item))
        self.peer._arm()

    def _arm(self) -> None:
        if self.timer is None and self.queue:
            self.timer = self.loop.call_at(self.queue[0][0], self._flush)

    def _flush(self) -> None:
        self.timer = None
        now = self.loop.time()
        while self.queue and self.queue[0][0] <= now:
            _, item = self.queue.popleft()
            if self.transport is None or self.transport.is_closing():
                self.queue.clear()
                return
            if item is None:
                try:
                    self.transport.write_eof()
                except (OSError, NotImplementedError):  # the peer is gone already
                    self.transport.close()
            elif item is False:
                self.transport.close()
            else:
                self.transport.write(item)
        self._arm()

    def link(self, peer: "Half") -> None:
        self.peer = peer
        for item in self.pending:
            self._push(item)
        self.pending = []

    def data_received(self, data: bytes) -> None:
        self._push(data)

    def eof_received(self):
        self._push(None)
        return True  # keep our side open for the other direction

    def connection_lost(self, exc) -> None:
        self._push(False)


async def main(port: int, delay: float, mark: int) -> None:
    loop = asyncio.get_running_loop()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(4096)
    listener.setblocking(False)
    print("ready", flush=True)
    while True:
        conn, _ = await loop.sock_accept(listener)
        loop.create_task(serve(loop, conn, delay, mark))


async def serve(loop, conn: socket.socket, delay: float, mark: int) -> None:
    try:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:  # the client already gave up (reset before we looked)
        conn.close()
        return
    dport = struct.unpack_from("!H", raw, 2)[0]
    daddr = socket.inet_ntoa(raw[4:8])
    client = Half(loop, delay)
    await loop.connect_accepted_socket(lambda: client, conn)
    up = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    up.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    up.setblocking(False)
    server = Half(loop, delay)
    try:
        await loop.sock_connect(up, (daddr, dport))
    except OSError:
        up.close()
        client.transport.abort() if client.transport else None
        return
    await loop.connect_accepted_socket(lambda: server, up)
    client.link(server)
    server.link(client)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])))
