"""The ``ftpprobe`` command line (click).  Each command is thin: it parses
options, calls the library, renders the report and sets the exit code.

Exit codes (also the Nagios plugin convention): 0 no problem found, 1 a
warning-level quirk present, 2 a critical one (no data connection possible),
3 UNKNOWN: the probe itself failed (bad URL, refused connection, login
failure, ...), a usage error, an internal error or an interrupt (Ctrl-C).

Errors are turned into one line on stderr in one place,
:class:`FtpProbeGroup`, never a traceback unless ``ftpprobe --debug``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import sys
import textwrap
import traceback

import click
import trio

from . import __version__
from .catalog import load_catalog
from .errors import FtpProbeError
from .executors import MAX_PIPELINE, PIPELINE
from .exporter import exporter_command
from .findings import EXIT_PROBE_FAILED
from .monitoring import THRESHOLD
from .report import render_json, render_text, terminal_width
from .runner import AUTO_SESSIONS, DEFAULT_SESSIONS, run_probes
from .target import DEFAULT_OTHER_PORT, Target, mask_userinfo, parse_target, reflector_target

EXIT_CODES = """\b
Exit codes (Nagios plugin conventions): 0 no problem, 1 warning-level quirk,
2 critical (no data connection possible), 3 UNKNOWN: the probe itself failed,
a usage error, an internal error, or interrupted (Ctrl-C)."""

EPILOG_PROBE = """\b
Examples:
  ftpprobe probe ftp://ftp.example.net/
  ftpprobe probe --json --samples 60 ftp://alice@ftp.example.net:2121/
  ftpprobe probe --only pasv-lf,pasv-space-lf ftp://192.0.2.10/

Credentials: put them in ~/.netrc (machine HOST login USER password PW) or
FTPPROBE_USER / FTPPROBE_PASSWORD rather than on the command line; in a URL,
percent-encode reserved characters (/ as %2F, @ as %40, ...).  Passwords
never appear in any output.

""" + EXIT_CODES


class Progress:
    """Progress on stderr when it is a terminal; nothing under cron or with --json.

    Called as ``progress(message, done=None, total=None)``: a message with a
    count drives a progress bar (long runs: passive samples, fleet sites),
    one without is a line of its own while no bar is showing.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._bar = None

    def __call__(self, message: str, done: int | None = None, total: int | None = None) -> None:
        if not self.enabled:
            return
        if total:
            if self._bar is None:
                self._bar = click.progressbar(length=total, label=f"  {message}", file=sys.stderr,
                                              show_pos=True, width=30)
                self._bar.__enter__()
            self._bar.update(max(0, (done or 0) - self._bar.pos))
        elif self._bar is None:
            click.echo(f"  .. {message}", err=True)

    def close(self) -> None:
        """End the bar (its line stays on the terminal)."""
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


def _progress(enabled: bool) -> Progress:
    return Progress(enabled)


def _show(report, as_json: bool, verbose: bool) -> None:
    """Print ``report`` as JSON or as text sized to the terminal (colour on a terminal only)."""
    if as_json:
        click.echo(render_json(report))
    else:
        click.echo(render_text(report, verbose=verbose, color=sys.stdout.isatty()))


def _fail(message: str) -> None:
    """Print ``ftpprobe: error: MESSAGE`` on stderr and exit 3 (raises SystemExit)."""
    click.echo(f"ftpprobe: error: {mask_userinfo(message)}", err=True)
    sys.exit(EXIT_PROBE_FAILED)




def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or ``[exc]``."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _one_line(exc: BaseException) -> str:
    """``Type: message`` on one line, user information of URLs masked."""
    text = " ".join(str(exc).split())
    return mask_userinfo(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


class FtpProbeGroup(click.Group):
    """The top-level group; the one place where errors become exit codes.

    * a usage error (unknown option or command, bad value, missing argument)
      keeps click's usage message but exits 3, not click's 2: monitoring reads
      2 as CRITICAL and would page someone for a typo;
    * an :class:`FtpProbeError` that escapes a command: one line, exit 3;
    * anything else (an internal error, an exception group): one line
      ``ftpprobe: internal error: TYPE: MESSAGE; run with --debug ...``, exit
      3; with ``--debug`` the full traceback instead;
    * Ctrl-C: one line, exit 3 (UNKNOWN: the check did not complete; 130
      would read as CRITICAL to Nagios).

    Every message passes through :func:`mask_userinfo`, so a URL with a
    password in an exception's text never reaches the terminal.
    """

    def make_context(self, info_name, args, parent=None, **extra):
        """Click's, with usage errors of the group itself (unknown global
        option, no command) exiting 3.  Raises :class:`click.UsageError`."""
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _unknown_usage(exc) from None

    def invoke(self, ctx: click.Context):
        """Run the command; raises only what click's ``main`` turns into an
        exit code (:class:`click.exceptions.Exit`, :class:`click.ClickException`,
        ``SystemExit``, a broken pipe)."""
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _unknown_usage(exc) from None
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except FtpProbeError as exc:
            _fail(str(exc))
        except BaseException as exc:  # noqa: BLE001 -- the whole point: nothing escapes as a traceback
            if isinstance(exc, (SystemExit, GeneratorExit)):
                raise
            if isinstance(exc, OSError) and exc.errno == errno.EPIPE:
                raise  # click's main silences a closed stdout (ftpprobe probes | head)
            leaves = _leaves(exc)
            if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
                # On a terminal the line after the ^C echo; under cron exactly one line.
                click.echo(("\n" if sys.stderr.isatty() else "") + "ftpprobe: interrupted", err=True)
                sys.exit(EXIT_PROBE_FAILED)
            if all(isinstance(leaf, FtpProbeError) for leaf in leaves):
                _fail("; ".join(str(leaf) for leaf in leaves))
            if ctx.params.get("debug"):
                click.echo(mask_userinfo("".join(traceback.format_exception(exc))), err=True, nl=False)
            else:
                # A group with one leaf says nothing its leaf does not: name the leaf.
                shown = leaves[0] if len(leaves) == 1 else exc
                click.echo(f"ftpprobe: internal error: {_one_line(shown)}; run with --debug for details", err=True)
            sys.exit(EXIT_PROBE_FAILED)


def _unknown_usage(exc: click.UsageError) -> click.UsageError:
    """``exc`` set to exit 3 (Nagios UNKNOWN), its message masked."""
    exc.exit_code = EXIT_PROBE_FAILED
    exc.message = mask_userinfo(exc.message)
    return exc


def _select(only: str | None, vantage: str = "server"):
    probes = load_catalog(vantage=vantage)
    if not only:
        return probes
    wanted = [name.strip() for name in only.split(",") if name.strip()]
    known = {p.name for p in probes}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise click.BadParameter(f"unknown probe(s) {', '.join(unknown)}; see `ftpprobe probes`", param_hint="--only")
    return [p for p in probes if p.name in wanted]


def common_options(fn):
    fn = click.option("--timeout", type=click.FloatRange(0.1, 600), default=5.0, show_default=True,
                      help="Seconds allowed for each connect and each reply; a line that gets no answer "
                           "within it counts as stalled.")(fn)
    fn = click.option("--deadline", type=click.FloatRange(1, 86400), default=120.0, show_default=True,
                      help="Seconds for the whole run; probes still running then are reported as failed.")(fn)
    fn = click.option("--max-sessions", type=click.IntRange(1, 64), default=None,
                      help="Concurrent control sessions at most, lowered to what the server allows. "
                           f"Default: {DEFAULT_SESSIONS}; {AUTO_SESSIONS - 1} after a session-limit probe (part of "
                           f"'probe') held {AUTO_SESSIONS} at once without a refusal. Each probe gets a fresh "
                           "session, so more sessions finish a run sooner.")(fn)
    fn = click.option("--trust-pasv-address", is_flag=True,
                      help="Open passive data connections to the address named in 227 replies instead of "
                           "the control peer's (off by default: a hostile server cannot aim the prober elsewhere).")(fn)
    fn = click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout, for scripts.")(fn)
    fn = click.option("--no-netrc", is_flag=True, help="Do not read ~/.netrc for credentials.")(fn)
    fn = click.option("-v", "--verbose", is_flag=True,
                      help="Show every finding (absent and skipped too) with all its evidence.")(fn)
    return fn


@click.group(cls=FtpProbeGroup, epilog=EXIT_CODES,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="ftpprobe")
@click.option("--debug", is_flag=True, envvar="FTPPROBE_DEBUG", show_envvar=True,
              help="On an internal error, show the full traceback instead of one line.")
def main(debug: bool) -> None:
    """Tell, with evidence, why FTP breaks on a path.

    ftpprobe opens FTP control sessions with variant line endings and command
    spellings, maps passive port ranges with real data connections, and
    reports which quirks of servers, NAT routers and their FTP ALGs are
    present, each with the exact bytes sent and received.

    Start with `ftpprobe demo` (no server of yours needed), then
    `ftpprobe probe ftp://your.server/`.  `ftpprobe probes` lists what is sent.
    """


@contextlib.contextmanager
def _pcap(path: str | None, target: Target):
    """While the block runs, write every packet to or from ``target`` (control
    and data connections) and every IPv4 ICMP message to the pcap file ``path``
    (``--pcap``).

    Without root or CAP_NET_RAW it says so on stderr and the run
    goes on as without ``--pcap``: the capture is evidence, not the probe.
    Packets the file misses (dropped, past the cap, not written) are said
    on stderr at the end.
    """
    cap = None
    if path:
        from .packets import Capture, CaptureError, resolve  # scapy only once a pcap file is written

        try:
            cap = Capture(resolve(target.host, target.port), any_protocol=True, icmp=True, pcap=path)
            cap.start()
        except CaptureError as exc:
            click.echo(f"ftpprobe: no capture written to {path}: {exc}", err=True)
            cap = None
    try:
        yield
    finally:
        if cap is not None:
            cap.stop()
            lost = cap.losses()
            if lost:
                click.echo(f"ftpprobe: {path} is incomplete: {lost}", err=True)


def pcap_option(fn):
    return click.option("--pcap", metavar="FILE", type=click.Path(dir_okay=False, writable=True),
                        help="Write the run's packets (control and data connections) to FILE for Wireshark "
                             "(needs root or CAP_NET_RAW; without it the run goes on and says so).")(fn)


def _run(url, only, timeout, deadline, samples, max_sessions, trust_pasv_address, as_json, no_netrc,
         verbose=False, from_lan=False, pcap=None, tls=False, insecure_tls=False, cert_warn_days=14,
         pipeline=PIPELINE):
    """Probe ``url`` and exit with the report's code (an FtpProbeError is left
    to FtpProbeGroup: one line, exit 3)."""
    target = parse_target(url, use_netrc=not no_netrc, tls=tls, insecure_tls=insecure_tls)
    probes = _select(only)
    progress = _progress(not as_json)
    try:
        with _pcap(pcap, target):
            report = trio.run(lambda: run_probes(
                target, probes=probes, timeout=timeout, deadline=deadline, samples=samples,
                pipeline=pipeline, max_sessions=max_sessions, trust_pasv_address=trust_pasv_address, progress=progress,
                from_lan=from_lan, cert_warn_days=cert_warn_days))
    finally:
        progress.close()
    _show(report, as_json, verbose)
    sys.exit(report.exit_code)


def insecure_tls_option(fn):
    return click.option("--insecure-tls", is_flag=True,
                        help="FTPS: go on when the server's certificate is refused (expired, self-signed, another "
                             "name), for diagnosis; it is still reported. Off by default: a password is never "
                             "sent to a server whose certificate was refused.")(fn)


def cert_warn_days_option(fn):
    return click.option("--cert-warn-days", type=click.IntRange(0, 3650), default=14, show_default=True,
                        help="FTPS: report a certificate that expires within this many days (a warning).")(fn)


def tls_options(fn):
    """--tls, --insecure-tls, --cert-warn-days (probe, map-pasv)."""
    fn = click.option("--tls", is_flag=True,
                      help="Explicit FTPS: AUTH TLS (RFC 4217) before the login in every session, as ftpes:// "
                           "does; ftps:// URLs are implicit FTPS (TLS from the first byte, port 990).")(fn)
    return cert_warn_days_option(insecure_tls_option(fn))


def pipeline_option(fn):
    return click.option("--pipeline", type=click.IntRange(1, MAX_PIPELINE), default=PIPELINE, show_default=True,
                        help="PASV/EPSV sent in one write while mapping the passive range. A server keeps only "
                             "the last of them open, so only that port is tried with a data connection: 1 tries "
                             "every sampled port (PASV and connect in turn), for 'is the whole range "
                             "forwarded?'.")(fn)


def from_lan_option(fn):
    return click.option("--from-lan", is_flag=True,
                        help="You are inside the site's LAN and the URL names its public address: decide "
                             "path.hairpin (control works, data connections do not).")(fn)


@main.command(epilog=EPILOG_PROBE)
@click.argument("url", metavar="ftp://[USER[:PASSWORD]@]HOST[:PORT]/")
@click.option("--samples", type=click.IntRange(0, 100000), default=20, show_default=True,
              help="Passive replies (PASV/EPSV) to sample for the range map.")
@pipeline_option
@click.option("--only", metavar="NAMES", help="Comma-separated probe names to run (default: all).")
@from_lan_option
@pcap_option
@tls_options
@common_options
def probe(url, samples, only, **options):
    """Probe an FTP server end to end and report its quirks.

    Runs every probe of the catalog (see `ftpprobe probes`), each in its own
    control session, concurrently, and prints a table of findings (id, status,
    evidence, advice) and the passive range map.
    """
    _run(url, only, samples=samples, **options)


@main.command("map-pasv", epilog="\b\nExample:\n  ftpprobe map-pasv --samples 200 ftp://ftp.example.net/\n\n"
                                  + EXIT_CODES)
@click.argument("url", metavar="ftp://[USER[:PASSWORD]@]HOST[:PORT]/")
@click.option("--samples", type=click.IntRange(1, 100000), default=60, show_default=True,
              help="Passive replies to sample.")
@pipeline_option
@from_lan_option
@pcap_option
@tls_options
@common_options
def map_pasv(url, samples, **options):
    """Map a server's passive port range.

    Issues repeated PASV/EPSV across several control sessions at once, several
    in one write (--pipeline), tries the last advertised port of each write
    with a real data connection, and estimates the true range
    (minimum-variance unbiased estimator for a uniform range), the allocation
    pattern and which ports are unreachable. To ask whether every port of
    the range is forwarded, --pipeline 1 tries every sampled port.
    """
    _run(url, "pasv-map", samples=samples, **options)


@main.command(epilog="""\b
Examples (on a host outside the NAT, e.g. a VPS):
  sudo ftpprobe reflect --listen 0.0.0.0 --ports 21,2121
  ftpprobe reflect --listen 0.0.0.0 --ports 2100,2121   # unprivileged, with a 21->2100 redirect

\b
Then, from inside the LAN:
  ftpprobe fingerprint REFLECTOR-HOST

\b
Exit codes: 0 stopped with Ctrl-C (the normal way to stop it), 3 cannot
listen, a usage error or an internal error.""")
@click.option("--listen", default="", show_default="every IPv4 and IPv6 address",
              help="Address(es) to listen on, comma-separated (e.g. 203.0.113.5,2001:db8::5).")
@click.option("--ports", default="21,2121", show_default=True,
              help="Comma-separated control ports (one where a router's ALG acts, one where it may not).")
@click.option("--journal", type=click.Path(dir_okay=False, writable=True),
              help="Append a JSON line per received line (bytes, peer, reads) to this file.")
@click.option("--max-sessions", type=click.IntRange(1, 10000), default=64, show_default=True)
@click.option("--per-address", type=click.IntRange(1, 1000), default=8, show_default=True,
              help="Concurrent sessions from one address.")
@click.option("--idle", type=click.FloatRange(1, 3600), default=30.0, show_default=True,
              help="Seconds a session may wait for a line.")
@click.option("--max-listeners", type=click.IntRange(1, 10000), default=64, show_default=True,
              help="Passive ports open at once over all sessions (one per session; PASV beyond it gets 425).")
@click.option("--journal-mb", type=click.IntRange(1, 100000), default=16, show_default=True,
              help="Rotate the journal to FILE.1 at this size (MiB): at most twice this on disk.")
def reflect(listen, ports, journal, max_sessions, per_address, idle, max_listeners, journal_mb):
    """Run the cooperating reflector server (outside the NAT).

    It answers every line with the exact bytes it received (hex), the peer
    address and port it saw and the segment sizes; PASV/EPSV replies carry
    their original address and port out of band; after PORT/EPRT, LIST makes
    it connect back to the control peer's address only.  Safe to leave on
    the internet: bounded sessions, line length, idle time and rate; no file
    system access.
    """
    import logging

    from .reflector import Reflector, ReflectorLimits

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        port_list = tuple(int(p) for p in ports.split(","))
    except ValueError:
        raise click.BadParameter(f"not a list of ports: {ports!r}", param_hint="--ports") from None
    limits = ReflectorLimits(max_sessions=max_sessions, per_address=per_address, idle=idle,
                             max_listeners=max_listeners, journal_bytes=journal_mb << 20)
    try:
        trio.run(Reflector(listen, port_list, limits, journal).serve)
    except PermissionError:
        _fail(f"no permission to listen on port(s) {ports}: run as root, grant CAP_NET_BIND_SERVICE, "
              "or use high ports with a port redirect (see --help)")
    except OSError as exc:
        _fail(f"cannot listen on {listen} port(s) {ports}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        pass


@main.command(epilog="""\b
Example:
  ftpprobe fingerprint --other-port 2121 reflector.example.net

It logs in to the reflector as anonymous: your FTPPROBE_USER/FTPPROBE_PASSWORD
and ~/.netrc credentials are never sent to it.

""" + EXIT_CODES)
@click.argument("reflector", metavar="HOST[:PORT]")
@click.option("--other-port", type=click.IntRange(1, 65535), default=DEFAULT_OTHER_PORT, show_default=True,
              help="The reflector's second control port, to see whether the ALG acts only on 21.")
@click.option("--only", metavar="NAMES", help="Comma-separated variant names (default: all alg-* probes).")
@click.option("--hops", is_flag=True,
              help="Also find which hop rewrites PORT: send it with IP TTL 1, 2, ... and read each router's "
                   "ICMP quote (needs root or CAP_NET_RAW).")
@pcap_option
@common_options
def fingerprint(reflector, other_port, only, timeout, deadline, max_sessions, trust_pasv_address, as_json,
                no_netrc, verbose, hops=False, pcap=None):
    """Fingerprint the NAT router / firewall / FTP ALG between here and a reflector.

    Run from inside the LAN against `ftpprobe reflect` outside it.  Sends PORT
    and EPRT with CRLF, bare LF, trailing space, lower case, split across TCP
    segments, as the first line and after a login, naming the prober's own
    address and a foreign one, and PASV/EPSV variants, each in its own control
    session, on the main and the other port.  Prints a table of variant
    against outcome (rewritten / passed / mangled / stalled / reset) and the
    nat.*, alg.* and path.active-blocked findings.
    """
    target = reflector_target(reflector)
    probes = _select(only, vantage="reflector")
    if not hops and not only:
        probes = [p for p in probes if p.action != "hops"]  # the hop walk runs with --hops only
    elif hops and only:
        probes += [p for p in _select(None, vantage="reflector") if p.action == "hops" and p not in probes]
    progress = _progress(not as_json)
    try:
        with _pcap(pcap, target):
            report = trio.run(lambda: run_probes(
                target, probes=probes, timeout=timeout, deadline=deadline, max_sessions=max_sessions,
                trust_pasv_address=trust_pasv_address, progress=progress,
                vantage="reflector", other_port=other_port))
    finally:
        progress.close()
    if report.error and not report.peer:
        # Nothing answered as a reflector: say how to start one.
        report.error += (f"; is `ftpprobe reflect` running on {target.host}? Start it on a host outside "
                         f"the NAT: sudo ftpprobe reflect --listen 0.0.0.0 --ports {target.port},{other_port}")
    _show(report, as_json, verbose)
    sys.exit(report.exit_code)


@main.command(epilog="""\b
Examples:
  ftpprobe check ftp://shop1.example.net/ ftp://shop2.example.net:2121/
  ftpprobe check --targets /etc/ftpprobe/sites.toml --baseline /var/lib/ftpprobe/baseline.json
  ftpprobe check --targets sites.toml --format prometheus \\
      --prometheus-file /var/lib/node_exporter/textfile_collector/ftpprobe.prom --quiet

\b
Exit codes (Nagios plugin conventions): 0 OK, 1 WARNING, 2 CRITICAL (a site
down or a critical quirk), 3 UNKNOWN (bad targets file or baseline, a usage
error, an internal error, or interrupted).""")
@click.argument("targets", nargs=-1, metavar="[ftp://HOST/]...")
@click.option("--targets", "targets_file", type=click.Path(dir_okay=False),
              help="TOML or CSV file of sites (url, name, timeout, samples, probes, password_env, reflector).")
@click.option("--baseline", type=click.Path(dir_okay=False), help="Compare with this baseline and report changes.")
@click.option("--save-baseline", type=click.Path(dir_okay=False), help="Store the findings and passive maps here.")
@click.option("--format", "fmt", type=click.Choice(["nagios", "jsonl", "prometheus"]), default="nagios",
              show_default=True, help="Output on stdout.")
@click.option("--prometheus-file", type=click.Path(dir_okay=False),
              help="Also write Prometheus text here, atomically (node_exporter textfile collector).")
@click.option("-w", "--warning", "warn_s", type=THRESHOLD,
              help="WARNING when a site's check time (seconds) is outside this range: 5, 2:, ~:5, @5:10 "
                   "(Nagios plugin range syntax).")
@click.option("-c", "--critical", "crit_s", type=THRESHOLD,
              help="CRITICAL when a site's check time (seconds) is outside this range (same syntax as -w).")
@click.option("--timeout", type=click.FloatRange(0.1, 600), default=5.0, show_default=True,
              help="Seconds for each connect and reply (a targets file may set its own).")
@click.option("--samples", type=click.IntRange(0, 10000), default=10, show_default=True,
              help="Passive replies sampled per site.")
@click.option("--max-connections", type=click.IntRange(2, 1 << 20), default=None,
              show_default="as many as the open-file limit allows",
              help="Control connections open at once over the whole fleet. By default ftpprobe raises its "
                   "open-file limit (RLIMIT_NOFILE) to the hard limit and uses half of it, less 100 "
                   "(a control and a data connection each).")
@click.option("--site-deadline", type=click.FloatRange(1, 3600), default=60.0, show_default=True,
              help="Seconds for one site; a site still running then is reported down.")
@click.option("--deadline", type=click.FloatRange(1, 86400), default=300.0, show_default=True,
              help="Seconds for the whole fleet.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing when every site is OK (for cron mail).")
@cert_warn_days_option
@insecure_tls_option
def check(targets, targets_file, baseline, save_baseline, fmt, prometheus_file, warn_s, crit_s, timeout, samples,
          max_connections, site_deadline, deadline, quiet, cert_warn_days, insecure_tls):
    """Health-check one site or a fleet: for cron, Nagios/Icinga and Prometheus.

    Each site gets a quick probe (passive range map, EPSV, LIST); with
    --baseline, what changed since then (a new quirk, a passive range that
    moved, an address that changed, a site that went dark) is reported as
    findings of its own (change.* ids).  Credentials come from ~/.netrc,
    FTPPROBE_USER/FTPPROBE_PASSWORD, or a site's password_env in the targets
    file: never put them on the command line.

    FTPS sites (ftps:// for implicit FTPS, ftpes:// or tls = true in the
    targets file for AUTH TLS) also get their certificate checked (WARNING
    when it expires within --cert-warn-days, CRITICAL once expired) and what
    the router's FTP helper hides inside TLS.
    """
    from .fleet import Site, check_sites, site_probes, compare_baseline, load_baseline, load_targets
    from .fleet import save_baseline as store_baseline
    from .monitoring import json_lines, nagios_output, prometheus_text, write_prometheus_file

    def unknown(message: str) -> None:
        click.echo(f"FTPPROBE UNKNOWN - {message}")
        sys.exit(3)

    try:
        defaults = {"timeout": timeout, "samples": samples, "insecure_tls": insecure_tls}
        sites = load_targets(targets_file, defaults=defaults) if targets_file else []
        for url in targets:
            target = parse_target(url, insecure_tls=insecure_tls)
            name = f"[{target.host}]:{target.port}" if ":" in target.host else f"{target.host}:{target.port}"
            sites.append(Site(name, target, timeout=timeout, samples=samples, probes=site_probes(target)))
        if not sites:
            unknown("no targets: give ftp:// URLs or --targets FILE")
        old = load_baseline(baseline) if baseline else None
    except FtpProbeError as exc:
        unknown(str(exc))
    progress = _progress(fmt == "nagios" and not quiet)
    try:
        results = trio.run(lambda: check_sites(sites, max_connections=max_connections, site_deadline=site_deadline,
                                               deadline=deadline, progress=progress,
                                               cert_warn_days=cert_warn_days))
    finally:
        progress.close()
    if old is not None:
        for r in results:
            r.changes = compare_baseline(r, old)
    try:
        if save_baseline:
            store_baseline(save_baseline, results)
        if prometheus_file:
            write_prometheus_file(prometheus_file, results)
    except OSError as exc:
        unknown(f"cannot write {exc.filename}: {exc.strerror}")
    code, line = nagios_output(results, warn_s, crit_s)
    if quiet and code == 0:
        sys.exit(0)
    if fmt == "nagios":
        click.echo(line)
    elif fmt == "jsonl":
        click.echo(json_lines(results, warn_s, crit_s), nl=False)
    else:
        click.echo(prometheus_text(results), nl=False)
    sys.exit(code)


main.add_command(exporter_command)


@main.command("probes", epilog="""\b
Exit codes: 0 listed, 3 the catalog cannot be read, a usage error or an
internal error.""")
@click.option("--json", "as_json", is_flag=True, help="JSON list instead of a table.")
def list_probes(as_json):
    """List the probe catalog: what each probe sends and which quirk ids it decides."""
    probes = load_catalog()
    rows = [{"name": p.name, "action": p.action, "sends": p.sends(), "decides": list(p.decides),
             "summary": p.summary} for p in probes]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    # One block per probe, wrapped to the terminal: a grid of four columns cannot fit 80.
    width = terminal_width()
    for vantage in ("server", "reflector"):
        shown = [(r, p) for r, p in zip(rows, probes) if p.vantage == vantage]
        if not shown:
            continue
        click.echo("Against any FTP server (probe, map-pasv, check):" if vantage == "server" else
                   "Through a reflector (fingerprint):")
        for r, _ in shown:
            click.echo(f"  {r['name']}")
            for label, text in (("sends", r["sends"]), ("decides", ", ".join(r["decides"]) or "-"),
                                ("what", r["summary"])):
                click.echo(textwrap.fill(text, width, initial_indent=f"    {label + ':':<9}",
                                         subsequent_indent=" " * 13, break_on_hyphens=False))
        click.echo()


#: ``demo --router``: name -> the emulated middlebox's personalities (ftpprobe.middlebox).
DEMO_ROUTERS = {"consumer": ("stall-space-lf", "canonical-port"), "libalias": ("libalias",),
                "userland-proxy": ("userland-proxy",), "strict-firewall": ("strict-firewall",), "none": ()}


@main.command(epilog="""\b
The demo exits 1 on purpose: its server allows a password login in clear
text and its router stalls on 'PASV \\n'.

""" + EXIT_CODES)
@click.option("--json", "as_json", is_flag=True, help='One JSON object on stdout: {"server": ..., "router": ...}.')
@click.option("--timeout", type=click.FloatRange(0.1, 60), default=2.0, show_default=True,
              help="Seconds for each reply (the stall probes wait this long).")
@click.option("--router", type=click.Choice(sorted(DEMO_ROUTERS)), default="consumer", show_default=True,
              help="The emulated router: 'consumer' (a home router that stalls after 'PASV \\n' and rewrites PORT whole), 'libalias' (BSD "
                   "natd/ipfw nat), 'userland-proxy' (OpenBSD ftp-proxy), 'strict-firewall' (Cisco ASA inspect ftp "
                   "strict) or 'none' (NAT without an ALG).")
def demo(as_json, timeout, router="consumer"):
    """Probe a real pyftpdlib server and fingerprint an emulated router, all on loopback.

    The server has a deliberately small passive range (10 ports), a limit of
    4 concurrent sessions and a password account, so the report shows a range map and
    real findings.  The router is an emulated middlebox with two known
    personalities (it stalls after 'PASV \\n' and rewrites PORT lines whole) in
    front of a real `ftpprobe reflect`.  No FTP server of yours is needed.
    """
    import random

    from .demo import PyftpdlibServer, emulated_router_fingerprint
    from .target import Target

    personalities = DEMO_ROUTERS[router]
    low = random.randrange(40000, 60000, 10)
    with PyftpdlibServer(passive_ports=(low, low + 9), max_cons=5) as server:
        target = Target(server.host, server.port, server.user, server.password, "demo")
        if not as_json:
            click.echo(f"demo: pyftpdlib on {server.host} port {server.port}, passive ports {low}-{low + 9}, "
                       "max_cons 5 (it counts its own listening socket: 4 sessions), "
                       f"user {server.user}\n", err=True)
        # --max-sessions above the server's limit, so the session-limit probe finds it.
        progress = _progress(not as_json)
        try:
            report = trio.run(lambda: run_probes(target, timeout=timeout, samples=30, max_sessions=6,
                                                 progress=progress))
        finally:
            progress.close()
    router = trio.run(lambda: emulated_router_fingerprint(personalities, timeout=timeout,
                                                          progress=_progress(False)))
    if as_json:
        click.echo(json.dumps({"server": report.to_dict(), "router": router.to_dict()}, indent=2, default=str))
    else:
        color = sys.stdout.isatty()
        click.echo(render_text(report, color=color))
        click.echo(f"\nThrough an emulated router ({', '.join(personalities) or 'NAT without an ALG'}):\n")
        click.echo(render_text(router, color=color))
    sys.exit(max(report.exit_code, router.exit_code))



