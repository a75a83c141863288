"""Where snapshots come from: the source protocol every front end reads, and `open_source`.

A front end (the screen, `--json`, the exporter) is given a started source and only calls
`poll()`, reads `interval_s`, and calls `close()` when it is done. Sources that can be
played back (a replay file) also implement `Playback`, which the screen's keys drive.
"""

from __future__ import annotations

import argparse
from typing import Protocol, runtime_checkable

from tcptop.model import Snapshot


# The pace any source keeps, whatever it is asked: below 10 ms a screen only burns CPU (a
# replay's recorded interval divided by its speed is held to it), and above an hour a
# timer's wait means nothing to a person watching. The CLI's --interval takes 0.05 to 3600 s.
PACE_MIN_S = 0.01
PACE_MAX_S = 3600.0


def bounded_pace(interval_s: float) -> float:
    """`interval_s` held within [PACE_MIN_S, PACE_MAX_S] (NaN counts as too short)."""
    return min(PACE_MAX_S, interval_s) if interval_s >= PACE_MIN_S else PACE_MIN_S


class SourceError(Exception):
    """A source cannot start; the message is one line a user can act on."""


class SnapshotSource(Protocol):
    """A producer of snapshots. `poll()` returns the state now; the caller paces it."""

    interval_s: float

    def poll(self) -> Snapshot: ...

    def close(self) -> None: ...

    def program_ids(self) -> list[int]:
        """Kernel ids of the BPF programs this source loaded (benchmarks count only these)."""
        ...


@runtime_checkable
class Playback(Protocol):
    """A recorded source the user can step through (the screen's n/b/+/- keys)."""

    name: str
    speed: float
    ended: bool
    errors: list[str]

    def step_back(self) -> Snapshot: ...

    def faster(self) -> float: ...

    def slower(self) -> float: ...

    @property
    def shown_line(self) -> int: ...

    def __len__(self) -> int: ...


def open_source(args: argparse.Namespace) -> SnapshotSource:
    """The source the command line asks for: a replay file, or a live engine (`--engine`)."""
    if getattr(args, "replay", None):
        from tcptop.replay import ReplayError, ReplaySource
        try:
            return ReplaySource(args.replay, follow=bool(getattr(args, "follow", False)))
        except ReplayError as e:
            raise SourceError(str(e)) from None
    from tcptop.engines import EngineError, EngineOptions, open_engine
    options = EngineOptions(interval_s=args.interval, max_closed=args.max_closed, latency=args.latency,
                            latency_budget_pct=getattr(args, "latency_budget", None) or 0.5)
    try:
        return open_engine(getattr(args, "engine", "auto"), options)
    except EngineError as e:
        raise SourceError(str(e)) from None
