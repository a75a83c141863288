"""The contract's failure fields: defaults for old replay files, round trips, one-line errors for
bad input, and the filter language on listeners and failed connects."""

from __future__ import annotations

import json

import pytest
from factories import make_flow, make_snapshot

from tcptop.filter import compile_filter
from tcptop.model import (Failure, JsonEncoder, Listener, SnapshotFormatError, snapshot_from_json)


def listener(**kw) -> Listener:
    base = dict(id=7, family="ipv4", laddr="0.0.0.0", lport=8080, pid=70, comm="api", netns=1, container="",
                accept_queue=129, accept_queue_max=128, syn_queue=3, drops=40, synack_retrans=2,
                drop_reasons={"TCP_LISTEN_OVERFLOW": 20})
    base.update(kw)
    return Listener(**base)


FAILURE = Failure(pid=42, comm="curl", netns=1, raddr="203.0.113.9", rport=443, reason="ETIMEDOUT", count=2)


def test_a_replay_line_from_before_these_fields_loads_with_empty_ones():
    line = make_snapshot([make_flow(1)]).to_dict()
    for key in ("listeners", "failures", "unmatched"):
        del line[key]
    for key in ("drops", "resets_sent", "resets_received", "last_reset_reason"):
        del line["flows"][0][key]
    snap = snapshot_from_json(json.dumps(line))
    f = snap.flows[0]
    assert (dict(f.drops), f.resets_sent, f.resets_received, f.last_reset_reason, f.drops_total) == ({}, 0, 0, "", 0)
    assert snap.listeners == () and snap.failures == () and dict(snap.unmatched) == {}


def test_failure_fields_round_trip_and_the_encoder_writes_what_to_json_writes():
    flow = make_flow(1, drops={"NETFILTER_DROP": 3, "TCP_ZEROWINDOW": 1}, resets_sent=1,
                     last_reset_reason="sent TCP_STATE")
    snap = make_snapshot([flow], listeners=(listener(),), failures=(FAILURE,),
                         unmatched={"drops": {"NO_SOCKET": 4}, "resets_sent": {"NO_SOCKET": 4}})
    text = snap.to_json()
    assert JsonEncoder().encode(snap) == text
    back = snapshot_from_json(text)
    assert dict(back.flows[0].drops) == {"NETFILTER_DROP": 3, "TCP_ZEROWINDOW": 1} and back.flows[0].drops_total == 4
    assert back.flows[0].last_reset_reason == "sent TCP_STATE"
    assert back.listeners == (listener(drop_reasons=back.listeners[0].drop_reasons),)
    assert dict(back.listeners[0].drop_reasons) == {"TCP_LISTEN_OVERFLOW": 20}
    assert back.failures == (FAILURE,)
    assert {k: dict(v) for k, v in back.unmatched.items()} == {"drops": {"NO_SOCKET": 4}, "resets_sent": {"NO_SOCKET": 4}}


@pytest.mark.parametrize("change, message", [
    (lambda d: d["flows"][0].update(drops={"X": -1}), "flow field drops is not an object of counts"),
    (lambda d: d["flows"][0].update(drops=[1]), "flow field drops is not an object of counts"),
    (lambda d: d.update(listeners={}), "snapshot field listeners is not a list"),
    (lambda d: d["listeners"][0].pop("accept_queue"), "listener lacks accept_queue"),
    (lambda d: d["listeners"][0].update(drops="many"), "listener field drops is not an integer"),
    (lambda d: d["listeners"][0].update(lport=70000), r"listener field lport is out of range \(0 to 65535\)"),
    (lambda d: d["failures"][0].update(count=-1), r"failure field count is out of range"),
    (lambda d: d["failures"][0].update(reason=5), "failure field reason is not a string"),
    (lambda d: d.update(unmatched={"drops": {"A": "b"}}), "unmatched field drops is not an object of counts"),
])
def test_bad_failure_fields_are_one_clear_error(change, message):
    d = make_snapshot([make_flow(1)], listeners=(listener(),), failures=(FAILURE,)).to_dict()
    change(d)
    with pytest.raises(SnapshotFormatError, match=message):
        snapshot_from_json(json.dumps(d))


def test_listeners_and_failed_connects_answer_the_filter_language():
    assert compile_filter("port 8080 and state listen and comm api")(listener())
    assert not compile_filter("rport 8080")(listener())
    assert compile_filter("host 203.0.113.9 and port 443 and pid 42")(FAILURE)
    assert compile_filter("ip and not state established")(FAILURE)
    assert not compile_filter("lport 443")(FAILURE)
