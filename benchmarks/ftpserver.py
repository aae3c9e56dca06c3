"""A pyftpdlib server for the benchmarks: HOST PORT LOW HIGH (passive range, inclusive).

Anonymous read access to a folder with one file, no session limit, a listen
backlog of 4096 (a fleet of 1000 sites connects at once).  Prints "ready".
"""

import logging
import os
import sys
import tempfile

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer

host, port, low, high = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
logging.getLogger("pyftpdlib").addHandler(logging.NullHandler())
logging.getLogger("pyftpdlib").setLevel(logging.CRITICAL)
home = tempfile.mkdtemp(prefix="ftpprobe-bench-")
with open(os.path.join(home, "welcome.txt"), "w") as f:
    f.write("served by the ftpprobe benchmark\n")
authorizer = DummyAuthorizer()
authorizer.add_anonymous(home, perm="elr")
handler = type("BenchHandler", (FTPHandler,), {"authorizer": authorizer, "banner": "benchmark server ready.",
                                                "passive_ports": range(low, high + 1), "timeout": 120})
server = FTPServer((host, port), handler, backlog=4096)
server.max_cons = 0
server.max_cons_per_ip = 0
print("ready", flush=True)
server.serve_forever(handle_exit=True)
