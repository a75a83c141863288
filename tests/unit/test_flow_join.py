"""FlowJoin touches only what changed, and lists every flow with what is attached to it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tcptop.engines.core.failures import FlowFailures
from tcptop.engines.core.join import FlowJoin
from tests.factories import make_flow, next_poll


def _failures(resets_sent: int, last_reset_reason: str) -> FlowFailures:
    return FlowFailures(drops={"TCP_CSUM": 1}, resets_sent=resets_sent, resets_received=0,
                        last_reset_reason=last_reset_reason)


def test_lists_every_flow_and_reuses_the_listing_when_nothing_changed():
    base = {i: make_flow(i) for i in range(1, 6)}
    j = FlowJoin()
    first = j.update(base, set(base), {}, {})
    assert sorted(f.id for f in first) == [1, 2, 3, 4, 5]
    assert all(f is base[f.id] for f in first)
    assert j.update(base, set(), {}, {}) is first


def test_stages_stay_attached_while_the_flow_changes_and_go_with_it():
    base = {i: make_flow(i) for i in range(1, 4)}
    j = FlowJoin()
    j.update(base, set(base), {}, {})
    lat = {"tx": {"qdisc": {"mean_ns": 10}}}
    listed = {f.id: f for f in j.update(base, set(), {2: lat}, {})}
    assert listed[2].latency is lat and listed[1] is base[1]
    again = {f.id: f for f in j.update(base, set(), {2: lat}, {})}
    assert again[2] is listed[2]  # unchanged flow, unchanged stages: the same object
    base[2] = make_flow(2, bytes_sent=100)
    changed = {f.id: f for f in j.update(base, {2}, {}, {})}
    assert changed[2].bytes_sent == 100 and changed[2].latency is lat  # its last stages kept
    del base[2]
    assert sorted(f.id for f in j.update(base, {2}, {}, {})) == [1, 3]


def test_failures_attach_stay_while_the_flow_is_listed_and_go_with_it():
    """The failure engine passes only flows whose failures changed: a flow keeps its last ones."""
    base = {i: make_flow(i) for i in range(1, 3)}
    j = FlowJoin()
    j.update(base, set(base), {}, {})
    ff = _failures(resets_sent=2, last_reset_reason="sent TCP_ABORT_ON_DATA")
    listed = {f.id: f for f in j.update(base, set(), {}, {1: ff})}
    assert listed[1].resets_sent == 2 and listed[1].drops == {"TCP_CSUM": 1}
    assert listed[1].last_reset_reason == "sent TCP_ABORT_ON_DATA"
    assert listed[2] is base[2]
    again = j.update(base, set(), {}, {})
    assert {f.id: f for f in again}[1] is listed[1]  # nothing new: the same object, failures kept
    lat = {"rx": {}}
    both = {f.id: f for f in j.update(base, set(), {1: lat}, {})}
    assert both[1].latency is lat and both[1].resets_sent == 2
    base[1] = make_flow(1, bytes_sent=100)
    moved = {f.id: f for f in j.update(base, {1}, {}, {})}
    assert moved[1].bytes_sent == 100 and moved[1].resets_sent == 2 and moved[1].latency is lat
    more = _failures(resets_sent=3, last_reset_reason="received ECONNRESET")
    newer = {f.id: f for f in j.update(base, set(), {}, {1: more})}
    assert newer[1].resets_sent == 3 and newer[1].last_reset_reason == "received ECONNRESET"
    assert newer[1].bytes_sent == 100
    del base[1]
    assert [f.id for f in j.update(base, {1}, {}, {})] == [2]
    base[1] = make_flow(1)  # the same id listed anew: nothing of the old flow's failures
    assert {f.id: f for f in j.update(base, {1}, {}, {})}[1].resets_sent == 0


def test_the_c_pass_is_used():
    from tcptop.engines.core import flow_decode, join
    assert FlowJoin()._pass is flow_decode.join_pass is join._join_pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sets(st.integers(1, 8)), st.sets(st.integers(1, 8)),
                          st.dictionaries(st.integers(1, 9), st.sampled_from([0, 1, 2])),
                          st.dictionaries(st.integers(1, 9), st.sampled_from([0, 1, 2]))), min_size=1, max_size=6))
def test_the_c_pass_equals_pythons(polls):
    """Polls where flows come, change and go, stages and failures arrive (empty stages too,
    which keep the last ones) for listed flows and for flows no longer listed: the C pass
    lists the same flows, in the same order, with the same values, and keeps the very same
    objects where Python keeps them."""
    from tcptop.engines.core import flow_decode
    from tcptop.engines.core.join import py_join_pass

    stage_kinds = [{}, {"rx": {"app": {"count": 1}}}, {"tx": {}}]
    joins = {"C": FlowJoin(flow_decode.join_pass), "Python": FlowJoin(py_join_pass)}
    base: dict[int, object] = {}
    listed = {name: () for name in joins}
    for n, (present, changing, stages, failures) in enumerate(polls):
        touched = next_poll(base, present, changing, lambda i: make_flow(i, bytes_sent=n))
        st_ = {i: stage_kinds[k] for i, k in stages.items()}
        ff = {i: _failures(k, f"reason {k}") for i, k in failures.items()}
        prev = dict(listed)
        for name, j in joins.items():
            listed[name] = j.update(dict(base), set(touched), dict(st_), dict(ff))
        c, py = listed["C"], listed["Python"]
        assert [f.id for f in c] == [f.id for f in py]
        assert c == py  # field by field
        # where Python kept the object of the last poll, so did C (and nowhere else)
        kept_c = {f.id for f in c if any(f is g for g in prev["C"])}
        kept_py = {f.id for f in py if any(f is g for g in prev["Python"])}
        assert kept_c == kept_py
        # `changes` is exactly the difference between the two listings, in both passes
        for name, j in joins.items():
            before = {f.id: f for f in prev[name]}
            new, gone = j.changes
            assert sorted(f.id for f in new) == sorted(f.id for f in listed[name] if before.get(f.id) is not f)
            assert all(any(f is g for g in listed[name]) for f in new)
            assert sorted(gone) == sorted(set(before) - {f.id for f in listed[name]})
