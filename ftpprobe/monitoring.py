"""Outputs for monitoring: the Nagios/Icinga plugin output, JSON lines, Prometheus metrics.

Nagios plugin conventions (monitoring-plugins development guidelines, check_tcp.c):

- one status line ``FTPPROBE STATUS - text | perfdata``, then the long output:
  one line per finding of each problem site (site, status, finding id, first
  evidence line), most severe first;
- perfdata items ``'label'=value[UOM];warn;crit;min;max``; the label set and
  order never change between runs of the same check (a value that could not be
  measured is ``U``), so graphers keep their series;
- thresholds (``-w``/``-c``) in the plugin range syntax (``10``, ``10:``,
  ``~:10``, ``10:20``, ``@10:20``: alert when the value is outside the range,
  or inside it with ``@``), parsed by the ``nagiosplugin`` package;
- exit code 0/1/2/3 = OK/WARNING/CRITICAL/UNKNOWN.

Prometheus: gauges in a ``prometheus_client`` registry, rendered by
``generate_latest`` and written for node_exporter's textfile collector by
``write_to_textfile`` (atomically: a temporary file, then a rename).  Names are
in base units (``_seconds``, ``_ratio``), one ``site`` label per site.
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING, Union

import click
from nagiosplugin import Range

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .fleet import SiteResult

STATUS_NAMES = ("OK", "WARNING", "CRITICAL", "UNKNOWN")
SEVERITY_STATUS = {"info": 0, "warning": 1, "critical": 2}

#: What a threshold may be: a parsed range, a number of seconds (the old
#: ``-w 5``: alert above 5), a range string, or nothing.
Threshold = Union[Range, float, int, str, None]

# Only what the range syntax uses: nagiosplugin hands the atoms to int()/float(),
# which would also take "1_000", " 5", "inf" or non-ASCII digits.
_RANGE_CHARS = re.compile(r"@?(~|[-+]?[0-9.]*)(:[-+]?[0-9.]*)?")


# -- thresholds -----------------------------------------------------------------


def parse_threshold(spec: str) -> Range:
    """Parse a Nagios plugin threshold range (monitoring-plugins guidelines,
    "Threshold and ranges"): ``10`` (alert outside 0..10), ``10:`` (below 10),
    ``~:10`` (above 10), ``10:20`` (outside 10..20), ``@10:20`` (inside 10..20).

    Raises :class:`ValueError` naming the problem for anything else.
    """
    text = str(spec).strip()
    if not text or text == "@" or not _RANGE_CHARS.fullmatch(text):
        raise ValueError(f"{spec!r} is not a threshold range: expected N, N:, ~:N, N:M or @N:M "
                         "(numbers in seconds, e.g. 5 or 2.5:10)")
    try:
        return Range(text)
    except ValueError as exc:
        problem = str(exc) if "must not be greater" in str(exc) else "malformed number"
        raise ValueError(f"{spec!r} is not a threshold range ({problem}): "
                         "expected N, N:, ~:N, N:M or @N:M") from None


class ThresholdRange(click.ParamType):
    """A click parameter type for ``-w``/``-c``: a :class:`nagiosplugin.Range`."""

    name = "RANGE"

    def convert(self, value, param, ctx):
        if isinstance(value, Range):
            return value
        try:
            return parse_threshold(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


#: Ready to use: ``@click.option("-w", "--warning", type=THRESHOLD)``.
THRESHOLD = ThresholdRange()


def as_range(threshold: Threshold) -> Range | None:
    """A :class:`Range` from what the callers may pass (see :data:`Threshold`)."""
    if threshold is None or isinstance(threshold, Range):
        return threshold
    if isinstance(threshold, (int, float)):
        text = f"{float(threshold):f}".rstrip("0").rstrip(".")  # 5.0 -> "5", 2.5 -> "2.5", never 1e-05
        return parse_threshold(text)
    return parse_threshold(threshold)


def violated(threshold: Range | None, value: float) -> bool:
    """True if ``value`` raises an alert under ``threshold`` (outside the range,
    or inside it for an ``@`` range)."""
    return threshold is not None and not threshold.match(value)


def site_status(result: SiteResult, warn: Threshold = None, crit: Threshold = None) -> int:
    """The site's status with the check-duration thresholds (seconds) applied."""
    status = result.status
    duration = result.report.duration_s
    if violated(as_range(crit), duration):
        status = max(status, 2)
    elif violated(as_range(warn), duration):
        status = max(status, 1)
    return status


# -- Nagios plugin output ---------------------------------------------------------


def _clean(text: str) -> str:
    """One line of plugin output: no line breaks, and no '|' (it starts perfdata)."""
    return " ".join(str(text).replace("|", "\u00a6").split())


def _problems(result: SiteResult) -> str:
    if result.report.error:
        return f"down: {result.report.error}"
    present = [f.id for f in result.findings if f.status == "present" and f.severity != "info"]
    return ", ".join(present) or "slow"


def problem_lines(result: SiteResult, status: int, warn: Range | None, crit: Range | None) -> list[str]:
    """The long-output lines of one site: ``STATUS site: what: first evidence line``,
    one per finding (the site down, a slow check, each present quirk)."""
    name = result.site.name
    lines = []
    if result.report.error:
        lines.append(f"CRITICAL {name}: down: {result.report.error}")
    for level, rng, word in ((2, crit, "critical"), (1, warn, "warning")):
        if violated(rng, result.report.duration_s):
            where = "inside" if rng.invert else "outside"
            lines.append(f"{STATUS_NAMES[level]} {name}: check took {result.report.duration_s:.3f} s, "
                         f"{where} the {word} range {rng}")
            break
    findings = sorted((f for f in result.findings if f.status == "present" and f.severity != "info"),
                      key=lambda f: -SEVERITY_STATUS[f.severity or "info"])
    for f in findings:
        evidence = f.evidence[0] if f.evidence else f.advice
        lines.append(f"{STATUS_NAMES[SEVERITY_STATUS[f.severity or 'info']]} {name}: {f.id} {f.status}: {evidence}")
    if not lines and status:
        lines.append(f"{STATUS_NAMES[status]} {name}: {_problems(result)}")
    return [_clean(line) for line in lines]


def _label(name: str) -> str:
    """A perfdata label, quoted; a quote inside is doubled (plugin guidelines)."""
    return "'" + _clean(name).replace("'", "''").replace("=", "_") + "'"


def _number(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))


#: Sites named on the status line before "and N more" (the long output lists all).
STATUS_LINE_SITES = 3


def nagios_output(results: list[SiteResult], warn: Threshold = None, crit: Threshold = None) -> tuple[int, str]:
    """(exit code, the plugin output): the status line with perfdata, then the
    long output (one line per finding of each problem site, worst first).

    Perfdata, in a fixed order: ``sites``, ``down``, ``warning``, ``critical``,
    then per site ``'NAME_time'`` (seconds, with the thresholds) and
    ``'NAME_pasv_reachable'`` (percent, ``U`` when not measured).
    """
    warn_r, crit_r = as_range(warn), as_range(crit)
    statuses = [site_status(r, warn_r, crit_r) for r in results]
    worst = max(statuses, default=3)
    down = sum(1 for r in results if not r.up)
    bad = sorted([(s, i, r) for i, (s, r) in enumerate(zip(statuses, results)) if s], key=lambda x: (-x[0], x[1]))
    if not results:
        text = "no sites checked"
    elif not bad:
        text = f"{len(results)} site(s) up, no problem found" if len(results) > 1 else \
            f"{results[0].site.name} up, no problem found"
    else:
        shown = [f"{STATUS_NAMES[s]} {r.site.name}: {_problems(r)}" for s, _, r in bad[:STATUS_LINE_SITES]]
        if len(bad) > STATUS_LINE_SITES:
            shown.append(f"and {len(bad) - STATUS_LINE_SITES} more site(s) with problems")
        text = "; ".join(shown)
    w = "" if warn_r is None else str(warn_r)
    c = "" if crit_r is None else str(crit_r)
    perf = [f"sites={len(results)};;;0", f"down={down};;;0",
            f"warning={statuses.count(1)};;;0", f"critical={statuses.count(2)};;;0"]
    for r in results:
        perf.append(f"{_label(r.site.name + '_time')}={r.report.duration_s:.3f}s;{w};{c};0")
        share = r.report.passive.get("reachable_share") if r.report.passive else None
        value = "U" if share is None else f"{_number(round(share * 100, 1))}%"
        perf.append(f"{_label(r.site.name + '_pasv_reachable')}={value};;;0;100")
    lines = [f"FTPPROBE {STATUS_NAMES[worst]} - {_clean(text)} | {' '.join(perf)}"]
    for s, _, r in bad:
        lines += problem_lines(r, s, warn_r, crit_r)
    return worst, "\n".join(lines)


def nagios_line(results: list[SiteResult], warn: Threshold = None, crit: Threshold = None) -> tuple[int, str]:
    """The old name of :func:`nagios_output` (the output now has long-output lines)."""
    return nagios_output(results, warn, crit)


# -- JSON lines -----------------------------------------------------------------------


def json_lines(results: list[SiteResult], warn: Threshold = None, crit: Threshold = None) -> str:
    """One JSON object per site, one per line."""
    warn_r, crit_r = as_range(warn), as_range(crit)
    out = []
    for r in results:
        status = site_status(r, warn_r, crit_r)
        out.append(json.dumps({
            "site": r.site.name, "target": r.report.target, "status": STATUS_NAMES[status], "exit_code": status,
            "up": r.up, "error": r.report.error, "started": r.report.started, "duration_s": r.report.duration_s,
            "findings": [f.to_dict() for f in r.findings if f.status in ("present", "inconclusive")],
            "passive": r.report.passive,
        }, default=str))
    return "\n".join(out) + "\n"


# -- Prometheus -------------------------------------------------------------------------

#: name -> (help, extra label names besides ``site``)
METRICS = {
    "ftpprobe_site_up": ("1 if the FTP control connection and login succeeded.", ()),
    "ftpprobe_site_status": ("Check status: 0 OK, 1 warning, 2 critical, 3 unknown.", ()),
    "ftpprobe_check_duration_seconds": ("Seconds the check of this site took.", ()),
    "ftpprobe_last_check_timestamp_seconds": ("Unix time of this check.", ()),
    "ftpprobe_quirk_present": ("1 if the quirk (QUIRKS.md id) is present, 0 if absent.", ("quirk",)),
    "ftpprobe_passive_ports_reachable_ratio": ("Share of sampled passive ports that were reachable.", ()),
    "ftpprobe_passive_port_range_low": ("Estimated lowest passive port.", ()),
    "ftpprobe_passive_port_range_high": ("Estimated highest passive port.", ()),
}


def new_gauges(registry: CollectorRegistry) -> dict:
    """The gauges of :data:`METRICS`, registered in ``registry``."""
    from prometheus_client import Gauge

    return {name: Gauge(name, help_text, ("site", *extra), registry=registry)
            for name, (help_text, extra) in METRICS.items()}


def prometheus_registry(results: list[SiteResult], now: float | None = None,
                        registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """A registry holding the metrics of ``results`` (a new one unless given).
    The passive metrics appear only for sites whose passive range was measured."""
    from prometheus_client import CollectorRegistry

    now = time.time() if now is None else now
    registry = CollectorRegistry(auto_describe=True) if registry is None else registry
    g = new_gauges(registry)
    for r in results:
        site = r.site.name
        g["ftpprobe_site_up"].labels(site).set(1 if r.up else 0)
        g["ftpprobe_site_status"].labels(site).set(r.status)
        g["ftpprobe_check_duration_seconds"].labels(site).set(r.report.duration_s)
        g["ftpprobe_last_check_timestamp_seconds"].labels(site).set(now)
        for f in r.findings:
            if f.status in ("present", "absent"):
                g["ftpprobe_quirk_present"].labels(site, f.id).set(1 if f.status == "present" else 0)
        p = r.report.passive
        if p and p.get("samples"):
            if p.get("reachable_share") is not None:
                g["ftpprobe_passive_ports_reachable_ratio"].labels(site).set(p["reachable_share"])
            if p.get("estimate_low") is not None:
                g["ftpprobe_passive_port_range_low"].labels(site).set(p["estimate_low"])
                g["ftpprobe_passive_port_range_high"].labels(site).set(p["estimate_high"])
    return registry


def prometheus_text(results: list[SiteResult], now: float | None = None) -> str:
    """The Prometheus text exposition (``generate_latest``) for all sites."""
    from prometheus_client import generate_latest

    return generate_latest(prometheus_registry(results, now)).decode("utf-8")


def write_prometheus_file(path: str, results: list[SiteResult], now: float | None = None) -> None:
    """Write the metrics for node_exporter's textfile collector with
    ``write_to_textfile``: a temporary file beside ``path``, then a rename, so
    the collector never reads half a file.  Raises :class:`OSError`."""
    from prometheus_client import write_to_textfile

    write_to_textfile(path, prometheus_registry(results, now))
