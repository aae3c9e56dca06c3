"""Executors: carry out one probe of the catalog against a server, record what happened.

Each action (``command``, ``passive``, ``active``, ``bounce``, ``listing``,
``auth-tls``, ``session-limit``, ``pasv-map``, ``reflect-active``,
``reflect-passive``) is an async function ``(ctx, probe) -> Observation``
returning the action's typed observation (:mod:`ftpprobe.observations`).
Executors observe; they never decide a quirk (that is :mod:`ftpprobe.rules`).
Each opens its own control session(s) through :meth:`ProbeContext.session`,
which respects the server's session limit and backs off on 421.

A session that fails before the probe's own command raises (an
:class:`~ftpprobe.errors.FtpProbeError`); the runner turns that into a
:class:`~ftpprobe.observations.Failed` with :func:`failure_kind`.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable

import trio

from .catalog import Probe
from .codec import Command, Reply, encode_eprt, encode_port, parse_passive, replace_argument
from .data import (MAX_DATA_BYTES, ActiveListener, connect_passive, finish_connect, passive_target,
                   probe_passive_port, read_all, start_connect)
from .errors import ConnectFailed, FtpProbeError, LoginFailed, PeerClosed, ProtocolError, ReplyTimeout
from .observations import (ActiveObs, AuthTlsObs, BounceObs, CommandObs, DataOutcome, Exchange, Failed,
                           FailureKind, ListingObs, Observation, PassiveMapObs, PassiveObs, ReflectActiveObs,
                           Reflection, ReflectPassiveObs, RefusalKind, SessionLimitObs, Skipped, Transfer)
from .passive import PassiveSample
from .reflector import TAG as REFLECTOR_TAG
from .reflector import parse_declared, parse_reflection
from .target import Target
from .transport import ControlSession

#: Seconds at most to wait for the NOOP that tells whether a session survived its variant.
NOOP_WAIT = 2.0

#: Seconds a command variant whose bytes stay unacknowledged waits for its
#: own reply before a line ending (``NOOP\r\n``) is sent behind it (at
#: least; :func:`nudge_wait` scales it with the session's round trip): long
#: enough for one retransmitted segment, short against the reply timeout.
#: An acknowledged line is nudged sooner (``ControlSession.exchange_nudged``).
NUDGE_WAIT = 0.5


def nudge_wait(timeout: float, round_trip: float | None) -> float:
    """How long an unacknowledged variant waits before the nudge:
    :data:`NUDGE_WAIT`, or 10 round trips on a slow path, never more than
    half the ``timeout``."""
    return min(max(NUDGE_WAIT, 10 * (round_trip or 0.0)), timeout / 2)

#: Back-off before retrying a session the server refused with 421, seconds.
BACKOFF = (0.5, 1.0, 2.0)


class SessionRefused(FtpProbeError):
    """The server refused a session with 421 after every back-off."""


def failure_kind(exc: FtpProbeError) -> FailureKind:
    """How a session failed, for :class:`~ftpprobe.observations.Failed`:
    ``connect`` (:class:`ConnectFailed`), ``login`` (:class:`LoginFailed`),
    ``refused`` (:class:`SessionRefused`: 421 after every back-off),
    ``timeout`` (:class:`ReplyTimeout`), ``reset`` (:class:`PeerClosed`, a
    close or a reset), otherwise ``protocol``."""
    kinds: tuple[tuple[type[FtpProbeError], FailureKind], ...] = (
        (ConnectFailed, "connect"), (LoginFailed, "login"), (SessionRefused, "refused"),
        (ReplyTimeout, "timeout"), (PeerClosed, "reset"), (ProtocolError, "protocol"))
    for cls, kind in kinds:
        if isinstance(exc, cls):
            return kind
    return "protocol"


def failed(probe: str, exc: FtpProbeError) -> Failed:
    """The observation of a probe whose session failed before its own command."""
    return Failed(probe, error=str(exc), kind=failure_kind(exc))


#: PASV/EPSV sent in one write by ``pasv-map`` unless told otherwise
#: (:attr:`ProbeContext.pipeline`): each reply an independent port draw; only
#: the last port stays open, so only it is connected to.
PIPELINE = 6
#: The most PASV/EPSV ``pasv-map`` sends in one write (a few hundred bytes: one
#: segment, within any server's line buffer).
MAX_PIPELINE = 16


@dataclass
class ProbeContext:
    """Everything executors share for one run against one target.

    ``timeout``: seconds for each connect and each reply; ``samples``: passive
    replies to collect in ``pasv-map``; ``limiter``: caps concurrent control
    sessions (its ``total_tokens`` shrinks when the server answers 421);
    ``trust_pasv_address``: connect data channels to the advertised address
    instead of the control peer's; ``password_sent_in_clear``: a session of
    this run has written PASS (never over TLS: ftpprobe speaks none);
    ``pasv_samples``: the ``pasv-map`` samples so far (appended to as they
    arrive, so a run cut short by its deadline still knows them);
    ``pipeline``: PASV/EPSV per write in ``pasv-map`` (1: every sampled port
    is tried with a data connection, in turn with its PASV).
    """

    target: Target
    timeout: float = 5.0
    samples: int = 20
    pipeline: int = PIPELINE
    max_sessions: int = 4
    trust_pasv_address: bool = False
    limiter: trio.CapacityLimiter = field(default=None)  # type: ignore[assignment]
    refusals: list[str] = field(default_factory=list)
    #: ``progress(message, done=None, total=None)``: a line of progress, with a
    #: count for long runs (the CLI shows a bar on a terminal, nothing otherwise).
    progress: Callable[..., None] = lambda message, done=None, total=None: None
    #: For the reflector vantage: the second control port (no ALG helper there?)
    #: and whether to insist that the peer greets as an ftpprobe reflector.
    other_port: int | None = None
    expect_reflector: bool = False
    password_sent_in_clear: bool = False
    #: a session of this run sent PASS inside TLS (FTPS targets, and the ``tls`` probe)
    password_sent_in_tls: bool = False
    pasv_samples: list[PassiveSample] = field(default_factory=list)
    #: A probe running beside the session-limit count (the packet capture)
    #: has sent PORT: the server may hold a data connection of ours, which
    #: some servers count against their session limit.
    data_connection_invited: bool = False
    #: Set once every session of the session-limit count has been greeted or
    #: refused, or the count ended (a count with no session to open: the
    #: runner sets it then); ``None``: no count runs beside the probes that
    #: start first.  The packet capture waits for it before its PORT.
    count_greeted: trio.Event | None = None
    #: Probes run one after another in one logged-in session where they can
    #: (``check``: a site's quick probes leave the session clean): a session
    #: left answered and fully read goes back as the spare instead of QUIT.
    reuse_sessions: bool = False
    _handed_back: trio.Event = field(default_factory=trio.Event, repr=False)

    #: Logged-in sessions no probe has used yet, each with its limiter
    #: borrower (the preflight's, those the session-limit probe counted with):
    #: handed to the next probes that want one.  Each holds a limiter slot
    #: until closed, so it counts against ``max_sessions`` like any other.
    _spares: list[tuple[ControlSession, object]] = field(default_factory=list, repr=False)
    #: The target's address once the first session connected: later sessions
    #: connect there (one name lookup per run).
    _address: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.limiter is None:
            self.limiter = trio.CapacityLimiter(self.max_sessions)

    async def preflight(self) -> ControlSession:
        """Open, greet and log in the run's first session and keep it as a spare.

        The session holds a limiter slot until a probe has used it (or
        :meth:`aclose` closes it), so the server never sees more than
        ``max_sessions`` of our sessions at once.  Raises what :meth:`session` raises.
        """
        token = object()
        await self.limiter.acquire_on_behalf_of(token)
        try:
            s = await self._establish(True, self.target.port)
        except BaseException:
            self.limiter.release_on_behalf_of(token)
            raise
        self._spares.append((s, token))
        return s

    def adopt(self, s: ControlSession) -> bool:
        """Keep ``s`` (logged in, on the target's port) as a spare for the
        next probe, if it is clean (nothing unread, not closed) and a limiter
        slot is free; ``False`` (the caller closes it) otherwise."""
        if not s.quiet():
            return False
        token = object()
        try:
            self.limiter.acquire_on_behalf_of_nowait(token)
        except trio.WouldBlock:
            return False
        self._spares.append((s, token))
        return True

    async def aclose(self) -> None:
        """Close the spare sessions no probe took (all at once: each may wait
        for the server's close after QUIT)."""
        spares, self._spares = self._spares, []
        await self.close_spares(spares)

    async def _close_spare(self, spare: ControlSession, token: object) -> None:
        await spare.aclose()
        self._release(token)

    def take_excess_spares(self) -> list[tuple[ControlSession, object]]:
        """Take out the spare sessions that hold more slots than the limiter
        now has (after the session limit was settled lower than the sessions
        the session-limit probe left open), for :meth:`close_spares`.  Call
        it before any probe may take a spare: until they are closed, no
        probe opens a session of its own."""
        excess = int(self.limiter.borrowed_tokens - self.limiter.total_tokens)
        return [self._spares.pop() for _ in range(min(max(excess, 0), len(self._spares)))]

    async def close_spares(self, spares: list[tuple[ControlSession, object]]) -> None:
        """Close ``spares`` (taken out of the spare list) all at once, each
        slot given back once its session is closed."""
        if len(spares) <= 1:  # the usual case (check closes one per site): no nursery
            for spare, token in spares:
                await self._close_spare(spare, token)
            return
        async with trio.open_nursery() as nursery:
            for spare, token in spares:
                nursery.start_soon(self._close_spare, spare, token)

    async def _close_idle_spare(self, *, only_if_full: bool = True) -> None:
        """Close one spare session (``only_if_full``: only when no limiter
        slot is free, i.e. spares may hold every slot: a probe that cannot
        use a logged-in session would wait for a slot nobody gives back)."""
        if self._spares and (not only_if_full or self.limiter.available_tokens <= 0):
            await self._close_spare(*self._spares.pop())

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """A limiter slot for a connection a probe opens itself (not through
        :meth:`session`); an idle spare is closed first if spares hold every slot."""
        await self._close_idle_spare()
        async with self.limiter:
            yield

    def _release(self, token: object) -> None:
        """Give a session's limiter slot back and wake the probes waiting in :meth:`_reused`."""
        self.limiter.release_on_behalf_of(token)
        self._wake()

    def _wake(self) -> None:
        self._handed_back.set()
        self._handed_back = trio.Event()

    @asynccontextmanager
    async def session(self, *, login: bool = True, port: int | None = None,
                      secure: bool | None = None) -> AsyncIterator[ControlSession]:
        """A greeted (and, if asked, logged-in) control session holding a limiter slot.

        A probe that wants a logged-in session on the target's port gets the
        preflight's spare session if it is still unused.  ``secure``: ``None``
        as the target says (``ftps://``: implicit FTPS, ``ftpes://`` or
        ``tls``: AUTH TLS before the login); ``False``: plain FTP (not
        possible for implicit FTPS, which then stays TLS).

        Raises :class:`ConnectFailed`, :class:`LoginFailed`, :class:`SessionRefused`,
        :class:`ReplyTimeout`, :class:`PeerClosed`, :class:`ProtocolError`,
        :class:`~ftpprobe.errors.TlsFailed`.
        """
        plain = secure is False and self.target.tls == "explicit"
        spareable = login and port in (None, self.target.port) and not plain
        if self.reuse_sessions and spareable:
            async with self._reused() as s:
                yield s
            return
        if self._spares and spareable:
            spare, token = self._spares.pop(0)
            try:
                yield spare
            finally:
                await self._close_spare(spare, token)
            return
        try:
            async with self.slot():
                s = await self._establish(login, port or self.target.port, plain=plain)
                try:
                    yield s
                finally:
                    await s.aclose()
        finally:
            self._wake()

    #: Seconds between looks for a free limiter slot (``reuse_sessions``)
    #: when nothing said one came free: every session of this context wakes
    #: the waiters when it is handed back or closed, so this only bounds the
    #: wait for a slot released outside it (an action holding ``limiter``
    #: itself).
    REUSE_POLL = 0.25

    @asynccontextmanager
    async def _reused(self) -> AsyncIterator[ControlSession]:
        """``reuse_sessions``: the spare session if there is one (waiting for
        one to come back while no new one may be opened), else a new one; a
        session whose last exchange was answered, with nothing unread,
        becomes the spare again afterwards (with its limiter slot)."""
        while True:
            if self._spares:
                s, token = self._spares.pop(0)
                break
            token = object()
            try:
                self.limiter.acquire_on_behalf_of_nowait(token)
            except trio.WouldBlock:
                with trio.move_on_after(self.REUSE_POLL):
                    await self._handed_back.wait()
                continue
            try:
                s = await self._establish(True, self.target.port)
            except BaseException:
                self._release(token)
                raise
            break
        s.evidence_from = len(s.history)  # the earlier probes' exchanges are not this one's evidence
        try:
            yield s
        finally:
            last = s.history[-1] if s.history else None
            # Kept only as the one spare, and only while no probe waits for a slot
            # (a spare never gives its slot to a probe that cannot use it).
            if (not self._spares and not self.limiter.statistics().tasks_waiting and last is not None
                    and last.outcome == "reply" and s.quiet()):
                self._spares.append((s, token))
                self._wake()
            else:
                await self._close_spare(s, token)

    async def _establish(self, login: bool, port: int, *, plain: bool = False) -> ControlSession:
        """Open, greet and log in.  On a 421 greeting the slot count shrinks by
        one and the session is retried after :data:`BACKOFF`; a greeting or
        login reply that never comes is retried once in a new session (a
        single lost reply must not fail a whole probe).  FTPS targets: TLS
        first (implicit), or AUTH TLS before the login (explicit, unless
        ``plain``); the certificate is checked unless ``--insecure-tls``."""
        from .tls import auth_tls

        tls = "none" if plain else self.target.tls
        lost = 0
        for pause in (*BACKOFF, None):
            s = await ControlSession.open(self.target.host, port, self.timeout, address=self._address)
            self._address = self._address or str(s.peer_address)
            try:
                if tls == "implicit":
                    await s.start_tls(self._context(), self.target.host)
                greeting = await s.greet()
                if self.expect_reflector and REFLECTOR_TAG not in greeting.text:
                    raise ProtocolError(f"{self.target.host} port {port} is not an ftpprobe reflector "
                                        f"(greeting {greeting.display(80)}); start one with `ftpprobe reflect`")
                if greeting.code == 421:
                    self.refusals.append(greeting.display(120))
                    if self.limiter.total_tokens > 1:
                        self.limiter.total_tokens -= 1
                    await self._close_idle_spare(only_if_full=False)  # it may be what the server counted
                    if pause is None:
                        raise SessionRefused(f"server refused the session: {greeting.display(120)}")
                    await s.aclose()
                    await trio.sleep(pause)
                    continue
                if greeting.code != 220:
                    raise ProtocolError(f"unexpected greeting {greeting.display(120)}")
                if tls == "explicit":
                    await auth_tls(s, self._context(), self.target.host)
                if login:
                    await self.login(s)
                return s
            except ReplyTimeout:
                await s.aclose()
                lost += 1
                if lost > 1 or pause is None:
                    raise
            except BaseException:
                await s.aclose()
                raise
        raise AssertionError("unreachable")

    async def login(self, s: ControlSession) -> Reply:
        """Log ``s`` in as the target's user, noting whether PASS went out in
        clear (even when the login then fails).  Raises what
        :meth:`ControlSession.login` raises."""
        try:
            return await s.login(self.target.user, self.target.password)
        finally:
            self.password_sent_in_clear |= s.password_sent
            self.password_sent_in_tls |= s.password_sent_in_tls

    def _context(self):
        """The run's TLS client context (one: :func:`~ftpprobe.tls.client_context`
        makes it once per process, so data connections can resume its
        sessions): the certificate checked unless the target says not."""
        from .tls import client_context

        return client_context(verify=self.target.tls_verify)


Action = Callable[[ProbeContext, Probe], Awaitable[Observation]]
ACTIONS: dict[str, Action] = {}


#: Actions that hold one session longest (a packet capture lingering for a
#: late reset): the runner starts them right after the preflight, on its
#: session and beside the session-limit count (see
#: :func:`run_session_limit`), and the short probes fill the
#: other sessions around them (longest first keeps a run close to its slowest
#: probe).  Only actions that ask for their session before their first wait
#: gain by it (not the TTL walk: its capture starts first).  Not the passive
#: map: it spreads over several sessions, and started first it would take them all.
STARTS_FIRST: set[str] = set()


def action(name: str, *, starts_first: bool = False) -> Callable[[Action], Action]:
    """Register an executor for the catalog's ``action = name``
    (``starts_first``: see :data:`STARTS_FIRST`)."""
    def register(fn: Action) -> Action:
        ACTIONS[name] = fn
        if starts_first:
            STARTS_FIRST.add(name)
        return fn
    return register


def _evidence_exchanges(session: ControlSession) -> tuple[Exchange, ...]:
    """The current probe's exchanges of the session (from
    :attr:`~ftpprobe.transport.ControlSession.evidence_from`), without the
    login (USER/PASS)."""
    return tuple(ex for ex in session.history[session.evidence_from:]
                 if not ex.sent.startswith((b"USER ", b"PASS ")))


def _transient(ex: Exchange) -> bool:
    """A 4xx reply (RFC 959 §4.2: transient negative), e.g. pyftpdlib's
    "425 Too many connections" when its session limit counts data channels."""
    return ex.reply is not None and 400 <= ex.reply.code < 500


def _accepted(ex: Exchange) -> bool:
    """A 2xx reply (PORT/EPRT accepted, RFC 959 §4.2)."""
    return ex.reply is not None and 200 <= ex.reply.code < 300


async def _exchange_retrying(s: ControlSession, command: Command) -> Exchange:
    """Send ``command``; on a transient 4xx reply, pause (:data:`BACKOFF`) and send it again."""
    for pause in BACKOFF:
        ex = await s.exchange(command)
        if not _transient(ex):
            return ex
        await trio.sleep(pause)
    return await s.exchange(command)


async def _stall_retry(ctx: ProbeContext, command: Command, cuts: tuple[int, ...], *, login: bool,
                       port: int | None = None) -> tuple[Exchange | None, tuple[Exchange, ...]]:
    """Send ``command`` (split at ``cuts``) once more in a new session, after
    it got no reply: one lost packet is not a stall.

    Returns the exchange and the session's exchanges; ``(None, ())`` when the
    new session could not be opened (the retry then tells nothing).
    """
    try:
        async with ctx.session(login=login, port=port) as s:
            ex = await s.exchange(command, cuts=cuts)
            return ex, _evidence_exchanges(s)
    except FtpProbeError as exc:
        ctx.progress(f"stall retry of {command.display()} not possible: {exc}")
        return None, ()


@action("command")
async def run_command(ctx: ProbeContext, probe: Probe) -> CommandObs:
    """Send the probe's command variant in a fresh session and record the outcome.

    A variant that got no reply (its bytes acknowledged and two round trips
    more gone by, or :func:`nudge_wait`, 0.5 s on a quick path, while they
    stay unacknowledged) is followed by ``NOOP\\r\\n`` (the nudge,
    :meth:`~ftpprobe.transport.ControlSession.exchange_nudged`): one reply
    then shows the server held the line until a line ending followed, and
    how it parsed what it held (``nudge``; no retry: the server answered);
    a reply to the line and then the NOOP's, before the reply to the
    ``SYST`` that follows, show a late reply.  A
    transient 4xx reply is retried in a new session after :data:`BACKOFF`
    (the prober's own concurrent sessions may be what the server counted).
    After an answered variant a canonical ``NOOP`` tells whether the
    session survived (``alive_after``; at most :data:`NOOP_WAIT` seconds;
    after a nudge its reply tells).  A variant that nothing answered, not
    even the nudge, within the timeout gets a NOOP too and is sent once more
    in a new session (``retry``).  Raises :class:`FtpProbeError` when the
    first session fails before the variant is sent.
    """
    assert probe.command is not None
    exchanges: tuple[Exchange, ...] = ()
    nudge: Exchange | None = None
    for pause in (*BACKOFF, None):
        alive: bool | None = None
        async with ctx.session(login=probe.login) as s:
            ex, nudge = await s.exchange_nudged(probe.command, cuts=probe.cuts,
                                                wait=nudge_wait(ctx.timeout, s.round_trip()))
            if nudge is not None and nudge.outcome == "reply":
                alive = ex.outcome not in ("reset", "closed")
            elif ex.outcome in ("reply", "timeout"):
                # After a timeout too: a reply to NOOP shows the connection alive,
                # none shows it stalled.
                noop = await s.exchange(Command("NOOP"), timeout=min(ctx.timeout, NOOP_WAIT))
                alive = noop.outcome == "reply"
            exchanges += _evidence_exchanges(s)
        if not _transient(ex) or pause is None:
            break
        await trio.sleep(pause)
    retry = None
    if ex.outcome == "timeout" and not (nudge is not None and nudge.outcome == "reply"):
        retry, more = await _stall_retry(ctx, probe.command, probe.cuts, login=probe.login)
        exchanges += more
    return CommandObs(probe.name, exchanges=exchanges, exchange=ex, alive_after=alive, retry=retry, nudge=nudge)


def _advertised(address: ipaddress.IPv4Address | None, port: int) -> tuple[str | None, int]:
    return (str(address) if address is not None else None, port)


@action("passive")
async def run_passive(ctx: ProbeContext, probe: Probe) -> PassiveObs:
    """PASV/EPSV variant, then a data connection to the port it names (to
    the control peer's address unless ``trust_pasv_address``).  Raises
    :class:`FtpProbeError` when the session fails before the variant is sent."""
    assert probe.command is not None
    advertised, data, parse_error = None, None, ""
    async with ctx.session(login=probe.login) as s:
        ex = await _exchange_retrying(s, probe.command)
        if ex.reply is not None and ex.reply.code in (227, 229):
            try:
                address, port = parse_passive(ex.reply)
            except ProtocolError as exc:
                parse_error = str(exc)
            else:
                advertised = _advertised(address, port)
                host = passive_target(s.peer_address, address, trust_pasv_address=ctx.trust_pasv_address)
                result = await probe_passive_port(host, port, ctx.timeout)
                data = DataOutcome(host, port, result.connected, error=result.error)
        exchanges = _evidence_exchanges(s)
    return PassiveObs(probe.name, exchanges=exchanges, exchange=ex, advertised=advertised, data=data,
                      parse_error=parse_error)


def _active_argument(verb: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str | None:
    if verb.upper() == "PORT":
        return encode_port(address, port) if address.version == 4 else None
    return encode_eprt(address, port)


#: Bytes of a data connection kept in ``head`` for evidence.
HEAD_BYTES = 200


async def _transfer(s: ControlSession, listener: ActiveListener, timeout: float) -> Transfer:
    """Send LIST and, at the same time, wait (``timeout`` seconds) for the
    server's data connection to ``listener``; read it to the end (1 MiB at
    most), then the final reply.  Never raises for the peer's behaviour."""
    got: dict = {"connected": False, "error": "", "source": None, "bytes": 0, "truncated": False, "head": b""}
    accept_scope = trio.CancelScope()

    async def accept() -> None:
        with accept_scope:
            stream, info = await listener.accept(timeout)
            got["connected"] = info.connected
            if stream is None:
                got["error"] = info.error
                return
            got["source"] = (info.peer[0], info.peer[1]) if info.peer else None
            async with stream:
                data, total, truncated, _ = await read_all(stream, timeout)
            got.update(bytes=total, truncated=truncated, head=data[:HEAD_BYTES])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        list_ex = await s.exchange(Command("LIST"))
        # Only a 1xx reply means the server took the transfer on (RFC 959 §5.4).
        expected = list_ex.reply is not None and 100 <= list_ex.reply.code < 200
        if not expected:
            accept_scope.cancel()  # refused (425/5xx) or no answer: no connection is coming
    final = ""
    if expected:
        try:
            final = (await s.read_reply(timeout)).display(100)
        except FtpProbeError as exc:
            final = f"no final reply: {exc}"
    elif not got["connected"] and not got["error"]:
        got["error"] = "LIST got no 1xx reply: no data connection awaited"
    return Transfer(list_ex, expected, connected=got["connected"], source=got["source"], bytes=got["bytes"],
                    truncated=got["truncated"], head=got["head"], final=final, error=got["error"])


@action("active")
async def run_active(ctx: ProbeContext, probe: Probe) -> ActiveObs | Skipped:
    """PORT/EPRT naming our own address and a real listener, then LIST.

    Records whether the data connection arrived and its source port
    (RFC 959 §3.3: by default L-1, i.e. 20 for control port 21); no LIST
    (``transfer`` None) when PORT/EPRT got no 2xx reply.  Skipped for PORT
    over IPv6.  Raises :class:`FtpProbeError` when the session fails first.
    """
    assert probe.command is not None
    async with ctx.session(login=probe.login) as s:
        local = s.local_address
        async with ActiveListener(str(local)) as listener:
            argument = _active_argument(probe.command.verb, local, listener.port)
            if argument is None:
                return Skipped(probe.name, reason=f"{probe.command.verb} cannot name the IPv6 address {local}")
            ex = await s.exchange(replace_argument(probe.command, argument))
            transfer = await _transfer(s, listener, ctx.timeout) if _accepted(ex) else None
            listen = (str(local), listener.port)
        exchanges = _evidence_exchanges(s)
    return ActiveObs(probe.name, exchanges=exchanges, exchange=ex, listen=listen, control_port=s.port,
                     transfer=transfer)


@action("bounce")
async def run_bounce(ctx: ProbeContext, probe: Probe) -> BounceObs:
    """PORT naming a third-party address; never followed by a transfer command.
    Raises :class:`FtpProbeError` when the session fails first."""
    assert probe.command is not None
    async with ctx.session(login=probe.login) as s:
        local = s.local_address
        foreign = probe.params["foreign_ipv4"] if local.version == 4 else probe.params["foreign_ipv6"]
        port = int(probe.params.get("foreign_port", 40000))
        verb = probe.command.verb if local.version == 4 else "EPRT"
        cmd = replace_argument(Command(verb, line_ending=probe.command.line_ending),
                               _active_argument(verb, ipaddress.ip_address(foreign), port))
        ex = await s.exchange(cmd)
        exchanges = _evidence_exchanges(s)
    return BounceObs(probe.name, exchanges=exchanges, exchange=ex, foreign=(foreign, port))


_UNIX_LIST = r"^[-dlcbpsD?][-rwxsStTlL?]{9}[+.@]?\s"
_DOS_LIST = r"^\d{2}-\d{2}-\d{2,4}\s+\d{1,2}:\d{2}\s*([AaPp][Mm])?\s+(<DIR>|\d+)\s"
#: Bytes kept of each unparseable listing line.
UNPARSEABLE_BYTES = 100


@action("listing")
async def run_listing(ctx: ProbeContext, probe: Probe) -> ListingObs:
    """FEAT, then LIST over a passive data connection (1 MiB read at most,
    ``ctx.timeout`` seconds).  ``no_passive`` says why no data connection was
    made.  Raises :class:`FtpProbeError` when the session fails first."""
    async with ctx.session(login=probe.login) as s:
        feat = await s.exchange(Command("FEAT"))
        features = feat.reply.text.upper() if feat.reply and feat.reply.code == 211 else ""
        mlsd = "MLSD" in features or "MLST" in features
        pasv = await _exchange_retrying(s, Command("EPSV" if s.peer_address.version == 6 else "PASV"))
        no_passive = ""
        if pasv.reply is None or pasv.reply.code not in (227, 229):
            no_passive = pasv.describe()
        else:
            try:
                address, port = parse_passive(pasv.reply)
            except ProtocolError as exc:
                no_passive = str(exc)
        if no_passive:
            return ListingObs(probe.name, exchanges=_evidence_exchanges(s), mlsd=mlsd, no_passive=no_passive)
        host = passive_target(s.peer_address, address, trust_pasv_address=ctx.trust_pasv_address)
        stream, result = await connect_passive(host, port, ctx.timeout)
        if stream is None:
            return ListingObs(probe.name, exchanges=_evidence_exchanges(s), mlsd=mlsd,
                              no_passive=result.error or "no data connection")
        data, total, truncated, timed_out = b"", 0, False, False
        async with stream:
            ex = await s.exchange(Command("LIST"))
            transferring = ex.reply is not None and 100 <= ex.reply.code < 200
            if transferring:
                data, total, truncated, timed_out = await read_all(stream, ctx.timeout, MAX_DATA_BYTES)
        if transferring:
            try:
                await s.read_reply()
            except FtpProbeError:
                pass
        exchanges = _evidence_exchanges(s)
    lines = [l for l in data.decode("latin-1").splitlines() if l.strip() and not l.startswith("total ")]
    odd = [l for l in lines if not (re.match(_UNIX_LIST, l) or re.match(_DOS_LIST, l))]
    style = ("unix" if lines and any(re.match(_UNIX_LIST, l) for l in lines) else
             "dos" if lines and any(re.match(_DOS_LIST, l) for l in lines) else "none")
    return ListingObs(probe.name, exchanges=exchanges, mlsd=mlsd, list_exchange=ex, lines=len(lines), bytes=total,
                      truncated=truncated, timed_out=timed_out, style=style,
                      unparseable=tuple(l.encode("latin-1")[:UNPARSEABLE_BYTES] for l in odd[:3]),
                      unparseable_count=len(odd))


@action("auth-tls")
async def run_auth_tls(ctx: ProbeContext, probe: Probe) -> AuthTlsObs:
    """FEAT and AUTH TLS before login; the session is closed without a handshake.

    ``password_sent_in_clear`` is what this run did: the preflight logs in
    before any probe runs, so a PASS it sent is known here.  Raises
    :class:`FtpProbeError` when the session fails first.
    """
    assert probe.command is not None
    # An explicit FTPS run: ask in a plain session, as a client would before AUTH TLS.
    async with ctx.session(login=False, secure=False) as s:
        feat = await s.exchange(Command("FEAT"))
        feat_auth_tls = bool(feat.reply and feat.reply.code == 211 and "AUTH TLS" in feat.reply.text.upper())
        ex = await s.exchange(probe.command)
        exchanges = _evidence_exchanges(s)
    return AuthTlsObs(probe.name, exchanges=exchanges, feat_auth_tls=feat_auth_tls, exchange=ex,
                      user=ctx.target.user, anonymous=ctx.target.anonymous,
                      password_sent_in_clear=ctx.password_sent_in_clear,
                      password_sent_in_tls=ctx.password_sent_in_tls, tls_mode=ctx.target.tls)


#: A refusal that says in words that a session limit was reached.
TOO_MANY = re.compile(r"too many|maximum|max.*(users|clients|connections)|user \d+ of \d+", re.IGNORECASE)


def refusal_kind(reply: Reply) -> RefusalKind:
    """Classify a reply that refused a session: ``421`` (RFC 959 §5.4:
    service not available), ``too-many`` (a non-2xx reply whose text says a
    limit was reached, e.g. vsftpd's "530 Too many users"), else ``other-reply``."""
    if reply.code == 421:
        return "421"
    if not 200 <= reply.code < 300 and TOO_MANY.search(reply.text):
        return "too-many"
    return "other-reply"


def _error_refusal(s: ControlSession | None, exc: FtpProbeError) -> RefusalKind:
    """Classify a session that failed with ``exc`` (after ``s`` was opened, if given)."""
    if isinstance(exc, ConnectFailed):
        return "connect"
    if isinstance(exc, ReplyTimeout):
        return "timeout"
    if isinstance(exc, PeerClosed):
        return "reset" if exc.reset else "closed"
    last = s.history[-1].reply if s is not None and s.history else None
    if isinstance(exc, LoginFailed) and last is not None:
        return refusal_kind(last)  # the USER/PASS reply that refused
    return "other-reply"


@action("session-limit")
async def run_session_limit(ctx: ProbeContext, probe: Probe) -> SessionLimitObs:
    """Hold up to ``max_sessions`` logged-in sessions at once, opened concurrently.

    ``accepted``: the sessions held plus those that logged in; ``refusal``:
    the first refused one's (by number), classified.  When a session was
    refused only at its login (counted while the others were still logging
    in), the sessions are closed and opened again one after another,
    stopping at the first refusal.

    Runs before the other probes (``exclusive``), beside only those that
    start first (the packet capture: its session counts as held).  A server
    may count a data connection against its limit (pyftpdlib's ``max_cons``
    does), so the capture sends its PORT only once every session of the
    count has been greeted or refused (:attr:`ProbeContext.count_greeted`):
    a limit enforced at the greeting is counted exactly.  A refusal at the
    login after that PORT went out is marked ``beside_data`` (the server may
    allow one session more).  Bypasses
    the limiter on purpose (finding the limit is the point), but never has
    more than ``ctx.max_sessions`` sessions open at the server, the ones this
    run already holds (the preflight's spare) included.  When none was
    refused, the logged-in sessions stay open as spares for the next probes
    (:meth:`ProbeContext.adopt`: their logins are not thrown away).  Never
    raises for the server's behaviour: a refusal is recorded and classified.
    """
    held = int(ctx.limiter.borrowed_tokens)
    wanted = min(int(probe.params.get("max_sessions", 8)), ctx.max_sessions)
    sessions: list[ControlSession] = []
    outcomes: dict[int, tuple[RefusalKind, str] | None] = {}
    at_login: list[int] = []  # refused after the greeting: judged with the others connected
    logged_in: list[ControlSession] = []
    to_greet = wanted - held  # sessions of the concurrent count not yet greeted or refused

    def past_greeting() -> None:
        nonlocal to_greet
        to_greet -= 1
        if to_greet <= 0 and ctx.count_greeted is not None:
            ctx.count_greeted.set()

    async def one(i: int) -> bool:
        s: ControlSession | None = None
        greeted = False
        try:
            try:
                s = await ControlSession.open(ctx.target.host, ctx.target.port, ctx.timeout, address=ctx._address)
                sessions.append(s)
                greeting = await s.greet()
            finally:
                past_greeting()
            if greeting.code != 220:
                outcomes[i] = (refusal_kind(greeting), f"session {i + 1}: {greeting.display(120)}")
                return False
            greeted = True
            if probe.login:
                await ctx.login(s)
                logged_in.append(s)
            outcomes[i] = None
            return True
        except FtpProbeError as exc:
            outcomes[i] = (_error_refusal(s, exc), f"session {i + 1}: {exc}")
            if greeted:
                at_login.append(i)
            return False

    async def close_all() -> None:
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for s in sessions:
                    nursery.start_soon(s.aclose)
        sessions.clear()
        logged_in.clear()

    try:
        # All at once (never more than max_sessions with the ones this run holds):
        # a server that counts at the greeting refuses exactly those over its limit.
        async with trio.open_nursery() as nursery:
            for i in range(held, wanted):
                nursery.start_soon(one, i)
        if at_login:
            # A refusal at the login may have counted sessions still logging in:
            # count again one session after another, stopping at the first refusal.
            await close_all()
            outcomes.clear()
            for i in range(held, wanted):
                if not await one(i):
                    break
        if ctx.target.tls == "none" and all(o is None for o in outcomes.values()):
            for s in logged_in:
                if ctx.adopt(s):
                    sessions.remove(s)
    finally:
        await close_all()
    refused = [outcomes[i] for i in sorted(outcomes) if outcomes[i] is not None]
    accepted = held + sum(1 for o in outcomes.values() if o is None)
    refusal, refusal_text = refused[0] if refused else (None, "")
    return SessionLimitObs(probe.name, tried=wanted, held=held, accepted=accepted, refusal=refusal,
                           refusal_text=refusal_text, beside_data=bool(at_login) and ctx.data_connection_invited)


#: Samples per ``pasv-map`` session (fewer sessions for fewer samples).
SAMPLES_PER_SESSION = 16


@action("pasv-map")
async def run_pasv_map(ctx: ProbeContext, probe: Probe) -> PassiveMapObs:
    """Collect ``ctx.samples`` passive replies over up to ``max_sessions``
    concurrent sessions (one per :data:`SAMPLES_PER_SESSION` samples).

    Each session asks once alone (its reply is ``pipelined=False``: address
    evidence), then sends up to ``ctx.pipeline`` PASV/EPSV in one write
    (``pipelined=True``: an ALG that inspects only the first reply of a
    segment may leave the others unrewritten).  A server closes a passive
    port when asked for the next, so only the last port of each write is
    tried with a real data connection (to the control peer's address
    unless ``trust_pasv_address``); the others stay ``reachable=None``.
    When pipelining (``ctx.pipeline`` > 1), that connection's SYN leaves
    before the next write, which goes out while it is in flight; a
    connection that fails then (our own next PASV may have closed the port)
    is not counted (``reachable=None``), the same verb is asked again with
    its connection awaited, and the session waits for its connections from
    then on, so a failure is only ever recorded unraced (at most one raced
    connection is in flight per session).  With ``ctx.pipeline`` 1 every
    connection is awaited: every sampled port is tried, none dropped.
    Sessions alternate PASV and EPSV; a session whose EPSV is refused keeps
    to PASV.  Samples are also appended to
    ``ctx.pasv_samples`` as they arrive.  Never raises for the server's
    behaviour: a session that fails adds to ``errors``.
    """
    samples = ctx.pasv_samples
    samples.clear()  # this probe's samples only
    errors: list[str] = []
    order = itertools.count()
    remaining = ctx.samples
    transient_left = max(3, ctx.samples // 4)  # 4xx replies tolerated before giving up
    workers = max(1, min(ctx.max_sessions, ctx.limiter.total_tokens, -(-ctx.samples // SAMPLES_PER_SESSION)))
    pipeline = max(1, ctx.pipeline)

    def record(sample: PassiveSample) -> None:
        samples.append(sample)
        ctx.progress("passive samples", len(samples), ctx.samples)

    async def worker(index: int) -> None:
        nonlocal remaining, transient_left
        # Next write while a data connection is in flight: only when pipelining (a raced
        # failure is asked again, which draws a new port; --pipeline 1 tries every one).
        overlap = pipeline > 1
        in_flight = 0
        retest: list[str] = []  # verbs whose raced connection failed: ask again, unraced

        async def connect(sample: PassiveSample, sock, host: str, raced: bool) -> None:
            # A raced connection was counted in ``in_flight`` by the caller, before
            # start_soon: a task not yet started must still keep the session's loop going.
            nonlocal remaining, overlap, in_flight
            try:
                result = await finish_connect(sock, host, sample.port, ctx.timeout)
            finally:
                in_flight -= raced
            if not result.connected and raced:
                overlap = False
                retest.append(sample.command)
                remaining += 1
                sample.error = f"not counted (a later PASV/EPSV was in flight and may have closed it): {result.error}"
            else:
                sample.reachable, sample.error = result.connected, result.error
            record(sample)

        try:
            async with ctx.session(login=probe.login) as s, trio.open_nursery() as nursery:
                verbs = ["PASV", "EPSV"] if s.peer_address.version == 4 else ["EPSV"]
                turn = 0
                while remaining > 0 or in_flight:
                    if remaining <= 0:
                        await trio.sleep(0.01)  # a raced connection may still ask for a retest
                        continue
                    if retest:
                        k, commands = 1, [Command(retest.pop())]
                    else:
                        k = 1 if turn == 0 else min(pipeline, remaining)
                        commands = [Command(verbs[(turn + j) % len(verbs)]) for j in range(k)]
                        turn += k
                    remaining -= k
                    exchanges = await s.exchange_pipelined(commands)
                    last_sample: PassiveSample | None = None
                    for cmd, ex in zip(commands, exchanges):
                        n = next(order)
                        if ex.reply is None:
                            errors.append(f"session {index}: {ex.describe()}")
                            return
                        if _transient(ex) and transient_left > 0:
                            transient_left -= 1
                            remaining += 1  # not a sample: ask again after a pause
                            continue
                        if ex.reply.code not in (227, 229):
                            if cmd.verb == "EPSV" and len(verbs) > 1:
                                if "EPSV" in verbs:
                                    verbs.remove("EPSV")
                                remaining += 1  # the refused EPSV does not count as a sample
                                continue
                            errors.append(f"session {index}: {ex.describe()}")
                            return
                        try:
                            address, port = parse_passive(ex.reply)
                        except ProtocolError as exc:
                            errors.append(f"session {index}: {exc}")
                            continue
                        if last_sample is not None:
                            record(last_sample)  # superseded: its port was closed by this reply's command
                        last_sample = PassiveSample(order=n, session=index, command=cmd.verb, port=port,
                                                    address=str(address) if address else None, pipelined=k > 1)
                        last_address = address
                    if any(_transient(e) for e in exchanges):
                        await trio.sleep(BACKOFF[0])  # then ask again
                    if last_sample is None:
                        continue
                    if exchanges[-1].code not in (227, 229):
                        record(last_sample)  # a later command of the write may have closed its port: not tried
                        continue
                    host = passive_target(s.peer_address, last_address, trust_pasv_address=ctx.trust_pasv_address)
                    sock = start_connect(host, last_sample.port)  # the SYN leaves before the next write
                    raced = overlap and remaining > 0 and not in_flight
                    if raced:
                        in_flight += 1
                        nursery.start_soon(connect, last_sample, sock, host, True)
                    else:
                        await connect(last_sample, sock, host, False)
        except FtpProbeError as exc:
            errors.append(f"session {index}: {exc}")

    if workers == 1:
        await worker(0)
    else:
        async with trio.open_nursery() as nursery:
            for i in range(workers):
                nursery.start_soon(worker, i)
    return PassiveMapObs(probe.name, samples=tuple(samples), errors=tuple(errors), sessions=workers,
                         wanted=ctx.samples)


# -- the reflector vantage: what does the path (NAT, ALG) do to FTP? ---------


def _control_port(ctx: ProbeContext, probe: Probe) -> int | None:
    """The reflector port this probe talks to; None if it wants the second
    port and none was given."""
    if probe.params.get("control") != "other":
        return ctx.target.port
    return ctx.other_port


def _reflection(ex: Exchange) -> Reflection | None:
    """What the reflector reported receiving, from its reply; None without one."""
    seen = parse_reflection(ex.reply.text) if ex.reply is not None else None
    if not seen:
        return None
    return Reflection(arrived=seen["raw"], peer_seen=(seen["peer"][0], int(seen["peer"][1])),
                      reads=tuple(seen["reads"]))


@action("reflect-active")
async def run_reflect_active(ctx: ProbeContext, probe: Probe) -> ReflectActiveObs | Skipped:
    """PORT/EPRT variant to the reflector, naming our own address (or a foreign
    one) and a real listener; then LIST, so the reflector connects back to the
    control peer's address on the port as it arrived.

    A line that got no reply is sent once more, byte for byte, in a new
    session (``retry``).  Skipped without the second control port, or for
    PORT naming an IPv6 address.  Raises :class:`FtpProbeError` when the
    session fails before the line is sent.
    """
    assert probe.command is not None
    if (port := _control_port(ctx, probe)) is None:
        return Skipped(probe.name, reason="no second control port given")
    login = not probe.params.get("first_line", False)
    async with ctx.session(login=login, port=port) as s:
        local = s.local_address
        local_end = (str(local), s.local_port)
        async with ActiveListener(str(local)) as listener:
            named = ipaddress.ip_address(probe.params["foreign"]) if "foreign" in probe.params else local
            argument = _active_argument(probe.command.verb, named, listener.port)
            if argument is None:
                return Skipped(probe.name, reason=f"{probe.command.verb} cannot name {named}")
            cmd = replace_argument(probe.command, argument)
            ex = await s.exchange(cmd, cuts=probe.cuts)
            transfer = None
            if _accepted(ex) and "foreign" not in probe.params:
                transfer = await _transfer(s, listener, ctx.timeout)
            named_end = (str(named), listener.port)
        exchanges = _evidence_exchanges(s)
    retry = None
    if ex.outcome == "timeout":
        retry, more = await _stall_retry(ctx, cmd, probe.cuts, login=login, port=port)
        exchanges += more
    return ReflectActiveObs(probe.name, exchanges=exchanges, exchange=ex, retry=retry, sent=cmd.encode(),
                            reflection=_reflection(ex), local=local_end, control_port=port, named=named_end,
                            transfer=transfer)


@action("reflect-passive")
async def run_reflect_passive(ctx: ProbeContext, probe: Probe) -> ReflectPassiveObs | Skipped:
    """PASV/EPSV variant to the reflector: did the command arrive intact, was
    the 227/229 reply rewritten (against what the reflector declared), and
    does a data connection to the advertised port reach it?

    A line that got no reply is sent once more in a new session (``retry``).
    Skipped without the second control port.  Raises :class:`FtpProbeError`
    when the session fails before the line is sent.
    """
    assert probe.command is not None
    if (port := _control_port(ctx, probe)) is None:
        return Skipped(probe.name, reason="no second control port given")
    declared = advertised = data = None
    parse_error = ""
    async with ctx.session(login=True, port=port) as s:
        local_end = (str(s.local_address), s.local_port)
        ex = await s.exchange(probe.command, cuts=probe.cuts)
        if ex.reply is not None and ex.reply.code in (227, 229):
            declared = parse_declared(ex.reply.text)
            try:
                address, data_port = parse_passive(ex.reply)
            except ProtocolError as exc:
                parse_error = str(exc)
            else:
                advertised = _advertised(address, data_port)
                host = passive_target(s.peer_address, address, trust_pasv_address=ctx.trust_pasv_address)
                stream, result = await connect_passive(host, data_port, ctx.timeout)
                head = b""
                if stream is not None:
                    async with stream:
                        head, *_ = await read_all(stream, ctx.timeout, HEAD_BYTES)
                data = DataOutcome(host, data_port, result.connected, error=result.error, head=head)
        exchanges = _evidence_exchanges(s)
    retry = None
    if ex.outcome == "timeout":
        retry, more = await _stall_retry(ctx, probe.command, probe.cuts, login=True, port=port)
        exchanges += more
    return ReflectPassiveObs(probe.name, exchanges=exchanges, exchange=ex, retry=retry, sent=probe.command.encode(),
                             reflection=_reflection(ex), local=local_end, control_port=port, declared=declared,
                             advertised=advertised, data=data, parse_error=parse_error)


# The packet probes' actions (reset-capture, hops) live in their own module,
# which registers them here; the captures themselves live in ftpprobe.packets.
from . import packet_actions  # noqa: E402,F401


# -- FTPS (RFC 4217): the sessions and transfers live in ftpprobe.tls -------


@action("tls")
async def run_tls(ctx: ProbeContext, probe: Probe) -> Observation:
    """PASV in clear text and inside TLS, the certificate, LIST over TLS data
    connections with and without session reuse (:func:`ftpprobe.tls.observe_tls`)."""
    from .tls import observe_tls

    return await observe_tls(ctx, probe)


@action("tls-versions")
async def run_tls_versions(ctx: ProbeContext, probe: Probe) -> Observation:
    """Each TLS version offered alone (:func:`ftpprobe.tls.observe_versions`)."""
    from .tls import observe_versions

    return await observe_versions(ctx, probe)

# The probes that tell ALG implementations apart (reflect-variant, reflect-reply,
# reflect-syn) live in ftpprobe.implementation_actions, which registers them here.
from . import implementation_actions as _implementation  # noqa: E402,F401
