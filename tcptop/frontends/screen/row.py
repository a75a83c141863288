"""One connection as the screen shows it: its flow, rates, and a short history.

Rates need two sightings of the same connection, so they live here and not in the
snapshot. A row is never changed once made, which lets two threads read it without
locks and lets an idle connection's row serve frame after frame; what moves with the
clock (the connection's age) is read at a frame's time, never stored.
"""

from __future__ import annotations

from typing import NamedTuple

from tcptop.model import Flow


class HistoryPoint(NamedTuple):
    """One sample of a flow's sparklines."""

    ts: float
    tx_bps: float | None
    rx_bps: float | None
    cwnd: int
    rtt_us: float


def growth(new: int, old: int) -> int:
    """How much a counter grew between two sightings. Counters only grow for one socket
    cookie; a drop means the engine restarted counting, and counts as no growth."""
    d = new - old
    return d if d > 0 else 0


class Row:
    """The counters every refresh needs anyway (bytes each way, retransmissions: the header
    totals, the default sort) get their rates when the row is made; the rarer ones are
    computed when read, from the previous sighting kept in `prev`."""

    __slots__ = ("id", "flow", "prev", "dt", "born", "history", "retrans_recent", "tx_bps", "rx_bps", "retrans_ps")

    def __init__(self, flow: Flow) -> None:
        self.id = flow.id
        self.flow = flow
        self.prev: Flow | None = None  # the same connection one snapshot earlier
        self.dt = 0.0                  # seconds between the two sightings
        self.born = False              # first seen, but opened within dt: counters started at zero
        self.history: tuple[HistoryPoint, ...] | None = None  # oldest first
        self.retrans_recent = 0.0      # retransmissions, exponentially decayed
        self.tx_bps: float | None = None   # None while unknown (a flow's first sighting)
        self.rx_bps: float | None = None
        self.retrans_ps: float | None = None

    def rate(self, counter: str) -> float | None:
        """Per-second growth of a Flow counter; None while unknown (a flow's first sighting)."""
        prev = self.prev
        if prev is None:
            return getattr(self.flow, counter) / self.dt if self.born else None
        return growth(getattr(self.flow, counter), getattr(prev, counter)) / self.dt

    fast_ps = property(lambda self: self.rate("fast_retrans"))
    rto_ps = property(lambda self: self.rate("timeouts"))
    read_bps = property(lambda self: self.rate("read_bytes"))
    write_bps = property(lambda self: self.rate("write_bytes"))

    @property
    def wqueue_delta(self) -> int:
        """Send-queue change since the last snapshot, bytes (positive: growing)."""
        base = self.prev.app_wqueue if self.prev is not None else 0
        return self.flow.app_wqueue - base

    def __repr__(self) -> str:
        return f"Row({self.flow.id}, {self.flow.comm!r})"
