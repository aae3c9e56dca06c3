"""``ftpprobe exporter``: a Prometheus exporter in the style of blackbox_exporter.

``GET /probe?target=ftp://host[:port]/&module=NAME`` checks one site (the
``check`` probes, :func:`ftpprobe.fleet.check_sites`) and answers its metrics
from a registry made for that request (``ftpprobe_site_up``, ...: the names of
``ftpprobe check --format prometheus``).  ``GET /metrics`` answers the
exporter's own metrics (requests, probe durations, failures, probes running).

Conventions of blackbox_exporter kept here:

- a missing ``target`` or an unknown ``module`` is the scrape's fault: 400;
- a target that cannot be probed (malformed URL, refused, unreachable) is the
  site's fault: 200 with ``ftpprobe_site_up 0`` (and ``ftpprobe_site_status 3``
  for a URL that cannot be parsed), the reason in the exporter's log and in
  ``&debug=true``;
- the probe's deadline is the scrape timeout Prometheus sends in
  ``X-Prometheus-Scrape-Timeout-Seconds``, minus a margin, and never more than
  the module's ``deadline``.

A target URL holding a password is refused (400) without echoing it: Prometheus
would keep it in the ``instance`` label.  Credentials belong in the module
(``user``/``user_env``, ``password_env``) or in ``~/.netrc``.

Modules come from a TOML file::

    [module.shop]
    probes = ["pasv-map", "epsv"]
    samples = 20
    timeout = 3          # seconds per connect and reply
    deadline = 30        # seconds for one probe at most
    user_env = "SHOP_FTP_USER"
    password_env = "SHOP_FTP_PASSWORD"
    netrc = false        # default true: look the host up in ~/.netrc

A module ``default`` (the ``check`` defaults) is built in; the file may
redefine it.  The HTTP server is hypercorn on trio; the app is a small ASGI
callable.  Probes running at once are bounded by a :class:`trio.CapacityLimiter`.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import tomllib
import urllib.parse
from dataclasses import dataclass, field

import click
import trio

from .errors import TargetError
from .fleet import CHECK_PROBES
from .target import mask_userinfo

log = logging.getLogger("ftpprobe.exporter")

DEFAULT_LISTEN = "127.0.0.1:9798"
#: Seconds kept back from Prometheus's scrape timeout (blackbox_exporter: 0.5).
SCRAPE_TIMEOUT_MARGIN = 0.5
MODULE_KEYS = {"probes", "samples", "timeout", "deadline", "sessions", "user", "user_env", "password_env", "netrc"}


@dataclass(frozen=True)
class Module:
    """How to probe a target: probe names, samples, timeouts and credentials.

    ``user``/``password`` are resolved when the module file is read (from the
    environment variables it names); ``password`` never shows in ``repr``.
    """

    name: str
    probes: tuple[str, ...] = CHECK_PROBES
    samples: int = 10
    timeout: float = 5.0
    deadline: float = 30.0
    sessions: int = 2
    netrc: bool = True
    user: str | None = None
    password: str | None = field(default=None, repr=False)


def default_modules() -> dict[str, Module]:
    return {"default": Module("default")}


def load_modules(path: str, environ=None) -> dict[str, Module]:
    """The modules of a TOML file (``[module.NAME]`` tables) plus the built-in
    ``default``.  Raises :class:`TargetError` naming the file, the module and
    the problem (unknown key or probe, bad number, unset environment variable)."""
    from .catalog import load_catalog

    environ = os.environ if environ is None else environ
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise TargetError(f"{path}: cannot read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TargetError(f"{path}: {exc}") from None
    if set(data) - {"module"}:
        raise TargetError(f"{path}: unknown table(s) {', '.join(sorted(set(data) - {'module'}))}; "
                          "modules are [module.NAME] tables")
    tables = data.get("module", {})
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise TargetError(f"{path}: modules must be tables: [module.NAME]")
    known = {p.name for p in load_catalog(vantage="server")}
    modules = default_modules()
    for name, table in tables.items():
        where = f"{path}, module {name!r}"
        if unknown := set(table) - MODULE_KEYS:
            raise TargetError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        probes = table.get("probes", list(CHECK_PROBES))
        if isinstance(probes, str):
            probes = [p.strip() for p in probes.split(",") if p.strip()]
        if not isinstance(probes, list) or not probes:
            raise TargetError(f"{where}: probes must be a non-empty list of probe names")
        if bad := [p for p in probes if p not in known]:
            raise TargetError(f"{where}: unknown probe(s) {', '.join(map(str, bad))}; see `ftpprobe probes`")
        try:
            samples = int(table.get("samples", 10))
            timeout = float(table.get("timeout", 5.0))
            deadline = float(table.get("deadline", 30.0))
            sessions = int(table.get("sessions", 2))
        except (TypeError, ValueError) as exc:
            raise TargetError(f"{where}: {exc}") from None
        if not (0 <= samples <= 10000 and 0.1 <= timeout <= 600 and 1 <= deadline <= 3600 and 1 <= sessions <= 64):
            raise TargetError(f"{where}: out of range (samples 0-10000, timeout 0.1-600 s, deadline 1-3600 s, "
                              "sessions 1-64)")
        user = table.get("user")
        password = None
        for key in ("user_env", "password_env"):
            var = table.get(key)
            if var is None:
                continue
            if var not in environ:
                raise TargetError(f"{where}: environment variable {var} ({key}) is not set")
            if key == "user_env":
                user = environ[var]
            else:
                password = environ[var]
        if password is not None and not user:
            raise TargetError(f"{where}: password_env needs a user (user or user_env), or put the user in the target")
        modules[name] = Module(name, tuple(probes), samples, timeout, deadline, sessions,
                               bool(table.get("netrc", True)), user, password)
    return modules


def target_for(url: str, module: Module):
    """The :class:`~ftpprobe.target.Target` for ``url`` with the module's
    credentials (they win over ~/.netrc), else ~/.netrc (if the module allows),
    else anonymous.  The exporter's own FTPPROBE_USER/PASSWORD are not used.
    Raises :class:`TargetError`."""
    from .target import parse_target

    environ = {}
    if module.user:
        environ["FTPPROBE_USER"] = module.user
    if module.password is not None:
        environ["FTPPROBE_PASSWORD"] = module.password
    return parse_target(url, use_netrc=module.netrc and not module.user, environ=environ)


def _has_password(url: str) -> bool:
    raw = url.strip()
    raw = raw if "://" in raw else "ftp://" + raw
    try:
        return urllib.parse.urlsplit(raw).password is not None
    except ValueError:
        return "@" in raw


def probe_deadline(headers: dict[str, str], module: Module) -> float:
    """Seconds for one probe: the scrape timeout minus the margin, at most the
    module's deadline (blackbox_exporter's rule)."""
    try:
        scrape = float(headers.get("x-prometheus-scrape-timeout-seconds", ""))
    except ValueError:
        scrape = math.nan
    if not math.isfinite(scrape) or scrape <= 0:
        return module.deadline
    usable = scrape - SCRAPE_TIMEOUT_MARGIN if scrape > 2 * SCRAPE_TIMEOUT_MARGIN else scrape / 2
    return min(module.deadline, usable)


class ExporterApp:
    """The ASGI application: ``/probe``, ``/metrics``, ``/-/healthy`` and ``/``."""

    def __init__(self, modules: dict[str, Module], *, max_concurrent: int = 8) -> None:
        from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector,
                                       ProcessCollector)

        self.modules = modules
        self.limiter = trio.CapacityLimiter(max_concurrent)
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.requests = Counter("ftpprobe_exporter_requests", "HTTP requests answered, by path and status code.",
                                ("path", "code"), registry=self.registry)
        self.probe_seconds = Histogram("ftpprobe_exporter_probe_duration_seconds",
                                       "Seconds a /probe request took, waiting for a free slot included.",
                                       ("module",), registry=self.registry,
                                       buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 60, 120))
        self.probe_failures = Counter("ftpprobe_exporter_probe_failures",
                                      "Probes whose site was down or whose target could not be probed.",
                                      ("module",), registry=self.registry)
        self.rejected = Counter("ftpprobe_exporter_probes_rejected",
                                "Probes not run: every slot busy until the scrape deadline.",
                                ("module",), registry=self.registry)
        self.in_flight = Gauge("ftpprobe_exporter_probes_in_flight", "Probes running now.", registry=self.registry)
        self.slots = Gauge("ftpprobe_exporter_probe_slots", "Probes that may run at once.", registry=self.registry)
        self.slots.set(max_concurrent)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if scope["method"] not in ("GET", "HEAD"):
            status, ctype, body = 405, "text/plain; charset=utf-8", b"only GET\n"
        elif path == "/probe":
            status, ctype, body = await self.probe(scope)
        elif path == "/metrics":
            status, ctype, body = self.own_metrics(scope)
        elif path == "/-/healthy":
            status, ctype, body = 200, "text/plain; charset=utf-8", b"OK\n"
        elif path == "/":
            status, ctype, body = 200, "text/html; charset=utf-8", INDEX.encode()
        else:
            status, ctype, body = 404, "text/plain; charset=utf-8", b"not found: try /probe, /metrics\n"
        self.requests.labels(path if path in ("/probe", "/metrics", "/-/healthy", "/") else "other",
                             str(status)).inc()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    def own_metrics(self, scope):
        from prometheus_client.exposition import choose_encoder

        encoder, ctype = choose_encoder(_headers(scope).get("accept", ""))
        return 200, ctype, encoder(self.registry)

    async def probe(self, scope):
        from prometheus_client import CollectorRegistry
        from prometheus_client.exposition import choose_encoder

        from .fleet import Site, SiteResult, check_sites
        from .monitoring import new_gauges, nagios_output, prometheus_registry
        from .runner import ProbeReport

        text = "text/plain; charset=utf-8"
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        headers = _headers(scope)
        name = (query.get("module") or ["default"])[0] or "default"
        url = (query.get("target") or [""])[0]
        debug = (query.get("debug") or [""])[0].lower() in ("1", "true", "yes")
        module = self.modules.get(name)
        if module is None:
            return 400, text, f"unknown module {name!r} (known: {', '.join(sorted(self.modules))})\n".encode()
        if not url.strip():
            return 400, text, b"the target parameter is missing: /probe?target=ftp://host[:port]/&module=NAME\n"
        if _has_password(url):
            return 400, text, ("the target URL holds a password: Prometheus would keep it in its labels; "
                               "give credentials in the module (user_env, password_env) or ~/.netrc\n").encode()
        started = time.monotonic()
        deadline = probe_deadline(headers, module)
        encoder, ctype = choose_encoder(headers.get("accept", ""))
        try:
            target = target_for(url, module)
        except TargetError as exc:
            # blackbox_exporter's convention: the scrape works, the probe failed
            message = mask_userinfo(str(exc))
            log.warning("probe of %s (module %s): bad target: %s", mask_userinfo(url), name, message)
            self.probe_failures.labels(name).inc()
            registry = CollectorRegistry()
            g = new_gauges(registry)
            g["ftpprobe_site_up"].labels(mask_userinfo(url)).set(0)
            g["ftpprobe_site_status"].labels(mask_userinfo(url)).set(3)
            g["ftpprobe_check_duration_seconds"].labels(mask_userinfo(url)).set(time.monotonic() - started)
            g["ftpprobe_last_check_timestamp_seconds"].labels(mask_userinfo(url)).set(time.time())
            self.probe_seconds.labels(name).observe(time.monotonic() - started)
            if debug:
                return 200, text, f"bad target: {message}\n\n".encode() + encoder(registry)
            return 200, ctype, encoder(registry)

        acquired = False
        try:
            self.limiter.acquire_nowait()
            acquired = True
        except trio.WouldBlock:
            with trio.move_on_after(max(0.0, deadline - 0.5)):  # leave the probe half a second at least
                await self.limiter.acquire()
                acquired = True
        if not acquired:
            self.rejected.labels(name).inc()
            log.warning("probe of %s (module %s): all %d slots busy until the deadline", target.url, name,
                        self.limiter.total_tokens)
            return 503, text, b"every probe slot is busy: raise --max-concurrent or scrape less often\n"
        try:
            self.in_flight.inc()
            remaining = max(0.5, deadline - (time.monotonic() - started))
            site = Site(url.strip(), target, timeout=min(module.timeout, remaining), samples=module.samples,
                        probes=module.probes)
            try:
                [result] = await check_sites([site], max_connections=module.sessions,
                                             sessions_per_site=module.sessions,
                                             site_deadline=remaining, deadline=remaining + 0.25)
            except Exception as exc:  # the scrape gets an answer whatever went wrong in the probe
                log.exception("probe of %s (module %s) failed", target.url, name)
                result = SiteResult(site, ProbeReport(target.url, "", round(time.monotonic() - started, 3),
                                                      error=mask_userinfo(f"{type(exc).__name__}: {exc}")))
        finally:
            self.in_flight.dec()
            self.limiter.release()
        if not result.up:
            self.probe_failures.labels(name).inc()
            log.info("probe of %s (module %s): down: %s", target.url, name, result.report.error)
        self.probe_seconds.labels(name).observe(time.monotonic() - started)
        body = encoder(prometheus_registry([result]))
        if debug:
            code, output = nagios_output([result])
            return 200, text, (f"module {name}, deadline {deadline:g} s\n{output}\n\n").encode() + body
        return 200, ctype, body


INDEX = """<!doctype html><html><head><title>ftpprobe exporter</title></head><body>
<h1>ftpprobe exporter</h1>
<p><a href="/probe?target=ftp://127.0.0.1/&amp;module=default&amp;debug=true">/probe?target=ftp://HOST[:PORT]/&amp;module=NAME</a>
(add <code>&amp;debug=true</code> for the findings in words)</p>
<p><a href="/metrics">/metrics</a>: the exporter's own metrics</p>
</body></html>
"""


def _headers(scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


async def serve_exporter(host: str, port: int, modules: dict[str, Module], *, max_concurrent: int = 8,
                         task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve the exporter on ``host``:``port`` (0: the kernel picks) with
    hypercorn until cancelled.  ``task_status.started`` gets the base URL,
    e.g. ``"http://127.0.0.1:9798"``, once the socket listens."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None  # an access log would hold every target URL
    config.errorlog = log
    app = ExporterApp(modules, max_concurrent=max_concurrent)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(lambda task_status: serve(app, config, task_status=task_status))
        task_status.started(binds[0])


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise click.BadParameter(f"{listen!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN} or [::1]:9798",
                                 param_hint="--listen")
    return host.strip("[]") or "0.0.0.0", int(port)


@click.command("exporter", epilog="""\b
Examples:
  ftpprobe exporter
  ftpprobe exporter --listen 0.0.0.0:9798 --modules /etc/ftpprobe/exporter.toml
  curl 'http://127.0.0.1:9798/probe?target=ftp://ftp.example.net/&module=default'

\b
Modules (TOML, [module.NAME] tables): probes, samples, timeout, deadline,
sessions, user, user_env, password_env, netrc.  A module "default" is built
in.  Passwords come from the environment variable a module names, or from
~/.netrc; a target URL holding a password is refused.

\b
Exit codes: 0 stopped by SIGTERM or Ctrl-C, 3 cannot listen, a bad modules
file or a usage error.""")
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True,
              help="HOST:PORT to serve on. It probes any target it is asked to: keep it off the internet.")
@click.option("--modules", "modules_file", type=click.Path(dir_okay=False),
              help="TOML file of modules ([module.NAME]: probes, samples, timeout, credentials).")
@click.option("--max-concurrent", type=click.IntRange(1, 1000), default=8, show_default=True,
              help="Probes running at once; a scrape that finds no free slot before its deadline gets 503.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
def exporter_command(listen, modules_file, max_concurrent, log_level):
    """Serve Prometheus metrics: /probe?target=ftp://HOST/&module=NAME checks one site.

    In the style of blackbox_exporter: Prometheus passes each target as a
    parameter (relabel __address__ into __param_target) and the scrape
    timeout bounds the probe.  /metrics has the exporter's own metrics.
    """
    host, port = _split_listen(listen)
    try:
        modules = load_modules(modules_file) if modules_file else default_modules()
    except TargetError as exc:
        raise click.BadParameter(str(exc), param_hint="--modules") from None
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run() -> None:
        import signal

        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                url = await nursery.start(lambda task_status: serve_exporter(
                    host, port, modules, max_concurrent=max_concurrent, task_status=task_status))
                log.info("ftpprobe exporter on %s (modules: %s)", url, ", ".join(sorted(modules)))
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(run)
    except (OSError, ExceptionGroup) as exc:
        # hypercorn binds inside its nurseries: the OSError comes wrapped in exception groups
        failed = exc if isinstance(exc, OSError) else (exc.split(OSError)[0] or exc)
        while isinstance(failed, BaseExceptionGroup):
            failed = failed.exceptions[0]
        if not isinstance(failed, OSError):
            raise
        click.echo(f"ftpprobe: error: cannot listen on {listen}: {failed.strerror or failed}", err=True)
        sys.exit(3)
