#!/usr/bin/env python3
"""What the packet-level engine costs per request: BPF time against the machine's busy CPU, and throughput, paired.

Run as root from the repository, alone on the machine (`flock -x /tmp/tcptop-machine.lock ...`):

    .venv/bin/python benchmarks/latency_overhead.py [--workload redis|iperf3] [--pairs 5]
        [--modes engine:budget,engine:full,tcptop:budget] [--requests 200000] [--seconds 3]

A mode is `engine:<name>` (the packet-level engine alone, in this process; names in ENGINE_MODES)
or `tcptop:<latency option>` (`tcptop --json` in a child process, flow engine included: what a
user runs).

1. Busy CPU per request (or per MB for iperf3): /proc/stat (user+nice+system+irq+softirq; idle,
   iowait and steal left out) over runs with nothing attached, the median.
2. Throughput: rounds of one run without anything and one per mode, in an order that rotates
   every round so drift favours no side; per mode the median of the paired ratios, and the
   ratios themselves (the noise).
3. BPF cost: one more run per mode with kernel.bpf_stats_enabled=1 (restored afterwards; the
   stats add a few tens of ns to each run, so this figure is conservative): run_cnt and
   run_time_ns of our own programs only (the ids this process, or the tcptop child, holds),
   per request, per program, and as a share of the busy CPU per request from 1.

--poll-flows N instead: N loopback connections kept busy (a byte each way, round robin),
the CoreEngine polled every second in each latency mode: how long poll() takes (the
snapshot's work), and how long the window thread takes to summarise a window (off the poll).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tcptop.engines.core.latency import LatencyEngine  # noqa: E402
from bpfstats import bpf_stats  # noqa: E402
from cputime import proc_cpu_s  # noqa: E402

# The packet-level engine's configurations, as LatencyEngine keyword arguments.
ENGINE_MODES: dict[str, dict] = {
    "budget": {"mode": "budget"},                       # the default: windows within 0.5 % of busy CPU
    "full": {"mode": "continuous"},                     # every packet, every stage, all the time
    "light": {"mode": "continuous", "skb_stages": False},  # every packet, per-socket stages only
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def busy_ns() -> int:
    """Busy CPU of the whole machine so far, ns (first line of /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = v[:7]
    return (user + nice + system + irq + softirq) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


class Workload:
    """One run of the workload: returns (rate, units done); rate in units per second."""

    unit = "req"

    def run(self) -> tuple[float, int]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class Redis(Workload):
    unit = "req"

    def __init__(self, requests: int):
        self.requests = requests
        self.port = free_port()
        self.tmp = tempfile.mkdtemp(prefix="tcptop-lat-bench-")
        self.srv = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                     "--appendonly", "no", "--dir", self.tmp],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)

    def run(self) -> tuple[float, int]:
        out = subprocess.run(["redis-benchmark", "-p", str(self.port), "-n", str(self.requests), "-c", "20",
                              "-t", "get", "-q", "--csv"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            parts = [x.strip('"') for x in line.split(",")]
            if len(parts) > 1 and parts[0] == "GET":
                return float(parts[1]), self.requests
        raise RuntimeError(f"redis-benchmark said: {out!r}")

    def close(self) -> None:
        self.srv.terminate()
        self.srv.wait(10)
        subprocess.run(["rm", "-rf", self.tmp])


class Iperf3(Workload):
    unit = "MB"

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.port = free_port()
        self.srv = subprocess.Popen(["iperf3", "-s", "-p", str(self.port)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        time.sleep(0.3)

    def run(self) -> tuple[float, int]:
        out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(self.port), "-t", str(self.seconds), "-J"],
                             capture_output=True, text=True, check=True).stdout
        end = json.loads(out)["end"]["sum_received"]
        mb = end["bytes"] / 1e6
        return mb / end["seconds"], int(mb)

    def close(self) -> None:
        self.srv.terminate()
        self.srv.wait(10)


@contextlib.contextmanager
def attached(mode: str) -> Iterator[Callable[[], list[int]]]:
    """Start a mode; yields a function that lists the program ids it holds."""
    kind, _, name = mode.partition(":")
    if kind == "engine":
        # Polled every second, as a front end would: windows open only while someone looks.
        eng = LatencyEngine(**ENGINE_MODES[name])
        stop = threading.Event()
        poller = threading.Thread(target=lambda: [eng.poll() for _ in iter(lambda: stop.wait(1.0), True)])
        poller.start()
        try:
            yield eng.program_ids
        finally:
            stop.set()
            poller.join()
            eng.close()
        return
    p = subprocess.Popen([sys.executable, "-m", "tcptop", "--json", "--interval", "1", "--latency", name],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        p.stdout.readline()  # attached once the first snapshot is out
        drain = subprocess.Popen(["cat"], stdin=p.stdout, stdout=subprocess.DEVNULL)
        ids = lambda: fdinfo_prog_ids(p.pid)  # noqa: E731
        ids.pid = p.pid  # type: ignore[attr-defined]
        yield ids
    finally:
        p.send_signal(2)
        p.wait(10)
        drain.wait(5)


def fdinfo_prog_ids(pid: int) -> list[int]:
    """Ids of the BPF programs a process holds (its fds' "prog_id:" lines)."""
    ids = set()
    base = f"/proc/{pid}/fdinfo"
    for fd in os.listdir(base):
        try:
            with open(f"{base}/{fd}") as f:
                m = re.search(r"^prog_id:\s+(\d+)", f.read(), re.M)
        except OSError:
            continue
        if m:
            ids.add(int(m.group(1)))
    return sorted(ids)


def prog_stats(ids: list[int]) -> dict[int, tuple[str, int, int]]:
    """id -> (name, run_time_ns, run_cnt)."""
    out = {}
    for pid in ids:
        r = subprocess.run(["bpftool", "prog", "show", "id", str(pid), "-j"], capture_output=True, text=True)
        if r.returncode:
            continue
        info = json.loads(r.stdout)
        out[pid] = (info["name"], info.get("run_time_ns", 0), info.get("run_cnt", 0))
    return out



def bpf_cost(wl: Workload, mode: str) -> tuple[dict[str, tuple[float, float]], float]:
    """One run with bpf stats on: {program: (runs per unit, ns per unit)}, and units done.
    For a tcptop child, also its own CPU per unit (under the key "(tcptop process)")."""
    with attached(mode) as ids, bpf_stats():
        time.sleep(3.0)  # a windowed engine settles its duty cycle (windows at most double per cycle)
        # Programs may come and go (windows): read ids at the end too, and diff per id.
        before = prog_stats(ids())
        pid = getattr(ids, "pid", None)
        cpu0 = int(proc_cpu_s(pid) * 1e9) if pid else 0
        _, units = wl.run()
        cpu1 = int(proc_cpu_s(pid) * 1e9) if pid else 0
        after = prog_stats(sorted(set(ids()) | set(before)))
    per: dict[str, list[float]] = {}
    for pid, (name, ns, cnt) in after.items():
        _, ns0, cnt0 = before.get(pid, (name, 0, 0))
        acc = per.setdefault(name, [0.0, 0.0])
        acc[0] += (cnt - cnt0) / units
        acc[1] += (ns - ns0) / units
    out = {n: (c, ns) for n, (c, ns) in per.items()}
    if pid:
        out["(tcptop process)"] = (0.0, (cpu1 - cpu0) / units)
    return out, units


BUSY_FLOWS = """
import resource, socket, sys
n = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_NOFILE, (2 * n + 1000, 2 * n + 1000))
lsn = socket.socket()
lsn.bind(("127.0.0.1", 0))
lsn.listen(4096)
pairs = []
for _ in range(n):
    c = socket.create_connection(lsn.getsockname())
    s, _ = lsn.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pairs.append((c, s))
print("connected", flush=True)
while True:
    for c, s in pairs:
        c.send(b"q")
        s.recv(16)
"""


def poll_times(n_pairs: int, seconds: float) -> None:
    """poll() of the whole CoreEngine, and the latency engine's window summaries, with n busy flows."""
    from tcptop.engines import EngineOptions
    from tcptop.engines.core import latency as latmod
    from tcptop.engines.core.engine import CoreEngine

    # The traffic comes from another process: in this one it would compete with poll() for the GIL.
    child = subprocess.Popen([sys.executable, "-c", BUSY_FLOWS, str(n_pairs)], stdout=subprocess.PIPE, text=True)
    child.stdout.readline()  # connected
    takes: list[float] = []
    real_take = latmod.LatencyEngine._take_window

    def timed_take(self, open_s):
        t = time.perf_counter()
        real_take(self, open_s)
        takes.append(time.perf_counter() - t)

    latmod.LatencyEngine._take_window = timed_take
    try:
        for mode in ("budget", "full", "off"):
            takes.clear()
            eng = CoreEngine(EngineOptions(interval_s=1.0, latency=mode))
            try:
                polls, lat_polls, with_lat = [], [], 0
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    time.sleep(1.0)
                    t0 = time.perf_counter()
                    snap = eng.poll()
                    polls.append(time.perf_counter() - t0)
                    with_lat = sum(1 for f in snap.flows if f.latency)
                    if eng.latency is not None:
                        t1 = time.perf_counter()
                        eng.latency.poll()
                        lat_polls.append(time.perf_counter() - t1)
            finally:
                eng.close()
            ms = lambda xs: f"median {1000 * statistics.median(xs):.1f} ms, max {1000 * max(xs):.1f} ms" if xs else "-"
            print(f"--latency {mode}: {n_pairs} busy connections, {len(polls)} polls; CoreEngine.poll() {ms(polls)}; "
                  f"latency engine's poll() alone {ms(lat_polls)}; window summaries (window thread / continuous "
                  f"poll) {ms(takes)}; flows with latency figures {with_lat}", flush=True)
    finally:
        latmod.LatencyEngine._take_window = real_take
        child.terminate()
        child.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=("redis", "iperf3"), default="redis")
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--modes", default="engine:budget,engine:full,engine:light")
    ap.add_argument("--requests", type=int, default=200_000, help="redis-benchmark GET requests per run")
    ap.add_argument("--seconds", type=float, default=3.0, help="iperf3 run length")
    ap.add_argument("--no-stats", action="store_true", help="skip the bpf_stats runs")
    ap.add_argument("--no-throughput", action="store_true", help="skip the paired throughput runs")
    ap.add_argument("--poll-flows", type=int, metavar="N", help="measure poll times with N busy connections instead")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("latency_overhead: run as root (it loads BPF programs)")
    if a.poll_flows:
        poll_times(a.poll_flows // 2 if a.poll_flows > 1 else 1, 10.0)
        return 0
    modes = [m for m in a.modes.split(",") if m]
    for m in modes:
        kind, _, name = m.partition(":")
        if not (kind == "engine" and name in ENGINE_MODES or kind == "tcptop"):
            ap.error(f"unknown mode {m!r}: engine:{{{','.join(ENGINE_MODES)}}} or tcptop:<--latency value>")
    wl: Workload = Redis(a.requests) if a.workload == "redis" else Iperf3(a.seconds)
    try:
        wl.run()  # warm-up
        busy = []
        for _ in range(3):
            b0 = busy_ns()
            _, units = wl.run()
            busy.append((busy_ns() - b0) / units)
        busy_per_unit = statistics.median(busy)
        print(f"{a.workload}: busy CPU per {wl.unit} without anything attached: median "
              f"{busy_per_unit:,.0f} ns (runs {' '.join(f'{b:,.0f}' for b in busy)})", flush=True)

        if not a.no_throughput:
            sides: list[str | None] = [None, *modes]
            got: dict[str | None, list[float]] = {s: [] for s in sides}
            for r in range(a.pairs):
                k = r % len(sides)
                for side in sides[k:] + sides[:k]:
                    if side is None:
                        got[side].append(wl.run()[0])
                    else:
                        with attached(side):
                            time.sleep(0.5)
                            got[side].append(wl.run()[0])
                print(f"round {r + 1}: " + ", ".join(f"{s or 'without'} {got[s][-1]:,.0f}" for s in sides),
                      flush=True)
            print(f"\nthroughput ({wl.unit}/s), {a.pairs} rounds; median without: {statistics.median(got[None]):,.0f}")
            for m in modes:
                ratios = [w / b for w, b in zip(got[m], got[None])]
                print(f"  {m:16s} median {statistics.median(got[m]):>10,.0f}  median paired ratio "
                      f"{statistics.median(ratios):.3f}  (ratios {' '.join(f'{x:.3f}' for x in ratios)})")

        if not a.no_stats:
            for m in modes:
                per, _ = bpf_cost(wl, m)
                proc = per.pop("(tcptop process)", None)
                tot_runs = sum(c for c, _ in per.values())
                tot_ns = sum(ns for _, ns in per.values())
                stage_ns = sum(ns for n, (_, ns) in per.items() if n.startswith("on_"))
                print(f"\n[{m}] BPF per {wl.unit} (bpf_stats on): {tot_runs:.2f} runs, {tot_ns:,.0f} ns = "
                      f"{100 * tot_ns / busy_per_unit:.2f} % of busy CPU per {wl.unit}; the packet stages' "
                      f"programs {stage_ns:,.1f} ns = {100 * stage_ns / busy_per_unit:.2f} %")
                if proc:
                    print(f"  tcptop process: {proc[1]:,.0f} ns of CPU per {wl.unit} = "
                          f"{100 * proc[1] / busy_per_unit:.2f} % of busy CPU per {wl.unit}")
                for name, (c, ns) in sorted(per.items(), key=lambda kv: -kv[1][1]):
                    if c:
                        print(f"  {name:24s} {c:7.3f} runs  {ns:8.1f} ns  ({ns / c:6.1f} ns/run)")
    finally:
        wl.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
