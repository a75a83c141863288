"""The garbage collector, tuned for a screen that replaces every flow's objects each refresh.

A refresh makes two objects per flow (its Flow, its Row) that reference counting frees two
refreshes later, none in a cycle. If they trip the collector it scans them all for nothing —
at 100,000 flows four 20 ms passes per refresh and, every few refreshes, a several-hundred-ms
older-generation pass, on whichever thread (often the UI) allocates.
"""

from __future__ import annotations

import gc

GEN0_MIN = 50_000
_tuned = False


def tune() -> None:
    """Freeze what start-up made and raise the thresholds, once, for the screen's process."""
    global _tuned
    gc.freeze()
    gc.set_threshold(GEN0_MIN, 20, 20)
    _tuned = True


def fit(flows: int) -> None:
    """Keep one refresh's allocations under the collector's first threshold."""
    if _tuned:
        gen0 = max(GEN0_MIN, 4 * flows)
        if gc.get_threshold()[0] != gen0:
            gc.set_threshold(gen0, 20, 20)
