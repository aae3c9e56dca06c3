"""Run a set of probes against one target and produce a :class:`ProbeReport`.

Order: a preflight session (connect, greet, log in: the errors that make a
run fail with exit code 3); then the probes that start first (the packet
capture, :data:`~ftpprobe.executors.STARTS_FIRST`) beside the ``exclusive``
probes, which run one by one (the session-limit count: see
:func:`~ftpprobe.executors.run_session_limit`); then every other probe at
once, each in its own control session, bounded by the context's session
limiter.  The whole run is bounded by ``deadline`` seconds.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field, replace
from typing import Mapping

import trio

from .catalog import Probe, load_catalog
from .errors import FtpProbeError
from .executors import ACTIONS, MAX_PIPELINE, PIPELINE, STARTS_FIRST, ProbeContext, failed
from .findings import Finding, exit_code
from .observations import Failed, Observation, PassiveMapObs, SessionLimitObs
from .passive import PassiveMap, analyze
from .rules import RunFacts, infer
from .rules.path import fingerprint_rows
from .target import Target
from .verdict import Verdict, verdict


@dataclass
class ProbeReport:
    """The result of one run.

    ``target``: URL without password; ``started``: ISO 8601 UTC;
    ``duration_s``: seconds; ``findings``; ``passive``: the mapping as a dict
    (empty if not run); ``greeting``: the server's 220 text; ``peer``: control
    peer address; ``error``: set when the run itself failed (exit code 3);
    ``refusals``: 421 greetings the server gave our sessions (each retried
    after a pause with one session fewer); ``observations``: what each probe
    saw, by probe name (:mod:`ftpprobe.observations`; not in :meth:`to_dict`);
    ``verdict``: can passive / active mode carry data from here
    (:mod:`ftpprobe.verdict`), ``None`` when the run failed before any probe.
    """

    target: str
    started: str
    duration_s: float = 0.0
    findings: list[Finding] = field(default_factory=list)
    passive: dict = field(default_factory=dict)
    greeting: str = ""
    peer: str = ""
    error: str = ""
    refusals: list[str] = field(default_factory=list)
    fingerprint: list[dict] = field(default_factory=list)
    observations: dict[str, Observation] = field(default_factory=dict, repr=False)
    verdict: Verdict | None = None

    @property
    def exit_code(self) -> int:
        """3 the run failed; 2 neither mode can carry data, or a critical quirk;
        1 a warning-level quirk; 0 nothing wrong found."""
        if self.error:
            return 3
        if self.verdict is not None and self.verdict.no_data_path:
            return 2
        return exit_code(self.findings)

    def to_dict(self) -> dict:
        return {
            "target": self.target,
            "started": self.started,
            "duration_s": self.duration_s,
            "peer": self.peer,
            "greeting": self.greeting,
            "exit_code": self.exit_code,
            "error": self.error,
            "refusals": self.refusals,
            "verdict": self.verdict.to_dict() if self.verdict else None,
            "findings": [f.to_dict() for f in self.findings],
            "passive": self.passive,
            **({"fingerprint": self.fingerprint} if self.fingerprint else {}),
        }


async def _observe(ctx: ProbeContext, probe: Probe) -> Observation:
    """Run ``probe``'s action; a session that failed before the probe's own
    command gives a :class:`Failed` (never raises :class:`FtpProbeError`)."""
    started = time.monotonic()
    try:
        obs = await ACTIONS[probe.action](ctx, probe)
    except FtpProbeError as exc:
        obs = failed(probe.name, exc)
    except OSError as exc:  # a local socket error (e.g. out of file descriptors): this probe only
        obs = Failed(probe.name, error=f"local socket error: {exc.strerror or exc}", kind="protocol")
    obs = replace(obs, elapsed=round(time.monotonic() - started, 3))
    ctx.progress(f"{probe.name}: done in {obs.elapsed:g} s"
                 + (f" ({obs.error})" if isinstance(obs, Failed) else ""))
    return obs


async def _observe_into(ctx: ProbeContext, probe: Probe, into: dict[str, Observation]) -> None:
    into[probe.name] = await _observe(ctx, probe)


#: Concurrent control sessions of a run that was given no ``max_sessions``
#: (``--max-sessions``), unless the session-limit probe showed more are welcome.
DEFAULT_SESSIONS = 4
#: The most such a run opens: the session-limit probe holds up to this many
#: at once, and when the server took them all, the other probes use one
#: fewer (a run of short probes is bound by its sessions' logins and QUITs:
#: with 11, the catalog's other probes end before its slowest one, the
#: packet capture; with 7 they ended 0.05 s after it over a 20 ms path).
AUTO_SESSIONS = 12


def _settle_limit(ctx: ProbeContext, obs: Observation | None, *, auto: bool) -> None:
    """After the session-limit probe: how many sessions the other probes may
    hold at once.

    A refusal that shows a limit (``421`` or ``too-many``) lowers it to one
    fewer than the sessions accepted (leaving a slot for real users; all of
    them when only one or two were), whatever ``--max-sessions`` said.  A
    timeout or reset does not: it may be the path, not the server's count.
    ``auto`` (no ``--max-sessions``): :data:`DEFAULT_SESSIONS`, or one fewer
    than the sessions the server took at once when it took all that were
    tried (at most :data:`AUTO_SESSIONS`); with a limit shown, what it
    allows; never more than a 421 back-off during the preflight left.
    """
    limiter = ctx.limiter
    if isinstance(obs, SessionLimitObs) and obs.refusal in ("421", "too-many") and obs.accepted:
        allowed = obs.accepted - 1 if obs.accepted > 2 else obs.accepted
        limiter.total_tokens = max(1, min(limiter.total_tokens, allowed))
    elif auto:
        took_all = (isinstance(obs, SessionLimitObs) and obs.refusal is None and obs.tried
                    and obs.accepted >= obs.tried)
        wanted = max(DEFAULT_SESSIONS, obs.accepted - 1) if took_all else DEFAULT_SESSIONS
        limiter.total_tokens = min(limiter.total_tokens, wanted)  # never undoes a 421 back-off


def passive_map(observations: Mapping[str, Observation]) -> PassiveMap | None:
    """The analysed passive map of the run's ``pasv-map`` observation, or
    ``None`` when none ran (or it failed)."""
    for obs in observations.values():
        if isinstance(obs, PassiveMapObs):
            return analyze(list(obs.samples), errors=len(obs.errors))
    return None


async def run_probes(target: Target, *, probes: list[Probe] | None = None, timeout: float = 5.0,
                     deadline: float = 120.0, samples: int = 20, pipeline: int = PIPELINE,
                     max_sessions: int | None = None,
                     trust_pasv_address: bool = False, progress=lambda message, done=None, total=None: None,
                     vantage: str = "server", other_port: int | None = None,
                     from_lan: bool = False, cert_warn_days: int = 14,
                     reuse_sessions: bool = False) -> ProbeReport:
    """Probe ``target`` with ``probes`` (default: the catalog's probes of ``vantage``).

    ``vantage="reflector"``: ``target`` is an ``ftpprobe reflect`` server
    outside the NAT (``other_port`` its second control port) and the report
    carries the ALG fingerprint.  ``from_lan``: the prober is inside the
    site's LAN and ``target`` names its public address (decides path.hairpin).
    ``cert_warn_days``: a TLS certificate expiring within this many days is
    reported (``server.tls-certificate``).  ``reuse_sessions``: probes take
    turns in one logged-in session where they leave it clean
    (:attr:`ProbeContext.reuse_sessions`; ``check`` sets it).

    ``timeout``: seconds per connect/reply; ``deadline``: seconds for the whole
    run; ``samples``: passive replies for the mapping; ``pipeline``: PASV/EPSV
    per write in the mapping (1: every sampled port is tried with a data
    connection; see :func:`~ftpprobe.executors.run_pasv_map`); ``max_sessions``:
    concurrent control sessions at most (lowered by what the server allows;
    ``None``: :data:`DEFAULT_SESSIONS`, raised by what the session-limit
    probe shows, see :func:`_settle_limit`).
    Never raises for the server's or path's behaviour: a failed run has
    ``report.error`` set (exit code 3).
    """
    probes = load_catalog(vantage=vantage) if probes is None else probes
    unknown = [p.name for p in probes if p.action not in ACTIONS]
    if unknown:
        raise FtpProbeError(f"probe(s) with unknown action: {', '.join(unknown)}")
    report = ProbeReport(target=target.url, started=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    started = time.monotonic()
    if max_sessions is not None and max_sessions < 1:
        raise FtpProbeError(f"max_sessions must be at least 1 (got {max_sessions})")
    if isinstance(pipeline, bool) or not isinstance(pipeline, int) or not 1 <= pipeline <= MAX_PIPELINE:
        raise FtpProbeError(f"pipeline must be a whole number from 1 to {MAX_PIPELINE} (got {pipeline!r})")
    auto = max_sessions is None
    # auto: the session-limit probe (exclusive, first) may hold AUTO_SESSIONS;
    # the others get what _settle_limit decides after it.
    ctx = ProbeContext(target, timeout=timeout, samples=samples, pipeline=pipeline,
                       max_sessions=AUTO_SESSIONS if auto else max_sessions,
                       trust_pasv_address=trust_pasv_address, progress=progress,
                       other_port=other_port, expect_reflector=vantage == "reflector",
                       reuse_sessions=reuse_sessions)
    observations: dict[str, Observation] = {}
    phase = "preflight (connect, greeting, login)"
    try:
        with trio.move_on_after(deadline) as scope:
            try:
                s = await ctx.preflight()
            except FtpProbeError as exc:
                report.error = str(exc)
                report.duration_s = round(time.monotonic() - started, 3)
                return report
            report.greeting = s.greeting.text if s.greeting else ""
            report.peer = str(s.peer_address)
            progress(f"connected to {report.peer}, logged in as {target.user}")

            exclusive = [p for p in probes if p.exclusive]
            rest = [p for p in probes if not p.exclusive]
            # The longest probes (the packet capture) start now, on the
            # preflight's session, beside the session-limit count.
            first = [p for p in rest if p.action in STARTS_FIRST]
            later = [p for p in rest if p not in first]
            if first and exclusive:
                ctx.count_greeted = trio.Event()
            async with trio.open_nursery() as nursery:
                for probe in first:
                    nursery.start_soon(_observe_into, ctx, probe, observations)
                if first:
                    # One scheduling step: they take their sessions before any other probe.
                    await trio.lowlevel.checkpoint()
                try:
                    for probe in exclusive:
                        phase = f"{probe.name} probe"
                        observations[probe.name] = await _observe(ctx, probe)
                finally:
                    if ctx.count_greeted is not None:
                        ctx.count_greeted.set()  # whatever became of the count
                limit_seen = next((observations[p.name] for p in exclusive if p.action == "session-limit"), None)
                _settle_limit(ctx, limit_seen, auto=auto)
                excess = ctx.take_excess_spares()  # before any later probe can take a spare

                phase = "probes"
                if reuse_sessions and ctx.limiter.total_tokens == 1:
                    # One session at a time, handed from probe to probe: in turn,
                    # no task, nursery or wait per probe (check's quick probes).
                    await ctx.close_spares(excess)
                    for probe in later:
                        observations[probe.name] = await _observe(ctx, probe)
                else:
                    # The spares beyond the settled limit close while the probes start.
                    nursery.start_soon(ctx.close_spares, excess)
                    for probe in later:
                        nursery.start_soon(_observe_into, ctx, probe, observations)
    finally:
        with trio.CancelScope(shield=True):
            await ctx.aclose()
    if scope.cancelled_caught:
        # A run cut short is a failed run (exit 3), never "no problem found".
        unfinished = [p.name for p in probes if p.name not in observations]
        actions = {p.name: p.action for p in probes}
        report.error = (f"run deadline of {deadline:g} s passed during the {phase}"
                        + (f"; unfinished: {', '.join(unfinished)}" if unfinished and report.peer else ""))
        for name in unfinished:
            error = f"run deadline of {deadline:g} s passed"
            if actions[name] == "pasv-map" and ctx.pasv_samples:
                # Not analysed (a cut-short map must not pass for the range), but said.
                error += f" after {len(ctx.pasv_samples)} of {ctx.samples} passive samples"
            observations[name] = Failed(name, error=error, kind="deadline")
        if not report.peer:
            report.duration_s = round(time.monotonic() - started, 3)
            return report
    report.observations = observations
    report.refusals = list(ctx.refusals)
    decided = [q for p in probes for q in p.decides]
    pmap = passive_map(observations)
    report.findings = infer(observations, list(dict.fromkeys(decided)),
                            RunFacts(peer=report.peer, from_lan=from_lan, passive_map=pmap,
                                     cert_warn_days=cert_warn_days))
    report.passive = pmap.to_dict() if pmap else {}
    report.verdict = verdict(report.findings, observations, vantage="reflector" if vantage == "reflector" else "server")
    if vantage == "reflector":
        report.fingerprint = fingerprint_rows(observations)
    report.duration_s = round(time.monotonic() - started, 3)
    return report
