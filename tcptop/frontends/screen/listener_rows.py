"""The listener view's rows (key `l`): every listening socket, its queues, and drops per second.

Rates need two sightings of the same listener (by socket cookie), so they are made here from
consecutive snapshots, as flow rows are. The filter language applies to listeners as to flows
(a listener has a local end only, state LISTEN).
"""

from __future__ import annotations

from typing import Mapping

from tcptop.frontends.screen.alerts import BAD, WARN
from tcptop.frontends.screen.columns import Column, top_reason
from tcptop.frontends.screen.row import growth
from tcptop.frontends.screen.units import fmt_count_rate, fmt_endpoint, fmt_int
from tcptop.model import Listener, Snapshot


class ListenerRow:
    """One listener in one frame, with the rates since the previous sighting. Never changed once made."""

    __slots__ = ("id", "listener", "prev", "dt")

    def __init__(self, listener: Listener, prev: Listener | None, dt: float) -> None:
        self.id = listener.id
        self.listener = listener
        self.prev = prev
        self.dt = dt

    def rate(self, counter: str) -> float | None:
        if self.prev is None:
            return None
        return growth(getattr(self.listener, counter), getattr(self.prev, counter)) / self.dt

    drops_ps = property(lambda self: self.rate("drops"))
    synack_ps = property(lambda self: self.rate("synack_retrans"))

    @property
    def reasons_total(self) -> int:
        return sum(self.listener.drop_reasons.values())

    @property
    def tie(self) -> tuple:
        x = self.listener
        return (x.netns, x.laddr, x.lport, x.id)

    @property
    def full(self) -> bool:
        """The accept queue holds more than the backlog: the next handshake will be dropped."""
        x = self.listener
        return x.accept_queue > x.accept_queue_max


def listener_rows(snap: Snapshot, prev: Mapping[int, ListenerRow], dt: float) -> dict[int, ListenerRow]:
    """A row per listener of `snap`; `prev` (the last frame's rows) gives the rates."""
    out = {}
    for x in snap.listeners:
        p = prev.get(x.id)
        out[x.id] = ListenerRow(x, p.listener if p is not None else None, dt)
    return out


def _rate(v: float | None) -> float:
    return -1.0 if v is None else v


def drops_style(r: ListenerRow) -> str:
    if r.drops_ps:
        return BAD
    return WARN if r.listener.drops else ""


def queue_style(r: ListenerRow) -> str:
    if r.full:
        return BAD
    x = r.listener
    return WARN if x.accept_queue and x.accept_queue * 2 >= max(1, x.accept_queue_max) else ""


LISTENER_COLUMNS: tuple[Column, ...] = (
    Column("pid", "PID", 7, lambda r, now: r.listener.pid,
           lambda r, now: str(r.listener.pid) if r.listener.pid else "-", descending=False, priority=0,
           help="a process holding the listening socket"),
    Column("comm", "COMM", 15, lambda r, now: r.listener.comm.lower(), lambda r, now: r.listener.comm or "?",
           right=False, descending=False, priority=1, help="process name"),
    Column("local", "LISTEN", 24, lambda r, now: (r.listener.family, r.listener.laddr, r.listener.lport),
           lambda r, now: fmt_endpoint(r.listener.laddr, r.listener.lport, 24), right=False, descending=False,
           priority=2, help="address:port it listens on"),
    Column("acceptq", "ACCEPT-Q", 10, lambda r, now: (r.listener.accept_queue, r.listener.accept_queue_max),
           lambda r, now: f"{r.listener.accept_queue}/{r.listener.accept_queue_max}", queue_style, priority=3,
           help="connections waiting for accept() / the listen() backlog (red: full, handshakes are dropped)"),
    Column("synq", "SYN-Q", 6, lambda r, now: r.listener.syn_queue, lambda r, now: str(r.listener.syn_queue),
           priority=6, help="handshakes waiting for their last ACK"),
    Column("drops_ps", "DROPS/s", 8, lambda r, now: (_rate(r.drops_ps), r.listener.drops),
           lambda r, now: fmt_count_rate(r.drops_ps), drops_style, priority=4,
           help="SYNs and handshakes the listener dropped per second (ss -tlm d; mostly a full accept queue)"),
    Column("drops", "DROPS", 8, lambda r, now: r.listener.drops, lambda r, now: fmt_int(r.listener.drops),
           drops_style, priority=5, help="drops counted by the socket since it was created"),
    Column("synack", "SYNACK-RT", 9, lambda r, now: (_rate(r.synack_ps), r.listener.synack_retrans),
           lambda r, now: fmt_int(r.listener.synack_retrans), priority=7,
           help="SYN-ACKs retransmitted since tcptop started (clients that do not finish the handshake)"),
    Column("reason", "DROP REASON", 22, lambda r, now: top_reason(r.listener.drop_reasons),
           lambda r, now: top_reason(r.listener.drop_reasons) or "-", right=False, descending=False, priority=8,
           help="the most frequent reason the kernel gave for packets dropped at this listener"),
    Column("netns", "NETNS", 10, lambda r, now: r.listener.netns, lambda r, now: str(r.listener.netns),
           descending=False, priority=9, help="network namespace inode"),
)
DEFAULT_SORT = "drops_ps"
