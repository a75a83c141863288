"""The garbage collector, tuned for a process that replaces its flows' objects every poll.

A poll makes objects per changed flow (records, Flows, their JSON pieces; on the screen a Flow
and a Row per flow) that reference counting frees a poll or two later, none in a cycle. If
they trip the collector it scans them all for nothing: at 100,000 flows on the screen four
20 ms passes per refresh and, every few refreshes, a several-hundred-ms older-generation pass;
under a churn of 10,000 connections/s a fifth of `--json`'s CPU (visit_decref and
visit_reachable in a perf profile), 44-46 % of a core against 37-40 % tuned.
"""

from __future__ import annotations

import gc

GEN0_MIN = 50_000
_tuned = False


def tune() -> None:
    """Freeze what start-up made and raise the thresholds, for tcptop's own process: the CLI and
    the screen's run() call it, not the frontends' loops, which tests run in pytest's process."""
    global _tuned
    gc.freeze()
    gc.set_threshold(GEN0_MIN, 20, 20)
    _tuned = True


def fit(flows: int) -> None:
    """Keep one poll's allocations under the collector's first threshold."""
    if _tuned:
        gen0 = max(GEN0_MIN, 4 * flows)
        if gc.get_threshold()[0] != gen0:
            gc.set_threshold(gen0, 20, 20)
