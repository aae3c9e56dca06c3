"""A scriptable misbehaving FTP server for the bad-input tests (blocking sockets, own thread).

Usable from trio tests and from CLI subprocess tests alike.  Each scenario is a
function ``(conn, server)`` that talks to one client; :class:`HostileServer`
records every connection it accepted so tests can assert what the prober did.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
import time


def _read_line(conn: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = conn.recv(1)
        if not chunk:
            break
        buf += chunk
    return buf


def _own_pasv(server: "HostileServer") -> bytes:
    return f"227 Entering Passive Mode (127,0,0,1,{server.data_port >> 8},{server.data_port & 255})\r\n".encode()


def _basic(conn: socket.socket, server: "HostileServer", pasv_reply: bytes | None = None,
           epsv_reply: bytes | None = None, on_port=None, on_list=None) -> None:
    """A minimal FTP dialogue: login, PASV/EPSV as given, PORT/LIST as the hooks
    say, everything else 502."""
    conn.sendall(b"220 hostile ready\r\n")
    while True:
        line = _read_line(conn)
        if not line:
            return
        verb = line.split()[0].upper() if line.split() else b""
        if verb == b"USER":
            conn.sendall(b"331 password please\r\n")
        elif verb == b"PASS":
            conn.sendall(b"230 ok\r\n")
        elif verb in (b"PASV", b"P@SW") and pasv_reply is not None:
            conn.sendall(pasv_reply)
        elif verb == b"EPSV" and epsv_reply is not None:
            conn.sendall(epsv_reply)
        elif verb == b"PORT" and on_port is not None:
            if on_port(conn) is False:
                return
        elif verb == b"LIST" and on_list is not None:
            on_list(conn)
        elif verb == b"QUIT":
            conn.sendall(b"221 bye\r\n")
            return
        else:
            conn.sendall(b"502 not here\r\n")


def never_greets(conn, server):
    time.sleep(30)


def huge_line(conn, server):
    conn.sendall(b"220 " + b"A" * (1 << 20) + b"\r\n")
    time.sleep(5)


def endless_multiline(conn, server):
    conn.sendall(b"220-welcome\r\n")
    for _ in range(200000):
        try:
            conn.sendall(b"220-still going, not the end\r\n")
        except OSError:
            return


def drips(conn, server):
    for byte in b"220 slowly\r\n":
        conn.sendall(bytes([byte]))
        time.sleep(1)


def login_refused(conn, server):
    conn.sendall(b"220 hi\r\n")
    _read_line(conn)
    conn.sendall(b"331 password\r\n")
    _read_line(conn)
    conn.sendall(b"530 Login incorrect.\r\n")
    time.sleep(1)


def pasv_third_party(conn, server):
    """227 replies name ``server.third_party`` with the port of a real listener on our own address."""
    _basic(conn, server, pasv_reply=f"227 Entering Passive Mode ({server.third_party.replace('.', ',')},"
                                    f"{server.data_port >> 8},{server.data_port & 255})\r\n".encode())


def pasv_bad_numbers(conn, server):
    _basic(conn, server, pasv_reply=b"227 Entering Passive Mode (127,0,0,1,300,1)\r\n")


def greets_late(conn, server):
    time.sleep(server.late)
    _basic(conn, server)


def pasv_port_zero(conn, server):
    _basic(conn, server, pasv_reply=b"227 Entering Passive Mode (127,0,0,1,0,0)\r\n",
           epsv_reply=b"229 Extended (|||65536|)\r\n")


def reset_after_port(conn, server):
    def reset(c):
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()  # SO_LINGER 0: the close sends RST
        return False
    _basic(conn, server, on_port=reset)


def half_closes(conn, server):
    conn.sendall(b"220 hello\r\n")
    conn.shutdown(socket.SHUT_WR)
    while _read_line(conn):
        pass


def data_silent(conn, server):
    """LIST: 150, the data connection is accepted (by our listener) and nothing is ever sent."""
    def silent(c):
        c.sendall(b"150 here it comes\r\n")
        time.sleep(30)
    _basic(conn, server, pasv_reply=_own_pasv(server), on_list=silent)


def list_1gb(conn, server):
    """LIST: 150, then 1 GB on the data connection (stopped when the reader hangs up)."""
    def flood(c):
        c.sendall(b"150 a big one\r\n")
        server.flood_data = True
        time.sleep(10)
    _basic(conn, server, pasv_reply=_own_pasv(server), on_list=flood)


def _reset(c: socket.socket) -> bool:
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()  # SO_LINGER 0: the close sends RST
    return False


def reset_after_pasv(conn, server):
    """A 227/229 reply, then a reset of the control connection."""
    def answer_then_reset(c, reply):
        c.sendall(reply)
        time.sleep(0.05)
        return _reset(c)
    conn.sendall(b"220 resets after passive replies\r\n")
    while (line := _read_line(conn)):
        verb = line.split()[0].upper() if line.split() else b""
        if verb == b"USER":
            conn.sendall(b"331 password please\r\n")
        elif verb == b"PASS":
            conn.sendall(b"230 ok\r\n")
        elif verb in (b"PASV", b"P@SW"):
            return answer_then_reset(conn, _own_pasv(server))
        elif verb == b"EPSV":
            return answer_then_reset(conn, f"229 Extended (|||{server.data_port}|)\r\n".encode())
        elif verb == b"QUIT":
            conn.sendall(b"221 bye\r\n")
            return
        else:
            conn.sendall(b"200 ok\r\n")


def reset_mid_multiline(conn, server):
    """FEAT and every other command after login get half a multi-line reply, then a reset."""
    conn.sendall(b"220 resets inside multi-line replies\r\n")
    while (line := _read_line(conn)):
        verb = line.split()[0].upper() if line.split() else b""
        if verb == b"USER":
            conn.sendall(b"331 password please\r\n")
        elif verb == b"PASS":
            conn.sendall(b"230 ok\r\n")
        else:
            conn.sendall(b"211-Features:\r\n EPSV\r\n PASV\r\n")
            time.sleep(0.05)
            return _reset(conn)


def user_refused(conn, server):
    """Refuses USER and closes at once, whatever followed it."""
    conn.sendall(b"220 hi\r\n")
    server.lines.append(conn.recv(4096))
    conn.sendall(b"530 This FTP server does not allow that user.\r\n")


def logged_in_by_user(conn, server):
    """Logs in at USER (230, no password asked); a PASS then gets 503; NOOP 200."""
    conn.sendall(b"220 hi\r\n")
    while True:
        line = _read_line(conn)
        server.lines.append(line)
        verb = line.split()[0].upper() if line.split() else b""
        if not line or verb == b"QUIT":
            return
        conn.sendall({b"USER": b"230 welcome, no password needed\r\n", b"PASS": b"503 already logged in\r\n",
                      b"NOOP": b"200 ok\r\n"}.get(verb, b"502 not here\r\n"))


def silent_after_greeting(conn, server):
    """Greets, then never answers anything."""
    conn.sendall(b"220 hello\r\n")
    time.sleep(30)


SCENARIOS = {f.__name__.replace("_", "-"): f for f in (
    never_greets, huge_line, endless_multiline, drips, login_refused, pasv_third_party, pasv_bad_numbers,
    greets_late, pasv_port_zero, reset_after_port, half_closes, data_silent, list_1gb,
    reset_after_pasv, reset_mid_multiline, silent_after_greeting, user_refused, logged_in_by_user)}


def _free(host: str, port: int) -> bool:
    """Can a listener bind ``host``:``port`` (SO_REUSEADDR) right now?"""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


class HostileServer:
    """Serve one scenario on ``host`` (port chosen by the kernel) in a thread.

    ``data_port`` is a listener on ``host`` whose accepted connections are
    counted in ``data_connections``; ``third_party`` is the address the
    ``pasv-third-party`` scenario advertises.
    """

    def __init__(self, scenario: str, host: str = "127.0.0.1", third_party: str = "127.0.0.2",
                 late: float = 0.0) -> None:
        self.late = late
        self.flood_data = False
        self.data_sent = 0
        self.scenario = SCENARIOS[scenario]
        self.host = host
        self.third_party = third_party
        self.connections: list[tuple[str, int]] = []
        self.data_connections = 0
        self.lines: list[bytes] = []  # what scenarios that record it received

    def __enter__(self) -> "HostileServer":
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                outer.connections.append(self.client_address)
                try:
                    outer.scenario(self.request, outer)
                except OSError:
                    pass

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        # Ports that are free on the third-party address too, so a test can put a
        # trap listener there (a port the kernel gave us on 127.0.0.1 may be taken
        # on 127.0.0.2 by another socket).
        for _ in range(50):
            self.server = socketserver.ThreadingTCPServer((self.host, 0), Handler)
            self.data = socket.create_server((self.host, 0))
            self.port, self.data_port = self.server.server_address[1], self.data.getsockname()[1]
            if all(_free(self.third_party, port) for port in (self.port, self.data_port)):
                break
            self.server.server_close()
            self.data.close()
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        threading.Thread(target=self._accept_data, daemon=True).start()
        return self

    def _accept_data(self):
        while True:
            try:
                conn, _ = self.data.accept()
            except OSError:
                return
            self.data_connections += 1
            threading.Thread(target=self._serve_data, args=(conn,), daemon=True).start()

    def _serve_data(self, conn):
        """Hold the data connection; in the list-1gb scenario, stream up to 1 GB."""
        chunk = b"-rw-r--r-- 1 ftp ftp 1 Jan 01 00:00 f\r\n" * 1000
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.data_sent < (1 << 30):
                if self.flood_data:
                    conn.sendall(chunk)
                    self.data_sent += len(chunk)
                else:
                    time.sleep(0.05)
        except OSError:
            pass
        finally:
            conn.close()

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.data.close()

    @property
    def url(self) -> str:
        return f"ftp://{self.host}:{self.port}/"
