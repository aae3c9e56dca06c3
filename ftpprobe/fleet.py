"""Health checks of many sites: targets files, concurrent runs, baselines.

``ftpprobe check`` reads sites from the command line or a targets file (TOML
or CSV), probes them concurrently with a bound on open connections and a
deadline per site and overall, and compares each with a saved baseline.
Changes since the baseline become findings of their own (``change.*`` ids).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import tomllib
from dataclasses import dataclass, field

import trio

from .catalog import load_catalog
from .errors import TargetError
from .findings import Finding, exit_code
from .runner import ProbeReport, run_probes
from .target import DEFAULT_OTHER_PORT, Target, parse_target, reflector_target

#: Probes a health check runs by default: quick, no stall waits.
CHECK_PROBES = ("pasv-map", "epsv", "list-format")
BASELINE_FORMAT = "ftpprobe-baseline"
BASELINE_VERSION = 1
SITE_KEYS = {"name", "url", "reflector", "timeout", "samples", "probes", "password_env", "user_env", "tls"}
#: What an FTPS site (``ftps://``, ``ftpes://`` or ``tls = true``) gets besides :data:`CHECK_PROBES`.
TLS_CHECK_PROBES = ("tls",)


def _flag(value) -> bool:
    """A TOML boolean, or a CSV cell: true/yes/1 (any case); raises ``ValueError`` otherwise."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1"):
        return True
    if text in ("false", "no", "0", ""):
        return False
    raise ValueError(f"tls must be true or false, not {value!r}")


def site_probes(target: Target, probes=None) -> tuple[str, ...]:
    """The probes a site gets: those named, else :data:`CHECK_PROBES`, plus
    :data:`TLS_CHECK_PROBES` for an FTPS site (its certificate and what the
    router hides inside TLS)."""
    if probes is not None:
        return tuple(probes)
    return CHECK_PROBES + (TLS_CHECK_PROBES if target.tls != "none" else ())


@dataclass
class Site:
    """One site to check.  ``name`` labels it in every output (defaults to the
    URL without password); ``probes`` are catalog names; ``timeout`` seconds;
    ``reflector``: ``HOST[:PORT]`` of an ``ftpprobe reflect`` server beyond the
    site's router: ``check`` then also takes the router's ALG fingerprint, and
    a baseline records it (``change.alg-changed``)."""

    name: str
    target: Target
    timeout: float = 5.0
    samples: int = 10
    probes: tuple[str, ...] = CHECK_PROBES
    reflector: str | None = None


@dataclass
class SiteResult:
    """A site's report plus the baseline comparison and the check's status."""

    site: Site
    report: ProbeReport
    changes: list[Finding] = field(default_factory=list)
    #: the router fingerprint through the site's reflector (``None`` without one)
    router: ProbeReport | None = None

    @property
    def up(self) -> bool:
        return not self.report.error

    @property
    def findings(self) -> list[Finding]:
        return self.report.findings + self.changes

    @property
    def status(self) -> int:
        """Nagios: 0 OK, 1 WARNING, 2 CRITICAL (down, or a critical quirk)."""
        return 2 if self.report.error else exit_code(self.findings)


def _site_from(entry: dict, where: str, defaults: dict, environ, known: set[str]) -> Site:
    """One site from a file entry; ``known`` are the catalog's server probe names."""
    unknown = set(entry) - SITE_KEYS
    if unknown:
        raise TargetError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    if not entry.get("url"):
        raise TargetError(f"{where}: missing url")
    merged = {**defaults, **{k: v for k, v in entry.items() if v not in (None, "")}}
    env = dict(environ)
    if merged.get("password_env"):
        if merged["password_env"] not in environ:
            raise TargetError(f"{where}: environment variable {merged['password_env']} is not set")
        env["FTPPROBE_PASSWORD"] = environ[merged["password_env"]]
    if merged.get("user_env"):
        env["FTPPROBE_USER"] = environ.get(merged["user_env"], "")
    try:
        target = parse_target(str(merged["url"]), environ=env, tls=_flag(merged.get("tls", False)),
                              insecure_tls=bool(merged.get("insecure_tls", False)))
        timeout = float(merged.get("timeout", 5.0))
        samples = int(merged.get("samples", 10))
    except (TargetError, ValueError) as exc:
        raise TargetError(f"{where}: {exc}") from None
    probes = merged.get("probes") or site_probes(target)
    if isinstance(probes, str):
        probes = [p.strip() for p in probes.split(";") if p.strip()]
    if bad := [p for p in probes if p not in known]:
        raise TargetError(f"{where}: unknown probe(s) {', '.join(bad)}")
    return Site(name=str(merged.get("name") or target.url), target=target, timeout=timeout,
                samples=samples, probes=tuple(probes), reflector=merged.get("reflector"))


def load_targets(path: str, environ=None, defaults: dict | None = None) -> list[Site]:
    """Sites from a TOML file (``[defaults]`` and ``[[site]]`` tables) or a CSV
    file (header ``name,url[,reflector,timeout,samples,probes,password_env]``).
    ``defaults`` (e.g. the command line's timeout and samples) apply where
    neither the site nor the file's ``[defaults]`` say otherwise.

    Raises :class:`TargetError` naming the file, the line and the problem.
    """
    environ = os.environ if environ is None else environ
    defaults = defaults or {}
    known = {p.name for p in load_catalog(vantage="server")}  # read once, not per site
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise TargetError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TargetError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    sites: list[Site] = []
    if path.endswith(".csv"):
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "url" not in reader.fieldnames:
            raise TargetError(f"{path}, line 1: the CSV header must name a 'url' column")
        for row in reader:
            sites.append(_site_from(row, f"{path}, line {reader.line_num}", defaults, environ, known))
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise TargetError(f"{path}: {exc}") from None
        entries = data.get("site", [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise TargetError(f"{path}: 'site' must be an array of tables ([[site]])")
        lines = text.splitlines()
        site_lines = [i + 1 for i, line in enumerate(lines) if line.strip() == "[[site]]"]
        for n, entry in enumerate(entries):
            where = f"{path}, line {site_lines[n] if n < len(site_lines) else '?'} (site {n + 1})"
            sites.append(_site_from(entry, where, {**defaults, **data.get("defaults", {})}, environ, known))
    if not sites:
        raise TargetError(f"{path}: no sites")
    names = [s.name for s in sites]
    if len(set(names)) != len(names):
        raise TargetError(f"{path}: site names must be unique")
    return sites


def default_max_connections() -> int:
    """The connection cap ``check`` uses by default: as many control
    connections as the open-file limit allows, two descriptors each (the
    control connection and a data connection), 100 kept for everything
    else.  Raises the soft ``RLIMIT_NOFILE`` to the hard limit first."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return max(2, (soft - 100) // 2)


async def check_sites(sites: list[Site], *, max_connections: int | None = None, sessions_per_site: int = 1,
                      deadline: float = 300.0, site_deadline: float = 60.0,
                      progress=lambda message, done=None, total=None: None,
                      cert_warn_days: int = 14) -> list[SiteResult]:
    """Probe every site concurrently; never more than ``max_connections`` control
    sessions open at once.  A site that does not finish within ``site_deadline``
    seconds, or before the overall ``deadline``, is reported down with the reason.
    ``cert_warn_days``: an FTPS site's certificate that expires within this
    many days is a warning (``server.tls-certificate``).  ``max_connections``:
    by default :func:`default_max_connections`.  A plain-FTP site's probes
    take turns in one logged-in session (``reuse_sessions``), a new one
    only when a probe left it unclean."""
    if max_connections is None:
        max_connections = default_max_connections()
    parallel = max(1, max_connections // sessions_per_site)
    limiter = trio.CapacityLimiter(parallel)
    catalog = {p.name: p for p in load_catalog(vantage="server")}
    results: dict[str, SiteResult] = {}
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")

    async def one(site: Site) -> None:
        async with limiter:
            report = await run_probes(site.target, probes=[catalog[n] for n in site.probes], timeout=site.timeout,
                                      deadline=site_deadline, samples=site.samples, max_sessions=sessions_per_site,
                                      cert_warn_days=cert_warn_days, reuse_sessions=site.target.tls == "none")
            router = None
            if site.reflector:
                router = await run_probes(reflector_target(site.reflector), timeout=site.timeout,
                                          deadline=site_deadline, max_sessions=max(2, sessions_per_site),
                                          vantage="reflector", other_port=DEFAULT_OTHER_PORT)
        results[site.name] = SiteResult(site, report, router=router)
        progress("sites checked", len(results), len(sites))

    with trio.move_on_after(deadline):
        async with trio.open_nursery() as nursery:
            for site in sites:
                nursery.start_soon(one, site)
    for site in sites:
        if site.name not in results:
            results[site.name] = SiteResult(site, ProbeReport(site.target.url, started, duration_s=deadline,
                                                              error=f"overall deadline of {deadline:g} s passed"))
    return [results[s.name] for s in sites]


# -- baselines ----------------------------------------------------------------


def baseline_entry(result: SiteResult) -> dict:
    """What the baseline keeps of one site: up, finding statuses, and of the
    passive analysis the 99% estimate with its ``confidence`` (for people) and
    what :func:`compare_baseline` recomputes its intervals from (``range_min``,
    ``range_max``, ``range_samples``, ``allocation``).  Version-1 baselines
    written before those keys existed still load and compare
    (:func:`ftpprobe.passive.range_claim`)."""
    p = result.report.passive
    keys = ("estimate_low", "estimate_high", "uncertainty", "addresses", "allocation",
            "confidence", "range_min", "range_max", "range_samples")
    entry = {
        "url": result.site.target.url,
        "up": result.up,
        "findings": {f.id: f.status for f in result.report.findings},
        "passive": {k: p.get(k) for k in keys} if p else {},
    }
    if result.router is not None and not result.router.error:
        entry["fingerprint"] = fingerprint_outcomes(result.router)
    return entry


#: Fingerprint outcomes that say what the path did; others (no report, a
#: timeout once, a failed session) say nothing and never count as a change.
DECIDED_OUTCOMES = ("passed", "rewritten", "mangled")


def fingerprint_outcomes(router: ProbeReport) -> dict[str, str]:
    """``{variant: outcome}`` of a router fingerprint, only the decided ones
    (:data:`DECIDED_OUTCOMES`, and a proven stall ``stalled (dropped|held)``)."""
    return {row["probe"]: row["outcome"] for row in router.fingerprint
            if row["outcome"] in DECIDED_OUTCOMES or str(row["outcome"]).startswith("stalled (")}


def alg_changes(result: SiteResult, old: dict, saved: str) -> list[Finding]:
    """``change.alg-changed`` when a variant decided at the baseline and now
    had another outcome (e.g. ``alg-port-lf: rewritten -> stalled (dropped)``
    after a firmware update).  Variants undecided on either side are left
    out, so a lost packet never raises it."""
    before = old.get("fingerprint")
    if not before or result.router is None or result.router.error:
        return []
    now = fingerprint_outcomes(result.router)
    changed = sorted(name for name in before.keys() & now.keys() if before[name] != now[name])
    if not changed:
        return []
    return [Finding("change.alg-changed", "present",
                    [f"{name}: {before[name]} at the baseline of {saved}, {now[name]} now" for name in changed],
                    "the router's FTP handling changed (firmware update? ALG switched on or off?): see the "
                    "router fingerprint (ftpprobe fingerprint) for what it does now",
                    data={"changed": {name: [before[name], now[name]] for name in changed}})]


def save_baseline(path: str, results: list[SiteResult]) -> None:
    """Write the baseline atomically (a temporary file, then rename)."""
    data = {"format": BASELINE_FORMAT, "version": BASELINE_VERSION,
            "saved": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "sites": {r.site.name: baseline_entry(r) for r in results}}
    write_atomically(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def load_baseline(path: str) -> dict:
    """Read a baseline.  Raises :class:`TargetError` for an unreadable,
    malformed or foreign file, or one from an unknown (newer) version."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise TargetError(f"{path}: cannot read baseline: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        line = getattr(exc, "lineno", "?")
        raise TargetError(f"{path}, line {line}: not a JSON baseline ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != BASELINE_FORMAT:
        raise TargetError(f"{path}: not an ftpprobe baseline (no \"format\": \"{BASELINE_FORMAT}\")")
    version = data.get("version")
    if version != BASELINE_VERSION:
        raise TargetError(f"{path}: baseline version {version!r} is not supported by this ftpprobe "
                          f"(it reads version {BASELINE_VERSION}); save a new one with --save-baseline")
    if not isinstance(data.get("sites"), dict):
        raise TargetError(f"{path}: baseline has no \"sites\" object")
    return data


def compare_baseline(result: SiteResult, baseline: dict) -> list[Finding]:
    """What changed since the baseline, as ``change.*`` findings (only present ones).

    ``change.pasv-range-moved`` when what the baseline and now claim about the
    passive range (:func:`ftpprobe.passive.range_claim`: a confidence interval
    at ``1 - RANGE_MOVED_FALSE_ALARM / 2``, or ports seen handed out by a
    sequential allocator) do not overlap and at least one side is an interval.
    If the range did not change, two intervals that each cover it overlap, so
    a false alarm needs one of them to miss: at most
    ``RANGE_MOVED_FALSE_ALARM`` (0.1%) per site and check.  Two sets of ports
    from a sequential allocator prove nothing (it may have walked on)."""
    from .passive import RANGE_MOVED_FALSE_ALARM, format_confidence, range_claim

    old = baseline["sites"].get(result.site.name)
    saved = baseline.get("saved", "?")
    if old is None:
        return []
    changes: list[Finding] = []
    if old.get("up") and not result.up:
        changes.append(Finding("change.site-dark", "present",
                               [f"up at the baseline of {saved}; now: {result.report.error}"],
                               "the site stopped answering since the baseline: check power, router, server"))
    if not result.up:
        return changes
    changes += alg_changes(result, old, saved)
    now = {f.id: f.status for f in result.report.findings}
    for quirk, status in now.items():
        if status == "present" and old["findings"].get(quirk) == "absent":
            changes.append(Finding("change.quirk-appeared", "present",
                                   [f"{quirk}: absent at the baseline of {saved}, present now"],
                                   "a new problem since the baseline: see that finding's advice",
                                   data={"quirk": quirk}))
    old_p, new_p = old.get("passive") or {}, result.report.passive or {}
    level = 1 - RANGE_MOVED_FALSE_ALARM / 2
    old_c, new_c = range_claim(old_p, level), range_claim(new_p, level)
    if (old_c and new_c and "interval" in (old_c.kind, new_c.kind)
            and (old_c.high < new_c.low or new_c.high < old_c.low)):
        new_range = f"{new_p['estimate_low']}-{new_p['estimate_high']}"
        if new_p.get("confidence"):
            new_range += f" (the new range at {format_confidence(new_p['confidence'])} confidence)"
        changes.append(Finding(
            "change.pasv-range-moved", "present",
            [f"passive range moved from {old_c.sampled} to {new_c.sampled} (sampled ports; baseline of {saved})",
             f"baseline: {old_c.describe()}; now: {new_c.describe()}; they do not overlap"],
            f"the server's passive range changed: forward {new_range}, or restore the old setting",
            data={"old": [old_p["estimate_low"], old_p["estimate_high"]],
                  "new": [new_p["estimate_low"], new_p["estimate_high"]],
                  "old_claim": [old_c.low, old_c.high, old_c.kind], "new_claim": [new_c.low, new_c.high, new_c.kind],
                  "confidence": level}))
    old_addr, new_addr = set((old_p.get("addresses") or {})), set((new_p.get("addresses") or {}))
    if old_addr and new_addr and old_addr != new_addr:
        changes.append(Finding("change.pasv-address-changed", "present",
                               [f"227 address {', '.join(sorted(old_addr))} at the baseline of {saved}, "
                                f"now {', '.join(sorted(new_addr))}"],
                               "the address the server announces changed (new public IP? server moved?)"))
    return changes


def write_atomically(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and
    a rename, so readers (node_exporter's textfile collector) never see half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
