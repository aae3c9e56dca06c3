"""Run a PyftpdlibServer until killed (for the namespace labs): HOST PORT LOW HIGH [MASQUERADE]."""

import sys
import time

from ftpprobe.demo import PyftpdlibServer

host, port, low, high = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
masquerade = sys.argv[5] if len(sys.argv) > 5 else None
with PyftpdlibServer(host=host, port=port, passive_ports=(low, high), masquerade_address=masquerade) as server:
    print("listening", flush=True)
    while True:
        time.sleep(3600)
