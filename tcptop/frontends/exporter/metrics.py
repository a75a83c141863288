"""Exporter metrics: names, units and HELP of every series, and the collector that turns a Frame into them.

Names follow Prometheus conventions: base units (bytes, seconds), `_total` on counters,
the unit before it. The exposition itself is written by prometheus-client (text format,
or OpenMetrics when the scraper asks for it). README.md lists the same metrics with their
exact meanings; tests/unit/test_exporter_aggregate.py checks that the series count the
aggregator budgets for is the count this collector emits.
"""

from __future__ import annotations

import platform
from typing import Callable, Iterator

from prometheus_client.metrics_core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric)
from prometheus_client.utils import floatToGoString

from tcptop import __version__
from tcptop.frontends.exporter.aggregate import COUNTER_FIELDS, RTT_BOUNDS_US, STAGE_BOUNDS_NS, Frame, hook_up
from tcptop.frontends.exporter.failures import failure_metrics
from tcptop.frontends.exporter.groups import GROUP_LABELS

# Group counters, in aggregate.COUNTER_FIELDS order: (name without _total, unit, HELP).
GROUP_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("tcptop_retransmitted_segments", "",
     "TCP segments retransmitted by the group's connections (the kernel's total_retrans, as TCP_INFO "
     "tcpi_total_retrans), whole life of each connection."),
    ("tcptop_fast_recoveries", "",
     "Fast-recovery episodes the group's connections entered (congestion state changed to Recovery), "
     "counted from tcptop's start."),
    ("tcptop_rto_timeouts", "",
     "Retransmission timeouts (RTO expirations) of the group's connections, whole life of each connection "
     "(the kernel's total_rto)."),
    ("tcptop_sent_bytes", "bytes",
     "Data bytes the group's connections sent, retransmissions included (the kernel's bytes_sent)."),
    ("tcptop_received_bytes", "bytes",
     "Data bytes the group's connections received (the kernel's bytes_received)."),
    ("tcptop_read_bytes", "bytes",
     "Bytes returned to the application by read/recv calls on the group's connections, counted from "
     "tcptop's start."),
    ("tcptop_written_bytes", "bytes",
     "Bytes accepted from the application by write/send calls on the group's connections, counted from "
     "tcptop's start."),
    ("tcptop_dropped_packets", "",
     "Packets of the group's connections the kernel dropped with a reason (kfree_skb; reasons other than "
     "NOT_SPECIFIED and QUEUE_PURGE), counted from tcptop's start."),
    ("tcptop_resets_sent", "", "Resets the group's connections sent, counted from tcptop's start."),
    ("tcptop_resets_received", "", "Resets the group's connections received, counted from tcptop's start."),
)
assert len(GROUP_COUNTERS) == len(COUNTER_FIELDS)

# Per-connection series of the top-K flows (--serve-flows), in FlowRow.values order.
FLOW_LABELS = ("comm", "pid", "local", "remote", "netns")
FLOW_METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("counter", "tcptop_flow_retransmitted_segments", "",
     "Segments this connection retransmitted, whole life (one of the --serve-flows worst connections)."),
    ("counter", "tcptop_flow_rto_timeouts", "", "Retransmission timeouts of this connection, whole life."),
    ("counter", "tcptop_flow_sent_bytes", "bytes", "Data bytes this connection sent, retransmissions included."),
    ("counter", "tcptop_flow_received_bytes", "bytes", "Data bytes this connection received."),
    ("gauge", "tcptop_flow_smoothed_rtt_seconds", "seconds", "This connection's smoothed RTT (srtt)."),
    ("gauge", "tcptop_flow_cwnd_segments", "", "This connection's congestion window, segments."),
    ("gauge", "tcptop_flow_send_queue_bytes", "bytes",
     "Bytes this connection's application wrote that are not yet acknowledged (as SIOCOUTQ)."),
)


def _le(bounds: tuple[int, ...], scale: float) -> list[str]:
    return [floatToGoString(b / scale) for b in bounds] + ["+Inf"]


RTT_LE = _le(RTT_BOUNDS_US, 1e6)
STAGE_LE = _le(STAGE_BOUNDS_NS, 1e9)


class FrameCollector:
    """A prometheus-client collector over whatever Frame `current()` returns now."""

    def __init__(self, current: Callable[[], Frame | None]) -> None:
        self._current = current

    def collect(self) -> Iterator[Metric]:
        frame = self._current()
        if frame is None:
            return
        yield from build_info(frame)
        yield from group_metrics(frame)
        yield from stage_metrics(frame)
        yield from flow_metrics(frame)
        yield from failure_metrics(frame.failures)
        yield from health_metrics(frame)


def build_info(frame: Frame) -> Iterator[Metric]:
    g = GaugeMetricFamily("tcptop_build_info", "tcptop's version, engine, kernel and Python; always 1.",
                          labels=("version", "engine", "kernel", "python"))
    g.add_metric((__version__, frame.run.engine, frame.kernel, platform.python_version()), 1)
    yield g


def group_metrics(frame: Frame) -> Iterator[Metric]:
    counters = [CounterMetricFamily(name, doc, labels=GROUP_LABELS, unit=unit) for name, unit, doc in GROUP_COUNTERS]
    closed = CounterMetricFamily("tcptop_closed_connections", "Connections of the group that closed.",
                                 labels=GROUP_LABELS)
    zero = GaugeMetricFamily("tcptop_zero_window_connections",
                             "Established connections of the group whose peer advertises a zero receive window "
                             "(this end cannot send).", labels=GROUP_LABELS)
    sendq = GaugeMetricFamily("tcptop_send_queue_bytes",
                              "Bytes the group's applications wrote that are not yet acknowledged (sum of SIOCOUTQ).",
                              labels=GROUP_LABELS, unit="bytes")
    rtt = HistogramMetricFamily("tcptop_rtt_seconds",
                                "RTT samples the kernel's estimator took on the group's connections, from the "
                                "kernel's own histogram buckets (le is a bucket's exclusive upper bound).",
                                labels=GROUP_LABELS, unit="seconds")
    for row in frame.groups:
        key = row.key
        for family, value in zip(counters, row.counters):
            family.add_metric(key, value)
        closed.add_metric(key, row.closed)
        zero.add_metric(key, row.zero_window)
        sendq.add_metric(key, row.send_queue)
        if row.rtt is not None:
            cumulative, sum_s = row.rtt
            rtt.add_metric(key, list(zip(RTT_LE, cumulative)), sum_s)
    conns = GaugeMetricFamily("tcptop_connections",
                              "Live connections of the group in each TCP state (kernel state names).",
                              labels=GROUP_LABELS + ("state",))
    for key, state, n in frame.connections:
        conns.add_metric(key + (state,), n)
    yield from counters
    yield closed
    yield conns
    yield zero
    yield sendq
    yield rtt


def stage_metrics(frame: Frame) -> Iterator[Metric]:
    whose = ("every TCP packet on the host" if frame.stage_source == "host"
             else "the packets of the connections the filter keeps")
    h = HistogramMetricFamily(
        "tcptop_packet_stage_latency_seconds",
        f"Time packets spent in each stage of the host's stack (docs/latency.md), timed in windows: counts are "
        f"packets timed. Of {whose}; kernel buckets (le is a bucket's exclusive upper bound).",
        labels=("direction", "stage"), unit="seconds")
    for row in frame.stages:
        h.add_metric((row.direction, row.stage), list(zip(STAGE_LE, row.cumulative)), row.sum_s)
    yield h


def flow_metrics(frame: Frame) -> Iterator[Metric]:
    families = []
    for kind, name, unit, doc in FLOW_METRICS:
        cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
        families.append(cls(name, doc, labels=FLOW_LABELS, unit=unit))
    for row in frame.flows:
        for family, value in zip(families, row.values):
            family.add_metric(row.labels, value)
    yield from families


def health_metrics(frame: Frame) -> Iterator[Metric]:
    run = frame.run
    hooks = GaugeMetricFamily("tcptop_engine_hook_up",
                              "1 when the engine's hook is attached and working, 0 when it is unavailable on this "
                              "kernel (the metric it feeds is degraded).", labels=("hook",))
    for hook, status in sorted(run.hooks.items()):
        up = hook_up(status)
        if up is not None:
            hooks.add_metric((hook,), up)
    yield hooks
    yield GaugeMetricFamily("tcptop_engine_degraded_metrics",
                            "Metrics this kernel cannot provide fully (see tcptop --json run.degraded for why).",
                            value=len(run.degraded))
    lost = CounterMetricFamily("tcptop_engine_events_lost",
                               "Kernel counter updates and closed-connection records the engine dropped for lack of "
                               "room, by the map or ring that had none (closed_records: raise --max-closed).",
                               labels=("cause",))
    for cause, n in (run.events_lost_by or {"unknown": run.events_lost}).items():
        lost.add_metric((cause,), n)
    yield lost
    yield GaugeMetricFamily("tcptop_engine_flows_without_counters",
                            "Live connections the kernel could not give event counters (their kernel-kept numbers "
                            "are still exact).", value=run.flows_evicted)
    yield CounterMetricFamily("tcptop_exporter_polls", "Engine polls since the exporter started.", value=frame.polls)
    yield GaugeMetricFamily("tcptop_exporter_poll_duration_seconds",
                            "Time the last poll took: the engine's read plus the exporter's aggregation.",
                            value=frame.poll_s, unit="seconds")
    yield GaugeMetricFamily("tcptop_exporter_last_poll_timestamp_seconds",
                            "Unix time of the snapshot this exposition shows.", value=frame.ts, unit="seconds")
    yield GaugeMetricFamily("tcptop_exporter_groups", "Groups held, the overflow group included.",
                            value=len(frame.groups))
    yield GaugeMetricFamily("tcptop_exporter_series", "Series in this exposition.", value=frame.series)
    yield GaugeMetricFamily("tcptop_exporter_series_limit",
                            "Most series an exposition may hold (--serve-max-series).", value=frame.series_limit)
    yield CounterMetricFamily("tcptop_exporter_overflowed_connections",
                              "Connections counted in the overflow group (labels _overflow_) because the series "
                              "budget had no room for their own group.", value=frame.overflowed)
    yield CounterMetricFamily("tcptop_exporter_evicted_groups",
                              "Groups with no live connection removed to make room for new ones (their totals "
                              "left the exposition).", value=frame.evicted)
    yield CounterMetricFamily("tcptop_exporter_folded_groups",
                              "Groups with live connections folded into the overflow group because series that "
                              "do not depend on the traffic (stage histograms, listeners) grew after they were "
                              "admitted (their totals and connections moved there).", value=frame.folded)
