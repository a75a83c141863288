"""SVG snapshots of the screen from the fixed replay (update with --snapshot-update after a deliberate change)."""

from __future__ import annotations

from apptest import SAMPLE, SAMPLE_FAILURES, SAMPLE_LATENCY, SIZE, play_to, replay_app


def _at(seq: int, *keys: str):
    async def run_before(pilot) -> None:
        await play_to(pilot, pilot.app, seq)
        for key in keys:
            await pilot.press(key)
        await pilot.pause()

    return run_before


def test_main_screen(snap_compare):
    assert snap_compare(replay_app(SAMPLE), terminal_size=SIZE, run_before=_at(5))


def test_sorted_by_retransmissions_with_latency(snap_compare):
    assert snap_compare(replay_app(SAMPLE_LATENCY), terminal_size=SIZE, run_before=_at(5, "R"))


def test_filter_bar_with_an_error(snap_compare):
    keys = ["slash", *"port 443 and"]
    assert snap_compare(replay_app(SAMPLE), terminal_size=SIZE, run_before=_at(5, *keys))


def test_help_overlay(snap_compare):
    assert snap_compare(replay_app(SAMPLE), terminal_size=SIZE, run_before=_at(1, "question_mark"))


def test_narrow_terminal_drops_columns(snap_compare):
    assert snap_compare(replay_app(SAMPLE), terminal_size=(100, 36), run_before=_at(4))


def test_listener_view(snap_compare):
    assert snap_compare(replay_app(SAMPLE_FAILURES), terminal_size=SIZE, run_before=_at(5, "l"))


def test_failures_view(snap_compare):
    assert snap_compare(replay_app(SAMPLE_FAILURES), terminal_size=SIZE, run_before=_at(5, "f"))


def test_group_view_with_a_group_open(snap_compare):
    assert snap_compare(replay_app(SAMPLE_FAILURES), terminal_size=SIZE, run_before=_at(5, "g", "down", "down", "e"))
