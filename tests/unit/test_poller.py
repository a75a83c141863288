"""The screen's worker paces any source within sane bounds, on a fake clock (no real waiting)."""

from __future__ import annotations

import json
import queue
import threading
import types
from pathlib import Path

import pytest
from factories import make_snapshot

from tcptop.frontends.screen import poller as poller_module
from tcptop.frontends.screen.poller import Command, Poller
from tcptop.replay import ReplaySource
from tcptop.source import PACE_MAX_S, PACE_MIN_S

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample.jsonl"


class Source:
    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.polls = 0

    def poll(self):
        self.polls += 1
        return make_snapshot([], seq=self.polls)

    def close(self) -> None:
        pass

    def program_ids(self) -> list[int]:
        return []


class Clock:
    """Stands in for the worker's clock and command queue: a wait advances time by its timeout."""

    def __init__(self, max_waits: int) -> None:
        self.now = 0.0
        self.waits: list[float | None] = []
        self.max_waits = max_waits

    def monotonic(self) -> float:
        return self.now

    def get(self, timeout: float | None = None):
        self.waits.append(timeout)
        if timeout is None or len(self.waits) >= self.max_waits:
            return Command.STOP  # a wait without end: nothing would ever wake it but a key
        if timeout > threading.TIMEOUT_MAX:
            raise OverflowError("timeout value is too large")  # what queue.Queue.get does
        self.now += timeout
        raise queue.Empty


def run_on_clock(monkeypatch, source, max_waits=200) -> Clock:
    clock = Clock(max_waits)
    monkeypatch.setattr(poller_module, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    p = Poller(source, lambda snap: snap, lambda frame, status: None, lambda error: None)
    p.commands = types.SimpleNamespace(get=clock.get, put=lambda cmd: None)  # type: ignore[assignment]
    p.run(lambda: False)
    return clock


@pytest.mark.parametrize("interval", [1e-300, 0.0, float("nan"), -1.0])
def test_a_tiny_interval_does_not_spin(monkeypatch, interval):
    """A replay line's "interval_s": 1e-300 made the screen poll without pause (100 % CPU)."""
    src = Source(interval)
    clock = run_on_clock(monkeypatch, src)
    assert src.polls >= 100
    assert clock.now >= (src.polls - 1) * PACE_MIN_S * 0.999


@pytest.mark.parametrize("interval", [1e10, 1e300, float("inf")])
def test_a_huge_interval_waits_an_hour_at_most(monkeypatch, interval):
    """--interval 1e10 (or a replay line's 1e300) raised OverflowError in the worker."""
    clock = run_on_clock(monkeypatch, Source(interval), max_waits=5)
    assert all(w is not None and w <= PACE_MAX_S for w in clock.waits)


def test_a_huge_interval_on_the_real_queue_stops_on_request():
    src = Source(1e10)
    delivered = threading.Event()
    errors: list[BaseException] = []
    p = Poller(src, lambda snap: snap, lambda frame, status: delivered.set(), lambda error: None)

    def work():
        try:
            p.run(lambda: False)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=work)
    t.start()
    assert delivered.wait(10)
    p.send(Command.STOP)
    t.join(10)
    assert not t.is_alive() and errors == []


def test_a_replay_at_its_end_waits_for_a_key_instead_of_polling(monkeypatch, tmp_path):
    line = json.loads(SAMPLE.read_text().splitlines()[0])
    line["interval_s"] = 1e-300
    path = tmp_path / "rec.jsonl"
    path.write_text(json.dumps(line) + "\n")
    src = ReplaySource(path)
    clock = run_on_clock(monkeypatch, src)
    assert clock.waits[-1] is None  # blocked until a command, after the only line was shown
    assert len(clock.waits) <= 3
    src.close()
