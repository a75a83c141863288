"""`--json`: one snapshot per interval as a JSON line on stdout, until --count or a signal.

With --changes, the first line is a full snapshot and every later one carries `"delta":
true`, the flows that changed since the line before (new, updated, closed) and `"gone"`,
the ids of flows no longer listed: a consumer keeps a table by id, replaces what comes
and drops what is gone. An unchanged flow's age is not repeated: it is its
established_ts subtracted from the line's ts. At 100,000 idle connections a full line is
about 90 MB, a delta line a few hundred bytes.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import time
from typing import Callable

from tcptop import native
from tcptop.frontends import gc_tuning, stop_signals
from tcptop.model import FLOW_FIELDS, Flow, JsonEncoder, Snapshot
from tcptop.source import SnapshotSource

_c, C_WHY = native.load("_flow_json")


class LineEncoder(JsonEncoder):
    """JsonEncoder with each changed flow's text written by _flow_json.c (~3 us a flow instead
    of ~13-27 us: a busy host, a churn of connections or a first snapshot of 100,000 flows
    changes that many), and the line's flows, ages included, joined there too; the same
    text, or Python's where that leaves a value to it."""

    reuse = True  # keep each flow's text for the next line, where the same object comes again

    def _pieces(self, f: Flow) -> tuple[Flow, str, str]:
        if _c is not None:
            p = _c.pieces(f, FLOW_FIELDS, "duration_s")
            if p is not None:
                return f, p[0], p[1]
        return super()._pieces(f)

    def _flows_text(self, flows: tuple[Flow, ...], ts: float) -> str:
        if _c is None:
            return super()._flows_text(flows, ts)
        text, fresh = _c.flows_text(flows, self._cache if self.reuse else None, ts,
                                    super()._pieces, FLOW_FIELDS, "duration_s")
        if fresh is not None:
            self._cache = fresh
        return text


class DeltaEncoder(LineEncoder):
    """Lines with only what changed since the previous one (the engine hands back the same Flow
    object for an unchanged connection, so a change is a different object). `keep`: the
    --filter, applied here so that it too is asked only about what changed."""

    reuse = False  # every flow of a line after the first changed: no text to keep

    def __init__(self, keep: Callable[[Flow], bool] | None = None) -> None:
        super().__init__()
        self._shown: dict[int, Flow] | None = None
        self._keep = keep
        self._sieve = FlowSieve(keep) if keep is not None else None

    def parts(self, snap: Snapshot, **more) -> list[str]:
        if self._shown is None:
            flows = self._sieve(snap.flows) if self._sieve is not None else snap.flows
            self._shown = {f.id: f for f in flows}
            return super().parts(dataclasses.replace(snap, flows=flows, changes=None), **more)
        if snap.changes is not None:  # the source says what changed: no pass over every flow
            changed, gone = (_c.follow if _c is not None else py_follow)(self._shown, *snap.changes, self._keep)
        else:
            flows = self._sieve(snap.flows) if self._sieve is not None else snap.flows
            changed, gone = (_c.delta if _c is not None else py_delta)(self._shown, flows)
        return super().parts(dataclasses.replace(snap, flows=tuple(changed), changes=None), **more,
                             delta=True, gone=gone)


def py_follow(shown: dict[int, Flow], changed, gone, keep: Callable[[Flow], bool] | None) -> tuple[list[Flow], list[int]]:
    """What a line carries, from the source's own (changed flows, ids gone): a changed flow
    keep() refuses is gone; of the rest, the flows that are not the very object `shown` has for
    their id; of the ids gone, those `shown` had; `shown` brought up to date. Costs what
    changed (py_delta finds the same by a pass over every flow). _flow_json.follow in Python."""
    out, refused = [], []
    for f in changed:
        if keep is not None and not keep(f):
            refused.append(f.id)
        elif shown.get(f.id) is not f:
            shown[f.id] = f
            out.append(f)
    return out, [i for i in (*gone, *refused) if shown.pop(i, None) is not None]


def py_delta(shown: dict[int, Flow], flows: tuple[Flow, ...]) -> tuple[list[Flow], list[int]]:
    """(flows that are not the very object `shown` has for their id, ids `shown` has that
    `flows` no longer lists), `shown` brought up to date: _flow_json.delta in Python."""
    changed = [f for f in flows if shown.get(f.id) is not f]
    ids = {f.id for f in flows}
    gone = [i for i in shown if i not in ids]
    for f in changed:
        shown[f.id] = f
    for i in gone:
        del shown[i]
    return changed, gone


class FlowSieve:
    """A filter over successive snapshots' flows that asks it again only about flows that
    changed. An engine hands back the very Flow object of a connection that did not change,
    and a predicate reads nothing but the flow's own fields, so the answer for the same
    object stands. A filter of a few terms costs ~3 us a flow in Python, and even the loop
    that finds the changed flows, in Python, cost ~80 ms a line under a churn of
    connections (~90,000 listed): it runs in _flow_json.c."""

    def __init__(self, keep: Callable[[Flow], bool]) -> None:
        self.keep = keep
        self._seen: dict[int, tuple[Flow, bool]] = {}  # id -> (the flow last asked about, its answer)

    def __call__(self, flows: tuple[Flow, ...]) -> tuple[Flow, ...]:
        kept = (_c.sieve if _c is not None else py_sieve)(flows, self._seen, self.keep)
        if len(self._seen) > 2 * len(flows) + 1024:  # forget flows no longer listed
            seen = self._seen
            self._seen = {f.id: seen[f.id] for f in flows}
        return tuple(kept)


def py_sieve(flows, seen: dict[int, tuple[Flow, bool]], keep: Callable[[Flow], bool]) -> list[Flow]:
    """_flow_json.sieve in Python: the flows keep() keeps, asking it only about flows that are
    not the very object `seen` has for their id; `seen` is brought up to date."""
    out = []
    for f in flows:
        e = seen.get(f.id)
        if e is None or e[0] is not f:
            e = seen[f.id] = (f, bool(keep(f)))
        if e[1]:
            out.append(f)
    return out


def run(args: argparse.Namespace, source: SnapshotSource, keep: Callable[[Flow], bool] | None = None) -> int:
    """Print snapshots until --count or SIGINT/SIGTERM/SIGHUP (not SIGHUP under nohup); the caller closes the source.

    Snapshots are due every interval from the first; a poll that overruns its slot moves
    the schedule, so the next snapshot is one interval after the late one, not a burst
    of catch-up snapshots.
    """
    state = _State()

    def on_signal(signum, frame):
        state.stop = True
        if state.writing:  # finish the line if the reader takes it, within WRITE_GRACE_S
            signal.setitimer(signal.ITIMER_REAL, WRITE_GRACE_S)

    def on_alarm(signum, frame):
        if state.writing:  # a reader that does not read would block the write for ever: give it up
            raise _Stopped
    previous = {sig: signal.signal(sig, on_signal) for sig in stop_signals()}
    previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, on_alarm)
    try:
        return _print_until_stopped(args, source, keep, state)
    except _Stopped:  # the alarm came just as a write returned
        _drop_stdout()
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# A stop signal during the write of a line: the line is finished if the reader takes it within
# this long (a 200 MB line of 100,000 flows takes ~0.5 s to a reader that keeps up), else the
# rest of it is dropped and tcptop ends.
WRITE_GRACE_S = 3.0


class _Stopped(Exception):
    """A stop signal came while a line was being written, and the reader did not take it."""


class _State:
    stop = False
    writing = False  # in the write of a line, where a full pipe can block


def _print_until_stopped(args: argparse.Namespace, source: SnapshotSource, keep: Callable[[Flow], bool] | None,
                         state: _State) -> int:
    def stopped() -> bool:
        return state.stop

    delta = getattr(args, "changes", False)
    encoder = DeltaEncoder(keep) if delta else LineEncoder()
    sieve = FlowSieve(keep) if keep is not None and not delta else None  # DeltaEncoder filters its own
    out = sys.stdout  # not None: the CLI refuses to start with stdout closed
    n = 0
    next_at = time.monotonic()
    while not stopped():
        try:
            snap = source.poll()
        except OSError as e:  # includes BpfError: say it in one line, exit 1 (the caller detaches)
            sys.stderr.write(f"tcptop: reading the kernel failed: {e}\n")
            return 1
        if keep is not None:  # listeners and failed connects answer the filter language too
            snap = dataclasses.replace(snap, listeners=tuple(x for x in snap.listeners if keep(x)),
                                       failures=tuple(x for x in snap.failures if keep(x)),
                                       **({"flows": sieve(snap.flows), "changes": None} if sieve else {}))
        gc_tuning.fit(len(snap.flows))
        parts = encoder.parts(snap)
        parts[-1] += "\n"
        try:
            state.writing = True
            if state.stop:
                break
            for part in parts:  # not joined first: a copy of ~16 MB a line under churn, 90 MB at 100,000 flows
                out.write(part)
            out.flush()
        except _Stopped:  # the rest of the line, and what is buffered, are dropped
            _drop_stdout()
            break
        except BrokenPipeError:  # the reader is gone (| head): that is how it says enough
            _drop_stdout()
            break
        except OSError as e:
            _drop_stdout()
            sys.stderr.write(f"tcptop: cannot write to stdout: {e.strerror or e}\n")
            return 1
        finally:
            state.writing = False
            signal.setitimer(signal.ITIMER_REAL, 0)
        n += 1
        if args.count and n >= args.count:
            break
        now = time.monotonic()
        next_at += args.interval
        if next_at <= now:  # overran: start the schedule again from now
            next_at = now + args.interval
        while not stopped():
            left = next_at - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, 0.2))
    return 0


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush at exit (of what the
    failed write left buffered) neither fails nor prints a traceback."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, sys.stdout.fileno())
    finally:
        os.close(null)
