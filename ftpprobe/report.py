"""Render reports: a tabulate table for people, JSON for scripts."""

from __future__ import annotations

import json
import textwrap
from collections import Counter

from tabulate import tabulate

from .findings import Finding
from .passive import format_ranges


_STATUS_ORDER = {"present": 0, "inconclusive": 1, "absent": 2, "skipped": 3}
_SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}


def summary_line(findings: list[Finding], target: str, duration_s: float) -> str:
    """``ftpprobe: ftp://host/ -- 2 warning, 1 info present; 9 absent ...``."""
    present = Counter(f.severity for f in findings if f.status == "present")
    others = Counter(f.status for f in findings if f.status != "present")
    worst = "CRITICAL" if present["critical"] else "WARNING" if present["warning"] else "OK"
    parts = [f"{n} {sev}" for sev in ("critical", "warning", "info") if (n := present[sev])]
    rest = ", ".join(f"{n} {status}" for status in ("absent", "inconclusive", "skipped") if (n := others[status]))
    return (f"{worst}: {target} -- " + (", ".join(parts) + " present" if parts else "no quirk present")
            + (f"; {rest}" if rest else "") + f" ({duration_s:.1f} s)")


def sort_findings(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (_STATUS_ORDER[f.status], _SEVERITY_ORDER[f.severity or "info"], f.id))


def findings_table(findings: list[Finding], *, width: int = 70) -> str:
    """The findings as a grid table: id, status, evidence, advice."""
    rows = []
    for f in sort_findings(findings):
        status = f.status if f.status != "present" else f"PRESENT ({f.severity})"
        rows.append([f.id, status, "\n".join(_wrap(line, width) for line in f.evidence), _wrap(f.advice, 50)])
    return tabulate(rows, headers=["id", "status", "evidence", "advice"], tablefmt="simple_grid")


def passive_table(passive: dict) -> str:
    """The passive mapping as a two-column table."""
    if not passive or not passive.get("samples"):
        return ""
    share = passive.get("reachable_share")
    rows = [
        ["samples", f"{passive['samples']} ({', '.join(f'{k} {v}' for k, v in passive['commands'].items())})"],
        ["observed", f"{passive['observed_min']}-{passive['observed_max']} ({passive['distinct_ports']} distinct)"],
        ["estimated range", f"{passive['estimate_low']}-{passive['estimate_high']}"
                            + (f" ±{passive['uncertainty']}" if passive.get("uncertainty") else "")],
        ["method", passive["method"]],
        ["allocation", passive["allocation"]],
        ["reachable", f"{passive['reachable']}/{passive['tried']}" + (f" ({share:.0%})" if share is not None else "")],
        ["unreachable", format_ranges([tuple(r) for r in passive["unreachable_ranges"]]) or "none"],
        ["outside range", ", ".join(map(str, passive["outside"])) or "none"],
        ["advertised", ", ".join(f"{a} ({n}x)" for a, n in passive["addresses"].items()) or "none (229 only)"],
    ]
    return tabulate(rows, tablefmt="simple_grid")


def render_text(report) -> str:
    """The full report for a terminal: summary line, findings, passive map."""
    if report.error:
        return f"UNKNOWN: {report.target} -- probe failed: {report.error}"
    out = [summary_line(report.findings, report.target, report.duration_s), "", findings_table(report.findings)]
    if (passive := passive_table(report.passive)):
        out += ["", "passive range map:", passive]
    if report.fingerprint:
        out += ["", "ALG fingerprint (variant against outcome):", fingerprint_table(report.fingerprint)]
    return "\n".join(out)


def fingerprint_table(rows: list[dict]) -> str:
    """Variant against outcome: what the path did to each line."""
    return tabulate([[r["probe"], r["port"], r["sent"], r["arrived"] if r["arrived"] is not None else "-",
                      r["outcome"], _wrap(r["detail"] or r["error"], 50)] for r in rows],
                    headers=["variant", "port", "sent", "reflector received", "outcome", "detail"],
                    tablefmt="simple_grid")


def render_json(report) -> str:
    return json.dumps(report.to_dict(), indent=2, default=str)


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width, break_long_words=True, break_on_hyphens=False)) if text else ""
