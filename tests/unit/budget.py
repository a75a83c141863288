"""Work and memory of a call, measured without a clock: Python lines executed and peak bytes.

A wall-clock bound flakes on a loaded 2-vCPU machine; a count of executed lines does not.
The C parts (json, re matching) do not show in the count: the code under test keeps
them linear by construction, and the tests feed them inputs that would blow up otherwise.
"""

from __future__ import annotations

import os
import sys
import tracemalloc
from typing import Any, Callable

# Multiplies every fuzz budget (the runs are derandomized: more examples, further along one path).
FUZZ_SCALE = int(os.environ.get("TCPTOP_FUZZ_SCALE", "1"))


def lines_run(fn: Callable[[], Any]) -> tuple[int, Any, BaseException | None]:
    """(Python lines executed by fn, its result, the exception it raised)."""
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        count += 1  # 'call' events; lines are counted by the local tracer below
        return local

    def local(frame, event, arg):
        nonlocal count
        if event == "line":
            count += 1
        return local

    result, error = None, None
    old = sys.gettrace()
    sys.settrace(tracer)
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 - the caller judges which are allowed
        error = e
    finally:
        sys.settrace(old)
    return count, result, error


def peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes Python allocated while fn ran (its exceptions are swallowed: measured elsewhere)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        try:
            fn()
        except Exception:  # noqa: BLE001
            pass
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
