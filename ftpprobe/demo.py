"""A real pyftpdlib server on loopback, for ``ftpprobe demo`` and the tests.

:class:`PyftpdlibServer` runs pyftpdlib's own I/O loop in a thread, with a
chosen passive port range (inclusive), session limit and accounts, and stops
cleanly.  It is a real FTP server, not a stub: every byte ftpprobe sees comes
from pyftpdlib's RFC 959 implementation.
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
import threading
from dataclasses import dataclass, field


def handler_class(name: str) -> type:
    """A subclass of pyftpdlib's ``FTPHandler`` named ``name``, with a fix for
    pyftpdlib's active-mode file descriptor bug.

    pyftpdlib's ``ActiveDTP`` (the connector behind PORT/EPRT) hands its
    connected socket to the data channel but remembers the fd number.  When
    the session later ends (QUIT), it is closed again and unregisters that
    number from the I/O loop, by then perhaps another session's control
    connection, which then never gets an answer (pyftpdlib pull request
    #657, open).  Here the connector unregisters a number only while the
    loop still maps it to the connector itself.  Imports pyftpdlib
    (ImportError if missing).
    """
    from pyftpdlib.handlers import FTPHandler

    class SafeActiveDTP(FTPHandler.active_dtp):
        def del_channel(self, map=None):
            if self.ioloop.socket_map.get(self._fileno) is self:
                super().del_channel(map)

    return type(name, (FTPHandler,), {"active_dtp": SafeActiveDTP})


@dataclass
class PyftpdlibServer:
    """A pyftpdlib FTP server on ``host`` (port chosen by the kernel).

    ``passive_ports``: inclusive ``(low, high)`` or ``None`` (kernel-chosen);
    ``max_cons``: concurrent sessions (0 = unlimited); ``user``/``password``:
    an account with read access besides anonymous (password random by
    default); ``masquerade_address``: address to announce in 227 replies.
    ``port``: control port (0: the kernel picks).  Use as a context manager;
    ``port`` holds the bound port once started.
    """

    host: str = "127.0.0.1"
    passive_ports: tuple[int, int] | None = None
    max_cons: int = 0
    user: str = "demo"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    masquerade_address: str | None = None
    anonymous: bool = True
    port: int = 0

    def __enter__(self) -> "PyftpdlibServer":
        from pyftpdlib.authorizers import DummyAuthorizer
        from pyftpdlib.ioloop import IOLoop
        from pyftpdlib.servers import FTPServer

        # A handler on pyftpdlib's logger tells it logging is configured, so
        # it does not start printing every session to stderr.
        log = logging.getLogger("pyftpdlib")
        if not log.handlers:
            log.addHandler(logging.NullHandler())
        log.setLevel(logging.CRITICAL)
        self._home = tempfile.TemporaryDirectory(prefix="ftpprobe-demo-")
        with open(os.path.join(self._home.name, "welcome.txt"), "w") as f:
            f.write("served by ftpprobe demo\n")
        os.mkdir(os.path.join(self._home.name, "pub"))
        authorizer = DummyAuthorizer()
        authorizer.add_user(self.user, self.password, self._home.name, perm="elr")
        if self.anonymous:
            authorizer.add_anonymous(self._home.name, perm="elr")
        handler = handler_class("DemoHandler")
        handler.authorizer = authorizer
        handler.banner = "ftpprobe demo server (pyftpdlib) ready."
        if self.passive_ports:
            handler.passive_ports = range(self.passive_ports[0], self.passive_ports[1] + 1)
        if self.masquerade_address:
            handler.masquerade_address = self.masquerade_address
        handler.timeout = 60
        # An I/O loop of its own: pyftpdlib's default is one per process, which
        # two servers' threads would share and corrupt.
        self._server = FTPServer((self.host, self.port), handler, ioloop=IOLoop())
        self._server.max_cons = self.max_cons
        self.port = self._server.address[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="pyftpdlib", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        # Drive pyftpdlib's I/O loop directly: serve_forever() reconfigures
        # logging and prints a banner on every call.
        while not self._stop.is_set():
            self._server.ioloop.loop(timeout=0.05, blocking=False)
        self._server.close_all()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self._home.cleanup()

    @property
    def url(self) -> str:
        return f"ftp://{self.host}:{self.port}/"


async def emulated_router_fingerprint(personalities: tuple[str, ...], *, timeout: float, progress=lambda message, done=None, total=None: None):
    """Run ``ftpprobe fingerprint`` through an emulated middlebox on loopback.

    A real reflector listens on two loopback ports; a :class:`~ftpprobe.middlebox.Middlebox`
    with ``personalities`` fronts the first, a transparent one the second, both
    connecting outward from 127.0.0.2 (NAT on loopback).  Returns the report.
    Raises what :func:`~ftpprobe.runner.run_probes` raises (e.g.
    :class:`~ftpprobe.errors.FtpProbeError`), or ``OSError`` if a loopback
    port cannot be bound: the error itself, never an ExceptionGroup.
    """
    import trio

    from .middlebox import Middlebox
    from .reflector import Reflector
    from .runner import run_probes
    from .target import Target

    error: BaseException | None = None
    async with trio.open_nursery() as nursery:  # the servers; they never raise for a client's doing
        try:
            main, other = await nursery.start(Reflector("127.0.0.1", (0, 0)).serve)
            port = await nursery.start(Middlebox("127.0.0.1", main, personalities).serve)
            other_port = await nursery.start(Middlebox("127.0.0.1", other, ()).serve)
            report = await run_probes(Target("127.0.0.1", port), timeout=timeout, vantage="reflector",
                                      other_port=other_port, progress=progress)
        except Exception as exc:
            # Raised again below, outside the nursery: inside, trio >= 0.25
            # would wrap it in an ExceptionGroup that the caller's
            # ``except FtpProbeError`` does not catch.
            error = exc
        nursery.cancel_scope.cancel()
    if error is not None:
        raise error
    return report
