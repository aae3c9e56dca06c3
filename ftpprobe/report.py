"""Render reports: text for people (sized to the terminal), JSON for scripts.

The text report puts the answer first: the verdict lines (can passive, can
active mode carry data from here?), then the findings that are present or
inconclusive with one line of evidence each, then one line counting the
absent and skipped ones.  ``verbose`` shows every finding with all its
evidence.  Lines are wrapped to ``width`` columns (the terminal's, at least
60); colour only when asked (the CLI asks on a terminal).
"""

from __future__ import annotations

import json
import shutil
import textwrap
from collections import Counter

import click
from tabulate import tabulate

from .findings import Finding
from .passive import format_confidence

_STATUS_ORDER = {"present": 0, "inconclusive": 1, "absent": 2, "skipped": 3}
_SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}
_COLOURS = {"critical": "red", "warning": "yellow", "info": "cyan", "inconclusive": "magenta",
            "works": "green", "partly": "yellow", "fails": "red", "unknown": "magenta"}


def terminal_width() -> int:
    """Columns to fill: the terminal's (``COLUMNS`` honoured), 60 at least, 120 at most."""
    return max(60, min(120, shutil.get_terminal_size((80, 24)).columns))


def sort_findings(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (_STATUS_ORDER[f.status], _SEVERITY_ORDER[f.severity or "info"], f.id))


def summary_line(findings: list[Finding], target: str, duration_s: float, *, no_data_path: bool = False) -> str:
    """``WARNING: ftp://host/ -- 2 warning, 1 info present (3.1 s)``: the status
    (the exit code's name) and what is present; the rest is counted at the end."""
    present = Counter(f.severity for f in findings if f.status == "present")
    worst = ("CRITICAL" if present["critical"] or no_data_path else "WARNING" if present["warning"] else "OK")
    parts = [f"{n} {sev}" for sev in ("critical", "warning", "info") if (n := present[sev])]
    return (f"{worst}: {target} -- " + (", ".join(parts) + " present" if parts else "no quirk present")
            + f" ({duration_s:.1f} s)")


class _Text:
    """Wrapped, optionally coloured lines."""

    def __init__(self, width: int, color: bool) -> None:
        self.width, self.color, self.lines = width, color, []

    def paint(self, text: str, key: str) -> str:
        return click.style(text, fg=_COLOURS.get(key), bold=key in ("critical", "fails")) if self.color else text

    def add(self, text: str = "", indent: int = 0, hang: int = 0) -> None:
        if not text:
            self.lines.append("")
            return
        self.lines += textwrap.wrap(text, self.width, initial_indent=" " * indent,
                                    subsequent_indent=" " * (indent + hang),
                                    break_long_words=True, break_on_hyphens=False)


def _finding(out: _Text, f: Finding, verbose: bool) -> None:
    label = f"PRESENT ({f.severity})" if f.status == "present" else f.status
    key = f.severity if f.status == "present" else f.status
    out.lines.append("  " + out.paint(f"{label:<20}", key or "info") + " " + f.id)
    for line in (f.evidence if verbose else f.evidence[:1]):
        out.add(line, indent=4, hang=2)
    if f.advice and f.status in ("present", "inconclusive"):
        out.add("-> " + f.advice, indent=4, hang=3)


def render_text(report, *, verbose: bool = False, width: int | None = None, color: bool = False) -> str:
    """The report for a terminal: verdict, findings that matter, counts, passive map, fingerprint."""
    out = _Text(width or terminal_width(), color)
    # The status line stays one line, whatever the width: scripts and mail subjects read it.
    if report.error:
        status = f"UNKNOWN: {report.target} -- the probe could not finish: {report.error}"
        if len(status) <= out.width:
            out.lines.append(status)
        else:  # the reason on wrapped lines of its own
            out.lines.append(f"UNKNOWN: {report.target} -- the probe could not finish:")
            out.add(report.error, indent=2, hang=2)
        if not report.findings:
            return "\n".join(out.lines)
    else:
        out.lines.append(summary_line(report.findings, report.target, report.duration_s,
                                      no_data_path=bool(getattr(report, "verdict", None)
                                                        and report.verdict.no_data_path)))
    verdict = getattr(report, "verdict", None)
    if verdict is not None:
        out.add()
        out.lines.append(f"Verdict (from this vantage{', through the reflector' if verdict.vantage == 'reflector' else ''}):")
        for mode in (verdict.passive, verdict.active):
            out.add(f"  {mode.mode} mode: " + out.paint(mode.state, mode.state)
                    + (f": {mode.reason}" if mode.reason else ""), hang=4)
        for note in verdict.notes:
            out.add(f"  note: {note}", hang=4)
    shown = [f for f in sort_findings(report.findings) if verbose or f.status in ("present", "inconclusive")]
    if shown:
        out.add()
        out.lines.append("Findings:" if verbose else "Findings present or inconclusive:")
        for f in shown:
            _finding(out, f, verbose)
    if not verbose:
        hidden = Counter(f.status for f in report.findings if f.status in ("absent", "skipped"))
        if hidden:
            out.add()
            out.add(", ".join(f"{hidden[s]} {s}" for s in ("absent", "skipped") if hidden[s])
                    + " (-v shows them, and all evidence)")
    if (passive := passive_table(report.passive, out.width)):
        out.add()
        out.lines.append("Passive range map:")
        out.lines.append(passive)
    if report.fingerprint:
        out.add()
        out.lines.append("Router fingerprint (what the path did to each line):")
        out.lines.append(fingerprint_table(report.fingerprint, out.width, verbose=verbose))
    return "\n".join(out.lines)


def passive_table(passive: dict, width: int = 80) -> str:
    """The passive mapping as a two-column table (wrapped to ``width``)."""
    if not passive or not passive.get("samples"):
        return ""
    share = passive.get("reachable_share")
    confidence = passive.get("confidence")
    estimate = f"{passive['estimate_low']}-{passive['estimate_high']}"
    estimate += (f" ({format_confidence(confidence)} confidence)" if confidence is not None
                 else " (walk the range: sequential allocation)" if passive.get("needs_walk")
                 else " (no confidence claim)")
    runs = passive.get("unreachable_runs") or []
    rows = [
        ["samples", f"{passive['samples']} ({', '.join(f'{k} {v}' for k, v in passive['commands'].items())}) "
                    f"over {passive.get('sessions', '?')} session(s)"],
        ["observed", f"{passive['observed_min']}-{passive['observed_max']} ({passive['distinct_ports']} distinct ports)"],
        ["range", estimate],
        ["allocation", passive["allocation"]],
        ["reachable", f"{passive['reachable']} of {passive['tried']} data connections"
                      + (f" ({share:.0%})" if share is not None else "")],
        ["unreachable", ", ".join(f"{r['first']}-{r['last']}" if r["first"] != r["last"] else str(r["first"])
                                  for r in runs[:10]) + (f" (+{len(runs) - 10} more)" if len(runs) > 10 else "")
                        or "none"],
        ["outside range", ", ".join(map(str, passive["outside"][:10])) or "none"],
        ["announced", ", ".join(f"{a} ({n}x)" for a, n in passive["addresses"].items()) or "none (229 only)"],
    ]
    value_width = max(20, width - 18)
    return tabulate([[k, _wrap(v, value_width)] for k, v in rows], tablefmt="plain")


def fingerprint_table(rows: list[dict], width: int = 80, *, verbose: bool = False) -> str:
    """Variant against outcome.  At 80 columns: variant, outcome, detail; ``verbose``
    (or a wide terminal) adds the bytes sent and received."""
    wide = verbose or width >= 140
    headers = ["variant", "outcome", "detail"] + (["sent", "reflector received"] if wide else [])
    # The control port is shown only where it differs from the run's usual one.
    usual = Counter(r.get("port") for r in rows).most_common(1)[0][0] if rows else None
    names = [r["probe"] + (f" (port {r['port']})" if r.get("port") not in (None, usual) else "") for r in rows]
    fixed = max(map(len, names), default=7) + max((len(r["outcome"]) for r in rows), default=7) + 4
    detail_width = max(20, width - fixed) if not wide else 40
    table = []
    for name, r in zip(names, rows):
        detail = r.get("detail") or r.get("error") or ""
        if not wide:
            detail = detail.split("; ")[0]  # the first clause; -v shows the TCP_INFO and retry too
        row = [name, r["outcome"], _wrap(detail, detail_width)]
        if wide:
            row += [_wrap(r.get("sent") or "", 30), _wrap(r.get("arrived") or "-", 30)]
        table.append(row)
    return tabulate(table, headers=headers, tablefmt="simple")


def render_json(report) -> str:
    return json.dumps(report.to_dict(), indent=2, default=str)


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width, break_long_words=True, break_on_hyphens=False)) if text else ""
