"""Replay files: played in order, corrupt lines reported as FILE:LINE and skipped, hopeless files refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcptop.replay import ReplayError, ReplaySource

DATA = Path(__file__).resolve().parents[1] / "data"
SAMPLE = DATA / "sample.jsonl"


def test_plays_every_snapshot_in_order_then_holds_the_last():
    src = ReplaySource(SAMPLE)
    seqs = [src.poll().seq for _ in range(8)]
    assert seqs == [1, 2, 3, 4, 5, 6, 7, 8]
    assert src.ended
    assert src.poll().seq == 8
    assert src.errors == []
    assert src.interval_s == 1.0
    src.close()


def test_corrupt_lines_are_reported_with_their_line_number_and_skipped(tmp_path):
    good = SAMPLE.read_text().splitlines()
    lines = [good[0], '{"ts": 1, "interval_s": 1, "flows": [{"id": 1}]}', "not json at all", "",
             good[1], '{"ts": "yesterday", "interval_s": 1, "flows": []}', b"\xff\xfe".decode("latin-1"), good[2]]
    path = tmp_path / "rec.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    # the latin-1 line, re-encoded as UTF-8, is valid text but not JSON; write raw bytes too:
    raw = path.read_bytes().replace("ÿþ".encode("utf-8"), b"\xff\xfe")
    path.write_bytes(raw)
    src = ReplaySource(path)
    assert [src.poll().seq for _ in range(3)] == [1, 2, 3]
    assert src.errors == [
        f"{path}:2: flow lacks family, laddr, lport, raddr, rport, state, pid, comm, netns, "
        "flight_size, rwnd, cwnd, mss, retrans_packets, bytes_sent, bytes_received, fast_retrans, timeouts, "
        "app_wqueue, app_wqueue_max, rtt_samples, rtt_sum_us, read_bytes, write_bytes, duration_s",
        f"{path}:3: not JSON (Expecting value at column 1)",
        f"{path}:6: snapshot field ts is not a number",
        f"{path}:7: not UTF-8 text (byte 1)",
    ]
    assert src.shown_line == 8


def test_a_truncated_last_line_is_one_error_not_a_crash(tmp_path):
    text = SAMPLE.read_text()
    path = tmp_path / "cut.jsonl"
    path.write_text(text[: len(text) - 200])
    src = ReplaySource(path)
    seqs = [src.poll().seq for _ in range(9)]
    assert seqs == [1, 2, 3, 4, 5, 6, 7, 7, 7]
    assert len(src.errors) == 1 and src.errors[0].startswith(f"{path}:8: not JSON")


@pytest.mark.parametrize("content, words", [
    ("", "empty file"),
    ("\n\n  \n", "empty file"),
    ("garbage\n{}\n", "no readable snapshot in 2 line(s); first error: "),
])
def test_hopeless_files_are_refused_with_one_line(tmp_path, content, words):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ReplayError) as info:
        ReplaySource(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ")
    assert words in msg
    assert "\n" not in msg


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(ReplayError, match=r"missing\.jsonl: cannot read: No such file"):
        ReplaySource(tmp_path / "missing.jsonl")


def test_step_back_and_speed():
    src = ReplaySource(SAMPLE)
    for _ in range(4):
        src.poll()
    assert src.step_back().seq == 3
    assert src.poll().seq == 4
    assert src.faster() == 2.0 and src.interval_s == 0.5
    assert src.slower() == 1.0 and src.slower() == 0.5
    for _ in range(10):
        src.slower()
    assert src.speed == 0.25
    src.rewind()
    assert src.poll().seq == 1
