"""`--json`: one snapshot per interval as a JSON line on stdout, until --count or a signal."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import time
from typing import Callable

from tcptop.model import Flow, JsonEncoder
from tcptop.source import SnapshotSource


def run(args: argparse.Namespace, source: SnapshotSource, keep: Callable[[Flow], bool] | None = None) -> int:
    """Print snapshots until --count or SIGINT/SIGTERM; the caller closes the source."""
    encoder = JsonEncoder()
    stop = False

    def on_signal(signum, frame):
        nonlocal stop
        stop = True
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    n = 0
    next_at = time.monotonic()
    while not stop:
        try:
            snap = source.poll()
        except OSError as e:  # includes BpfError: say it in one line, exit 1 (the caller detaches)
            sys.stderr.write(f"tcptop: reading the kernel failed: {e}\n")
            return 1
        if keep is not None:
            snap = dataclasses.replace(snap, flows=tuple(f for f in snap.flows if keep(f)))
        try:
            sys.stdout.write(encoder.encode(snap) + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            break
        n += 1
        if args.count and n >= args.count:
            break
        next_at += args.interval
        while not stop:
            left = next_at - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, 0.2))
    return 0
