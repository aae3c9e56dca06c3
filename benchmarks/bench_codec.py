"""Codec throughput: replies parsed per second, whole and byte by byte.

Run: python benchmarks/bench_codec.py   (numbers are printed, never asserted)
"""

import time

from ftpprobe.codec import NEED_DATA, ReplyReader, parse_227

BANNER = b"".join(b"230-line %d of the banner\r\n" % i for i in range(39)) + b"230 Login successful.\r\n"
PASV = b"227 Entering Passive Mode (192,0,2,10,117,48).\r\n"


def bench(label, fn, n):
    started = time.perf_counter()
    for _ in range(n):
        fn()
    elapsed = time.perf_counter() - started
    print(f"{label:40s} {n / elapsed:12,.0f} /s")


def whole(data):
    reader = ReplyReader()
    reader.feed(data)
    return reader.next_reply()


def bytewise(data):
    reader = ReplyReader()
    for i in range(len(data)):
        reader.feed(data[i:i + 1])
        if (reply := reader.next_reply()) is not NEED_DATA:
            return reply


if __name__ == "__main__":
    bench("227 reply, whole", lambda: whole(PASV), 100_000)
    bench("227 reply, parse_227", lambda: parse_227(PASV.decode()), 100_000)
    bench("40-line 230 banner, whole", lambda: whole(BANNER), 20_000)
    bench("40-line 230 banner, byte by byte", lambda: bytewise(BANNER), 500)
