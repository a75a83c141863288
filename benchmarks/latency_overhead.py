"""What the packet-level engine costs: BPF ns per event and loopback throughput or request rate, paired.

Run as root from the repository:
    .venv/bin/python benchmarks/latency_overhead.py [--workload iperf3|redis] [--rounds 5] [--seconds 2]
        [--modes full,light,every]

1. Throughput: iperf3 over loopback (or redis-benchmark -c 50 SET/GET
   requests/s, the small-request case where per-packet cost shows most), in
   rounds of one run without the engine and one per mode, the order rotating
   each round so drift in the machine's load favours no side. The cost is the
   median over rounds of the paired ratio. bpf stats are off here (the
   kernel's timing of each program run would add to the cost). Modes: full
   (every stage, per-skb stages sampled 1/8, the default), light
   (skb_stages=False), every (every stage, every packet: sample=1).
2. Cost per event: kernel.bpf_stats_enabled=1 during one more iperf3 run per
   mode, then run_time_ns / run_cnt of *our* programs only (the ids of the
   programs this process loaded), per program and overall. The sysctl is
   restored afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from tcptop.engines.core.latency import LatencyEngine  # noqa: E402

STATS_SYSCTL = "/proc/sys/kernel/bpf_stats_enabled"
MODES = {"full": {}, "light": {"skb_stages": False}, "every": {"sample": 1}}
WORKLOAD = "iperf3"
REDIS_PORT = 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def iperf3(seconds: float) -> float:
    """One loopback run; received bits per second."""
    port = free_port()
    srv = subprocess.Popen(["iperf3", "-s", "-1", "-p", str(port)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J"],
                             capture_output=True, text=True, check=True).stdout
        return json.loads(out)["end"]["sum_received"]["bits_per_second"]
    finally:
        srv.wait(timeout=10)


def redis_rps(requests: int) -> float:
    """One redis-benchmark run against the server started in main(); SET and GET requests/s, averaged."""
    out = subprocess.run(["redis-benchmark", "-p", str(REDIS_PORT), "-n", str(requests), "-c", "50",
                          "-t", "set,get", "-q", "--csv"], capture_output=True, text=True, check=True).stdout
    rates = [float(line.split(",")[1].strip('"')) for line in out.splitlines()[1:] if line.count(",") >= 1]
    return statistics.mean(rates)


def workload(seconds: float) -> float:
    if WORKLOAD == "redis":
        return redis_rps(int(seconds * 50000))
    return iperf3(seconds)


def run(mode: str | None, seconds: float) -> float:
    if mode is None:
        return workload(seconds)
    eng = LatencyEngine(**MODES[mode])
    try:
        return workload(seconds)
    finally:
        eng.close()


def prog_stats(ids: list[int]) -> dict[str, tuple[int, int]]:
    """name -> (run_time_ns, run_cnt) for the given program ids, from bpftool."""
    out = {}
    for pid in ids:
        info = json.loads(subprocess.run(["bpftool", "prog", "show", "id", str(pid), "-j"],
                                         capture_output=True, text=True, check=True).stdout)
        out[info["name"]] = (info.get("run_time_ns", 0), info.get("run_cnt", 0))
    return out


def per_event(mode: str, seconds: float) -> None:
    with open(STATS_SYSCTL) as f:
        old = f.read().strip()
    eng = LatencyEngine(**MODES[mode])
    try:
        with open(STATS_SYSCTL, "w") as f:
            f.write("1")
        before = prog_stats(eng.program_ids())
        rate = workload(seconds)
        host, _ = eng.poll()
        after = prog_stats(eng.program_ids())
    finally:
        with open(STATS_SYSCTL, "w") as f:
            f.write(old)
        eng.close()
    print(f"\n[{mode}] per program during one {WORKLOAD} run with bpf stats on ({fmt(rate)}):")
    tot_ns = tot_cnt = 0
    for name in sorted(after):
        ns = after[name][0] - before.get(name, (0, 0))[0]
        cnt = after[name][1] - before.get(name, (0, 0))[1]
        tot_ns += ns
        tot_cnt += cnt
        if cnt:
            print(f"  {name:24s} {cnt:>10d} runs  {ns / cnt:7.1f} ns/run")
    if tot_cnt:
        print(f"  {'all':24s} {tot_cnt:>10d} runs  {tot_ns / tot_cnt:7.1f} ns/run (mean per event)")
    print(f"  matching: {json.dumps(host['matching'])}")


def fmt(v: float) -> str:
    return f"{v:.0f} req/s" if WORKLOAD == "redis" else f"{v / 1e9:.2f} Gbit/s"


def main() -> int:
    global WORKLOAD, REDIS_PORT
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=("iperf3", "redis"), default="iperf3")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0, help="run length (redis: 50,000 requests a second)")
    ap.add_argument("--modes", default="full,light", help=f"comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--no-stats", action="store_true", help="skip the per-event costs")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("latency_overhead: run as root (it loads BPF programs)", file=sys.stderr)
        return 1
    modes = [m for m in args.modes.split(",") if m]
    if any(m not in MODES for m in modes):
        ap.error(f"--modes: choose from {', '.join(MODES)}")
    WORKLOAD = args.workload
    redis = None
    if WORKLOAD == "redis":
        REDIS_PORT = free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
    try:
        sides: list[str | None] = [None, *modes]
        got: dict[str | None, list[float]] = {s: [] for s in sides}
        for r in range(args.rounds):
            k = r % len(sides)
            for side in sides[k:] + sides[:k]:
                got[side].append(run(side, args.seconds))
            print(f"round {r + 1}: " + ", ".join(f"{s or 'without'} {fmt(got[s][-1])}" for s in sides), flush=True)

        print(f"\n{WORKLOAD} loopback, {args.rounds} rounds of {args.seconds:g} s runs:")
        print(f"  without engine: median {fmt(statistics.median(got[None]))}")
        for mode in modes:
            ratios = [w / b for w, b in zip(got[mode], got[None])]
            r = statistics.median(ratios)
            print(f"  {mode:5s}: median {fmt(statistics.median(got[mode]))}, "
                  f"median paired ratio {r:.3f} ({(1 - r) * 100:.1f} % loss); "
                  f"ratios {' '.join(f'{x:.3f}' for x in ratios)}")
        if not args.no_stats:
            for mode in modes:
                per_event(mode, args.seconds)
    finally:
        if redis:
            redis.terminate()
            redis.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
