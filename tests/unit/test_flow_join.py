"""FlowJoin touches only what changed, and lists every flow with what is attached to it."""

from __future__ import annotations

from tcptop.engines.core.failures import FlowFailures
from tcptop.engines.core.join import FlowJoin
from tests.factories import make_flow


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
