"""Monitoring outputs without a network: Nagios ranges, long output, perfdata, Prometheus text."""

import json
import re
import shutil
import subprocess

import click
import click.testing
import pytest
from nagiosplugin import Range
from prometheus_client.parser import text_string_to_metric_families

from ftpprobe.findings import Finding
from ftpprobe.fleet import Site, SiteResult
from ftpprobe.monitoring import (THRESHOLD, json_lines, nagios_line, nagios_output, parse_threshold, prometheus_text,
                                 site_status, write_prometheus_file)
from ftpprobe.runner import ProbeReport
from ftpprobe.target import Target

PASSIVE = {"samples": 12, "reachable_share": 0.75, "estimate_low": 50000, "estimate_high": 50011}


def result(name, duration=1.0, findings=(), passive=None, error=""):
    return SiteResult(Site(name, Target("192.0.2.1")),
                      ProbeReport("ftp://192.0.2.1/", "2024-01-01T00:00:00+00:00", duration, list(findings),
                                  dict(passive or {}), error=error))


@pytest.mark.parametrize("spec, alerts, quiet", [
    ("10", [-1, 10.5, 11], [0, 5, 10]),  # outside 0..10
    ("10:", [9.99, 0], [10, 1e6]),  # below 10
    ("~:10", [10.1], [-1e6, 10]),  # above 10
    ("10:20", [9, 21], [10, 15, 20]),  # outside 10..20
    ("@10:20", [10, 15, 20], [9.9, 20.1]),  # inside 10..20
    ("2.5", [2.6], [2.5]),
])
def test_threshold_ranges_follow_the_plugin_guidelines(spec, alerts, quiet):
    rng = parse_threshold(spec)
    assert isinstance(rng, Range)
    assert [not rng.match(v) for v in alerts] == [True] * len(alerts)
    assert [rng.match(v) for v in quiet] == [True] * len(quiet)


@pytest.mark.parametrize("spec", ["", "abc", "10:5", "1:2:3", "~", "10:~", "1e3", "1_000", "@", "5s", "inf", "\u0665"])
def test_bad_threshold_is_a_value_error_and_a_click_error(spec):
    with pytest.raises(ValueError, match="not a threshold range"):
        parse_threshold(spec)

    @click.command()
    @click.option("-w", type=THRESHOLD)
    def cmd(w):
        pass

    done = click.testing.CliRunner().invoke(cmd, ["-w", spec])
    assert done.exit_code == 2 and "Invalid value for '-w'" in done.output and "not a threshold range" in done.output


def test_thresholds_apply_to_the_check_duration_and_show_in_perfdata():
    fast, slow, odd = result("fast", 0.2), result("slow", 7.0), result("odd", 15.0)
    assert [site_status(r, "5", "10") for r in (fast, slow, odd)] == [0, 1, 2]
    assert [site_status(r, 5.0, 10.0) for r in (fast, slow, odd)] == [0, 1, 2]  # the old float thresholds
    assert [site_status(r, None, "@10:20") for r in (fast, slow, odd)] == [0, 0, 2]
    assert site_status(fast, "1:", None) == 1  # faster than 1 s is suspicious, says this user
    code, output = nagios_output([fast, slow], "~:5", "@10:20")
    assert code == 1
    assert "'fast_time'=0.200s;~:5;@10:20;0" in output.splitlines()[0]
    assert "WARNING slow: check took 7.000 s, outside the warning range ~:5" in output.splitlines()
    code, output = nagios_output([odd], None, "@10:20")
    assert "CRITICAL odd: check took 15.000 s, inside the critical range @10:20" in output.splitlines()


def test_long_output_one_finding_per_line_worst_first_and_no_stray_pipes():
    ok = result("ok", passive=PASSIVE)
    bad = result("bad", findings=[
        Finding("server.epsv-unsupported", "present", ["EPSV -> '500 no (|||1|)'", "second line"]),
        Finding("server.pasv-range", "present", ["info only"]),
        Finding("change.site-dark", "present", ["up at the baseline\nof yesterday"]),
        Finding("server.case-sensitive", "absent", ["fine"]),
    ])
    dark = result("dark", error="control connection to 192.0.2.9 port 21: Connection refused")
    code, output = nagios_output([ok, bad, dark])
    status_line, *long_output = output.splitlines()
    assert code == 2
    assert status_line.startswith("FTPPROBE CRITICAL - CRITICAL bad: server.epsv-unsupported, change.site-dark; "
                                  "CRITICAL dark: down: control connection")
    assert status_line.count("|") == 1
    assert long_output == [
        "CRITICAL bad: change.site-dark present: up at the baseline of yesterday",
        "WARNING bad: server.epsv-unsupported present: EPSV -> '500 no (\u00a6\u00a6\u00a61\u00a6)'",
        "CRITICAL dark: down: control connection to 192.0.2.9 port 21: Connection refused",
    ]
    assert nagios_line([ok, bad, dark]) == (code, output)  # the old name still works
    code, output = nagios_output([ok])
    assert code == 0 and "\n" not in output and output.startswith("FTPPROBE OK - ok up, no problem found | ")


def test_status_line_names_three_sites_and_the_long_output_all():
    sites = [result(f"s{i}", error="refused") for i in range(5)]
    code, output = nagios_output(sites)
    first, *rest = output.splitlines()
    assert "s2: down: refused; and 2 more site(s) with problems |" in first and "s3" not in first.split("|")[0]
    assert [line.split(":")[0] for line in rest] == [f"CRITICAL s{i}" for i in range(5)]


PERF_ITEM = re.compile(r"('(?:[^']|'')*'|[^'=\s]+)=(\S+)")


def perf_items(output):
    """[(label, rest)] of the status line's perfdata; quoted labels may hold spaces."""
    perf = output.splitlines()[0].split(" | ", 1)[1]
    items = PERF_ITEM.findall(perf)
    assert " ".join(f"{k}={v}" for k, v in items) == perf
    return items


def perf_labels(output):
    return [label for label, _ in perf_items(output)]


def test_perfdata_labels_stable_whatever_the_results():
    """The same sites give the same labels in the same order, measured or not
    (monitoring-plugins guidelines: 'U' for a value that could not be measured)."""
    runs = [
        [result("a", passive=PASSIVE), result("b b", passive=PASSIVE)],
        [result("a", error="refused"), result("b b", passive={"samples": 0})],
        [result("a", findings=[Finding("change.site-dark", "present", ["x"])]), result("b b", 70.0)],
    ]
    outputs = [nagios_output(r, "5", "60")[1] for r in runs]
    assert perf_labels(outputs[0]) == ["sites", "down", "warning", "critical", "'a_time'", "'a_pasv_reachable'",
                                       "'b b_time'", "'b b_pasv_reachable'"]
    assert all(perf_labels(o) == perf_labels(outputs[0]) for o in outputs)
    perf = dict(perf_items(outputs[1]))
    assert perf["'a_pasv_reachable'"] == perf["'b b_pasv_reachable'"] == "U;;;0;100"
    assert "'a_pasv_reachable'=75%;;;0;100" in outputs[0]


def test_perfdata_label_quotes_doubled_and_no_line_break():
    code, output = nagios_output([result("it's=\nodd|name")])
    assert "\n" not in output
    assert perf_items(output)[4] == ("'it''s_ odd\u00a6name_time'", "1.000s;;;0")


def weird_results():
    return [
        result('shop "1"\\\nx', 2.5, [Finding("server.epsv-unsupported", "present", ["x"]),
                                     Finding("server.case-sensitive", "absent")], PASSIVE),
        result("dark", 0.5, error="refused"),
    ]


def test_prometheus_text_parses_back_with_escaped_labels():
    families = {f.name: f for f in text_string_to_metric_families(prometheus_text(weird_results(), now=1700000000))}
    up = {s.labels["site"]: s.value for s in families["ftpprobe_site_up"].samples}
    assert up == {'shop "1"\\\nx': 1, "dark": 0}
    quirks = {(s.labels["site"][:4], s.labels["quirk"]): s.value for s in families["ftpprobe_quirk_present"].samples}
    assert quirks == {("shop", "server.epsv-unsupported"): 1, ("shop", "server.case-sensitive"): 0}
    assert [s.value for s in families["ftpprobe_passive_port_range_low"].samples] == [50000]
    assert [s.value for s in families["ftpprobe_last_check_timestamp_seconds"].samples] == [1700000000] * 2
    assert {s.labels["site"] for s in families["ftpprobe_passive_ports_reachable_ratio"].samples} == \
        {'shop "1"\\\nx'}  # not measured: absent, not 0


def test_prometheus_file_written_atomically(tmp_path):
    path = tmp_path / "ftpprobe.prom"
    path.write_text("old\n")
    write_prometheus_file(str(path), weird_results(), now=1)
    assert "ftpprobe_site_up" in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["ftpprobe.prom"]
    with pytest.raises(OSError):
        write_prometheus_file(str(tmp_path / "missing" / "x.prom"), weird_results())


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(not PROMTOOL, reason="promtool not installed (Debian package 'prometheus'; CI installs it)")
def test_promtool_accepts_the_metrics(tmp_path):
    text = prometheus_text(weird_results())
    done = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "" and done.stderr.strip() == ""  # not even a lint warning


def test_json_lines_status_uses_the_ranges():
    lines = [json.loads(l) for l in json_lines([result("a", 7.0), result("b", 0.1)], "5", "@0:0.5").splitlines()]
    assert [(o["site"], o["status"]) for o in lines] == [("a", "WARNING"), ("b", "CRITICAL")]
