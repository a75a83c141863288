#!/usr/bin/env python3
"""A/B of BPF object builds: ns per run and runs per request of each of tcptop's programs, variants alternating in one invocation.

Each DIR holds flows.bpf.o, failures.bpf.o and latency.bpf.o (a variant build; tcptop loads
them through $TCPTOP_BPF_DIR). Per round, every variant in turn (the order reversed every
other round, so drift on a shared machine falls on both sides): `tcptop --json` started with
that variant's objects, then one redis-benchmark GET run (-c 20, loopback) with
kernel.bpf_stats_enabled=1, reading run_time_ns/run_cnt of the programs that tcptop process
holds. Prints the median per program and the runs. Root; run it under
`flock -x /tmp/tcptop-machine.lock`. Differences under ~15 ns a run are within this VM's noise
unless most pairs agree (the paired rounds are printed for that).

Usage: benchmarks/bpf_ab.py DIR DIR... [--rounds N] [--requests N] [--latency MODE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import overhead as ov  # noqa: E402
from bpfstats import bpf_stats  # noqa: E402


def one_run(w: ov.Workload, objects: str, latency: str) -> tuple[dict[str, tuple[int, int]], float]:
    """{program: (run_time_ns, run_cnt)} over one workload run with `objects` loaded, and its request count."""
    os.environ["TCPTOP_BPF_DIR"] = os.path.abspath(objects)
    with ov.Tcptop("--interval", "1", "--latency", latency) as t:
        time.sleep(0.5)
        with bpf_stats():
            before = ov.prog_stats(t.pid)
            units, _ = w.run()
            after = ov.prog_stats(t.pid)
        names = ov.prog_names(after.keys())
    per: dict[str, tuple[int, int]] = {}
    for prog_id, (ns, cnt) in after.items():
        ns0, cnt0 = before.get(prog_id, (0, 0))
        name = names.get(prog_id, str(prog_id))
        a, b = per.get(name, (0, 0))
        per[name] = (a + ns - ns0, b + cnt - cnt0)
    return per, units


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", metavar="DIR")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--requests", type=int, default=100000, help="redis GET requests per run")
    ap.add_argument("--latency", default="off", help="tcptop --latency mode (off: the flow and failure engines alone)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bpf_ab.py: run as root (it loads tcptop's BPF programs)")
    for d in a.dirs:
        if not os.path.exists(os.path.join(d, "flows.bpf.o")):
            sys.exit(f"bpf_ab.py: {d} has no flows.bpf.o")
    runs: dict[str, list[tuple[dict, float]]] = {d: [] for d in a.dirs}
    w = ov.Workload("redis", a.requests)
    try:
        for r in range(a.rounds):
            for d in a.dirs if r % 2 == 0 else a.dirs[::-1]:
                runs[d].append(one_run(w, d, a.latency))
    finally:
        w.close()
    print(f"# BPF A/B, redis GET -c 20, {a.requests} requests a run, {a.rounds} rounds, --latency {a.latency} (bpf_stats on)")
    for d in a.dirs:
        print(f"\n## {d}\n")
        print("| program | runs per request | ns per run, median (rounds) | ns per request |")
        print("|---|---:|---|---:|")
        names = sorted({n for per, _ in runs[d] for n in per}, key=lambda n: -sum(per.get(n, (0, 0))[0] for per, _ in runs[d]))
        for n in names:
            rows = [(per[n], u) for per, u in runs[d] if per.get(n, (0, 0))[1]]
            if not rows:
                continue
            per_run = [ns / cnt for (ns, cnt), _ in rows]
            print(f"| {n} | {statistics.median(cnt / u for (_, cnt), u in rows):.2f} | "
                  f"{statistics.median(per_run):.0f} ({' '.join(f'{x:.0f}' for x in per_run)}) | "
                  f"{statistics.median(ns / u for (ns, _), u in rows):.0f} |")
        total = [sum(ns for ns, _ in per.values()) / u for per, u in runs[d]]
        print(f"| all | | | {statistics.median(total):.0f} ({' '.join(f'{x:.0f}' for x in total)}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
