"""What the screen's worker polls: anything that yields snapshots (live engine or replay)."""

from __future__ import annotations

from typing import Protocol

from tcptop.model import Snapshot


class SnapshotSource(Protocol):
    """A producer of snapshots. `poll()` returns the state now; the caller paces it."""

    interval_s: float

    def poll(self) -> Snapshot: ...

    def close(self) -> None: ...
