"""Fuzzing the replay decoder: any JSON value, any line of bytes, is a snapshot or one error line.

Bounds checked on every input (counted, not timed): decoding a line of n characters runs
at most LINES_FIXED + LINES_PER_CHAR * n Python lines (json itself is C and linear) and
allocates at most BYTES_FIXED + BYTES_PER_CHAR * n bytes. A line the decoder accepts is
then shown everywhere the screen shows a flow (table cells, detail pane, waterfall,
header) without an exception: validation is what stands between a file and the screen.
The runs are derandomized: the same inputs on every run; TCPTOP_FUZZ_SCALE=N multiplies
every budget for a longer local run.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

from budget import FUZZ_SCALE, lines_run, peak_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from tcptop.frontends.screen.columns import COLUMNS
from tcptop.frontends.screen.store import FlowStore
from tcptop.model import Snapshot, SnapshotFormatError, snapshot_from_json
from tcptop.replay import ReplayError, ReplaySource
from tcptop.widgets.detail import render_detail
from tcptop.widgets.header import header_text
from tcptop.widgets.waterfall import render_waterfall

LINES_PER_CHAR = 4    # measured worst: well under 1 (a flow is ~700 characters, ~250 lines)
LINES_FIXED = 3000
BYTES_PER_CHAR = 64
BYTES_FIXED = 256 << 10

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=400 * FUZZ_SCALE,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

DATA = Path(__file__).resolve().parents[1] / "data"
BASE_LINE = (DATA / "sample_latency.jsonl").read_text().splitlines()[0]
BASE = json.loads(BASE_LINE)
BASE_SNAP = snapshot_from_json(BASE_LINE)

scalars = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
           | st.sampled_from([0, 1, 65535, 65536, 2**64 - 1, 2**64, -1])
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
extremes = st.sampled_from([0, 65535, 2**64 - 1, 1.8e19, 0.0, "", "x" * 300, "\x1b]2;title\x07\x1b[2J", "\n\t\r",
                           "ESTABLISHED", "LISTEN", "CLOSE", "bogus", "ipv6", "::ffff:1.2.3.4", "loss", True, False,
                           [], {}, None, [[1, 2]], {"rx": {}}, {"tx": {"?": {"count": 1, "p50_us": 1.8e19}}}])
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=24)


def _paths(value, prefix=()):
    """Every place in the sample snapshot a value sits, to be replaced or removed."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value[:3]):
            yield from _paths(v, prefix + (i,))


PATHS = [p for p in _paths(BASE) if p]
DELETE = object()
mutations = st.lists(st.tuples(st.sampled_from(PATHS), extremes | json_values | st.just(DELETE)), min_size=1, max_size=3)


def mutated(changes) -> dict:
    d = json.loads(BASE_LINE)
    for path, value in changes:
        target = d
        try:
            for key in path[:-1]:
                target = target[key]
            if value is DELETE:
                del target[path[-1]]
            else:
                target[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            pass  # an earlier change removed or replaced the parent
    return d


def decode(text: str) -> Snapshot | None:
    """The property: a Snapshot or one SnapshotFormatError line, within the budget."""
    lines, snap, error = lines_run(lambda: snapshot_from_json(text))
    assert lines <= LINES_FIXED + LINES_PER_CHAR * len(text), (lines, len(text))
    if error is not None:
        assert isinstance(error, SnapshotFormatError), f"{type(error).__name__}: {error}"
        msg = str(error)
        assert msg and "\n" not in msg and len(msg) < 400, msg
        return None
    assert isinstance(snap, Snapshot)
    return snap


def show_everywhere(snap: Snapshot) -> None:
    """Everything the screen draws for a snapshot, after one with ordinary values (rates);
    nothing a file holds reaches the terminal as a control character."""
    out = io.StringIO()
    console = Console(file=out, width=120, color_system=None)
    store = FlowStore()
    for s in (BASE_SNAP, snap):
        store.install(store.builder.build(s, store.view, frozenset(f.id for f in s.flows)))
    now = store.now
    for row in store.window(0, 50):
        for col in COLUMNS:
            col.key(row, now)
            col.text(row, now)
            if col.style is not None:
                col.style(row)
        console.print(render_detail(row, now, 100))
        console.print(render_waterfall(row.flow.latency, snap.latency, 100))
    console.print(header_text(store, False, None))
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f]", out.getvalue())


@FUZZ
@given(json_values)
def test_any_json_value_is_a_snapshot_or_one_error(value):
    decode(json.dumps(value, allow_nan=True))


@settings(FUZZ, max_examples=500 * FUZZ_SCALE)
@given(mutations)
def test_any_change_to_a_good_line_is_caught_or_shown_without_harm(changes):
    snap = decode(json.dumps(mutated(changes), allow_nan=True))
    if snap is not None:
        show_everywhere(snap)


@FUZZ
@given(st.text(max_size=300))
def test_any_text_is_a_snapshot_or_one_error(text):
    decode(text)


@settings(FUZZ, max_examples=150 * FUZZ_SCALE)
@given(st.lists(st.binary(max_size=200) | st.just(BASE_LINE.encode()), min_size=1, max_size=6))
def test_any_bytes_replay_plays_or_is_refused_in_one_line(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("fuzz") / "rec.jsonl"
    path.write_bytes(b"\n".join(lines))
    try:
        src = ReplaySource(path)
    except ReplayError as e:
        assert "\n" not in str(e)
        return
    for _ in range(len(lines) + 1):
        src.poll()
    assert src.ended
    assert all("\n" not in e for e in src.errors)
    src.close()


def test_big_lines_stay_within_budget():
    """A line of 5,000 flows (3.5 MB) and hostile shapes: the work and memory grow with the line."""
    many = dict(BASE, flows=BASE["flows"] * 1000)
    for text in (json.dumps(many), "[" * 200_000, '"' + "x" * 1_000_000 + '"', "1" * 4000,
                 json.dumps(dict(BASE, flows=[{"id": 1}] * 50_000))):
        decode(text)
        assert peak_bytes(lambda: snapshot_from_json(text)) <= BYTES_FIXED + BYTES_PER_CHAR * len(text)
