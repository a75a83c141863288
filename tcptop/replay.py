"""Replay: a file of `tcptop --json` lines played back as a SnapshotSource.

The screen runs from a replay without root or an engine, which is what makes every UI
test deterministic. Lines are indexed as they are read and parsed only when played (a
line of 100,000 flows is tens of MB), so a corrupt line is found when playback reaches
it: it is reported as "FILE:LINE: reason", skipped, and playback goes on. A file with no
readable snapshot at all is refused at once with one line the CLI can print.

Three kinds of input play the same way:
- a regular file is indexed when opened and plays to its last line;
- a pipe (`cmd | tcptop --replay -`, `--replay <(cmd)`, a FIFO) is read as lines arrive,
  without ever blocking the player, into an unnamed spool file, so stepping back works
  as on a file; it ends when the writer closes it;
- with `follow`, a regular file is watched for lines appended to it (`tail -f`): it never
  ends, and a file truncated under it is played again from its new start.
In every case the player waits for the first readable snapshot before it starts; only a
line that ends in a newline is played, except the last line of a finished input.
"""

from __future__ import annotations

import os
import select
import stat
import tempfile
import threading
import time
from typing import BinaryIO

from tcptop.model import Snapshot, SnapshotFormatError, snapshot_from_json
from tcptop.source import bounded_pace

SPEEDS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
STDIN = "-"
_CHUNK = 1 << 20
_DRAIN_MAX = 64 << 20  # bytes taken from a pipe per poll at most
_WAIT_S = 0.1  # how often an input that has nothing yet is looked at again, while starting


class ReplayError(Exception):
    """The replay file cannot be played at all (missing, empty, nothing readable)."""


class ReplaySource:
    """Plays snapshots in input order; `poll()` returns the next one, holding at the last.

    Thread use: the screen's worker is the only caller; it reads `errors`, `position`
    and `ended` and passes copies to the UI thread with each snapshot.
    """

    def __init__(self, path: str | os.PathLike[str], speed: float = 1.0, follow: bool = False) -> None:
        self.path = os.fspath(path)
        self.name = "stdin" if self.path == STDIN else os.path.basename(self.path)
        self.follow = follow
        self.errors: list[str] = []
        self._bad: set[int] = set()
        self._lock = threading.Lock()
        self._lines: list[tuple[int, int, int]] = []  # (offset, length, line number) of each non-blank line
        self._input = _open(self.path)
        self._pipe: int | None = None  # a non-seekable input, copied into the spool as it comes
        if os.isatty(self._input.fileno()):
            self._input.close()
            raise ReplayError(f"{self.path}: is a terminal, not a recording (pipe one in: "
                              "tcptop --json ... | tcptop --replay -)")
        if stat.S_ISREG(os.fstat(self._input.fileno()).st_mode):
            self._store: BinaryIO = self._input
        else:
            self._pipe = self._input.fileno()
            self._store = tempfile.TemporaryFile(prefix="tcptop-replay-")
        self._scanned = 0       # bytes of the store looked at for line ends
        self._line_start = 0    # where the line being read begins
        self._lineno = 0
        self._finished = False  # the input can grow no more (a pipe's writer is gone, or no follow)
        self.position = 0       # index into _lines of the next line to play
        self.speed = speed
        self.ended = False
        self._first: tuple[int, Snapshot] | None = None
        self._last: tuple[int, Snapshot] | None = None  # (line index, snapshot) played last
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        assert self._first is not None
        self.base_interval_s = self._first[1].interval_s if self._first[1].interval_s > 0 else 1.0

    def _start(self) -> None:
        """Read until the first readable snapshot; refuse an input that has none."""
        waits = self._pipe is not None or self.follow
        checked = 0
        while True:
            self._read_more()
            for i in range(checked, len(self._lines)):
                snap = self._parse(i)
                if snap is not None:
                    self._first = (i, snap)
                    return
            checked = len(self._lines)
            if self._finished or not waits:
                break
            self._wait_for_input()
        if not self._lines:
            raise ReplayError(f"{self.path}: empty file, no snapshots to replay")
        first_error = self.errors[0] if self.errors else "?"
        raise ReplayError(
            f"{self.path}: no readable snapshot in {len(self._lines)} line(s); first error: {first_error}")

    # -- SnapshotSource ------------------------------------------------------------

    @property
    def interval_s(self) -> float:
        """Recorded interval divided by the playback speed, within the pace any source keeps."""
        return bounded_pace(self.base_interval_s / self.speed)

    def poll(self) -> Snapshot:
        """The next readable snapshot; at the end, the last one again (with `ended` set once
        no more can come)."""
        with self._lock:
            if not self._finished and self.position >= len(self._lines):
                self._read_more()
            n = len(self._lines)
            while self.position < n:
                i = self.position
                self.position += 1
                snap = self._parse(i)
                if snap is not None:
                    self._last = (i, snap)
                    self.ended = self._finished and self.position >= n
                    return snap
            self.ended = self._finished
            return (self._last or self._first)[1]  # type: ignore[index]

    def close(self) -> None:
        with self._lock:
            self._input.close()
            if self._store is not self._input:
                self._store.close()

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
            return (self._last or self._first)[1]  # type: ignore[index]

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
        """1-based input line of the snapshot played last (0 before the first)."""
        return self._lines[self._last[0]][2] if self._last and self._last[0] >= 0 else 0

    # -- reading -------------------------------------------------------------------

    def _read_more(self) -> None:
        """Take in what the input has now: copy a pipe's bytes into the spool, index new lines."""
        if self._pipe is not None:
            self._drain_pipe()
        else:
            size = os.fstat(self._input.fileno()).st_size
            if size < self._scanned:
                self._truncated()
            if not self.follow:
                self._finished = True
        self._index_new_lines()

    def _drain_pipe(self) -> None:
        """Copy what the pipe holds now (up to _DRAIN_MAX: a writer faster than the player
        must not keep it here) to the spool's end, without waiting for more."""
        assert self._pipe is not None
        ready = select.poll()
        ready.register(self._pipe, select.POLLIN)
        self._store.seek(0, os.SEEK_END)
        copied = 0
        while copied < _DRAIN_MAX and ready.poll(0):
            chunk = os.read(self._pipe, _CHUNK)
            if not chunk:
                self._finished = True
                break
            self._store.write(chunk)
            copied += len(chunk)
        self._store.flush()

    def _wait_for_input(self) -> None:
        if self._pipe is not None:
            ready = select.poll()
            ready.register(self._pipe, select.POLLIN)
            ready.poll()
        else:
            time.sleep(_WAIT_S)

    def _truncated(self) -> None:
        """A followed file that shrank was rewritten: play it again from its start."""
        self.errors.append(f"{self.path}: truncated; playing it again from its start")
        self._lines.clear()
        self._bad.clear()
        self._scanned = self._line_start = self._lineno = 0
        self.position = 0
        # Keep what was shown for the screen to hold, but tied to no line of the new content.
        if self._first is not None:
            self._first = (-1, self._first[1])
        if self._last is not None:
            self._last = (-1, self._last[1])

    def _index_new_lines(self) -> None:
        """Index the complete lines between what was scanned and the store's end; the last,
        unfinished line is indexed only when the input is finished."""
        store = self._store
        store.seek(self._scanned)
        while True:
            chunk = store.read(_CHUNK)
            if not chunk:
                break
            base = self._scanned
            start = 0
            while (nl := chunk.find(b"\n", start)) >= 0:
                self._add_line(base + nl + 1)
                start = nl + 1
            self._scanned += len(chunk)
        if self._finished and self._scanned > self._line_start:
            self._add_line(self._scanned)

    def _add_line(self, end: int) -> None:
        """The line from _line_start up to `end` (its newline included) is complete."""
        self._lineno += 1
        offset, length = self._line_start, end - self._line_start
        self._line_start = end
        if length and self._is_blank(offset, length):
            return
        self._lines.append((offset, length, self._lineno))

    def _is_blank(self, offset: int, length: int) -> bool:
        if length > 64:  # a snapshot line is never this short; only short lines can be blank
            return False
        here = self._store.tell()
        self._store.seek(offset)
        blank = not self._store.read(length).strip()
        self._store.seek(here)
        return blank

    # -- parsing -------------------------------------------------------------------

    def _parse(self, i: int) -> Snapshot | None:
        if self._first is not None and self._first[0] == i:
            return self._first[1]
        offset, length, lineno = self._lines[i]
        self._store.seek(offset)
        raw = self._store.read(length)
        try:
            return snapshot_from_json(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            reason = f"not UTF-8 text (byte {e.start + 1})"
        except SnapshotFormatError as e:
            reason = str(e)
        if i not in self._bad:
            self._bad.add(i)
            self.errors.append(f"{self.path}:{lineno}: {reason}")
        return None


def _open(path: str) -> BinaryIO:
    """The input, unbuffered: a pipe is read only as far as select says it can be."""
    try:
        if path == STDIN:
            return os.fdopen(os.dup(0), "rb", buffering=0)
        return open(path, "rb", buffering=0)
    except OSError as e:
        raise ReplayError(f"{path}: cannot read: {e.strerror or e}") from None
