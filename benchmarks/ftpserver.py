"""A pyftpdlib server for the benchmarks: HOST PORT LOW HIGH MODEL (passive range inclusive).

Anonymous read access to a folder with one file, no session limit, a listen
backlog of 4096 (a fleet of 1000 sites connects at once).  Prints "ready".
MODEL: ``threaded`` (a thread per session: the map and probe cases) or
``async`` (pyftpdlib's one-thread event loop: the fleet case, where a
thousand threads would cost the server more CPU than the sessions do).

pyftpdlib's own handler now and then leaves a session's commands unread:
its PORT connector, closed again at QUIT, unregisters an fd number that
another session may have taken since.  That matches the stalls once seen
here with the event loop (a line delivered, never read, a 5 s timeout).
:func:`ftpprobe.demo.handler_class` fixes it; the map and probe cases keep
a thread per session all the same.

pyftpdlib copies its whole passive range into a list for every PASV (about
0.5 ms for 55,536 ports, 6 ms per checked site): :class:`UniformPorts` hands
it a few ports drawn uniformly from the range instead, so the server stands
in for many sites without that cost (each PASV is still a uniform draw from
LOW-HIGH; a port in use is skipped as before).
"""

import logging
import os
import random
import sys
import tempfile

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.servers import FTPServer, ThreadedFTPServer

from ftpprobe.demo import handler_class


class UniformPorts:
    """LOW..HIGH (inclusive) for pyftpdlib's ``passive_ports``: indexing gives
    the ends (its startup banner), iterating gives 16 distinct ports drawn
    uniformly from the range (the candidates of one PASV)."""

    def __init__(self, low: int, high: int) -> None:
        self.ports = range(low, high + 1)

    def __getitem__(self, i: int) -> int:
        return self.ports[i]

    def __len__(self) -> int:
        return len(self.ports)

    def __iter__(self):
        return iter(random.sample(self.ports, 16))


host, port, low, high, model = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
if os.environ.get("BENCH_SERVER_LOG"):  # every command and reply, to that file
    logging.basicConfig(filename=os.environ["BENCH_SERVER_LOG"], level=logging.DEBUG,
                        format="%(relativeCreated)9.1f %(message)s")
else:
    logging.getLogger("pyftpdlib").addHandler(logging.NullHandler())
    logging.getLogger("pyftpdlib").setLevel(logging.CRITICAL)
home = tempfile.mkdtemp(prefix="ftpprobe-bench-")
with open(os.path.join(home, "welcome.txt"), "w") as f:
    f.write("served by the ftpprobe benchmark\n")
authorizer = DummyAuthorizer()
authorizer.add_anonymous(home, perm="elr")
handler = handler_class("BenchHandler")
handler.authorizer, handler.banner, handler.timeout = authorizer, "benchmark server ready.", 120
handler.passive_ports = UniformPorts(low, high)
server = (ThreadedFTPServer if model == "threaded" else FTPServer)((host, port), handler, backlog=4096)
server.max_cons = 0
server.max_cons_per_ip = 0
print("ready", flush=True)
server.serve_forever(handle_exit=True)
