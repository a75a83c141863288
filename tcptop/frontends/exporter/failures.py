"""Exporter series of why connections fail: listeners, failed connects, unmatched drops and resets.

Every label is bounded. Listeners are summed by (comm, port, netns) — SO_REUSEPORT sockets of
one service are one series — and a host has as many as its services. Failed connects are
counted by (comm, remote address, port, errno, netns), at most MAX_FAILURE_SERIES of them: the
most counted keep their own series, the rest are summed into one series whose labels are all
`_overflow_`. Unmatched drops and resets are labelled by the kernel's reason only (a fixed
enum). Per-connection drops and resets are group counters (aggregate.COUNTER_FIELDS).

The values are the engine's own cumulative counts, not deltas: a listener's drops are its
socket's counter, so a listener that closes takes its drops with it (for Prometheus, a
counter reset of that series); failed connects and unmatched counts only grow while tcptop runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from tcptop.frontends.exporter.groups import OVERFLOW_VALUE
from tcptop.model import Snapshot

MAX_FAILURE_SERIES = 200
LISTENER_LABELS = ("comm", "port", "netns")
FAILURE_LABELS = ("comm", "remote", "port", "reason", "netns")
# Series per listener group: accept queue, its maximum, SYN queue, drops, SYN-ACK retransmits.
LISTENER_SERIES = 5


@dataclass(frozen=True, slots=True)
class ListenerRow:
    labels: tuple[str, str, str]
    accept_queue: int
    accept_queue_max: int
    syn_queue: int
    drops: int
    synack_retrans: int


@dataclass(frozen=True, slots=True)
class FailureSeries:
    """Everything this module adds to one exposition."""

    listeners: tuple[ListenerRow, ...] = ()
    failures: tuple[tuple[tuple[str, ...], int], ...] = ()   # (FAILURE_LABELS values, count)
    unmatched_drops: tuple[tuple[str, int], ...] = ()
    unmatched_resets: tuple[tuple[str, int], ...] = ()

    @property
    def series(self) -> int:
        return (LISTENER_SERIES * len(self.listeners) + len(self.failures) + len(self.unmatched_drops)
                + len(self.unmatched_resets))


def fold(snap: Snapshot, keep=None) -> FailureSeries:
    """The failure series of a snapshot; `keep` (the --filter) picks listeners and failed connects."""
    groups: dict[tuple[str, str, str], list[int]] = {}
    for x in snap.listeners:
        if keep is not None and not keep(x):
            continue
        g = groups.setdefault((x.comm, str(x.lport), str(x.netns)), [0, 0, 0, 0, 0])
        for i, v in enumerate((x.accept_queue, x.accept_queue_max, x.syn_queue, x.drops, x.synack_retrans)):
            g[i] += v
    listeners = tuple(ListenerRow(k, *v) for k, v in sorted(groups.items()))
    counts: dict[tuple[str, ...], int] = {}
    for f in snap.failures:
        if keep is not None and not keep(f):
            continue
        key = (f.comm, f.raddr, str(f.rport), f.reason, str(f.netns))
        counts[key] = counts.get(key, 0) + f.count
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    failures = ranked[:MAX_FAILURE_SERIES]
    rest = sum(n for _, n in ranked[MAX_FAILURE_SERIES:])
    if rest:
        failures.append(((OVERFLOW_VALUE,) * len(FAILURE_LABELS), rest))
    unmatched = snap.unmatched
    return FailureSeries(listeners, tuple(failures),
                         tuple(sorted((unmatched.get("drops") or {}).items())),
                         tuple(sorted((unmatched.get("resets_sent") or {}).items())))


def failure_metrics(part: FailureSeries) -> Iterator[Metric]:
    aq = GaugeMetricFamily("tcptop_listener_accept_queue",
                           "Connections established and waiting for accept() on the listening sockets (ss Recv-Q).",
                           labels=LISTENER_LABELS)
    aq_max = GaugeMetricFamily("tcptop_listener_accept_queue_max",
                               "The backlog listen() was given (ss Send-Q); the queue is full above it.",
                               labels=LISTENER_LABELS)
    syn = GaugeMetricFamily("tcptop_listener_syn_queue",
                            "Handshakes waiting for their last ACK (request sockets) on the listening sockets.",
                            labels=LISTENER_LABELS)
    drops = CounterMetricFamily("tcptop_listener_drops",
                                "The listening sockets' own drop counters (ss -tlm d): SYNs and handshakes dropped, "
                                "mostly because the accept queue was full (ListenDrops). A socket's count leaves "
                                "with it.", labels=LISTENER_LABELS)
    synack = CounterMetricFamily("tcptop_listener_synack_retransmits",
                                 "SYN-ACKs the listening sockets retransmitted since tcptop started.",
                                 labels=LISTENER_LABELS)
    for row in part.listeners:
        aq.add_metric(row.labels, row.accept_queue)
        aq_max.add_metric(row.labels, row.accept_queue_max)
        syn.add_metric(row.labels, row.syn_queue)
        drops.add_metric(row.labels, row.drops)
        synack.add_metric(row.labels, row.synack_retrans)
    yield from (aq, aq_max, syn, drops, synack)
    failed = CounterMetricFamily("tcptop_failed_connects",
                                 "Connects that never established, by the process that called connect(), destination "
                                 "and the errno the kernel reported (ECONNREFUSED, ETIMEDOUT, ...), since tcptop "
                                 "started.", labels=FAILURE_LABELS)
    for labels, n in part.failures:
        failed.add_metric(labels, n)
    yield failed
    ud = CounterMetricFamily("tcptop_unmatched_drops",
                             "Packets the kernel dropped with a reason that no connection or listener could be named "
                             "for (e.g. NO_SOCKET), by the kernel's reason, since tcptop started.", labels=("reason",))
    for reason, n in part.unmatched_drops:
        ud.add_metric((reason,), n)
    ur = CounterMetricFamily("tcptop_unmatched_resets_sent",
                             "Resets the kernel sent that no connection could be named for (e.g. to a closed port), "
                             "by its reason, since tcptop started.", labels=("reason",))
    for reason, n in part.unmatched_resets:
        ur.add_metric((reason,), n)
    yield ud
    yield ur
