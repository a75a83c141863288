"""The screen's worker: the only caller of the snapshot source, and where frames are built.

It runs on its own thread and knows nothing of Textual: the app hands it a function that
builds a frame and two callbacks to deliver results, and sends it Commands (pause changed,
step, speed, stop). Live sources are polled on their interval; a source that can be played
back (`Playback`, e.g. a replay file) also answers the step and speed commands.
"""

from __future__ import annotations

import enum
import queue
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from tcptop.model import Snapshot
from tcptop.source import Playback, SnapshotSource, bounded_pace


class Command(enum.Enum):
    WAKE = enum.auto()          # pause changed: live polling keeps its rhythm, playback restarts its clock
    STOP = enum.auto()
    STEP_FORWARD = enum.auto()  # playback only, from here down
    STEP_BACK = enum.auto()
    FASTER = enum.auto()
    SLOWER = enum.auto()
    FREE = enum.auto()          # drop retired frames now (they pile up while the screen is paused)


@dataclass(frozen=True, slots=True)
class PlaybackStatus:
    """Where playback stands, copied for the UI thread with each frame."""

    name: str
    shown_line: int
    lines: int
    speed: float
    ended: bool
    errors: tuple[str, ...] = ()


def playback_status(p: Playback) -> PlaybackStatus:
    return PlaybackStatus(p.name, p.shown_line, len(p), p.speed, p.ended, tuple(p.errors))


class Poller:
    """Polls `source` until stopped; each snapshot becomes a frame through `build`, delivered
    with `deliver(frame, status)`; a failing source is reported through `failed(text)` and
    polled again at the next interval."""

    def __init__(self, source: SnapshotSource, build: Callable[[Snapshot], Any],
                 deliver: Callable[[Any, PlaybackStatus | None], None], failed: Callable[[str], None]) -> None:
        self.source = source
        self.playback: Playback | None = source if isinstance(source, Playback) else None
        self.playback_paused = False  # set by the UI thread; playback stands still while true
        self.commands: queue.Queue[Command] = queue.Queue()
        self.retired: deque[Any] = deque()  # frames off the screen, freed here, not on the UI thread
        self._build, self._deliver, self._failed = build, deliver, failed

    def send(self, cmd: Command) -> None:
        self.commands.put(cmd)

    def retire(self, frame: Any) -> None:
        """Leave a frame for this thread to free (at its next poll; sooner if they pile up)."""
        if frame is not None:
            self.retired.append(frame)
            if len(self.retired) > 2:
                self.send(Command.FREE)

    def run(self, cancelled: Callable[[], bool]) -> None:
        src, playback = self.source, self.playback
        next_at = time.monotonic()
        last: tuple[Any, ...] = ()
        first = True
        while not cancelled():
            if playback is not None and (self.playback_paused or playback.ended) and not first:
                timeout = None  # playback stands still (paused, or nothing more can come) until a key
            else:
                timeout = max(0.0, next_at - time.monotonic())
            try:
                cmd = self.commands.get(timeout=timeout)
            except queue.Empty:
                cmd = None
            if cmd is None or cmd is Command.FREE:
                # The last references to frames gone from the screen: freeing 100,000 rows takes
                # tens of ms, better here, before the next poll, than on the UI thread.
                self.retired.clear()
            if cmd is Command.STOP or cancelled():
                return
            if cmd is Command.FREE:
                continue
            try:
                if cmd is None:
                    next_at = max(next_at + bounded_pace(src.interval_s), time.monotonic())
                    snap = src.poll()
                    first = False
                elif cmd is Command.WAKE:
                    # A poll now would give a sliver of an interval and noisy rates: live keeps
                    # its rhythm; playback restarts its clock.
                    if playback is not None:
                        next_at = time.monotonic() + bounded_pace(src.interval_s)
                    continue
                elif playback is None:
                    continue
                elif cmd is Command.STEP_FORWARD:
                    snap = src.poll()
                elif cmd is Command.STEP_BACK:
                    snap = playback.step_back()
                else:
                    playback.faster() if cmd is Command.FASTER else playback.slower()
                    next_at = time.monotonic() + bounded_pace(src.interval_s)
                    snap = last[0] if last else src.poll()
            except Exception as e:  # the source failing must not kill the screen silently
                self._failed(f"{type(e).__name__}: {e}")
                continue
            status = playback_status(playback) if playback is not None else None
            if last and last[0] is snap and last[1] == status:
                continue  # playback holding at its end: nothing new to show
            last = (snap, status)
            self._deliver(self._build(snap), status)
