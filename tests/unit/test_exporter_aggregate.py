"""The exporter's aggregation: groups, monotonic counters across closes and moves, histograms, the series cap."""

import dataclasses

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from factories import make_flow, make_snapshot
from tcptop.filter import compile_filter
from tcptop.frontends.exporter.aggregate import (FLOW_SERIES, GROUP_SERIES, OVERFLOW_SERIES, RTT_BOUNDS_US, STAGE_BOUNDS_NS,
                                                 Aggregator, Hist, bucket_delta)
from tcptop.frontends.exporter.groups import OVERFLOW_KEY, group_key, remote_net, service_side
from tcptop.frontends.exporter.metrics import FrameCollector
from tcptop.model import RunInfo

RUN = RunInfo(engine="core", hooks={"iterator tcp": "ok", "tracepoint tcp_cong_state_set": "unavailable: x",
                                    "rx_queued": "ok: tracepoint sk_data_ready",
                                    "packet-level engine": "off (--latency off)"})


def snap(flows, seq=1, **kw):
    kw.setdefault("run", RUN)
    return make_snapshot(flows, seq=seq, ts=1000.0 + seq, **kw)


def samples(frame):
    """{(sample name, frozenset(labels)): value} of the exposition prometheus-client writes."""
    text = generate_latest(FrameCollector(lambda: frame)).decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def group_value(frame, name, **labels):
    """Sum of a metric over the groups whose labels include `labels`."""
    return sum(v for (n, ls), v in samples(frame).items() if n == name and set(labels.items()) <= ls)


def client(i, **kw):
    """A client connection of 'curl' to 10.0.0.2:80 (its local port is ephemeral)."""
    kw = {"role": "client", "lport": 40000 + i, "rport": 80, **kw}
    return make_flow(i, **kw)


# -- which group ---------------------------------------------------------------

def test_role_from_the_engine_names_the_service_port():
    assert service_side(make_flow(1, role="server", lport=443, rport=50000)) == ("server", 443)
    assert service_side(make_flow(1, role="client", lport=1000, rport=40000)) == ("client", 40000)


def test_unknown_role_is_guessed_from_the_ephemeral_range_then_the_lower_port():
    assert service_side(make_flow(1, role="", lport=8080, rport=45000)) == ("server", 8080)
    assert service_side(make_flow(1, role="", lport=45000, rport=61000)) == ("client", 61000)  # 61000 is not ephemeral
    assert service_side(make_flow(1, role="", lport=5432, rport=6379)) == ("server", 5432)     # neither: the lower
    assert service_side(make_flow(1, role="", lport=40001, rport=40000)) == ("client", 40000)  # both: the lower


def test_remote_label_is_a_clients_peer_and_a_servers_peer_network():
    c = make_flow(1, role="client", raddr="10.1.2.3", rport=5432)
    s = make_flow(2, role="server", lport=443, raddr="2001:db8:1:2:3::9")
    assert group_key(c)[3] == "10.1.2.3"
    assert group_key(s)[3] == "2001:db8:1:2::/64"
    assert group_key(c, "net")[3] == "10.1.2.0/24"
    assert group_key(s, "addr")[3] == "2001:db8:1:2:3::9"
    assert group_key(s, "none")[3] == ""
    assert remote_net("not-an-address") == "not-an-address"


# -- counters ----------------------------------------------------------------

def test_closed_connections_fold_into_their_group_and_counters_never_go_down():
    agg = Aggregator()
    a, b = client(1, bytes_sent=100, retrans_packets=1), client(2, bytes_sent=50)
    f1 = agg.update(snap([a, b], 1))
    assert group_value(f1, "tcptop_sent_bytes_total", comm="curl", port="80") == 150
    b_closed = client(2, bytes_sent=70, retrans_packets=2, closed=True, state="CLOSE")
    f2 = agg.update(snap([a, b_closed], 2))
    f3 = agg.update(snap([a], 3))  # the closed flow has left the snapshot
    f4 = agg.update(snap([], 4))   # every connection gone: the group keeps its totals
    for f in (f2, f3, f4):
        assert group_value(f, "tcptop_sent_bytes_total", port="80") == 170
        assert group_value(f, "tcptop_retransmitted_segments_total", port="80") == 3
        assert group_value(f, "tcptop_closed_connections_total", port="80") == 1
    assert group_value(f2, "tcptop_connections", port="80", state="ESTABLISHED") == 1
    assert group_value(f4, "tcptop_connections", port="80") == 0


def test_a_connection_that_moves_group_takes_only_its_new_counts_along():
    agg = Aggregator()
    unknown = client(1, comm="", bytes_sent=100)
    agg.update(snap([unknown], 1))
    known = client(1, comm="curl", bytes_sent=130)  # owner found at the next poll
    f = agg.update(snap([known], 2))
    assert group_value(f, "tcptop_sent_bytes_total", comm="") == 100
    assert group_value(f, "tcptop_sent_bytes_total", comm="curl") == 30
    assert group_value(f, "tcptop_sent_bytes_total") == 130  # the connection's own count, once


def test_filter_limits_what_is_counted_and_a_flow_back_in_the_filter_is_not_counted_twice():
    keep = compile_filter("state established")
    agg = Aggregator(keep)
    agg.update(snap([client(1, bytes_sent=100), client(2, bytes_sent=5, state="SYN_SENT")], 1))
    f = agg.update(snap([client(1, bytes_sent=100, state="CLOSE_WAIT"), client(2, bytes_sent=5)], 2))
    assert group_value(f, "tcptop_sent_bytes_total") == 100  # flow 2's 5 bytes were sent while filtered out
    f = agg.update(snap([client(1, bytes_sent=160), client(2, bytes_sent=9)], 3))
    assert group_value(f, "tcptop_sent_bytes_total") == 100 + 60 + 4


def test_an_unchanged_flow_object_costs_no_recount():
    agg = Aggregator()
    a = client(1, bytes_sent=100)
    agg.update(snap([a], 1))
    f = agg.update(snap([a], 2))
    assert group_value(f, "tcptop_sent_bytes_total") == 100


# -- histograms -----------------------------------------------------------------

def test_rtt_histogram_sums_the_kernels_buckets_per_group_exactly():
    agg = Aggregator()
    a = client(1, rtt_hist=((16, 3), (64, 2)), rtt_samples=5, rtt_sum_us=150)
    b = client(2, rtt_hist=((16, 1),), rtt_samples=1, rtt_sum_us=10)
    agg.update(snap([a, b], 1))
    a2 = dataclasses.replace(a, rtt_hist=((16, 3), (64, 4), (1 << 30, 1)), rtt_samples=8, rtt_sum_us=900)
    f = agg.update(snap([a2, b], 2))
    s = samples(f)
    labels = frozenset(zip(("comm", "role", "port", "remote", "netns", "container"), group_key(a)))
    bucket = {float(dict(ls)["le"]): v for (n, ls), v in s.items()
              if n == "tcptop_rtt_seconds_bucket" and labels <= ls}
    assert bucket[16e-6] == 4 and bucket[32e-6] == 4 and bucket[64e-6] == 8
    assert bucket[RTT_BOUNDS_US[-1] / 1e6] == 8 and bucket[float("inf")] == 9  # beyond the last bound: +Inf only
    assert s[("tcptop_rtt_seconds_count", labels)] == 9
    assert s[("tcptop_rtt_seconds_sum", labels)] == pytest.approx(910e-6)


def test_a_kernel_bound_between_exported_bounds_counts_in_the_next_one_up():
    h = Hist((8, 16, 32))
    h.add([(8, 1), (12, 2), (16, 1), (33, 5), (None, 1)])
    assert h.cumulative() == (1, 4, 4, 10)
    assert bucket_delta([(8, 3), (16, 2)], [(8, 1)]) == [(8, 2), (16, 2)]


def latency(count_rx_tcp, buckets, mean_us=2.0):
    return {"rx": {"tcp": {"count": count_rx_tcp, "mean_us": mean_us, "buckets": buckets}},
            "tx": {"tcp+ip": {"count": 1, "mean_us": 1.0, "buckets": [[1024, 1]]}}}


def test_stage_histograms_are_the_hosts_without_a_filter_and_the_kept_flows_with_one():
    host = latency(7, [[1024, 3], [2048, 4]])
    a = client(1, latency=latency(2, [[1024, 2]]))
    b = client(2, lport=55555, rport=22, latency=latency(5, [[2048, 5]]))
    f = Aggregator().update(snap([a, b], 1, latency=host))
    s = samples(f)
    rx = frozenset({("direction", "rx"), ("stage", "tcp")})
    assert s[("tcptop_packet_stage_latency_seconds_count", rx)] == 7
    assert s[("tcptop_packet_stage_latency_seconds_sum", rx)] == pytest.approx(14e-6)
    filtered = Aggregator(compile_filter("rport 80"))
    filtered.update(snap([a, b], 1, latency=host))
    a2 = dataclasses.replace(a, latency=latency(3, [[1024, 2], [None, 1]]), bytes_sent=1)
    f = filtered.update(snap([a2], 2, latency=host))  # b closed and left: nothing of it was ever counted
    s = samples(f)
    assert s[("tcptop_packet_stage_latency_seconds_count", rx)] == 3
    le = {float(dict(ls)["le"]): v for (n, ls), v in s.items()
          if n == "tcptop_packet_stage_latency_seconds_bucket" and rx <= ls}
    assert le[1024e-9] == 2 and le[STAGE_BOUNDS_NS[-1] / 1e9] == 2 and le[float("inf")] == 3


# -- the series budget -------------------------------------------------------------

def test_series_stay_under_the_cap_and_the_rest_is_counted_in_the_overflow_group():
    cap = 1000
    agg = Aggregator(max_series=cap, remote_mode="addr")
    flows = [make_flow(i, role="server", lport=8000 + i % 50, raddr=f"10.0.{i // 250}.{i % 250}",
                       bytes_sent=10) for i in range(2000)]
    f = agg.update(snap(flows, 1))
    s = samples(f)
    assert len(s) <= cap
    assert f.series == len(s)  # what the aggregator budgets is what the collector emits
    assert f.overflowed > 0
    assert sum(v for (n, _), v in s.items() if n == "tcptop_connections") == 2000  # every connection counted once
    assert sum(v for (n, _), v in s.items() if n == "tcptop_sent_bytes_total") == 20000
    overflow = frozenset(zip(("comm", "role", "port", "remote", "netns", "container"), OVERFLOW_KEY))
    assert s[("tcptop_exporter_overflowed_connections_total", frozenset())] == f.overflowed
    assert s[("tcptop_sent_bytes_total", overflow)] == 10 * f.overflowed


def test_groups_without_live_connections_make_room_for_new_ones():
    cap = 1000
    agg = Aggregator(max_series=cap, remote_mode="addr")
    room = (cap - agg.fixed_series(snap([])) - OVERFLOW_SERIES) // (GROUP_SERIES + 1)
    old = [client(i, raddr=f"10.1.0.{i}", bytes_sent=1) for i in range(room)]
    agg.update(snap(old, 1))
    agg.update(snap([], 2))
    agg.update(snap([], 3))
    new = [client(100 + i, raddr=f"10.2.0.{i}", bytes_sent=1) for i in range(5)]
    f = agg.update(snap(new, 4))
    assert f.evicted == 5 and f.overflowed == 0
    assert len(samples(f)) <= cap


def test_the_cap_holds_when_stage_series_arrive_after_the_groups_and_totals_move_to_the_overflow():
    """The packet engine's first window comes after the first polls (it loads in the
    background): its stage histograms must not push an exposition over the cap."""
    cap = 1000
    agg = Aggregator(max_series=cap, remote_mode="addr")
    flows = [client(i, raddr=f"10.1.{i // 4}.{i % 4}", bytes_sent=10 + i, retrans_packets=i % 3)
             for i in range(400)]
    first = agg.update(snap(flows, 1))
    assert first.series <= cap and first.overflowed > 0  # the budget is full
    own = lambda frame: {r.key for r in frame.groups} - {OVERFLOW_KEY}  # noqa: E731
    groups_before = own(first)
    stages = {"rx": {s: {"count": 1, "mean_us": 1.0, "buckets": [[1024, 1]]} for s in ("driver", "ip", "tcp", "app")},
              "tx": {s: {"count": 1, "mean_us": 1.0, "buckets": [[1024, 1]]} for s in ("tcp", "ip", "qdisc")},
              "window": {"id": 1}}
    moved = [dataclasses.replace(f, bytes_sent=f.bytes_sent + 1) for f in flows[:5]] + flows[5:]
    f = agg.update(snap(moved, 2, latency=stages))
    s = samples(f)
    assert f.series == len(s) <= cap
    assert own(f) < groups_before and f.folded == len(groups_before - own(f))
    assert f.folded >= 6  # 7 stages x 29 series need at least 6 groups' room (37 each)
    assert s[("tcptop_exporter_folded_groups_total", frozenset())] == f.folded
    # Nothing was lost or counted twice: every connection and byte once, in its group or the overflow.
    assert sum(v for (n, _), v in s.items() if n == "tcptop_connections") == 400
    assert sum(v for (n, _), v in s.items() if n == "tcptop_sent_bytes_total") == sum(10 + i for i in range(400)) + 5
    assert sum(v for (n, _), v in s.items() if n == "tcptop_retransmitted_segments_total") == sum(i % 3 for i in range(400))
    # A folded group's connections go on counting in the overflow group.
    overflow = frozenset(zip(("comm", "role", "port", "remote", "netns", "container"), OVERFLOW_KEY))
    before = s[("tcptop_sent_bytes_total", overflow)]
    in_overflow = [g for g in flows if group_key(g, "addr") in groups_before - own(f)]
    assert in_overflow
    bump = {g.id for g in in_overflow[:3]}
    more = [dataclasses.replace(g, bytes_sent=g.bytes_sent + 100) if g.id in bump else g for g in moved]
    f3 = agg.update(snap(more, 3, latency=stages))
    s3 = samples(f3)
    assert len(s3) <= cap
    assert s3[("tcptop_sent_bytes_total", overflow)] == before + 300
    assert sum(v for (n, _), v in s3.items() if n == "tcptop_connections") == 400


def test_top_flows_are_the_ones_retransmitting_now():
    agg = Aggregator(top_flows=2)
    flows = [client(i, retrans_packets=10 * i) for i in range(5)]
    agg.update(snap(flows, 1))
    later = list(flows)
    later[1] = client(1, retrans_packets=10 + 7)   # +7 since the last poll
    later[2] = client(2, retrans_packets=20 + 3)   # +3
    f = agg.update(snap(later, 2))
    assert [r.labels[2] for r in f.flows] == ["10.0.0.1:40001", "10.0.0.1:40002"]
    s = samples(f)
    assert sum(1 for n, _ in s if n.startswith("tcptop_flow_")) == 2 * FLOW_SERIES
    assert f.series == len(s)


def test_exposition_passes_the_client_librarys_own_parser_with_every_part_present():
    agg = Aggregator(top_flows=1)
    host = latency(7, [[1024, 3], [2048, 4]])
    f = agg.update(snap([client(1, rtt_hist=((16, 1),), rtt_samples=1, rtt_sum_us=9, retrans_packets=1)], 1,
                        latency=host))
    names = {n for n, _ in samples(f)}
    for expected in ("tcptop_build_info", "tcptop_connections", "tcptop_rtt_seconds_bucket",
                     "tcptop_packet_stage_latency_seconds_bucket", "tcptop_flow_cwnd_segments",
                     "tcptop_engine_hook_up", "tcptop_exporter_series_limit"):
        assert expected in names
    hooks = {dict(ls)["hook"]: v for (n, ls), v in samples(f).items() if n == "tcptop_engine_hook_up"}
    # "ok: how" is up; a hook the user switched off is no fault of the kernel, so no series
    assert hooks == {"iterator tcp": 1, "tracepoint tcp_cong_state_set": 0, "rx_queued": 1}
