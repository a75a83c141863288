"""Replay: a file of `tcptop --json` lines played back as a SnapshotSource.

The screen runs from a replay without root or an engine, which is what makes every UI
test deterministic. Lines are indexed when the file is opened and parsed only when
played (a line of 100,000 flows is tens of MB), so a corrupt line is found when playback
reaches it: it is reported as "FILE:LINE: reason", skipped, and playback goes on. A file
with no readable snapshot at all is refused at once with one line the CLI can print.
"""

from __future__ import annotations

import os
import threading

from tcptop.model import Snapshot, SnapshotFormatError, snapshot_from_json

SPEEDS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


class ReplayError(Exception):
    """The replay file cannot be played at all (missing, empty, nothing readable)."""


class ReplaySource:
    """Plays snapshots in file order; `poll()` returns the next one, holding at the last.

    Thread use: the screen's worker is the only caller; it reads `errors`, `position`
    and `ended` and passes copies to the UI thread with each snapshot.
    """

    def __init__(self, path: str | os.PathLike[str], speed: float = 1.0) -> None:
        self.path = os.fspath(path)
        self.name = os.path.basename(self.path)
        try:
            with open(self.path, "rb") as f:
                # (offset, length, line number) of every non-blank line
                self._lines = _index_lines(f)
        except OSError as e:
            raise ReplayError(f"{self.path}: cannot read: {e.strerror or e}") from None
        if not self._lines:
            raise ReplayError(f"{self.path}: empty file, no snapshots to replay")
        self.errors: list[str] = []
        self._bad: set[int] = set()
        self._lock = threading.Lock()
        self._file = open(self.path, "rb")
        self.position = 0            # index into _lines of the next line to play
        self.speed = speed
        self.ended = False
        self._first: tuple[int, Snapshot] | None = None
        self._last: tuple[int, Snapshot] | None = None  # (line index, snapshot) played last
        for i in range(len(self._lines)):
            snap = self._parse(i)
            if snap is not None:
                self._first = (i, snap)
                break
        if self._first is None:
            first_error = self.errors[0] if self.errors else "?"
            self._file.close()
            raise ReplayError(
                f"{self.path}: no readable snapshot in {len(self._lines)} line(s); first error: {first_error}")
        self.base_interval_s = self._first[1].interval_s if self._first[1].interval_s > 0 else 1.0

    # -- SnapshotSource ------------------------------------------------------------

    @property
    def interval_s(self) -> float:
        """Recorded interval divided by the playback speed."""
        return self.base_interval_s / self.speed

    def poll(self) -> Snapshot:
        """The next readable snapshot; at the end, the last one again (with `ended` set)."""
        with self._lock:
            n = len(self._lines)
            while self.position < n:
                i = self.position
                self.position += 1
                snap = self._parse(i)
                if snap is not None:
                    self._last = (i, snap)
                    self.ended = self.position >= n
                    return snap
            self.ended = True
            return (self._last or self._first)[1]

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def program_ids(self) -> list[int]:
        return []  # a recording loads nothing into the kernel

    # -- playback control (the worker calls these on the screen's behalf) ----------

    def __len__(self) -> int:
        return len(self._lines)

    def step_back(self) -> Snapshot:
        """The readable snapshot before the one shown last."""
        with self._lock:
            shown = self._last[0] if self._last else 0
            i = shown - 1
            while i >= 0:
                snap = self._parse(i)
                if snap is not None:
                    self._last = (i, snap)
                    self.position = i + 1
                    self.ended = False
                    return snap
                i -= 1
            return (self._last or self._first)[1]

    def rewind(self) -> None:
        with self._lock:
            self.position = 0
            self.ended = False

    def faster(self) -> float:
        self.speed = next((s for s in SPEEDS if s > self.speed), SPEEDS[-1])
        return self.speed

    def slower(self) -> float:
        self.speed = next((s for s in reversed(SPEEDS) if s < self.speed), SPEEDS[0])
        return self.speed

    @property
    def shown_line(self) -> int:
        """1-based file line of the snapshot played last (0 before the first)."""
        return self._lines[self._last[0]][2] if self._last else 0

    # -- internals -----------------------------------------------------------------

    def _parse(self, i: int) -> Snapshot | None:
        if self._first is not None and self._first[0] == i:
            return self._first[1]
        offset, length, lineno = self._lines[i]
        self._file.seek(offset)
        raw = self._file.read(length)
        try:
            return snapshot_from_json(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            reason = f"not UTF-8 text (byte {e.start + 1})"
        except SnapshotFormatError as e:
            reason = str(e)
        except (TypeError, ValueError, KeyError, OverflowError) as e:
            # the contract checker missed something: still one bad line, not a crash
            reason = f"malformed snapshot ({type(e).__name__}: {e})"
        if i not in self._bad:
            self._bad.add(i)
            self.errors.append(f"{self.path}:{lineno}: {reason}")
        return None


def _index_lines(f) -> list[tuple[int, int, int]]:
    """(offset, length, 1-based line number) of each non-blank line, without keeping the text."""
    out = []
    offset = 0
    for lineno, line in enumerate(f, start=1):
        if line.strip():
            out.append((offset, len(line), lineno))
        offset += len(line)
    return out
