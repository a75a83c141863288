"""What the packet-level engine costs: BPF ns per event and iperf3 loopback throughput, paired.

Run as root from the repository:
    .venv/bin/python benchmarks/latency_overhead.py [--rounds 5] [--seconds 2]

1. Throughput: iperf3 over loopback, in rounds of three runs (no engine, the
   engine with every stage, the engine with skb_stages=False), the order
   rotating each round so drift in the machine's load favours no side. The
   cost is the median over rounds of the paired ratio. bpf stats are off here
   (the kernel's timing of each program run would add to the cost).
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
from tcptop.latency import LatencyEngine  # noqa: E402

STATS_SYSCTL = "/proc/sys/kernel/bpf_stats_enabled"
MODES = {"full": {}, "light": {"skb_stages": False}}


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


def run(mode: str | None, seconds: float) -> float:
    if mode is None:
        return iperf3(seconds)
    eng = LatencyEngine(**MODES[mode])
    try:
        return iperf3(seconds)
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
        bps = iperf3(seconds)
        host, _ = eng.poll()
        after = prog_stats(eng.program_ids())
    finally:
        with open(STATS_SYSCTL, "w") as f:
            f.write(old)
        eng.close()
    print(f"\n[{mode}] per program during one {seconds:g} s run with bpf stats on ({bps / 1e9:.2f} Gbit/s):")
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("latency_overhead: run as root (it loads BPF programs)", file=sys.stderr)
        return 1

    sides: list[str | None] = [None, "full", "light"]
    got: dict[str | None, list[float]] = {s: [] for s in sides}
    for r in range(args.rounds):
        order = sides[r % 3:] + sides[:r % 3]
        for side in order:
            got[side].append(run(side, args.seconds))
        print(f"round {r + 1}: " + ", ".join(f"{s or 'without'} {got[s][-1] / 1e9:.2f}" for s in sides)
              + " Gbit/s", flush=True)

    print(f"\niperf3 loopback, {args.rounds} rounds of {args.seconds:g} s runs:")
    print(f"  without engine: median {statistics.median(got[None]) / 1e9:.2f} Gbit/s")
    for mode in MODES:
        ratios = [w / b for w, b in zip(got[mode], got[None])]
        r = statistics.median(ratios)
        print(f"  {mode:5s}: median {statistics.median(got[mode]) / 1e9:.2f} Gbit/s, "
              f"median paired ratio {r:.3f} ({(1 - r) * 100:.1f} % loss)")
    for mode in MODES:
        per_event(mode, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
