#!/usr/bin/env python3
"""How long the engine's first snapshot takes with N idle connections held and nothing else:
a fresh CoreEngine and its first poll, per --latency mode, alternating (root, loopback).

    flock -x /tmp/tcptop-machine.lock .venv/bin/python benchmarks/first_snapshot.py --connections 100000
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workloads  # noqa: E402

from tcptop.engines import EngineOptions  # noqa: E402
from tcptop.engines.core.engine import CoreEngine  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=100000)
    ap.add_argument("--modes", default="off,budget", help="--latency modes, comma-separated")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    with workloads.held_connections(a.connections):
        for _ in range(a.rounds):
            for mode in a.modes.split(","):
                t0 = time.monotonic()
                e = CoreEngine(EngineOptions(interval_s=1, latency=mode))
                try:
                    snap = e.poll()
                    t1 = time.monotonic()  # the snapshot is out (close may wait for engines still loading)
                finally:
                    e.close()
                parts = ", ".join(f"{k} {v:.0f}" for k, v in snap.run.timing.items())
                print(f"--latency {mode}: first snapshot {t1 - t0:.2f} s, {len(snap.flows):,} flows "
                      f"({parts})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
