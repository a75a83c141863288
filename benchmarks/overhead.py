#!/usr/bin/env python3
"""What tcptop costs the machine it watches, measured paired in one run (root, loopback only).

- iperf3 loopback throughput and redis-benchmark requests/s, alternating runs
  without and with `tcptop --json` attached; medians and the on/off ratio.
- mean ns per BPF program run (kernel.bpf_stats_enabled) for tcptop's own programs.
- tcptop's CPU % and RSS with 10,000 open connections at a 1 s interval.
- time from start to the first snapshot.

Usage: benchmarks/overhead.py [--pairs N] [--seconds S] [--quick] [--engine core|bcc].
Prints a Markdown table.
These machines are noisy: read medians and ratios, not single runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
TCPTOP = [sys.executable, "-m", "tcptop"]
LATENCY = "full"  # --latency mode passed to tcptop (set from the command line)
ENGINE = "core"   # --engine passed to tcptop (set from the command line)


def our_names() -> set[str]:
    """Names of tcptop's programs (as the kernel truncates them), from the built objects."""
    from tcptop.engines.core.libbpf import BpfObject
    names = set()
    for obj in ("flows.bpf.o", "latency.bpf.o", "failures.bpf.o"):
        o = BpfObject(os.path.join(ROOT, "build", obj))
        # the kernel keeps 15 characters of a name; bpftool shows the full one from BTF
        names |= {n[:15] for n in o.programs} | set(o.programs)
        o.close()
    return names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def tcptop_attached(*extra: str):
    """Run `tcptop --json` (output discarded) until the block ends; yields the process."""
    p = subprocess.Popen(TCPTOP + ["--json", "--interval", "1", "--latency", LATENCY, "--engine", ENGINE, *extra],
                         cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stdout.readline()  # attached once the first snapshot is out
    drain = subprocess.Popen(["cat"], stdin=p.stdout, stdout=subprocess.DEVNULL)
    try:
        yield p
    finally:
        p.send_signal(2)
        p.wait(10)
        drain.wait(5)


@contextmanager
def bpf_stats():
    with open("/proc/sys/kernel/bpf_stats_enabled") as f:
        old = f.read().strip()
    with open("/proc/sys/kernel/bpf_stats_enabled", "w") as f:
        f.write("1")
    try:
        yield
    finally:
        with open("/proc/sys/kernel/bpf_stats_enabled", "w") as f:
            f.write(old)


def our_prog_stats(ids: set[int] | None = None) -> dict[str, tuple[int, int]]:
    """(run_time_ns, run_cnt) of tcptop's programs: by name, or, given the ids a tcptop process
    holds (BCC names programs by a truncated function name, so names repeat), by name and id."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True).stdout
    res = {}
    ours = OUR_NAMES
    for p in json.loads(out or "[]"):
        if ids is not None and p["id"] in ids:
            res[f"{p.get('name', '')} (id {p['id']})"] = (p.get("run_time_ns", 0), p.get("run_cnt", 0))
        elif ids is None and p.get("name", "") in ours:
            res[p["name"]] = (p.get("run_time_ns", 0), p.get("run_cnt", 0))
    return res


def held_prog_ids(pid: int) -> set[int]:
    """Ids of the BPF programs a process holds, from /proc/PID/fdinfo."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                ids |= {int(line.split()[1]) for line in f if line.startswith("prog_id:")}
        except OSError:
            pass
    return ids


def iperf3_gbps(port: int, seconds: float) -> float:
    r = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J"],
                       capture_output=True, text=True, timeout=seconds + 30)
    return json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9


def redis_rps(port: int, requests: int) -> float:
    r = subprocess.run(["redis-benchmark", "-p", str(port), "-n", str(requests), "-c", "50", "-t", "set,get",
                        "-q", "--csv"], capture_output=True, text=True, timeout=300)
    rates = []
    for line in r.stdout.splitlines():
        parts = [x.strip('"') for x in line.split(",")]
        if len(parts) > 1 and parts[0] in ("SET", "GET"):
            rates.append(float(parts[1]))
    return statistics.mean(rates)


def paired(measure, pairs: int) -> tuple[list[float], list[float]]:
    """Alternate off/on runs so drift hits both sides alike (BPF run-time stats stay off:
    they add two clock reads to every program run and would inflate the 'on' side)."""
    off, on = [], []
    for i in range(pairs):
        for attached in ((False, True) if i % 2 == 0 else (True, False)):
            if attached:
                with tcptop_attached():
                    on.append(measure())
            else:
                off.append(measure())
    return off, on


def program_costs(measure) -> dict[str, tuple[int, int]]:
    """One extra attached run with kernel.bpf_stats_enabled: (run_time_ns, run_cnt) per program."""
    with tcptop_attached() as p, bpf_stats():
        ids = held_prog_ids(p.pid) if ENGINE == "bcc" else None
        before = our_prog_stats(ids)
        measure()
        after = our_prog_stats(ids)
    return {n: (ns - before.get(n, (0, 0))[0], cnt - before.get(n, (0, 0))[1]) for n, (ns, cnt) in after.items()}


def proc_cpu_rss(pid: int) -> tuple[float, int]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    return ticks / os.sysconf("SC_CLK_TCK"), rss


def many_connections(n_pairs: int):
    resource.setrlimit(resource.RLIMIT_NOFILE, (n_pairs * 2 + 1000, n_pairs * 2 + 1000))
    lsn = socket.socket()
    lsn.bind(("127.0.0.1", 0))
    lsn.listen(4096)
    socks = []
    for _ in range(n_pairs):
        c = socket.create_connection(lsn.getsockname())
        s, _ = lsn.accept()
        socks += [c, s]
    lsn.close()
    return socks


def cpu_with_connections(n_pairs: int, seconds: float, extra: tuple[str, ...]) -> tuple[float, int]:
    with tcptop_attached(*extra) as p:
        time.sleep(2)  # let the owner scan and first polls settle
        cpu0, _ = proc_cpu_rss(p.pid)
        time.sleep(seconds)
        cpu1, rss = proc_cpu_rss(p.pid)
    return 100 * (cpu1 - cpu0) / seconds, rss


def first_snapshot_s(runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.monotonic()
        subprocess.run(TCPTOP + ["--json", "--count", "1", "--engine", ENGINE], cwd=ROOT, capture_output=True,
                       check=True)
        out.append(time.monotonic() - t0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=5, help="off/on pairs per workload")
    ap.add_argument("--seconds", type=float, default=4, help="iperf3 run length")
    ap.add_argument("--requests", type=int, default=100000, help="redis-benchmark requests per run")
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--quick", action="store_true", help="small sizes, to check the script works")
    ap.add_argument("--latency", choices=("full", "light", "off"), default="full",
                    help="tcptop's packet-level engine mode during the 'with' runs")
    ap.add_argument("--engine", choices=("core", "bcc"), default="core", help="tcptop's engine during the 'with' runs")
    a = ap.parse_args()
    global LATENCY, OUR_NAMES, ENGINE
    LATENCY, ENGINE = a.latency, a.engine
    OUR_NAMES = our_names()
    if a.quick:
        a.pairs, a.seconds, a.requests, a.connections = 1, 1, 5000, 200
    if os.geteuid() != 0:
        sys.exit("overhead.py: run as root (it loads tcptop's BPF programs)")
    for tool in ("iperf3", "redis-server", "redis-benchmark", "bpftool"):
        if not shutil.which(tool):
            sys.exit(f"overhead.py: {tool} missing; run `make setup`")

    rows = []
    iport, rport = free_port(), free_port()
    tmp = tempfile.mkdtemp(prefix="tcptop-bench-")
    iperf = subprocess.Popen(["iperf3", "-s", "-p", str(iport)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        off, on = paired(lambda: iperf3_gbps(iport, a.seconds), a.pairs)
        rows.append(("iperf3 loopback Gbit/s", off, on))
        off, on = paired(lambda: redis_rps(rport, a.requests), a.pairs)
        rows.append(("redis-benchmark SET/GET req/s", off, on))
        prog1 = program_costs(lambda: iperf3_gbps(iport, a.seconds))
        prog2 = program_costs(lambda: redis_rps(rport, a.requests))
    finally:
        iperf.terminate()
        redis.terminate()
        iperf.wait()
        redis.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"tcptop --engine {ENGINE} --latency {LATENCY}, {a.pairs} off/on pairs\n")
    print("| workload | without tcptop (median) | with tcptop (median) | ratio | runs without | runs with |")
    print("|---|---:|---:|---:|---|---|")
    for name, off, on in rows:
        off_m, on_m = statistics.median(off), statistics.median(on)
        fmt = (lambda v: f"{v:.1f}") if off_m < 1000 else (lambda v: f"{v / 1000:.0f}k")
        print(f"| {name} | {off_m:,.2f} | {on_m:,.2f} | {on_m / off_m:.3f} | "
              f"{' '.join(fmt(v) for v in off)} | {' '.join(fmt(v) for v in on)} |")

    print("\n| BPF program | runs | mean ns/run |")
    print("|---|---:|---:|")
    total_ns = total_cnt = 0
    for name in sorted(set(prog1) | set(prog2)):
        ns = prog1.get(name, (0, 0))[0] + prog2.get(name, (0, 0))[0]
        cnt = prog1.get(name, (0, 0))[1] + prog2.get(name, (0, 0))[1]
        total_ns += ns
        total_cnt += cnt
        print(f"| {name} | {cnt:,} | {ns / cnt if cnt else 0:,.0f} |")
    print(f"| all event programs | {total_cnt:,} | {total_ns / total_cnt if total_cnt else 0:,.0f} |")

    socks = many_connections(a.connections // 2)
    try:
        cpu_all, rss_all = cpu_with_connections(a.connections // 2, 10 if not a.quick else 2, ())
        cpu_eng, rss_eng = cpu_with_connections(a.connections // 2, 10 if not a.quick else 2, ("--port", "1"))
    finally:
        for s in socks:
            s.close()
    print(f"\n| tcptop --json, {a.connections:,} connections, 1 s interval | CPU % of one core | RSS MiB |")
    print("|---|---:|---:|")
    print(f"| engine + JSON of every flow | {cpu_all:.1f} | {rss_all / 2**20:.0f} |")
    print(f"| engine only (filter matches nothing) | {cpu_eng:.1f} | {rss_eng / 2**20:.0f} |")

    firsts = first_snapshot_s(3 if not a.quick else 1)
    print(f"\nfirst snapshot after start (process start to output, median of {len(firsts)}): "
          f"{statistics.median(firsts):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
