"""The exporter's series of why connections fail: bounded labels, the engine's counts, the budget."""

from __future__ import annotations

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from factories import make_flow, make_snapshot
from tcptop.filter import compile_filter
from tcptop.frontends.exporter.aggregate import Aggregator
from tcptop.frontends.exporter.failures import MAX_FAILURE_SERIES
from tcptop.frontends.exporter.metrics import FrameCollector
from tcptop.model import Failure, Listener


def samples(frame):
    text = generate_latest(FrameCollector(lambda: frame)).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def listener(i, port, **kw):
    base = dict(id=i, family="ipv4", laddr="0.0.0.0", lport=port, pid=70, comm="api", netns=1, container="",
                accept_queue=0, accept_queue_max=128, syn_queue=0, drops=0, synack_retrans=0)
    base.update(kw)
    return Listener(**base)


def test_reuseport_listeners_of_one_service_are_one_series_with_the_sums():
    snap = make_snapshot([], listeners=(listener(1, 8080, accept_queue=129, drops=40, syn_queue=2),
                                        listener(2, 8080, accept_queue=3, drops=2, synack_retrans=5),
                                        listener(3, 22, comm="sshd")))
    f = Aggregator().update(snap)
    s = samples(f)
    api = frozenset({"comm": "api", "port": "8080", "netns": "1"}.items())
    assert s[("tcptop_listener_accept_queue", api)] == 132
    assert s[("tcptop_listener_accept_queue_max", api)] == 256
    assert s[("tcptop_listener_drops_total", api)] == 42
    assert s[("tcptop_listener_synack_retransmits_total", api)] == 5
    assert s[("tcptop_listener_syn_queue", api)] == 2
    assert f.series == len(s)


def test_failed_connects_beyond_the_cap_share_one_overflow_series_and_the_total_is_kept():
    fails = tuple(Failure(pid=9, comm="crawler", netns=1, raddr=f"10.0.{i // 250}.{i % 250}", rport=80,
                          reason="ECONNREFUSED", count=1 + (i == 0)) for i in range(MAX_FAILURE_SERIES + 50))
    f = Aggregator().update(make_snapshot([], failures=fails))
    s = samples(f)
    got = {dict(ls)["remote"]: v for (n, ls), v in s.items() if n == "tcptop_failed_connects_total"}
    assert len(got) == MAX_FAILURE_SERIES + 1 and got["_overflow_"] == 50
    assert sum(got.values()) == sum(x.count for x in fails) and got["10.0.0.0"] == 2
    assert f.series == len(s)


def test_unmatched_counts_by_reason_and_drops_and_resets_as_group_counters():
    agg = Aggregator()
    a = make_flow(1, role="client", drops={"NETFILTER_DROP": 3}, resets_sent=1)
    agg.update(make_snapshot([a], seq=1, ts=1.0))
    b = make_flow(1, role="client", drops={"NETFILTER_DROP": 3, "TCP_ZEROWINDOW": 2}, resets_sent=1,
                  resets_received=1)
    f = agg.update(make_snapshot([b], seq=2, ts=2.0, unmatched={"drops": {"NO_SOCKET": 7}, "resets_sent": {}}))
    s = samples(f)
    assert sum(v for (n, _), v in s.items() if n == "tcptop_dropped_packets_total") == 5
    assert sum(v for (n, _), v in s.items() if n == "tcptop_resets_received_total") == 1
    assert s[("tcptop_unmatched_drops_total", frozenset({("reason", "NO_SOCKET")}))] == 7
    assert f.series == len(s)


def test_the_filter_picks_listeners_and_failed_connects_too():
    snap = make_snapshot([], listeners=(listener(1, 8080), listener(2, 22, comm="sshd")),
                         failures=(Failure(1, "curl", 1, "10.0.0.9", 443, "ETIMEDOUT", 1),
                                   Failure(1, "curl", 1, "10.0.0.9", 80, "ETIMEDOUT", 1)))
    f = Aggregator(keep=compile_filter("port 443 or port 8080")).update(snap)
    assert [r.labels[1] for r in f.failures.listeners] == ["8080"]
    assert [labels[2] for labels, _ in f.failures.failures] == ["443"]
