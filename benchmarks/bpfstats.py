"""kernel.bpf_stats_enabled switched on for a measurement and back to what it was after: the
stats add two clock reads to every program run, so benchmarks keep them out of timed runs."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

STATS_SYSCTL = "/proc/sys/kernel/bpf_stats_enabled"


@contextmanager
def bpf_stats() -> Iterator[None]:
    with open(STATS_SYSCTL) as f:
        old = f.read().strip()
    with open(STATS_SYSCTL, "w") as f:
        f.write("1")
    try:
        yield
    finally:
        with open(STATS_SYSCTL, "w") as f:
            f.write(old)
