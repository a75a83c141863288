"""Replay files: played in order, corrupt lines reported as FILE:LINE and skipped, hopeless files refused."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from tcptop.model import SnapshotFormatError, snapshot_from_json
from tcptop.replay import ReplayError, ReplaySource
from tcptop.source import PACE_MAX_S, PACE_MIN_S

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


# -- inputs that are not plain files ------------------------------------------------

LINES = SAMPLE.read_text().splitlines(keepends=True)


def seqs(src, n):
    return [src.poll().seq for _ in range(n)]


def test_a_pipe_plays_as_lines_arrive_and_ends_when_its_writer_closes():
    """`--replay <(cmd)` and FIFOs: "not seekable" traceback before."""
    r, w = os.pipe()
    try:
        os.write(w, "".join(LINES[:2]).encode())
        src = ReplaySource(f"/dev/fd/{r}")
        assert seqs(src, 3) == [1, 2, 2]
        assert not src.ended  # the writer may still write
        os.write(w, LINES[2].encode() + LINES[3].encode()[:100])  # a line and the start of the next
        assert seqs(src, 2) == [3, 3]
        os.write(w, LINES[3].encode()[100:])
        assert seqs(src, 1) == [4]
        assert src.step_back().seq == 3  # the spool keeps what went by
        assert seqs(src, 1) == [4]
        os.write(w, "".join(LINES[4:]).encode())
    finally:
        os.close(w)
    assert seqs(src, 5) == [5, 6, 7, 8, 8]
    assert src.ended and src.errors == [] and len(src) == 8
    src.close()
    os.close(r)


def test_the_last_line_of_a_finished_pipe_is_played_even_without_a_newline():
    r, w = os.pipe()
    os.write(w, (LINES[0] + LINES[1].rstrip("\n")).encode())
    os.close(w)
    src = ReplaySource(f"/dev/fd/{r}")
    assert seqs(src, 3) == [1, 2, 2] and src.ended
    src.close()
    os.close(r)


def test_stdin_is_played_with_a_dash(monkeypatch):
    r, w = os.pipe()
    os.write(w, "".join(LINES[:3]).encode())
    os.close(w)
    saved = os.dup(0)
    os.dup2(r, 0)
    try:
        src = ReplaySource("-")
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(r)
    assert src.name == "stdin"
    assert seqs(src, 4) == [1, 2, 3, 3] and src.ended
    src.close()


def test_a_fifo_is_waited_for_until_its_first_snapshot(tmp_path):
    fifo = tmp_path / "live.fifo"
    os.mkfifo(fifo)

    def writer():
        with open(fifo, "w") as f:  # opens when the reader does
            f.write("\n")
            f.flush()
            time.sleep(0.2)  # the reader must wait, not give up on an empty input
            f.write(LINES[0])

    t = threading.Thread(target=writer)
    t.start()
    src = ReplaySource(fifo)
    t.join()
    assert seqs(src, 2) == [1, 1] and src.ended
    src.close()


@pytest.mark.parametrize("content, words", [("", "empty file"), ("junk\n", r"no readable snapshot in 1 line\(s\)")])
def test_a_pipe_without_any_snapshot_is_refused_with_one_line(content, words):
    r, w = os.pipe()
    os.write(w, content.encode())
    os.close(w)
    with pytest.raises(ReplayError, match=words):
        ReplaySource(f"/dev/fd/{r}")
    os.close(r)


def test_a_terminal_is_refused():
    master, slave = os.openpty()
    try:
        with pytest.raises(ReplayError, match="is a terminal, not a recording"):
            ReplaySource(os.ttyname(slave))
    finally:
        os.close(master)
        os.close(slave)


def test_follow_plays_what_is_appended_and_never_ends(tmp_path):
    path = tmp_path / "growing.jsonl"
    path.write_text("".join(LINES[:2]))
    src = ReplaySource(path, follow=True)
    assert seqs(src, 3) == [1, 2, 2] and not src.ended
    with open(path, "a") as f:
        f.write(LINES[2])
        f.write(LINES[3][:50])  # being written
        f.flush()
        assert seqs(src, 2) == [3, 3]
        f.write(LINES[3][50:])
    assert seqs(src, 2) == [4, 4] and not src.ended and src.errors == []
    # Rewritten from scratch (a new recording into the same file): played from its start.
    path.write_text(LINES[6])
    assert seqs(src, 2) == [7, 7]
    assert src.errors == [f"{path}: truncated; playing it again from its start"]
    src.close()


def test_follow_waits_for_the_first_snapshot_of_an_empty_file(tmp_path):
    path = tmp_path / "soon.jsonl"
    path.write_text("")

    def later():
        time.sleep(0.3)
        path.write_text(LINES[0])

    t = threading.Thread(target=later)
    t.start()
    src = ReplaySource(path, follow=True)
    t.join()
    assert src.poll().seq == 1
    src.close()


def test_without_follow_a_file_ends_at_its_last_line_even_if_it_grows(tmp_path):
    path = tmp_path / "rec.jsonl"
    path.write_text("".join(LINES[:2]))
    src = ReplaySource(path)
    with open(path, "a") as f:
        f.write(LINES[2])
    assert seqs(src, 3) == [1, 2, 2] and src.ended
    src.close()


# -- pacing ---------------------------------------------------------------------

@pytest.mark.parametrize("interval, pace", [(1e-300, 0.01), (0.0, 1.0), (2.0, 2.0), (1e19, 3600.0)])
def test_the_recorded_interval_is_played_within_sane_bounds(tmp_path, interval, pace):
    """1e-300 made the screen spin at 100 % CPU; 1e300 overflowed the worker's timer (and is
    now refused by the decoder: no interval is 10^300 seconds)."""
    line = json.loads(LINES[0])
    line["interval_s"] = interval
    path = tmp_path / "rec.jsonl"
    path.write_text(json.dumps(line) + "\n")
    src = ReplaySource(path)
    assert src.interval_s == pace
    src.faster()
    assert PACE_MIN_S <= src.interval_s <= PACE_MAX_S


# -- every field is checked ----------------------------------------------------------

def _line(**changes):
    d = json.loads(LINES[0])
    for path, value in changes.items():
        *parents, last = path.split("__")
        target = d
        for p in parents:
            target = target[int(p)] if p.isdigit() else target[p]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value
    return json.dumps(d)


_DELETE = object()


@pytest.mark.parametrize("changes, reason", [
    ({"run__degraded": "str"}, "run field degraded is not a list of strings"),  # showed as "s · t · r"
    ({"run__degraded": [1]}, "run field degraded is not a list of strings"),
    ({"run__hooks": {"x": 1}}, "run field hooks is not an object of strings"),
    ({"run__hooks": ["ok"]}, "run field hooks is not an object of strings"),
    ({"run__flows_evicted": True}, "run field flows_evicted is not an integer"),
    ({"run__events_lost": -1}, "run field events_lost is out of range (0 to 2^64-1)"),
    ({"run__events_lost_by": [1]}, "run field events_lost_by is not an object"),
    ({"run__events_lost_by": {"notices": -2}}, "run field events_lost_by.notices is out of range (0 to 2^64-1)"),
    ({"run__engine": 5}, "run field engine is not a string"),
    ({"run": []}, "snapshot field run is not an object"),
    ({"seq": "7"}, "snapshot field seq is not an integer"),
    ({"host": None}, "snapshot field host is not a string"),
    ({"kernel": 6.18}, "snapshot field kernel is not a string"),
    ({"ts": -1}, "snapshot field ts is out of range"),
    ({"interval_s": 1e300}, "snapshot field interval_s is out of range"),
    ({"latency": [1]}, "snapshot field latency is not an object"),
    ({"flows__0__lport": 70000}, "flow field lport is out of range (0 to 65535)"),
    ({"flows__0__bytes_sent": -5}, "flow field bytes_sent is out of range"),
    ({"flows__0__bytes_sent": 2**64}, "flow field bytes_sent is out of range"),
    ({"flows__0__cwnd": 10.5}, "flow field cwnd is not an integer"),
    ({"flows__0__duration_s": "1s"}, "flow field duration_s is not a number"),
    ({"flows__0__closed": 0}, "flow field closed is not true/false"),
    ({"flows__0__comm": ["nginx"]}, "flow field comm is not a string"),
    ({"flows__0__rtt_hist": [[1, -2]]}, "flow field rtt_hist is not a list of [bound_us, count] pairs"),
    ({"flows__0__latency": {"rx": {"tcp": {"count": 3, "p99_us": "slow"}}}},
     "flow field latency.rx.tcp.p99_us is not a number"),
    ({"flows__0__latency": {"rx": {"tcp": {"count": 3, "p99_us": 1e300}}}},
     "flow field latency.rx.tcp.p99_us is out of range"),
    ({"flows__0__latency": {"tx": {"tcp": 5}}}, "flow field latency.tx is not an object of stages"),
    ({"flows__0__latency": {"tx": {"tcp": {"buckets": [[None, 1], [5]]}}}},
     "flow field latency.tx.tcp.buckets is not a list of [bound_ns, samples] pairs"),
    ({"flows__0__family": _DELETE}, "flow lacks family"),
])
def test_every_field_of_a_line_is_checked(changes, reason):
    with pytest.raises(SnapshotFormatError) as info:
        snapshot_from_json(_line(**changes))
    assert reason in str(info.value)


@pytest.mark.parametrize("text, reason", [
    ('{"ts": NaN, "interval_s": 1, "flows": []}', "not JSON (NaN is not a number)"),
    ('{"ts": 1, "interval_s": Infinity, "flows": []}', "not JSON (Infinity is not a number)"),
    ("[" * 100_000, "not a snapshot (JSON nested too deep)"),
    ('{"ts": ' + "1" * 5000 + ', "interval_s": 1, "flows": []}', "not JSON (Exceeds the limit"),
])
def test_json_the_contract_cannot_hold_is_one_error(text, reason):
    with pytest.raises(SnapshotFormatError) as info:
        snapshot_from_json(text)
    assert reason in str(info.value) and "\n" not in str(info.value)


def test_old_replay_files_stay_readable():
    """Lines of the oldest contract (no role, rtt_hist, established_ts, ...) take defaults."""
    for path in (SAMPLE, DATA / "sample_latency.jsonl"):
        src = ReplaySource(path)
        while not src.ended:
            src.poll()
        assert src.errors == []
        src.close()
    minimal = {k: v for k, v in json.loads(LINES[0]).items() if k in ("ts", "interval_s", "flows")}
    snap = snapshot_from_json(json.dumps(minimal))
    assert snap.run.engine == "replay" and snap.seq == 0 and snap.flows[0].role == ""


def test_losses_by_cause_round_trip_and_old_lines_have_none():
    d = json.loads(LINES[0])
    d["run"]["events_lost"] = 7
    d["run"]["events_lost_by"] = {"closed_records": 5, "notices": 0, "failure_sockets": 2}
    run = snapshot_from_json(json.dumps(d)).run
    assert run.events_lost == 7 and run.events_lost_by == d["run"]["events_lost_by"]
    assert run.to_dict()["events_lost_by"] == d["run"]["events_lost_by"]
    assert snapshot_from_json(LINES[0]).run.events_lost_by == {}


def test_fields_a_newer_tcptop_adds_are_ignored():
    d = json.loads(LINES[0])
    d["future"] = {"x": 1}
    d["flows"][0]["future_metric"] = 5
    d["run"]["future"] = [1]
    assert snapshot_from_json(json.dumps(d)).seq == 1
