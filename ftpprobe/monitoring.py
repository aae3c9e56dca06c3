"""Outputs for monitoring: the Nagios/Icinga plugin line, JSON lines, Prometheus text.

Nagios plugin conventions (monitoring-plugins, check_tcp.c): one status line
``SERVICE STATUS - text | perfdata``, perfdata items ``'label'=value[UOM];warn;crit;min;max``,
exit code 0/1/2/3 = OK/WARNING/CRITICAL/UNKNOWN.  Prometheus: the text
exposition format for node_exporter's textfile collector, names in base units
(``_seconds``, ``_ratio``), one ``site`` label per site.
"""

from __future__ import annotations

import json
import time

from .fleet import SiteResult

STATUS_NAMES = ("OK", "WARNING", "CRITICAL", "UNKNOWN")


def site_status(result: SiteResult, warn_s: float | None, crit_s: float | None) -> int:
    """The site's status with the response-time thresholds (seconds) applied."""
    status = result.status
    duration = result.report.duration_s
    if crit_s is not None and duration > crit_s:
        status = max(status, 2)
    elif warn_s is not None and duration > warn_s:
        status = max(status, 1)
    return status


def _problems(result: SiteResult) -> str:
    if result.report.error:
        return f"down: {result.report.error}"
    present = [f.id for f in result.findings if f.status == "present" and f.severity != "info"]
    return ", ".join(present) or "slow"


def _label(name: str) -> str:
    return "'" + name.replace("'", "_").replace("=", "_") + "'"


def nagios_line(results: list[SiteResult], warn_s: float | None = None, crit_s: float | None = None) -> tuple[int, str]:
    """(exit code, the one status line with perfdata)."""
    statuses = [site_status(r, warn_s, crit_s) for r in results]
    worst = max(statuses, default=3)
    down = sum(1 for r in results if not r.up)
    bad = [(s, r) for s, r in zip(statuses, results) if s]
    if not bad:
        text = f"{len(results)} site(s) up, no problem found" if len(results) > 1 else \
            f"{results[0].site.name} up, no problem found"
    else:
        text = "; ".join(f"{STATUS_NAMES[s]} {r.site.name}: {_problems(r)}" for s, r in
                         sorted(bad, key=lambda x: -x[0]))
    perf = [f"sites={len(results)};;;0", f"down={down};;;0",
            f"warning={statuses.count(1)};;;0", f"critical={statuses.count(2)};;;0"]
    for r in results:
        w = "" if warn_s is None else f"{warn_s:g}"
        c = "" if crit_s is None else f"{crit_s:g}"
        perf.append(f"{_label(r.site.name + '_time')}={r.report.duration_s:.3f}s;{w};{c};0")
        share = r.report.passive.get("reachable_share") if r.report.passive else None
        if share is not None:
            perf.append(f"{_label(r.site.name + '_pasv_reachable')}={share * 100:.0f}%;;;0;100")
    return worst, f"FTPPROBE {STATUS_NAMES[worst]} - {text} | {' '.join(perf)}"


def json_lines(results: list[SiteResult], warn_s: float | None = None, crit_s: float | None = None) -> str:
    """One JSON object per site, one per line."""
    out = []
    for r in results:
        status = site_status(r, warn_s, crit_s)
        out.append(json.dumps({
            "site": r.site.name, "target": r.report.target, "status": STATUS_NAMES[status], "exit_code": status,
            "up": r.up, "error": r.report.error, "started": r.report.started, "duration_s": r.report.duration_s,
            "findings": [f.to_dict() for f in r.findings if f.status in ("present", "inconclusive")],
            "passive": r.report.passive,
        }, default=str))
    return "\n".join(out) + "\n"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_text(results: list[SiteResult], now: float | None = None) -> str:
    """The Prometheus text exposition (version 0.0.4) for all sites."""
    now = time.time() if now is None else now
    metrics: dict[str, tuple[str, str, list[str]]] = {}

    def add(name: str, help_text: str, labels: dict[str, str], value: float) -> None:
        entry = metrics.setdefault(name, ("gauge", help_text, []))
        label_text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
        shown = str(int(value)) if float(value).is_integer() else repr(float(value))
        entry[2].append(f"{name}{{{label_text}}} {shown}")

    for r in results:
        site = {"site": r.site.name}
        add("ftpprobe_site_up", "1 if the FTP control connection and login succeeded.", site, 1 if r.up else 0)
        add("ftpprobe_site_status", "Check status: 0 OK, 1 warning, 2 critical, 3 unknown.", site, r.status)
        add("ftpprobe_check_duration_seconds", "Seconds the check of this site took.", site, r.report.duration_s)
        add("ftpprobe_last_check_timestamp_seconds", "Unix time of this check.", site, now)
        for f in r.findings:
            if f.status in ("present", "absent"):
                add("ftpprobe_quirk_present", "1 if the quirk (QUIRKS.md id) is present, 0 if absent.",
                    {**site, "quirk": f.id}, 1 if f.status == "present" else 0)
        p = r.report.passive
        if p and p.get("samples"):
            if p.get("reachable_share") is not None:
                add("ftpprobe_passive_ports_reachable_ratio", "Share of sampled passive ports that were reachable.",
                    site, p["reachable_share"])
            add("ftpprobe_passive_port_range_low", "Estimated lowest passive port.", site, p["estimate_low"])
            add("ftpprobe_passive_port_range_high", "Estimated highest passive port.", site, p["estimate_high"])
    lines = []
    for name, (kind, help_text, samples) in metrics.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]
    return "\n".join(lines) + "\n"
