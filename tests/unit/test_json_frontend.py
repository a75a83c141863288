"""The --json front end's pacing and output faults, on a fake clock and fake sources (no kernel)."""

from __future__ import annotations

import argparse
import io
import json
import types

import pytest
from factories import make_flow, make_snapshot

from tcptop.frontends import json as json_frontend


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        assert s >= 0
        self.now += s


class Source:
    """Polls take no time, except the ones listed in `slow` (poll number -> seconds)."""

    interval_s = 1.0

    def __init__(self, clock: Clock, slow: dict[int, float]) -> None:
        self.clock, self.slow = clock, slow
        self.started: list[float] = []

    def poll(self):
        self.started.append(self.clock.now)
        self.clock.now += self.slow.get(len(self.started), 0.0)
        return make_snapshot([make_flow(1)], ts=1000 + self.clock.now, seq=len(self.started))

    def close(self) -> None:
        pass


def run(monkeypatch, source, count, out=None):
    monkeypatch.setattr(json_frontend, "time", types.SimpleNamespace(monotonic=source.clock.monotonic,
                                                                     sleep=source.clock.sleep))
    if out is not None:
        monkeypatch.setattr("sys.stdout", out)
    return json_frontend.run(argparse.Namespace(count=count, interval=1.0), source)


def test_after_an_overrun_the_next_snapshot_is_one_interval_later(monkeypatch, capsys):
    """A 5.5 s poll was followed by ~5 snapshots back to back (20 at 0.05 s after a longer one)."""
    clock = Clock()
    src = Source(clock, slow={3: 5.5})
    assert run(monkeypatch, src, count=7) == 0
    assert len(capsys.readouterr().out.splitlines()) == 7
    assert src.started[:3] == [0.0, 1.0, 2.0]
    late_done = 2.0 + 5.5
    assert src.started[3] == pytest.approx(late_done + 1.0)
    gaps = [b - a for a, b in zip(src.started[3:], src.started[4:])]
    assert gaps == pytest.approx([1.0] * 3)


def test_a_poll_late_within_its_interval_keeps_the_rhythm(monkeypatch, capsys):
    clock = Clock()
    src = Source(clock, slow={2: 0.4})
    run(monkeypatch, src, count=4)
    assert src.started == pytest.approx([0.0, 1.0, 2.0, 3.0])


def test_a_full_disk_is_one_line_and_status_1(monkeypatch, capsys):
    """`tcptop --json >/dev/full` ended in an OSError traceback."""
    full = open("/dev/full", "w")
    try:
        assert run(monkeypatch, Source(Clock(), {}), count=3, out=full) == 1
    finally:
        monkeypatch.undo()
        full.close()  # its buffer was pointed at /dev/null: closing flushes nothing that can fail
    err = capsys.readouterr().err
    assert err == "tcptop: cannot write to stdout: No space left on device\n"


def test_a_reader_that_goes_away_ends_quietly(monkeypatch, capsys):
    class Gone(io.StringIO):
        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):
            return gone_fd

    import os
    r, w = os.pipe()
    gone_fd = w
    try:
        assert run(monkeypatch, Source(Clock(), {}), count=3, out=Gone()) == 0
    finally:
        monkeypatch.undo()
        os.close(r)
        os.close(w)
    assert capsys.readouterr().err == ""


def test_snapshots_are_json_lines(monkeypatch, capsys):
    run(monkeypatch, Source(Clock(), {}), count=2)
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [1, 2]


def test_a_hang_up_stops_the_headless_front_ends_unless_it_was_ignored_at_start():
    """--json and --serve stop on TERM, INT and HUP; under nohup (HUP ignored) not on HUP."""
    import signal

    from tcptop.frontends import stop_signals
    before = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        assert set(stop_signals()) == {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        assert set(stop_signals()) == {signal.SIGTERM, signal.SIGINT}
    finally:
        signal.signal(signal.SIGHUP, before)
