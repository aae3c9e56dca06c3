"""Executors: carry out one probe of the catalog against a server, record what happened.

Each action (``command``, ``passive``, ``active``, ``bounce``, ``listing``,
``auth-tls``, ``session-limit``, ``pasv-map``) is an async function
``(ctx, probe) -> Observation``.  Executors observe; they never decide a
quirk (that is :mod:`ftpprobe.inference`).  Each opens its own control
session(s) through :meth:`ProbeContext.session`, which respects the server's
session limit and backs off on 421.
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
from .codec import Command, encode_eprt, encode_port, escape, parse_passive, replace_argument
from .data import MAX_DATA_BYTES, ActiveListener, connect_passive, passive_target, probe_passive_port, read_all
from .errors import FtpProbeError, ProtocolError, ReplyTimeout
from .passive import PassiveSample
from .reflector import TAG as REFLECTOR_TAG
from .reflector import parse_declared, parse_reflection
from .target import Target
from .transport import ControlSession, Exchange

#: Back-off before retrying a session the server refused with 421, seconds.
BACKOFF = (0.5, 1.0, 2.0)


@dataclass
class Observation:
    """What one probe saw.

    ``exchanges``: every command of the probe's own session(s) with its
    outcome; ``data``: action-specific results (JSON-able); ``error``: set
    when the probe could not run (connect or login failed), with the message.
    """

    probe: str
    exchanges: list[Exchange] = field(default_factory=list)
    data: dict = field(default_factory=dict)
    error: str = ""
    elapsed: float = 0.0

    @property
    def first(self) -> Exchange | None:
        """The probe's own command (the first exchange after login)."""
        return self.data.get("_probe_exchange")


class SessionRefused(FtpProbeError):
    """The server refused a session with 421 after every back-off."""


@dataclass
class ProbeContext:
    """Everything executors share for one run against one target.

    ``timeout``: seconds for each connect and each reply; ``samples``: passive
    replies to collect in ``pasv-map``; ``limiter``: caps concurrent control
    sessions (its ``total_tokens`` shrinks when the server answers 421);
    ``trust_pasv_address``: connect data channels to the advertised address
    instead of the control peer's.
    """

    target: Target
    timeout: float = 5.0
    samples: int = 20
    max_sessions: int = 4
    trust_pasv_address: bool = False
    limiter: trio.CapacityLimiter = field(default=None)  # type: ignore[assignment]
    refusals: list[str] = field(default_factory=list)
    progress: Callable[[str], None] = lambda message: None
    #: For the reflector vantage: the second control port (no ALG helper there?)
    #: and whether to insist that the peer greets as an ftpprobe reflector.
    other_port: int | None = None
    expect_reflector: bool = False

    #: The preflight's logged-in session, handed to the first probe that wants
    #: one (it holds a limiter slot until closed, so it counts against
    #: ``max_sessions`` like any other session).
    _spare: ControlSession | None = field(default=None, repr=False)
    _spare_token: object = field(default_factory=object, repr=False)  # its limiter borrower

    def __post_init__(self) -> None:
        if self.limiter is None:
            self.limiter = trio.CapacityLimiter(self.max_sessions)

    async def preflight(self) -> ControlSession:
        """Open, greet and log in the run's first session and keep it as the spare.

        The session holds a limiter slot until a probe has used it (or
        :meth:`aclose` closes it), so the server never sees more than
        ``max_sessions`` of our sessions at once.  Raises what :meth:`session` raises.
        """
        await self.limiter.acquire_on_behalf_of(self._spare_token)
        try:
            self._spare = await self._establish(True, self.target.port)
        except BaseException:
            self.limiter.release_on_behalf_of(self._spare_token)
            raise
        return self._spare

    async def aclose(self) -> None:
        """Close the spare session if no probe took it."""
        if self._spare is not None:
            spare, self._spare = self._spare, None
            await spare.aclose()
            self.limiter.release_on_behalf_of(self._spare_token)

    @asynccontextmanager
    async def session(self, *, login: bool = True, port: int | None = None) -> AsyncIterator[ControlSession]:
        """A greeted (and, if asked, logged-in) control session holding a limiter slot.

        A probe that wants a logged-in session on the target's port gets the
        preflight's spare session if it is still unused.

        Raises :class:`ConnectFailed`, :class:`LoginFailed`, :class:`SessionRefused`,
        :class:`ReplyTimeout`, :class:`PeerClosed`, :class:`ProtocolError`.
        """
        if self._spare is not None and login and port in (None, self.target.port):
            spare, self._spare = self._spare, None
            try:
                yield spare
            finally:
                await spare.aclose()
                self.limiter.release_on_behalf_of(self._spare_token)
            return
        async with self.limiter:
            s = await self._establish(login, port or self.target.port)
            try:
                yield s
            finally:
                await s.aclose()

    async def _establish(self, login: bool, port: int) -> ControlSession:
        """Open, greet and log in.  On a 421 greeting the slot count shrinks by
        one and the session is retried after :data:`BACKOFF`; a greeting or
        login reply that never comes is retried once in a new session (a
        single lost reply must not fail a whole probe)."""
        lost = 0
        for pause in (*BACKOFF, None):
            s = await ControlSession.open(self.target.host, port, self.timeout)
            try:
                greeting = await s.greet()
                if self.expect_reflector and REFLECTOR_TAG not in greeting.text:
                    raise ProtocolError(f"{self.target.host} port {port} is not an ftpprobe reflector "
                                        f"(greeting {greeting.display(80)}); start one with `ftpprobe reflect`")
                if greeting.code == 421:
                    self.refusals.append(greeting.display(120))
                    if self.limiter.total_tokens > 1:
                        self.limiter.total_tokens -= 1
                    if pause is None:
                        raise SessionRefused(f"server refused the session: {greeting.display(120)}")
                    await s.aclose()
                    await trio.sleep(pause)
                    continue
                if greeting.code != 220:
                    raise ProtocolError(f"unexpected greeting {greeting.display(120)}")
                if login:
                    await s.login(self.target.user, self.target.password)
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


Action = Callable[[ProbeContext, Probe], Awaitable[Observation]]
ACTIONS: dict[str, Action] = {}


def action(name: str) -> Callable[[Action], Action]:
    def register(fn: Action) -> Action:
        ACTIONS[name] = fn
        return fn
    return register


def _evidence_exchanges(session: ControlSession, skip_login: bool = True) -> list[Exchange]:
    return [ex for ex in session.history if not (skip_login and ex.sent.startswith(("USER ", "PASS ")))]


def _transient(ex: Exchange) -> bool:
    """A 4xx reply (RFC 959 §4.2: transient negative), e.g. pyftpdlib's
    "425 Too many connections" when its session limit counts data channels."""
    return ex.reply is not None and 400 <= ex.reply.code < 500


async def _exchange_retrying(s: ControlSession, command: Command) -> Exchange:
    """Send ``command``; on a transient 4xx reply, pause (:data:`BACKOFF`) and send it again."""
    for pause in BACKOFF:
        ex = await s.exchange(command)
        if not _transient(ex):
            return ex
        await trio.sleep(pause)
    return await s.exchange(command)


@action("command")
async def run_command(ctx: ProbeContext, probe: Probe) -> Observation:
    """Send the probe's command variant in a fresh session and record the outcome.

    A transient 4xx reply is retried in a new session after :data:`BACKOFF`
    (the prober's own concurrent sessions may be what the server counted).
    After the variant, a canonical ``NOOP`` tells whether the session survived.
    """
    obs = Observation(probe.name)
    assert probe.command is not None
    for pause in (*BACKOFF, None):
        async with ctx.session(login=probe.login) as s:
            ex = await s.exchange(probe.command, cuts=probe.cuts)
            obs.data["_probe_exchange"] = ex
            if ex.outcome == "reply":
                after = await s.exchange(Command("NOOP"))
                obs.data["alive_after"] = after.outcome == "reply"
            obs.exchanges = _evidence_exchanges(s)
        if not _transient(ex) or pause is None:
            return obs
        await trio.sleep(pause)
    return obs


@action("passive")
async def run_passive(ctx: ProbeContext, probe: Probe) -> Observation:
    """PASV/EPSV variant, then a data connection to the port it names."""
    obs = Observation(probe.name)
    async with ctx.session(login=probe.login) as s:
        assert probe.command is not None
        ex = await _exchange_retrying(s, probe.command)
        obs.data["_probe_exchange"] = ex
        if ex.reply is not None and ex.reply.code in (227, 229):
            try:
                address, port = parse_passive(ex.reply)
            except ProtocolError as exc:
                obs.data["parse_error"] = str(exc)
            else:
                host = passive_target(s.peer_address, address, trust_pasv_address=ctx.trust_pasv_address)
                result = await probe_passive_port(host, port, ctx.timeout)
                obs.data.update(port=port, connected=result.connected, data_error=result.error,
                                data_host=host)
        obs.exchanges = _evidence_exchanges(s)
    return obs


def _active_argument(verb: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str | None:
    if verb.upper() == "PORT":
        return encode_port(address, port) if address.version == 4 else None
    return encode_eprt(address, port)


async def _transfer_reply(s: ControlSession, listener: ActiveListener, timeout: float) -> tuple[Exchange, dict]:
    """Send LIST and, at the same time, wait for the server's data connection.

    Returns the LIST exchange and a dict: ``connected``, ``source`` (address,
    port), ``bytes``, ``final`` (the reply after the transfer).
    """
    result: dict = {"connected": False}
    accept_scope = trio.CancelScope()

    async def accept() -> None:
        with accept_scope:
            stream, info = await listener.accept(timeout)
            result["connected"] = info.connected
            if stream is None:
                result["accept_error"] = info.error
                return
            result["source"] = list(info.peer or ())
            async with stream:
                data, total, truncated, _ = await read_all(stream, timeout)
            result["bytes"], result["truncated"] = total, truncated
            result["head"] = escape(data[:80])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        list_ex = await s.exchange(Command("LIST"))
        transferring = list_ex.reply is not None and 100 <= list_ex.reply.code < 200
        if not transferring:
            accept_scope.cancel()  # refused (425/5xx) or no answer: no connection is coming
    if transferring:
        try:
            result["final"] = (await s.read_reply(timeout)).display(100)
        except FtpProbeError as exc:
            result["final"] = f"no final reply: {exc}"
    return list_ex, result


@action("active")
async def run_active(ctx: ProbeContext, probe: Probe) -> Observation:
    """PORT/EPRT naming our own address and a real listener, then LIST.

    Records whether the data connection arrived and its source port
    (RFC 959 §3.3: by default L-1, i.e. 20 for control port 21).
    """
    obs = Observation(probe.name)
    assert probe.command is not None
    async with ctx.session(login=probe.login) as s:
        local = s.local_address
        async with ActiveListener(str(local)) as listener:
            argument = _active_argument(probe.command.verb, local, listener.port)
            if argument is None:
                obs.data["skipped"] = f"{probe.command.verb} cannot name the IPv6 address {local}"
                return obs
            cmd = replace_argument(probe.command, argument)
            ex = await s.exchange(cmd)
            obs.data["_probe_exchange"] = ex
            obs.data.update(listen=[str(local), listener.port], control_port=s.port)
            if ex.reply is not None and ex.reply.code == 200:
                _list_ex, result = await _transfer_reply(s, listener, ctx.timeout)
                obs.data.update(result)
        obs.exchanges = _evidence_exchanges(s)
    return obs


@action("bounce")
async def run_bounce(ctx: ProbeContext, probe: Probe) -> Observation:
    """PORT naming a third-party address; never followed by a transfer command."""
    obs = Observation(probe.name)
    assert probe.command is not None
    async with ctx.session(login=probe.login) as s:
        local = s.local_address
        foreign = probe.params["foreign_ipv4"] if local.version == 4 else probe.params["foreign_ipv6"]
        port = int(probe.params.get("foreign_port", 40000))
        verb = probe.command.verb if local.version == 4 else "EPRT"
        cmd = replace_argument(Command(verb, line_ending=probe.command.line_ending),
                               _active_argument(verb, ipaddress.ip_address(foreign), port))
        ex = await s.exchange(cmd)
        obs.data["_probe_exchange"] = ex
        obs.data["foreign"] = [foreign, port]
        obs.exchanges = _evidence_exchanges(s)
    return obs


_UNIX_LIST = r"^[-dlcbpsD?][-rwxsStTlL?]{9}[+.@]?\s"
_DOS_LIST = r"^\d{2}-\d{2}-\d{2,4}\s+\d{1,2}:\d{2}\s*([AaPp][Mm])?\s+(<DIR>|\d+)\s"


@action("listing")
async def run_listing(ctx: ProbeContext, probe: Probe) -> Observation:
    """FEAT, then LIST over a passive data connection (1 MiB read at most)."""
    obs = Observation(probe.name)
    async with ctx.session(login=probe.login) as s:
        feat = await s.exchange(Command("FEAT"))
        features = feat.reply.text.upper() if feat.reply and feat.reply.code == 211 else ""
        obs.data["mlsd"] = "MLSD" in features or "MLST" in features
        pasv = await _exchange_retrying(s, Command("EPSV" if s.peer_address.version == 6 else "PASV"))
        if pasv.reply is None or pasv.reply.code not in (227, 229):
            obs.data["no_passive"] = pasv.describe()
            obs.exchanges = _evidence_exchanges(s)
            return obs
        try:
            address, port = parse_passive(pasv.reply)
        except ProtocolError as exc:
            obs.data["no_passive"] = str(exc)
            obs.exchanges = _evidence_exchanges(s)
            return obs
        host = passive_target(s.peer_address, address, trust_pasv_address=ctx.trust_pasv_address)
        stream, result = await connect_passive(host, port, ctx.timeout)
        if stream is None:
            obs.data["no_passive"] = result.error
            obs.exchanges = _evidence_exchanges(s)
            return obs
        async with stream:
            ex = await s.exchange(Command("LIST"))
            if ex.reply is not None and 100 <= ex.reply.code < 200:
                data, total, truncated, timed_out = await read_all(stream, ctx.timeout, MAX_DATA_BYTES)
                obs.data.update(bytes=total, truncated=truncated, data_timed_out=timed_out)
            else:
                data = b""
                obs.data["list_failed"] = ex.describe()
        if ex.reply is not None and 100 <= ex.reply.code < 200:
            try:
                await s.read_reply()
            except FtpProbeError:
                pass
        lines = [l for l in data.decode("latin-1").splitlines() if l.strip() and not l.startswith("total ")]
        odd = [l for l in lines if not (re.match(_UNIX_LIST, l) or re.match(_DOS_LIST, l))]
        obs.data.update(lines=len(lines), unparseable=[escape(l.encode("latin-1"))[:100] for l in odd[:3]],
                        unparseable_count=len(odd),
                        style="unix" if lines and any(re.match(_UNIX_LIST, l) for l in lines) else
                              "dos" if lines and any(re.match(_DOS_LIST, l) for l in lines) else "none")
        obs.exchanges = _evidence_exchanges(s)
    return obs


@action("auth-tls")
async def run_auth_tls(ctx: ProbeContext, probe: Probe) -> Observation:
    """FEAT and AUTH TLS before login; the session is closed without a handshake."""
    obs = Observation(probe.name)
    assert probe.command is not None
    async with ctx.session(login=False) as s:
        feat = await s.exchange(Command("FEAT"))
        obs.data["feat_auth_tls"] = bool(feat.reply and feat.reply.code == 211 and "AUTH TLS" in feat.reply.text.upper())
        ex = await s.exchange(probe.command)
        obs.data["_probe_exchange"] = ex
        obs.exchanges = _evidence_exchanges(s)
    obs.data["user"] = ctx.target.user
    obs.data["anonymous"] = ctx.target.anonymous
    return obs


@action("session-limit")
async def run_session_limit(ctx: ProbeContext, probe: Probe) -> Observation:
    """Hold up to ``max_sessions`` logged-in sessions at once; stop at the first refusal.

    Runs alone (``exclusive``), so the count is this prober's only.  Bypasses
    the limiter on purpose: finding the limit is the point.
    """
    obs = Observation(probe.name)
    # Never more than --max-sessions at the server at once: sessions this run
    # already holds (the preflight's spare) count.
    held = int(ctx.limiter.borrowed_tokens)
    wanted = min(int(probe.params.get("max_sessions", 8)), ctx.max_sessions)
    sessions: list[ControlSession] = []
    obs.data["held"] = held
    try:
        for i in range(held, wanted):
            try:
                s = await ControlSession.open(ctx.target.host, ctx.target.port, ctx.timeout)
            except FtpProbeError as exc:
                obs.data["refused"] = f"session {i + 1}: {exc}"
                break
            sessions.append(s)
            try:
                greeting = await s.greet()
                if greeting.code != 220:
                    obs.data["refused"] = f"session {i + 1}: {greeting.display(120)}"
                    break
                if probe.login:
                    await s.login(ctx.target.user, ctx.target.password)
            except FtpProbeError as exc:
                obs.data["refused"] = f"session {i + 1}: {exc}"
                break
            obs.data["accepted"] = i + 1
    finally:
        obs.data.setdefault("accepted", held)
        obs.data["tried"] = wanted
        banner = sessions[0].greeting.text if sessions and sessions[0].greeting else ""
        obs.data["banner"] = banner[:200]
        for s in sessions:
            await s.aclose()
    return obs


@action("pasv-map")
async def run_pasv_map(ctx: ProbeContext, probe: Probe) -> Observation:
    """Collect ``ctx.samples`` passive replies over several concurrent sessions.

    Every advertised port is tried with a real data connection (to the control
    peer's address unless ``trust_pasv_address``).  Sessions alternate PASV
    and EPSV; a session whose EPSV is refused keeps to PASV.
    """
    obs = Observation(probe.name)
    samples: list[PassiveSample] = []
    errors: list[str] = []
    order = itertools.count()
    remaining = [ctx.samples]
    transient_left = [max(3, ctx.samples // 4)]  # 4xx replies tolerated before giving up
    workers = max(1, min(ctx.max_sessions, ctx.limiter.total_tokens, ctx.samples))

    async def worker(index: int) -> None:
        try:
            async with ctx.session(login=probe.login) as s:
                verbs = ["PASV", "EPSV"] if s.peer_address.version == 4 else ["EPSV"]
                for turn in itertools.count():
                    if remaining[0] <= 0:
                        return
                    remaining[0] -= 1
                    verb = verbs[turn % len(verbs)]
                    n = next(order)
                    ex = await s.exchange(Command(verb))
                    if ex.reply is None:
                        errors.append(f"session {index}: {ex.describe()}")
                        return
                    if _transient(ex) and transient_left[0] > 0:
                        transient_left[0] -= 1
                        remaining[0] += 1  # not a sample: ask again after a pause
                        await trio.sleep(BACKOFF[0])
                        continue
                    if ex.reply.code not in (227, 229):
                        if verb == "EPSV" and len(verbs) > 1:
                            verbs.remove("EPSV")
                            remaining[0] += 1  # the refused EPSV does not count as a sample
                            continue
                        errors.append(f"session {index}: {ex.describe()}")
                        return
                    try:
                        address, port = parse_passive(ex.reply)
                    except ProtocolError as exc:
                        errors.append(f"session {index}: {exc}")
                        continue
                    host = passive_target(s.peer_address, address, trust_pasv_address=ctx.trust_pasv_address)
                    result = await probe_passive_port(host, port, ctx.timeout)
                    samples.append(PassiveSample(order=n, session=index, command=verb, port=port,
                                                 address=str(address) if address else None,
                                                 reachable=result.connected, error=result.error))
                    ctx.progress(f"pasv-map: {len(samples)}/{ctx.samples} samples")
        except FtpProbeError as exc:
            errors.append(f"session {index}: {exc}")

    async with trio.open_nursery() as nursery:
        for i in range(workers):
            nursery.start_soon(worker, i)
    obs.data["samples"] = samples
    obs.data["errors"] = errors
    obs.data["sessions"] = workers
    return obs


# -- the reflector vantage: what does the path (NAT, ALG) do to FTP? ---------


def _control_port(ctx: ProbeContext, probe: Probe, obs: Observation) -> int | None:
    """The reflector port this probe talks to; None (and ``skipped`` noted) if
    it wants the second port and none was given."""
    if probe.params.get("control") != "other":
        return ctx.target.port
    if ctx.other_port is None:
        obs.data["skipped"] = "no second control port given"
    return ctx.other_port


def _reflection_data(obs: Observation, ex: Exchange, sent: bytes) -> None:
    obs.data["sent"] = sent.hex()
    if ex.reply is not None:
        seen = parse_reflection(ex.reply.text)
        if seen:
            obs.data["arrived"] = seen["raw"].hex()
            obs.data["peer_seen"] = list(seen["peer"])
            obs.data["reads"] = seen["reads"]


@action("reflect-active")
async def run_reflect_active(ctx: ProbeContext, probe: Probe) -> Observation:
    """PORT/EPRT variant to the reflector, naming our own address (or a foreign
    one) and a real listener; then LIST, so the reflector connects back to the
    control peer's address on the port as it arrived."""
    obs = Observation(probe.name)
    assert probe.command is not None
    if (port := _control_port(ctx, probe, obs)) is None:
        return obs
    async with ctx.session(login=not probe.params.get("first_line", False), port=port) as s:
        local = s.local_address
        obs.data.update(local=[str(local), s.local_port], control_port=port)
        async with ActiveListener(str(local)) as listener:
            named = ipaddress.ip_address(probe.params["foreign"]) if "foreign" in probe.params else local
            argument = _active_argument(probe.command.verb, named, listener.port)
            if argument is None:
                obs.data["skipped"] = f"{probe.command.verb} cannot name {named}"
                return obs
            cmd = replace_argument(probe.command, argument)
            ex = await s.exchange(cmd, cuts=probe.cuts)
            obs.data["_probe_exchange"] = ex
            _reflection_data(obs, ex, cmd.encode())
            if ex.reply is not None and ex.reply.code == 200 and "foreign" not in probe.params:
                _list_ex, result = await _transfer_reply(s, listener, ctx.timeout)
                obs.data["active"] = result
        obs.exchanges = _evidence_exchanges(s)
    return obs


@action("reflect-passive")
async def run_reflect_passive(ctx: ProbeContext, probe: Probe) -> Observation:
    """PASV/EPSV variant to the reflector: did the command arrive intact, was
    the 227/229 reply rewritten (against what the reflector declared), and
    does a data connection to the advertised port reach it?"""
    obs = Observation(probe.name)
    assert probe.command is not None
    if (port := _control_port(ctx, probe, obs)) is None:
        return obs
    async with ctx.session(login=True, port=port) as s:
        obs.data.update(local=[str(s.local_address), s.local_port], control_port=port)
        ex = await s.exchange(probe.command, cuts=probe.cuts)
        obs.data["_probe_exchange"] = ex
        _reflection_data(obs, ex, probe.command.encode())
        if ex.reply is not None and ex.reply.code in (227, 229):
            declared = parse_declared(ex.reply.text)
            try:
                address, data_port = parse_passive(ex.reply)
            except ProtocolError as exc:
                obs.data["parse_error"] = str(exc)
            else:
                obs.data["advertised"] = [str(address) if address else None, data_port]
                obs.data["declared"] = list(declared) if declared else None
                host = passive_target(s.peer_address, address, trust_pasv_address=ctx.trust_pasv_address)
                stream, result = await connect_passive(host, data_port, ctx.timeout)
                obs.data["data_connected"] = result.connected
                if stream is not None:
                    async with stream:
                        data, *_ = await read_all(stream, ctx.timeout, 200)
                    obs.data["data_head"] = escape(data[:80])
        obs.exchanges = _evidence_exchanges(s)
    return obs
