"""ftpprobe exporter: real pyftpdlib sites, the exporter in-process (hypercorn on trio),
plain HTTP requests, and a real Prometheus server scraping it."""

import functools
import json
import logging
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from ftpprobe.errors import TargetError
from ftpprobe.exporter import Module, default_modules, exporter_command, load_modules, probe_deadline, serve_exporter

README = Path(__file__).parent.parent / "README.md"
PROMETHEUS = shutil.which("prometheus")

#: The README's scrape config (``<!-- doc: prometheus -->``) if it has one yet, else this copy of it.
SCRAPE_CONFIG = """\
scrape_configs:
  - job_name: ftpprobe
    metrics_path: /probe
    params:
      module: [default]
    static_configs:
      - targets:
          - ftp://shop1.example.net/
          - ftp://shop2.example.net:2121/
    relabel_configs:
      - source_labels: [__address__]
        target_label: __param_target
      - source_labels: [__param_target]
        target_label: instance
      - target_label: __address__
        replacement: 127.0.0.1:9798  # where ftpprobe exporter listens
  - job_name: ftpprobe_exporter  # the exporter's own metrics
    static_configs:
      - targets: ["127.0.0.1:9798"]
"""


def documented_scrape_config() -> str:
    text = README.read_text()
    if "<!-- doc: prometheus -->" not in text:
        return SCRAPE_CONFIG
    after = text[text.index("<!-- doc: prometheus -->"):]
    return after.split("```", 2)[1].split("\n", 1)[1]


def http_get(url: str, headers: dict | None = None, timeout: float = 30) -> tuple[int, str, str]:
    """(status, content type, body) of a GET, 4xx/5xx included."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, r.headers.get("content-type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type", ""), e.read().decode()


async def get(base: str, path: str, **params) -> tuple[int, str, str]:
    headers = params.pop("headers", None)
    query = "?" + urllib.parse.urlencode(params) if params else ""
    return await trio.to_thread.run_sync(functools.partial(http_get, base + path + query, headers))


def metrics(body: str) -> dict[str, dict]:
    """{metric name: {site label (or ''): value}}."""
    out: dict[str, dict] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out.setdefault(s.name, {})[s.labels.get("site", "")] = s.value
    return out


@pytest.fixture
async def exporter(nursery):
    """Start an exporter on 127.0.0.1, port 0; returns its base URL."""
    async def start(modules=None, **options) -> str:
        return await nursery.start(functools.partial(serve_exporter, "127.0.0.1", 0, modules or default_modules(),
                                                     **options))
    return start


async def test_probe_answers_the_site_metrics(pyftpd, exporter):
    server = pyftpd(passive_ports=(56100, 56109))
    base = await exporter()
    status, ctype, body = await get(base, "/probe", target=server.url, module="default",
                                    headers={"X-Prometheus-Scrape-Timeout-Seconds": "10"})
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4"), body
    m = metrics(body)
    site = f"ftp://127.0.0.1:{server.port}/"
    assert m["ftpprobe_site_up"] == {site: 1} and m["ftpprobe_site_status"] == {site: 0}
    # the range estimate itself is tested elsewhere: here, that it arrives
    assert 56050 <= m["ftpprobe_passive_port_range_low"][site] <= 56109 <= m["ftpprobe_passive_port_range_high"][site]
    assert 0 < m["ftpprobe_check_duration_seconds"][site] < 10

    # the default module when none is named; OpenMetrics when asked for it
    status, ctype, body = await get(base, "/probe", target=server.url,
                                    headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert status == 200 and ctype.startswith("application/openmetrics-text") and body.endswith("# EOF\n")


async def test_bad_requests_and_bad_targets_follow_blackbox_exporter(pyftpd, exporter, caplog):
    caplog.set_level(logging.INFO, logger="ftpprobe.exporter")
    base = await exporter()
    status, _, body = await get(base, "/probe", target="ftp://127.0.0.1/", module="nope")
    assert status == 400 and body == "unknown module 'nope' (known: default)\n"
    status, _, body = await get(base, "/probe", module="default")
    assert status == 400 and "target parameter is missing" in body
    assert (await get(base, "/nowhere"))[0] == 404

    # a target that cannot be probed is the site's failure, not the scrape's: 200, site_up 0
    status, _, body = await get(base, "/probe", target="http://shop.example.net/")
    assert status == 200
    m = metrics(body)
    assert m["ftpprobe_site_up"] == {"http://shop.example.net/": 0}
    assert m["ftpprobe_site_status"] == {"http://shop.example.net/": 3}  # UNKNOWN: never probed
    assert "unsupported scheme 'http'" in caplog.text
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    status, _, body = await get(base, "/probe", target=f"ftp://127.0.0.1:{port}/")
    assert status == 200 and metrics(body)["ftpprobe_site_up"] == {f"ftp://127.0.0.1:{port}/": 0}
    status, ctype, body = await get(base, "/probe", target=f"ftp://127.0.0.1:{port}/", debug="true")
    assert status == 200 and ctype.startswith("text/plain; charset") and "Connection refused" in body

    # a password in the target would end up in Prometheus's labels: refused, never echoed
    secret = "Pa55-s3cret-XyZ"
    for target in (f"ftp://demo:{secret}@127.0.0.1:{port}/", f"ftp://demo:{secret}@[::1:{port}/",
                   f"demo:{secret}@127.0.0.1/"):
        status, _, body = await get(base, "/probe", target=target, debug="true")
        assert status == 400 and "holds a password" in body and secret not in body
    status, _, own = await get(base, "/metrics")
    assert status == 200 and secret not in own and secret not in caplog.text
    requests = metrics(own)["ftpprobe_exporter_requests_total"]
    assert requests  # by path and code
    families = {f.name: f for f in text_string_to_metric_families(own)}
    by_code = {(s.labels["path"], s.labels["code"]): s.value for s in families["ftpprobe_exporter_requests"].samples
               if s.name.endswith("_total")}
    assert by_code[("/probe", "400")] == 5 and by_code[("/probe", "200")] == 3 and by_code[("other", "404")] == 1
    failures = {s.labels["module"]: s.value for s in families["ftpprobe_exporter_probe_failures"].samples
                if s.name.endswith("_total")}
    assert failures == {"default": 3}
    assert "process_resident_memory_bytes" in {s.name for f in families.values() for s in f.samples}


async def test_module_credentials_from_the_environment(pyftpd, exporter, tmp_path):
    secret = "Pa55-s3cret-XyZ"
    server = pyftpd(password=secret, anonymous=False)
    path = tmp_path / "exporter.toml"
    path.write_text('[module.shop]\nprobes = ["epsv"]\nsamples = 0\ntimeout = 3\n'
                    'user_env = "SHOP_USER"\npassword_env = "SHOP_PW"\nnetrc = false\n')
    modules = load_modules(str(path), environ={"SHOP_USER": server.user, "SHOP_PW": secret})
    assert secret not in repr(modules)
    base = await exporter(modules)
    target = f"ftp://{server.host}:{server.port}/"
    status, _, body = await get(base, "/probe", target=target, module="shop")
    assert status == 200 and metrics(body)["ftpprobe_site_up"] == {target: 1}, body
    status, _, body = await get(base, "/probe", target=target, module="default", debug="1")
    assert status == 200 and "login as 'anonymous' refused" in body and secret not in body


async def test_scrape_timeout_bounds_the_probe_and_concurrency_is_bounded(exporter, nursery):
    """A server that accepts and never greets holds the only slot until the
    scrape deadline; a second scrape meanwhile gets 503 once its own deadline nears."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def silent(stream):
        async with stream:
            await trio.sleep_forever()

    nursery.start_soon(trio.serve_listeners, silent, listeners)
    base = await exporter(max_concurrent=1)
    target = f"ftp://127.0.0.1:{port}/"
    results = {}

    async def scrape(name, timeout):
        started = trio.current_time()
        results[name] = (await get(base, "/probe", target=target, debug="1",
                                   headers={"X-Prometheus-Scrape-Timeout-Seconds": timeout}),
                         trio.current_time() - started)

    async with trio.open_nursery() as scrapes:
        scrapes.start_soon(scrape, "first", "2.5")
        await trio.sleep(0.3)
        scrapes.start_soon(scrape, "second", "1.5")
    (status, _, body), took = results["first"]
    assert status == 200 and "deadline 2 s" in body and 1.5 < took < 2.5
    assert "ftpprobe_site_up{site=\"ftp://127.0.0.1:%d/\"} 0.0" % port in body
    (status, _, body), took = results["second"]
    assert status == 503 and "every probe slot is busy" in body and took < 1.5


def test_probe_deadline_from_the_scrape_timeout_header():
    module = Module("m", deadline=30)
    assert probe_deadline({}, module) == 30
    assert probe_deadline({"x-prometheus-scrape-timeout-seconds": "10"}, module) == 9.5
    assert probe_deadline({"x-prometheus-scrape-timeout-seconds": "120"}, module) == 30
    assert probe_deadline({"x-prometheus-scrape-timeout-seconds": "0.6"}, module) == 0.3
    assert probe_deadline({"x-prometheus-scrape-timeout-seconds": "soon"}, module) == 30
    assert probe_deadline({"x-prometheus-scrape-timeout-seconds": "nan"}, module) == 30


@pytest.mark.parametrize("content, message", [
    ("[module.a]\nsamplez = 3\n", "module 'a': unknown key(s) samplez"),
    ("[module.a]\nprobes = [\"pasv-map\", \"nope\"]\n", "module 'a': unknown probe(s) nope"),
    ("[module.a]\npassword_env = \"NO_SUCH_VAR_X\"\nuser = \"u\"\n", "environment variable NO_SUCH_VAR_X"),
    ("[module.a]\npassword_env = \"PW\"\n", "password_env needs a user"),
    ("[module.a]\ntimeout = \"slow\"\n", "module 'a': could not convert string to float"),
    ("[module.a]\ndeadline = 0\n", "module 'a': out of range"),
    ("[modules.a]\n", "unknown table(s) modules"),
    ("[module.a\n", "exporter.toml: "),
])
def test_bad_modules_file_names_file_module_and_problem(tmp_path, content, message):
    path = tmp_path / "exporter.toml"
    path.write_text(content)
    with pytest.raises(TargetError, match="exporter.toml") as err:
        load_modules(str(path), environ={"PW": "x"})
    assert message in str(err.value)


def test_command_line_errors():
    runner = CliRunner()
    done = runner.invoke(exporter_command, ["--listen", "nowhere"])
    assert done.exit_code == 2 and "expected HOST:PORT" in done.output
    done = runner.invoke(exporter_command, ["--modules", "/nonexistent/exporter.toml"])
    assert done.exit_code == 2 and "/nonexistent/exporter.toml: cannot read" in done.output
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        done = runner.invoke(exporter_command, ["--listen", f"127.0.0.1:{taken.getsockname()[1]}"])
    finally:
        taken.close()
    assert done.exit_code == 3 and "cannot listen on 127.0.0.1:" in done.output


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.skipif(not PROMETHEUS, reason="the prometheus server is not installed (Debian package 'prometheus'; "
                                           "CI installs it)")
async def test_real_prometheus_scrapes_two_sites_through_the_exporter(pyftpd, exporter, tmp_path):
    sites = [pyftpd(passive_ports=(56200 + 100 * i, 56209 + 100 * i)) for i in range(2)]
    base = await exporter()
    address = base.removeprefix("http://")
    config = documented_scrape_config()
    documented_targets = ["ftp://shop1.example.net/", "ftp://shop2.example.net:2121/"]
    for old, site in zip(documented_targets, sites):
        assert old in config
        config = config.replace(old, site.url)
    assert "127.0.0.1:9798" in config
    config = config.replace("127.0.0.1:9798", address)
    (tmp_path / "prometheus.yml").write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\n" + config)
    web = f"127.0.0.1:{free_port()}"
    log = open(tmp_path / "prometheus.log", "w")
    prometheus = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address={web}"],
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        wanted = {site.url: "1" for site in sites}
        up, own, last = {}, [], None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and (up != wanted or not own):
            await trio.sleep(1)
            if prometheus.poll() is not None:
                break
            try:
                status, _, body = await get(f"http://{web}", "/api/v1/query", query="ftpprobe_site_up")
                last = body
                if status == 200:
                    up = {r["metric"]["instance"]: r["value"][1] for r in json.loads(body)["data"]["result"]}
                status, _, body = await get(f"http://{web}", "/api/v1/query",
                                            query='ftpprobe_exporter_requests_total{job="ftpprobe_exporter"}')
                if status == 200:
                    own = json.loads(body)["data"]["result"]
            except OSError:  # not listening yet
                continue
        assert up == wanted, (last, (tmp_path / "prometheus.log").read_text()[-3000:])
        assert own, "the exporter's own /metrics were not scraped"
        status, _, body = await get(f"http://{web}", "/api/v1/query", query='up{job="ftpprobe"}')
        assert {r["metric"]["instance"]: r["value"][1] for r in json.loads(body)["data"]["result"]} == wanted
        status, _, body = await get(f"http://{web}", "/api/v1/query", query="ftpprobe_site_up")
        sample = json.loads(body)["data"]["result"][0]["metric"]
        assert sample["job"] == "ftpprobe" and sample["site"] == sample["instance"]
    finally:
        prometheus.terminate()
        try:
            prometheus.wait(timeout=20)
        except subprocess.TimeoutExpired:
            prometheus.kill()
            prometheus.wait()
        log.close()
