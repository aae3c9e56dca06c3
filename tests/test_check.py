"""ftpprobe check: a fleet of real pyftpdlib servers, baselines, Nagios and Prometheus output."""

import json
import re
import shlex
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import run_cli

README = Path(__file__).parent.parent / "README.md"


def free_unused_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: a stopped site
    return port


@pytest.fixture
def fleet(pyftpd, tmp_path):
    """Three healthy pyftpdlib sites and one stopped, in a TOML targets file."""
    sites = [pyftpd(passive_ports=(54000 + 100 * i, 54009 + 100 * i)) for i in range(3)]
    dead = free_unused_port()
    toml = tmp_path / "sites.toml"
    toml.write_text("[defaults]\ntimeout = 2\nsamples = 12\n\n" + "".join(
        f'[[site]]\nname = "shop-{i}"\nurl = "ftp://{s.host}:{s.port}/"\n\n' for i, s in enumerate(sites))
        + f'[[site]]\nname = "shop-dark"\nurl = "ftp://127.0.0.1:{dead}/"\n')
    return sites, toml


def test_fleet_nagios_line_prometheus_and_baseline_diff(fleet, tmp_path, pyftpd):
    sites, toml = fleet
    baseline, prom = tmp_path / "baseline.json", tmp_path / "ftpprobe.prom"
    done = run_cli("check", "--targets", str(toml), "--save-baseline", str(baseline), "--prometheus-file", str(prom))
    assert done.returncode == 2, done.stdout + done.stderr
    line, *long_output = done.stdout.splitlines()
    assert line.startswith("FTPPROBE CRITICAL - CRITICAL shop-dark: down: control connection to 127.0.0.1 port ")
    assert "Connection refused" in line
    status, perfdata = line.split(" | ")
    items = perfdata.split()
    assert items[:4] == ["sites=4;;;0", "down=1;;;0", "warning=0;;;0", "critical=1;;;0"]
    assert all(re.fullmatch(r"'?[^=]+'?=([\d.]+(s|%)?|U);[\d.]*;[\d.]*;\d*(;\d*)?", item) for item in items), items
    assert "'shop-0_pasv_reachable'=100%;;;0;100" in items
    # the same labels whatever the results: the dark site's share is unknown, not missing
    assert [i.split("=")[0] for i in items[4:]] == [f"'{s}_{m}'" for s in ("shop-0", "shop-1", "shop-2", "shop-dark")
                                                    for m in ("time", "pasv_reachable")]
    assert "'shop-dark_pasv_reachable'=U;;;0;100" in items
    # long output: one line per finding of each problem site
    assert len(long_output) == 1 and re.fullmatch(
        r"CRITICAL shop-dark: down: control connection to 127\.0\.0\.1 port \d+: .*Connection refused.*", long_output[0])

    families = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
    up = {s.labels["site"]: s.value for s in families["ftpprobe_site_up"].samples}
    assert up == {"shop-0": 1, "shop-1": 1, "shop-2": 1, "shop-dark": 0}
    low = {s.labels["site"]: s.value for s in families["ftpprobe_passive_port_range_low"].samples}
    # a confidence bound: it covers the true range and may reach past it by up to about its width
    assert 53990 <= low["shop-0"] <= 54002 and 54090 <= low["shop-1"] <= 54102
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left behind

    saved = json.loads(baseline.read_text())
    assert saved["format"] == "ftpprobe-baseline" and saved["version"] == 1
    assert saved["sites"]["shop-dark"]["up"] is False

    # shop-1 moves its passive range, shop-2 goes dark; compare with the baseline
    moved = pyftpd(passive_ports=(55500, 55509))
    sites[2].__exit__(None, None, None)
    text = toml.read_text().replace(f"{sites[1].port}/", f"{moved.port}/")
    toml.write_text(text)
    done = run_cli("check", "--targets", str(toml), "--baseline", str(baseline), "--format", "jsonl")
    assert done.returncode == 2
    by_site = {o["site"]: o for o in map(json.loads, done.stdout.splitlines())}
    assert by_site["shop-0"]["status"] == "OK"
    changes = {f["id"]: f for f in by_site["shop-1"]["findings"] if f["id"].startswith("change.")}
    assert set(changes) == {"change.pasv-range-moved"}
    assert changes["change.pasv-range-moved"]["data"]["new"][0] >= 55490
    assert by_site["shop-1"]["status"] == "WARNING"
    assert [f["id"] for f in by_site["shop-2"]["findings"]] == ["change.site-dark"]
    assert by_site["shop-2"]["status"] == "CRITICAL"
    assert by_site["shop-dark"]["findings"] == []  # dark then, dark now: no change

    done = run_cli("check", "--targets", str(toml), "--baseline", str(baseline))
    line, *long_output = done.stdout.splitlines()
    assert done.returncode == 2 and line.startswith("FTPPROBE CRITICAL - CRITICAL shop-2: down: ")
    assert [l.split(":")[0] for l in long_output] == ["CRITICAL shop-2", "CRITICAL shop-2", "CRITICAL shop-dark",
                                                      "WARNING shop-1"]
    assert long_output[1].startswith("CRITICAL shop-2: change.site-dark present: up at the baseline of ")
    assert long_output[3].startswith("WARNING shop-1: change.pasv-range-moved present: passive range ")
    assert "shop-0" not in done.stdout.split(" | ")[0] + "\n".join(long_output)


def test_single_site_ok_line_thresholds_and_quiet(pyftpd):
    server = pyftpd(passive_ports=(54900, 54909))
    done = run_cli("check", server.url)
    assert done.returncode == 0
    assert done.stdout.startswith(f"FTPPROBE OK - 127.0.0.1:{server.port} up, no problem found | sites=1;;;0")
    done = run_cli("check", "-w", "0", "-c", "100", server.url)
    assert done.returncode == 1 and done.stdout.startswith(f"FTPPROBE WARNING - WARNING 127.0.0.1:{server.port}: slow")
    assert f"'127.0.0.1:{server.port}_time'=" in done.stdout and "s;0;100;0" in done.stdout
    done = run_cli("check", "--quiet", server.url)
    assert done.returncode == 0 and done.stdout == ""


def _thresholds_are_ranges() -> bool:
    from ftpprobe.cli import check
    from ftpprobe.monitoring import ThresholdRange

    return any(isinstance(p.type, ThresholdRange) for p in check.params if p.name in ("warn_s", "crit_s", "warn", "crit"))


@pytest.mark.skipif(not _thresholds_are_ranges(), reason="cli.py check -w/-c not yet wired to monitoring.THRESHOLD")
def test_thresholds_in_the_plugin_range_syntax(pyftpd):
    server = pyftpd(passive_ports=(54910, 54919))
    site = f"127.0.0.1:{server.port}"
    done = run_cli("check", "-w", "@0:1000", server.url)  # inside the range: alert
    assert done.returncode == 1 and done.stdout.startswith(f"FTPPROBE WARNING - WARNING {site}: slow")
    assert f"WARNING {site}: check took " in done.stdout and "inside the warning range @1000" in done.stdout
    assert ";@1000;;0 " in done.stdout
    done = run_cli("check", "-w", "~:1000", "-c", "100:", server.url)  # faster than 100 s: alert
    assert done.returncode == 2 and f"'{site}_time'=" in done.stdout and "s;~:1000;100:;0 " in done.stdout
    done = run_cli("check", "-w", "10:5", server.url)
    assert done.returncode == 3 and "not a threshold range (start 10 must not be greater than end 5)" in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("content, name, message", [
    ("[[site]]\nurl = \"ftp://127.0.0.1/\"\nurll = 1\n", "sites.toml", "sites.toml, line 1 (site 1): unknown key(s) urll"),
    ("[[site]\nurl=1\n", "sites.toml", "sites.toml: Expected ']]' at the end of an array declaration (at line 1, column 7)"),
    ("name,url\nok,ftp://127.0.0.1/\nbad,http://x/\n", "sites.csv", "sites.csv, line 3: unsupported scheme 'http'"),
    ("name,host\na,b\n", "sites.csv", "sites.csv, line 1: the CSV header must name a 'url' column"),
    ("[[site]]\nurl = \"ftp://h/\"\npassword_env = \"NO_SUCH_VAR_X\"\n", "sites.toml",
     "environment variable NO_SUCH_VAR_X is not set"),
])
def test_malformed_targets_file_names_file_line_and_problem(tmp_path, content, name, message):
    path = tmp_path / name
    path.write_text(content)
    done = run_cli("check", "--targets", str(path))
    assert done.returncode == 3
    assert done.stdout.startswith("FTPPROBE UNKNOWN - ") and message in done.stdout, done.stdout


@pytest.mark.parametrize("content, message", [
    ('{"format": "ftpprobe-baseline", "version": 7, "sites": {}}', "baseline version 7 is not supported"),
    ('{"sites": {}}', "not an ftpprobe baseline"),
    ('{\n"format": ', "line 2: not a JSON baseline"),
])
def test_bad_baseline_is_refused_clearly(pyftpd, tmp_path, content, message):
    server = pyftpd()
    path = tmp_path / "baseline.json"
    path.write_text(content)
    done = run_cli("check", "--baseline", str(path), server.url)
    assert done.returncode == 3 and message in done.stdout, done.stdout


def readme_block(marker: str) -> str:
    """The code block following ``<!-- doc: MARKER -->`` in the README."""
    text = README.read_text()
    after = text[text.index(f"<!-- doc: {marker} -->"):]
    return after.split("```", 2)[1].split("\n", 1)[1]


def test_documented_crontab_icinga_and_node_exporter_commands_work(pyftpd, tmp_path):
    server = pyftpd(passive_ports=(54950, 54959))
    sites = tmp_path / "sites.toml"
    sites.write_text(f'[[site]]\nname = "shop"\nurl = "{server.url}"\n')
    textfile = tmp_path / "textfile_collector"
    textfile.mkdir()
    paths = {"/etc/ftpprobe/sites.toml": str(sites), "/var/lib/ftpprobe": str(tmp_path),
             "/var/lib/node_exporter/textfile_collector": str(textfile)}

    def run_documented(line: str, **extra):
        for old, new in {**paths, **extra}.items():
            line = line.replace(old, new)
        argv = shlex.split(line)
        assert argv[0] == "ftpprobe"
        return run_cli(*argv[1:])

    saved = run_documented(readme_block("baseline").strip())
    assert saved.returncode == 0 and saved.stdout.startswith("FTPPROBE OK - ")
    assert (tmp_path / "baseline.json").exists()
    cron = readme_block("crontab").strip()
    command = cron.split(None, 5)[5]  # the five time fields, then the command
    first = run_documented(command)
    assert first.returncode == 0 and first.stdout == ""  # --quiet: silent when OK

    icinga = readme_block("icinga")
    command_line = re.search(r"command_line\s+(.*)", icinga).group(1).replace("/usr/local/bin/ftpprobe", "ftpprobe")
    done = run_documented(command_line, **{"$ARG1$": "5", "$ARG2$": "10", "$HOSTADDRESS$": f"127.0.0.1:{server.port}"})
    assert done.returncode == 0 and done.stdout.startswith("FTPPROBE OK - ")

    node = readme_block("node_exporter").strip().splitlines()
    cron_line = next(l for l in node if "ftpprobe check" in l)
    done = run_documented(cron_line.split(None, 5)[5])
    assert done.returncode == 0
    prom = (textfile / "ftpprobe.prom").read_text()
    assert {f.name for f in text_string_to_metric_families(prom)} >= {"ftpprobe_site_up", "ftpprobe_quirk_present"}


@pytest.mark.parametrize("fmt", ["nagios", "jsonl", "prometheus"])
def test_password_never_in_any_output_or_file(pyftpd, tmp_path, fmt):
    import os

    secret = "Pa55-s3cret-XyZ"
    server = pyftpd(passive_ports=(54960, 54969), password=secret, anonymous=False)
    baseline, prom = tmp_path / "b.json", tmp_path / "p.prom"
    env = {**os.environ, "SHOP_PW": secret, "NETRC": "/nonexistent"}
    sites = tmp_path / "sites.toml"
    sites.write_text(f'[[site]]\nname = "env"\nurl = "ftp://{server.user}@{server.host}:{server.port}/"\n'
                     f'password_env = "SHOP_PW"\n\n'
                     f'[[site]]\nname = "url"\nurl = "ftp://{server.user}:{secret}@{server.host}:{server.port}/"\n\n'
                     f'[[site]]\nname = "wrong"\nurl = "ftp://{server.user}:{secret}x@{server.host}:{server.port}/"\n'
                     f'timeout = 4\n')
    done = run_cli("check", "--targets", str(sites), "--format", fmt, "--save-baseline", str(baseline),
                   "--prometheus-file", str(prom), env=env)
    assert done.returncode == 2  # the wrong password: login refused, site down
    for text in (done.stdout, done.stderr, baseline.read_text(), prom.read_text()):
        assert secret not in text
    assert "login as 'demo' refused" in done.stdout or fmt == "prometheus"
