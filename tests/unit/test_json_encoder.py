"""The streaming JSON encoder writes exactly what Snapshot.to_json writes, snapshot after snapshot."""

import dataclasses
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcptop.frontends import json as json_frontend
from factories import make_flow, next_poll
from tcptop.filter import compile_filter
from tcptop.frontends.json import FlowSieve, LineEncoder
from tcptop.model import METRICS, Flow, JsonEncoder, Snapshot, snapshot_from_json


def flow(i, **kw):
    base = dict(id=i, family="ipv4", laddr="10.0.0.1", lport=1000 + i, raddr="10.0.0.2", rport=80,
                state="ESTABLISHED", pid=7, comm='we"ird\\name', netns=1, **{k: 0 for k in METRICS})
    base.update(duration_s=1.5, established_ts=1000.0 + i)
    base.update(kw)
    return Flow(**base)


def test_encoder_equals_to_json_across_snapshots_with_reused_and_changed_flows():
    enc = JsonEncoder()
    a, b, c = flow(1), flow(2, bytes_sent=10), flow(3, closed=True, closed_ts=1010.0, state="CLOSE")
    s1 = Snapshot(ts=2000.0, interval_s=1.0, flows=(a, b, c))
    s2 = Snapshot(ts=2001.0, interval_s=1.0, flows=(a, dataclasses.replace(b, bytes_sent=20), flow(4)))
    for snap in (s1, s2):
        line = enc.encode(snap)
        assert line == snap.to_json()
        back = snapshot_from_json(line)
        assert [f.id for f in back.flows] == [f.id for f in snap.flows]
    ages = {f.id: f.age_s(2001.0) for f in s2.flows}
    assert ages[1] == 1000.0 and ages[4] == 997.0
    assert c.age_s(5000.0) == 7.0  # a closed flow's age stops at its close


# The C writer of a flow's text (_flow_json.c) against Python's json, on flows drawn over every
# field's type and range: strings with quotes, controls, DEL and non-ASCII, integers past 2^63,
# floats with long reprs, NaN and infinities inside stages, read-only drops.

_TEXT = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x2FF), max_size=12)
_STAGE = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3), max_leaves=12)


@st.composite
def any_flow(draw):
    kw = {}
    for f in dataclasses.fields(Flow):
        if f.type == "str":
            kw[f.name] = draw(_TEXT)
        elif f.type == "int":
            kw[f.name] = draw(st.integers(0, 2**64 - 1))
        elif f.type == "float":
            kw[f.name] = draw(st.floats(0, 2e9))
        elif f.type == "bool":
            kw[f.name] = draw(st.booleans())
    kw["latency"] = draw(st.none() | st.dictionaries(_TEXT, _STAGE, max_size=3))
    kw["rtt_hist"] = tuple(draw(st.lists(st.tuples(st.integers(1, 2**27), st.integers(1, 2**32)), max_size=4)))
    kw["drops"] = MappingProxyType(draw(st.dictionaries(_TEXT, st.integers(1, 2**40), max_size=3)))
    return Flow(**kw)


@settings(max_examples=300, deadline=None)
@given(any_flow())
def test_the_c_flow_text_equals_pythons(f):
    assert json_frontend.C_WHY == ""  # built by `make setup`
    assert LineEncoder()._pieces(f) == JsonEncoder()._pieces(f)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 30), max_size=25), min_size=1, max_size=6), st.randoms())
def test_the_c_delta_equals_pythons(polls, rnd):
    """Flows come, change (a new object), stay (the same object) and go, poll after poll."""
    from tcptop.frontends.json import _c, py_delta
    objects: dict[int, Flow] = {}
    shown_c: dict[int, Flow] = {}
    shown_py: dict[int, Flow] = {}
    for ids in polls:
        flows = []
        for i in dict.fromkeys(ids):  # unique, in order
            if i not in objects or rnd.random() < 0.3:
                objects[i] = flow(i, bytes_sent=rnd.randrange(1000))
            flows.append(objects[i])
        c = _c.delta(shown_c, tuple(flows))
        py = py_delta(shown_py, tuple(flows))
        assert [f is g for f, g in zip(c[0], py[0])] == [True] * len(py[0]) and len(c[0]) == len(py[0])
        assert sorted(c[1]) == sorted(py[1])
        assert shown_c == shown_py and all(shown_c[i] is shown_py[i] for i in shown_c)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.lists(st.integers(0, 30), max_size=25), st.sets(st.integers(0, 40))), min_size=1,
                max_size=6), st.randoms(), st.booleans())
def test_the_c_follow_equals_pythons(polls, rnd, filtered):
    """Changed flows (new objects, or the very one shown), gone ids (shown or not), a filter
    that refuses some: the same line and the same `shown` from C and Python, and the filter
    asked the same questions in the same order."""
    from tcptop.frontends.json import _c, py_follow
    objects: dict[int, Flow] = {}
    shown = {"c": {}, "py": {}}
    asked = {"c": [], "py": []}
    for ids, gone in polls:
        changed = []
        for i in dict.fromkeys(ids):
            if i not in objects or rnd.random() < 0.5:
                objects[i] = flow(i, bytes_sent=rnd.randrange(1000))
            changed.append(objects[i])
        gone = tuple(i for i in gone if i not in ids)
        out = {}
        for impl, fn in (("c", _c.follow), ("py", py_follow)):
            keep = (lambda f, who=impl: asked[who].append(f.id) or f.bytes_sent % 3 != 0) if filtered else None
            out[impl] = fn(shown[impl], tuple(changed), gone, keep)
        assert [f.id for f in out["c"][0]] == [f.id for f in out["py"][0]]
        assert all(f is g for f, g in zip(out["c"][0], out["py"][0]))
        assert out["c"][1] == out["py"][1] and asked["c"] == asked["py"]
        assert shown["c"] == shown["py"] and all(shown["c"][i] is shown["py"][i] for i in shown["c"])


@settings(max_examples=150, deadline=None)
@given(st.lists(any_flow(), max_size=6), st.lists(st.floats(0, 4e9), min_size=1, max_size=3))
def test_the_c_line_equals_pythons_across_snapshots(flows, stamps):
    """Ages (open, closed, never established), reused and new flows, line after line."""
    flows = [dataclasses.replace(f, id=i) for i, f in enumerate(flows)]
    c, py = LineEncoder(), JsonEncoder()
    for n, ts in enumerate(stamps):
        snap = Snapshot(ts=ts, interval_s=1.0, flows=tuple(flows[n:]) + tuple(flows[:n]))
        assert c.encode(snap) == py.encode(snap) == snap.to_json()


@settings(max_examples=150, deadline=None)
@given(st.lists(any_flow(), max_size=6), st.floats(0, 4e9), st.integers(0, 5))
def test_a_line_written_without_reuse_equals_pythons(flows, ts, odd):
    """A --changes line's flows are written straight into the line, ages in place: the same
    text, also with a flow among them whose value C leaves to Python (a key json turns into
    a string)."""
    flows = [dataclasses.replace(f, id=i) for i, f in enumerate(flows)]
    if odd < len(flows):
        flows[odd] = dataclasses.replace(flows[odd], latency={1: {"count": 2}})
    snap = Snapshot(ts=ts, interval_s=1.0, flows=tuple(flows))
    c = LineEncoder()
    c.reuse = False
    assert c.encode(snap) == JsonEncoder().encode(snap) == snap.to_json()
    assert c._cache == {}  # nothing kept


def test_a_flow_left_to_python_is_written_by_python_in_a_reused_line():
    odd = flow(2, latency={1: {"count": 2}})
    snap = Snapshot(ts=2000.0, interval_s=1.0, flows=(flow(1), odd, flow(3)))
    c = LineEncoder()
    for _ in range(2):  # written, then reused
        assert c.encode(snap) == snap.to_json()
    assert c._cache[2][0] is odd


@pytest.mark.parametrize("impl", ["c", "python"])
def test_sieve_keeps_what_the_filter_keeps_and_asks_only_about_changed_flows(impl, monkeypatch):
    """Over successive snapshots the sieve lists exactly the flows the filter keeps, in order,
    and asks the filter only about flows it has not seen as that very object."""
    if impl == "python":
        monkeypatch.setattr(json_frontend, "_c", None)
    else:
        assert json_frontend.C_WHY == ""
    asked = []
    pred = compile_filter("lport 80 or comm redis*")

    def keep(f):
        asked.append(f.id)
        return pred(f)

    sieve = FlowSieve(keep)
    flows = [make_flow(i, lport=80 if i % 3 == 0 else 1000 + i, comm="redis-server" if i % 5 == 0 else "curl")
             for i in range(1, 31)]
    assert sieve(flows) == tuple(f for f in flows if pred(f))
    assert sorted(asked) == list(range(1, 31))
    asked.clear()
    # two change (one now kept, one no longer), one goes, one comes, the rest are the same objects
    flows[1] = dataclasses.replace(flows[1], lport=80)
    flows[2] = dataclasses.replace(flows[2], lport=2000)
    del flows[10]
    flows.append(make_flow(99, lport=80))
    got = sieve(flows)
    assert got == tuple(f for f in flows if pred(f))
    assert flows[1] in got and flows[2] not in got and got[-1].id == 99
    assert sorted(asked) == [2, 3, 99]
    asked.clear()
    assert sieve(flows) == got and asked == []


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.integers(0, 30), max_size=25), min_size=1, max_size=6), st.randoms())
def test_the_c_sieve_equals_pythons(polls, rnd):
    """The same kept flows (the very objects), the same questions, the same `seen`, poll after poll."""
    from tcptop.frontends.json import _c, py_sieve
    objects: dict[int, Flow] = {}
    seen_c: dict = {}
    seen_py: dict = {}
    for ids in polls:
        flows = []
        for i in dict.fromkeys(ids):
            if i not in objects or rnd.random() < 0.3:
                objects[i] = flow(i, bytes_sent=rnd.randrange(1000))
            flows.append(objects[i])
        asked_c, asked_py = [], []

        def keep(f, asked):
            asked.append(f.id)
            return f.bytes_sent % 2 == 0 and 1 or 0  # a truthy int, not a bool

        c = _c.sieve(tuple(flows), seen_c, lambda f: keep(f, asked_c))
        py = py_sieve(tuple(flows), seen_py, lambda f: keep(f, asked_py))
        assert len(c) == len(py) and all(a is b for a, b in zip(c, py))
        assert asked_c == asked_py
        assert seen_c.keys() == seen_py.keys()
        assert all(seen_c[i][0] is seen_py[i][0] and seen_c[i][1] is seen_py[i][1] for i in seen_c)


def test_an_error_in_the_filter_comes_out_of_the_c_sieve_and_keeps_what_was_learnt():
    from tcptop.frontends.json import _c
    flows = tuple(flow(i) for i in range(5))
    seen: dict = {}

    def keep(f):
        if f.id == 3:
            raise ValueError("boom")
        return True

    with pytest.raises(ValueError, match="boom"):
        _c.sieve(flows, seen, keep)
    assert sorted(seen) == [0, 1, 2] and all(seen[i] == (flows[i], True) for i in seen)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sets(st.integers(1, 12)), st.sets(st.integers(1, 12))), min_size=1, max_size=6),
       st.booleans())
def test_delta_lines_from_the_sources_changes_equal_those_found_by_a_pass_over_every_flow(polls, filtered):
    """The engine's FlowJoin says what changed; a --changes line built from that carries the
    same flows and gone ids as one built by comparing every flow with the line before, with
    and without a filter (a flow leaving the filter is gone), and the filter is asked only
    about flows that changed."""
    import json

    from tcptop.engines.core.join import FlowJoin
    from tcptop.frontends.json import DeltaEncoder

    asked = []

    def keep(f):
        asked.append(f.id)
        return f.bytes_sent % 3 != 0

    join, base = FlowJoin(), {}
    fast, slow = DeltaEncoder(keep if filtered else None), DeltaEncoder(keep if filtered else None)
    for n, (present, changing) in enumerate(polls):
        touched = next_poll(base, present, changing, lambda i: flow(i, bytes_sent=n + i))
        listing = join.update(dict(base), touched, {}, {})
        snap = Snapshot(ts=2000.0 + n, interval_s=1.0, flows=listing, changes=join.changes)
        asked.clear()
        a = json.loads(fast.encode(snap))
        if n and filtered:
            assert sorted(asked) == sorted(f.id for f in join.changes[0])
        b = json.loads(slow.encode(dataclasses.replace(snap, changes=None)))
        assert sorted(a["flows"], key=lambda d: d["id"]) == sorted(b["flows"], key=lambda d: d["id"])
        assert sorted(a.get("gone", [])) == sorted(b.get("gone", []))
        assert a.keys() == b.keys()


_NEAR = [1e-4, 9.999999999999999e-05, 0.00010000000000000002, 2.0**32, 4294967295.999999, 4294967295.9999995,
         1796169625.979005, 1796169625.9790051, 0.5, 1.0, 123.456, 1e-4 * 3, 2.0**32 - 2**-21]
_FLOATS = (st.integers(0, 2**32 * 10**6).map(lambda m: m / 1e6) | st.integers(0, 2**32 * 10**3).map(lambda m: m / 1e3)
           | st.floats(0, 2.0**33) | st.sampled_from(_NEAR) | st.floats(-1e3, 0))


@settings(max_examples=500, deadline=None)
@given(_FLOATS, _FLOATS, st.floats(1e9, 2e9))
def test_floats_written_as_repr_writes_them(est, closed, ts):
    """Timestamps to the microsecond and ages to the millisecond take a shortcut past dtoa:
    every float still reads as repr() writes it, at the shortcut's bounds and away from them."""
    f = flow(1, established_ts=est, closed_ts=closed, closed=bool(closed % 2 > 1))
    assert LineEncoder()._pieces(f) == JsonEncoder()._pieces(f)
    snap = Snapshot(ts=ts, interval_s=1.0, flows=(f,))
    assert LineEncoder().encode(snap) == JsonEncoder().encode(snap)


_TIES = st.integers(0, 4 * 10**9).flatmap(
    lambda m: st.sampled_from([(m + 0.5) / 1000, m / 1000 + 0.0005, (m + 0.5) / 1000 + 1e-12, (m + 0.5) / 1000 - 1e-12]))


@settings(max_examples=500, deadline=None)
@given(_TIES, st.floats(0, 2e9), st.booleans())
def test_ages_at_and_near_a_half_thousandth_round_as_python_rounds_them(age, est, by_duration):
    """round(age, 3) has a shortcut away from ties: at a tie, and an ulp or two from one, the
    age still reads as Python's round() and repr() write it."""
    if by_duration:  # never established: the age is the duration itself
        f = flow(1, established_ts=0.0, duration_s=age)
    else:
        f = flow(1, established_ts=est, closed_ts=est + age, closed=True, state="CLOSE")
    snap = Snapshot(ts=est + 2 * age + 1, interval_s=1.0, flows=(f,))
    assert LineEncoder().encode(snap) == JsonEncoder().encode(snap) == snap.to_json()
