"""ftpprobe against a plain ftplib loop over a delayed path: one command, one table.

Run as root (it builds its own network namespace and nftables rule):

    /tmp/venv/bin/python benchmarks/run.py [--rtt-ms 20] [--samples 200] [--sites 1000]

(any Python with ftpprobe's dependencies and pyftpdlib will do).  In a fresh
network namespace (``unshare -n``) it starts two pyftpdlib servers on
127.0.0.77 whose passive range is 10000-65535 (``ftpserver.py``: a thread
per session on port 2121 for the map and probe cases, the one-thread event
loop on port 2122 for the fleet), a delaying proxy
(``delayproxy.py``: each chunk forwarded RTT/2 after it arrived, both
directions, control and data connections), and an nftables rule that
redirects every TCP connection to 127.0.0.77 to the proxy (which reads the
original destination with ``SO_ORIGINAL_DST``); see ../shared/DESIGN.md,
"Latency".  Each case runs in its own interpreter; numbers are printed, never
asserted.  The probe case also runs every probe alone (its own connect and
login included): the slowest of those is the least a full run could take.
The probe row gives ftpprobe's CPU for the full run (its threads included,
the imports before it not); the check rows also give ftpprobe's own CPU (its process only, user and
system) and the CPU the server and the proxy used meanwhile: all three share
the machine's cores, and the single-threaded pyftpdlib server stands in for
every site.  The client's connect completes at the proxy, so connects cost no
round trip here (for ftplib and ftpprobe alike).
"""

from __future__ import annotations

import argparse
import ftplib
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

from tabulate import tabulate

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SERVER, PORT, FLEET_PORT, LOW, HIGH = "127.0.0.77", 2121, 2122, 10000, 65535
PROXY_PORT, MARK = 4999, 0x77


# -- the cases (each runs in its own interpreter, prints one JSON object) -------------


def case_ftplib(args) -> dict:
    """The sequential loop a script would write: PASV, connect to the port, close."""
    started = time.perf_counter()
    ftp = ftplib.FTP()
    ftp.connect(SERVER, PORT, timeout=10)
    ftp.login()
    ports = []
    for _ in range(args.samples):
        host, port = ftp.makepasv()
        with socket.create_connection((host, port), timeout=10):
            ports.append(port)
    ftp.quit()
    wall = time.perf_counter() - started
    return {"wall": wall, "samples": len(ports), "rate": len(ports) / wall}


def _report_probes(report) -> dict:
    return {name: obs.elapsed for name, obs in report.observations.items()}


def case_map(args) -> dict:
    import trio

    from ftpprobe.catalog import load_catalog
    from ftpprobe.runner import run_probes
    from ftpprobe.target import Target

    probes = [p for p in load_catalog(vantage="server") if p.name == "pasv-map"]
    started = time.perf_counter()
    cpu = time.process_time()
    report = trio.run(lambda: run_probes(Target(SERVER, PORT), probes=probes, samples=args.samples,
                                         max_sessions=args.sessions))
    wall = time.perf_counter() - started
    p = report.passive
    width = HIGH - LOW + 1
    return {"wall": wall, "cpu": time.process_time() - cpu, "samples": p.get("samples"),
            "rate": (p.get("samples") or 0) / wall, "error": report.error,
            "observed": [p.get("observed_min"), p.get("observed_max")],
            "bound_error": ((p["observed_min"] - LOW) + (HIGH - p["observed_max"])) / width if p else None,
            "interval": [p.get("estimate_low"), p.get("estimate_high")], "tried": p.get("tried"),
            "reachable": p.get("reachable"), "pipelined": p.get("pipelined"), "addresses": p.get("addresses"),
            "sessions": p.get("sessions")}


def case_probe(args) -> dict:
    import trio

    from ftpprobe.runner import run_probes
    from ftpprobe.target import Target

    from ftpprobe.catalog import load_catalog

    started, cpu = time.perf_counter(), time.process_time()
    report = trio.run(lambda: run_probes(Target(SERVER, PORT), timeout=5.0))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    elapsed = _report_probes(report)
    slowest = max(elapsed, key=elapsed.get)
    alone = {}
    for probe in load_catalog(vantage="server"):
        began = time.perf_counter()
        trio.run(lambda: run_probes(Target(SERVER, PORT), probes=[probe], timeout=5.0))
        alone[probe.name] = time.perf_counter() - began
    slowest_alone = max(alone, key=alone.get)
    return {"wall": wall, "cpu": cpu, "slowest": slowest, "slowest_s": elapsed[slowest], "error": report.error,
            "slowest_alone": slowest_alone, "slowest_alone_s": alone[slowest_alone],
            "probes": elapsed, "alone": alone, "findings": {f.id: f.status for f in report.findings}}


def case_fleet(args) -> dict:
    import trio

    from ftpprobe.fleet import CHECK_PROBES, Site, check_sites
    from ftpprobe.target import Target

    sites = [Site(f"site-{i}", Target(SERVER, FLEET_PORT), timeout=5.0, samples=10, probes=CHECK_PROBES)
             for i in range(args.sites)]
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    cpu = time.process_time()
    results = trio.run(lambda: check_sites(sites, **({"max_connections": args.max_connections}
                                                     if args.max_connections else {})))
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss = usage.ru_maxrss - usage0.ru_maxrss
    down = [r.report.error for r in results if r.report.error]
    return {"wall": wall, "cpu_per_site_ms": cpu * 1000 / len(sites), "rss_per_site_kb": rss / len(sites),
            "user_per_site_ms": (usage.ru_utime - usage0.ru_utime) * 1000 / len(sites),
            "sys_per_site_ms": (usage.ru_stime - usage0.ru_stime) * 1000 / len(sites),
            "sites": len(sites), "down": len(down), "first_error": down[0] if down else "",
            "statuses": sorted({r.status for r in results})}


CASES = {"ftplib": case_ftplib, "map": case_map, "probe": case_probe, "fleet": case_fleet}


# -- the delay path ---------------------------------------------------------------------


def _spawn(argv: list[str]) -> subprocess.Popen:
    # ftpserver.py imports ftpprobe.demo: this checkout's, installed or not.
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = proc.stdout.readline()
    if "ready" not in line:
        raise SystemExit(f"{argv[1]} did not start")
    return proc


def build_path(rtt_ms: float) -> list[subprocess.Popen]:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    rules = f"""
table ip ftpprobe_bench {{
    chain out {{
        type nat hook output priority -100; policy accept;
        meta mark {MARK} return
        ip daddr {SERVER} tcp dport != {PROXY_PORT} redirect to :{PROXY_PORT}
    }}
}}
"""
    subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True)
    threaded = _spawn([sys.executable, str(HERE / "ftpserver.py"), SERVER, str(PORT), str(LOW), str(HIGH), "threaded"])
    loop = _spawn([sys.executable, str(HERE / "ftpserver.py"), SERVER, str(FLEET_PORT), str(LOW), str(HIGH), "async"])
    proxy = _spawn([sys.executable, str(HERE / "delayproxy.py"), str(PROXY_PORT), str(rtt_ms / 2000), str(MARK)])
    return [threaded, loop, proxy]


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (/proc/PID/stat)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_case(name: str, args, procs: list[subprocess.Popen] | None = None) -> dict:
    argv = [sys.executable, __file__, "--case", name, "--samples", str(args.samples), "--sites", str(args.sites),
            "--sessions", str(args.sessions)]
    if args.max_connections:
        argv += ["--max-connections", str(args.max_connections)]
    if (profile := os.environ.get("BENCH_PYSPY")) and name == os.environ.get("BENCH_PYSPY_CASE", "fleet"):
        # py-spy (pip install py-spy): a flame-graph-ready profile of this case.
        argv = [str(Path(sys.executable).parent / "py-spy"), "record", "-r", "200", "-f", "raw",
                "-o", f"{profile}.{name}-{args.sites}", "--", *argv]
    before = [process_cpu(p.pid) for p in procs or ()]
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode:
        raise SystemExit(f"case {name} failed:\n{done.stderr}")
    result = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    if procs:
        # The servers and the proxy share the machine's cores with ftpprobe: their CPU, per case.
        threaded, loop, proxy = (process_cpu(p.pid) - b for p, b in zip(procs, before))
        result["server_cpu"], result["proxy_cpu"] = threaded + loop, proxy
    return result


def machine() -> str:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores,\n         Linux {platform.release()}, Python "
            f"{platform.python_version()}, RLIMIT_NOFILE {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rtt-ms", type=float, default=20.0)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--sessions", type=int, default=3, help="--max-sessions for map-pasv")
    ap.add_argument("--sites", type=int, default=1000)
    ap.add_argument("--max-connections", type=int, default=0, help="check's cap (default: its own)")
    ap.add_argument("--only", default="ftplib,map,probe,fleet")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(CASES[args.case](args)))
        return
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark builds a network namespace and an nftables rule")
    if os.environ.get("FTPPROBE_BENCH_NETNS") != "1":
        os.execvpe("unshare", ["unshare", "-n", sys.executable, __file__, *sys.argv[1:]],
                   {**os.environ, "FTPPROBE_BENCH_NETNS": "1"})
    procs = build_path(args.rtt_ms)
    try:
        only = args.only.split(",")
        r = {name: run_case(name, args, procs) for name in ("ftplib", "map", "probe", "fleet") if name in only}
        if "fleet" in only:
            one = argparse.Namespace(**{**vars(args), "sites": 1})
            r["fleet1"] = run_case("fleet", one, procs)
    finally:
        for p in procs:
            p.terminate()
    print_table(r, args)


def print_table(r: dict, args: argparse.Namespace) -> None:
    """Print the results ``r`` (by case) as one table that fits 80 columns."""
    print(f"machine: {machine()}")
    print(f"path: {args.rtt_ms:g} ms round trip (nftables redirect + delaying proxy) to pyftpdlib,\n"
          f"      passive range {LOW}-{HIGH}")
    print(json.dumps(r, indent=1), file=sys.stderr) if os.environ.get("BENCH_VERBOSE") else None
    rows = []
    if "ftplib" in r:
        f = r["ftplib"]
        rows.append(("ftplib loop: PASV + data connect", f"{f['samples']} samples in {f['wall']:.2f} s "
                     f"({f['rate']:.0f}/s)", "1.0x"))
    if "map" in r:
        m = r["map"]
        ratio = f"{m['rate'] / r['ftplib']['rate']:.1f}x ftplib" if "ftplib" in r else ""
        rows.append((f"map-pasv --samples {args.samples} --max-sessions {args.sessions}",
                     f"{m['samples']} samples in {m['wall']:.2f} s ({m['rate']:.0f}/s)", ratio))
        rows.append(("- bound error: observed ends vs 10000-65535",
                     f"observed {m['observed'][0]}-{m['observed'][1]}: {m['bound_error'] * 100:.2f}% of range missed",
                     f"{m['tried']} ports connected, {m['pipelined']} pipelined"))
        # n uniform draws leave gaps at the two ends of 2/(n+1) of the range on average.
        rows.append(("- expected for uniform draws: 2/(n+1)", f"{200 / (m['samples'] + 1):.2f}% of range", ""))
    if "probe" in r:
        p = r["probe"]
        rows.append(("probe (full catalog, --timeout 5)", f"{p['wall']:.2f} s ({p['cpu']:.2f} s CPU); slowest "
                     f"in the run: {p['slowest']} {p['slowest_s']:.2f} s", f"{p['wall'] / p['slowest_s']:.2f}x slowest"))
        rows.append(("- the slowest probe run alone", f"{p['slowest_alone']} {p['slowest_alone_s']:.2f} s",
                     f"{p['wall'] / p['slowest_alone_s']:.2f}x"))
    if "fleet" in r:
        fl, one = r["fleet"], r["fleet1"]
        n = fl["sites"]
        rows.append((f"check, {n} sites", f"{fl['wall']:.2f} s ({fl['down']} down); "
                     f"{fl['cpu_per_site_ms']:.2f} ms CPU/site", f"{fl['rss_per_site_kb']:.0f} KB/site"))
        rows.append(("- ftpprobe's CPU: user + system", f"{fl['user_per_site_ms']:.2f} + {fl['sys_per_site_ms']:.2f} "
                     f"ms/site", f"{fl['cpu_per_site_ms'] * n / 1000:.2f} s for {n} sites"))
        rows.append(("- server and proxy CPU (same cores)", f"server {fl['server_cpu'] * 1000 / n:.2f}, proxy "
                     f"{fl['proxy_cpu'] * 1000 / n:.2f} ms/site", f"server alone {fl['server_cpu']:.2f} s (one thread)"))
        rows.append(("check, 1 site", f"{one['wall']:.2f} s, {one['cpu_per_site_ms']:.1f} ms CPU",
                     f"{fl['wall'] / one['wall']:.1f}x for {n}x the sites"))
    # Fits an 80-column terminal: 24 + 28 + 18 and the grid's 10 columns of
    # rules; a row starting with '- ' belongs to the one above.
    print(tabulate(rows, headers=("case", "result", "compared"), tablefmt="grid", maxcolwidths=[24, 28, 18]))
    if "fleet" in r and r["fleet"]["down"]:
        print(f"first fleet error: {r['fleet']['first_error']}")
    if "probe" in r and r["probe"]["error"]:
        print(f"probe error: {r['probe']['error']}")


if __name__ == "__main__":
    main()
