"""The streaming JSON encoder writes exactly what Snapshot.to_json writes, snapshot after snapshot."""

import dataclasses

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
