#!/usr/bin/env python3
"""What the exporter costs per scrape and per poll at 10,000 connections (root, loopback only).

- live: `tcptop --serve` as its own process, 10,000 open loopback connections held by this
  script; its CPU (utime+stime from /proc) over windows without scrapes and with one
  scrape per poll (every scrape then renders a new poll), alternating; CPU per scrape is
  the difference divided by the scrapes. Scrapes send Prometheus's own Accept and
  Accept-Encoding headers (OpenMetrics, gzip), so they cost what a real scrape costs.
  Two label sets: the default (these connections make 2 groups) and `--serve-remote addr`
  with each client on its own source address (thousands of groups, held at the default
  cap of 10,000 series: the largest exposition the exporter writes by default).
- offline: the aggregation of one poll and the rendering of one exposition at 10,000
  synthetic flows, no kernel (median of repeated runs).

Usage: benchmarks/exporter.py [--pairs N] [--seconds S] [--quick]. Prints Markdown tables.
Run under `flock -x /tmp/tcptop-machine.lock`; these machines are noisy: read medians.
"""

from __future__ import annotations

import argparse
import gzip
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cputime import proc_cpu_s  # noqa: E402

TCPTOP = [sys.executable, "-m", "tcptop"]
# What Prometheus 2.42 sends with every scrape.
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def service_listener() -> socket.socket:
    """A listener on a free port below the ephemeral range, so the exporter's role guess for
    connections older than it (client: the ephemeral end) is right for every connection."""
    for port in range(7700, 8700):
        lsn = socket.socket()
        try:
            lsn.bind(("127.0.0.1", port))
            return lsn
        except OSError:
            lsn.close()
    raise SystemExit("exporter.py: no free port in 7700-8699")


def connections(n_pairs: int, distinct_sources: bool) -> tuple[list[socket.socket], int]:
    """n_pairs loopback connections to one listener; clients from 127.1.x.y when distinct_sources."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (n_pairs * 2 + 1000, n_pairs * 2 + 1000))
    lsn = service_listener()
    lsn.listen(4096)
    socks = []
    for i in range(n_pairs):
        c = socket.socket()
        if distinct_sources:
            c.bind((f"127.1.{i // 250}.{i % 250 + 1}", 0))
        c.connect(lsn.getsockname())
        s, _ = lsn.accept()
        socks += [c, s]
    port = lsn.getsockname()[1]
    lsn.close()
    return socks, port


class Served:
    def __init__(self, *args: str):
        self.proc = subprocess.Popen(TCPTOP + ["--serve", "127.0.0.1:0", "--interval", "1", *args], cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        if "serving" not in line:
            raise SystemExit(f"exporter.py: tcptop did not start: {line}{self.proc.stderr.read()}")
        self.url = line.split("serving ", 1)[1].split(" ", 1)[0]

    def scrape(self) -> tuple[float, int, int]:
        """(seconds, bytes on the wire, bytes of text) of one scrape as Prometheus makes it."""
        req = urllib.request.Request(self.url, headers={"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"})
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
            zipped = r.headers.get("Content-Encoding") == "gzip"
        dt = time.perf_counter() - t0
        return dt, len(body), len(gzip.decompress(body) if zipped else body)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


def window(served: Served, seconds: float, scrape: bool) -> tuple[float, list[float]]:
    """CPU seconds the exporter used over `seconds`, scraping once per poll or not at all."""
    lat = []
    c0 = proc_cpu_s(served.proc.pid)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if scrape:
            lat.append(served.scrape()[0])
        time.sleep(1.0)  # one scrape per 1 s poll: every scrape renders a new poll
    return proc_cpu_s(served.proc.pid) - c0, lat


def live(label: str, args: tuple[str, ...], n_pairs: int, distinct: bool, pairs: int, seconds: float) -> dict:
    socks, port = connections(n_pairs, distinct)
    served = Served(*args, "--filter", f"port {port}")  # this script's connections, not the rest of the host
    try:
        time.sleep(4)  # first polls, owner scans, groups settle
        _, wire, text = served.scrape()
        series = sum(1 for line in served_text(served).splitlines() if line and not line.startswith("#"))
        idle, busy, lat = [], [], []
        for _ in range(pairs):
            cpu, _ = window(served, seconds, scrape=False)
            idle.append(cpu / seconds)
            cpu, ls = window(served, seconds, scrape=True)
            busy.append((cpu, len(ls)))
            lat += ls
        cached = cached_scrape_s(served)
        rss = rss_mib(served.proc.pid)
    finally:
        served.stop()
        for s in socks:
            s.close()
    idle_per_s = statistics.median(idle)
    per_scrape = [(cpu - idle_per_s * seconds) / n for cpu, n in busy if n]
    return {"label": label, "series": series, "wire": wire, "text": text, "idle_cpu": idle,
            "per_scrape_ms": [1000 * v for v in per_scrape], "latency_ms": [1000 * v for v in lat],
            "cached_ms": 1000 * cached, "rss": rss}


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")) / 1024


def served_text(served: Served) -> str:
    with urllib.request.urlopen(served.url, timeout=30) as r:
        return r.read().decode()


def cached_scrape_s(served: Served) -> float:
    """Median time of 20 scrapes in a row, most of them served from the current poll's bytes."""
    return statistics.median(served.scrape()[0] for _ in range(20))


def offline(n: int, repeat: int) -> dict:
    """Aggregation and rendering at n synthetic flows, no kernel."""
    from dataclasses import replace

    from factories import make_flow, make_snapshot
    from prometheus_client.openmetrics.exposition import generate_latest as om_latest

    from tcptop.frontends.exporter.aggregate import Aggregator
    from tcptop.frontends.exporter.metrics import FrameCollector

    flows = [make_flow(i, role="client" if i % 2 else "server", lport=40000 + i % 20000,
                       raddr=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", rport=443,
                       bytes_sent=i, rtt_hist=((64, i % 7 + 1),)) for i in range(n)]
    out = {}
    for mode in ("auto", "addr"):
        agg = Aggregator(remote_mode=mode)
        agg.update(make_snapshot(flows, seq=1))
        same, changed, render = [], [], []
        for k in range(repeat):
            moved = [replace(f, bytes_sent=f.bytes_sent + k + 1) for f in flows]
            t0 = time.perf_counter()
            agg.update(make_snapshot(moved, seq=2 + 2 * k))
            changed.append(time.perf_counter() - t0)
            t0 = time.perf_counter()  # the same objects again: what an idle poll looks like
            frame = agg.update(make_snapshot(moved, seq=3 + 2 * k))
            same.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            gzip.compress(om_latest(FrameCollector(lambda: frame)), compresslevel=6)
            render.append(time.perf_counter() - t0)
        out[mode] = {"same_ms": 1000 * statistics.median(same), "changed_ms": 1000 * statistics.median(changed),
                     "render_ms": 1000 * statistics.median(render), "series": frame.series}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3, help="without/with-scrape window pairs per case")
    ap.add_argument("--seconds", type=float, default=10, help="length of each window")
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--quick", action="store_true", help="small sizes, to check the script works")
    a = ap.parse_args()
    if a.quick:
        a.pairs, a.seconds, a.connections = 1, 3, 400
    if os.geteuid() != 0:
        sys.exit("exporter.py: run as root (tcptop loads BPF programs)")
    n_pairs = a.connections // 2

    off = offline(a.connections, 3 if a.quick else 7)
    print(f"Offline, {a.connections:,} synthetic flows (median of runs):\n")
    print("| labels | series | aggregate a poll, no flow changed | every flow changed | render (OpenMetrics + gzip) |")
    print("|---|---:|---:|---:|---:|")
    for mode, r in off.items():
        print(f"| --serve-remote {mode} | {r['series']:,} | {r['same_ms']:.1f} ms | {r['changed_ms']:.1f} ms | "
              f"{r['render_ms']:.1f} ms |")

    rows = [live("default labels", (), n_pairs, False, a.pairs, a.seconds),
            live("--serve-remote addr, a source address per client", ("--serve-remote", "addr"),
                 n_pairs, True, a.pairs, a.seconds)]
    print(f"\nLive, {a.connections:,} open loopback connections, 1 s polls, {a.pairs} window pairs of "
          f"{a.seconds:g} s (without / with one scrape per poll):\n")
    print("| labels | series | scrape size (gzip / text) | exporter CPU without scrapes | CPU per scrape | "
          "scrape time | scrape served from the poll's bytes | RSS |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['label']} | {r['series']:,} | {r['wire'] / 1024:,.0f} / {r['text'] / 1024:,.0f} KiB | "
              f"{100 * statistics.median(r['idle_cpu']):.1f} % of a core "
              f"({' '.join(f'{100 * v:.1f}' for v in r['idle_cpu'])}) | "
              f"{statistics.median(r['per_scrape_ms']):.1f} ms ({' '.join(f'{v:.1f}' for v in r['per_scrape_ms'])}) | "
              f"{statistics.median(r['latency_ms']):.1f} ms | {r['cached_ms']:.1f} ms | {r['rss']:.0f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
