"""The flow table's columns: title, width, how each sorts, how each reads, when each is a warning.

A column's id is also the name `--sort` and the sort picker use. Columns carry a
priority so a narrow terminal drops the least useful ones instead of scrolling
sideways; the sorted column is always kept.
"""

from __future__ import annotations

from dataclasses import dataclass, fields as dc_fields
from typing import Any, Callable, Literal

from tcptop.frontends.screen.alerts import (drops_style, fast_style, resets_style, retrans_style, rto_style,
                                            rwnd_style, sendq_style)
from tcptop.frontends.screen.row import Row
from tcptop.frontends.screen.units import fmt_age, fmt_bytes, fmt_endpoint, fmt_rate, fmt_us
from tcptop.model import SS_STATE_NAMES, Flow

# What a column's sort value depends on, which decides when the store must re-key a row:
# "flow": the Flow object alone (the same object, the same value); "rate": also the previous
# sighting's Flow; "row": also the row's decayed retransmissions; "time": also the snapshot's
# clock (AGE: the store keeps its order with sort_index.AgeIndex; any other such column would
# be sorted from scratch every frame).
Depends = Literal["flow", "rate", "row", "time"]


@dataclass(frozen=True, slots=True)
class Column:
    id: str
    title: str
    width: int
    key: Callable[[Row, float], Any]     # sort value at a frame's time (`now`); never None
    text: Callable[[Row, float], str]
    style: Callable[[Row], str] | None = None
    right: bool = True                   # numbers align right
    descending: bool = True              # natural direction: biggest first for numbers
    priority: int = 50                   # lower is kept first when space is short
    help: str = ""
    depends: Depends = "flow"


def _rate(v: float | None) -> float:
    return -1.0 if v is None else v


def state_text(flow: Flow) -> str:
    if flow.closed:
        return "CLOSED"
    return SS_STATE_NAMES.get(flow.state.upper(), flow.state[:10])


def top_reason(counts) -> str:
    """The most frequent reason of a reason table (tables come ordered, largest first)."""
    return next(iter(counts), "") if counts else ""


def _rtt_us(r: Row) -> float:
    f = r.flow
    return float(f.srtt_us) if f.srtt_us else f.rtt_mean_us


COLUMNS: tuple[Column, ...] = (
    Column("pid", "PID", 7, lambda r, now: r.flow.pid, lambda r, now: str(r.flow.pid) if r.flow.pid else "-",
           descending=False, priority=0, help="owning process"),
    Column("comm", "COMM", 15, lambda r, now: r.flow.comm.lower(), lambda r, now: r.flow.comm or "?",
           right=False, descending=False, priority=1, help="process name"),
    Column("local", "LOCAL", 21,
           lambda r, now: (r.flow.family, r.flow.laddr, r.flow.lport),
           lambda r, now: fmt_endpoint(r.flow.laddr, r.flow.lport, 21),
           right=False, descending=False, priority=9, help="local address:port"),
    Column("remote", "REMOTE", 21,
           lambda r, now: (r.flow.family, r.flow.raddr, r.flow.rport),
           lambda r, now: fmt_endpoint(r.flow.raddr, r.flow.rport, 21),
           right=False, descending=False, priority=2, help="peer address:port"),
    Column("state", "STATE", 10, lambda r, now: (r.flow.closed, r.flow.state), lambda r, now: state_text(r.flow),
           right=False, descending=False, priority=3, help="TCP state"),
    Column("tx", "TX/s", 10, lambda r, now: _rate(r.tx_bps), lambda r, now: fmt_rate(r.tx_bps),
           priority=4, help="bytes sent per second (retransmissions included)", depends="rate"),
    Column("rx", "RX/s", 10, lambda r, now: _rate(r.rx_bps), lambda r, now: fmt_rate(r.rx_bps),
           priority=5, help="bytes received per second", depends="rate"),
    Column("retrans", "RETRANS", 8,
           # recent retransmissions first (decayed, so an RTO backoff does not drop a lossy
           # flow below one with a single probe), then the lifetime total
           # (round() is slow, and most flows never retransmit: skip it for them)
           lambda r, now: (round(r.retrans_recent, 3) if r.retrans_recent else 0.0, r.flow.retrans_packets),
           lambda r, now: str(r.flow.retrans_packets), retrans_style,
           priority=6, help="segments retransmitted (red: some in the last interval)", depends="row"),
    Column("fast", "FAST", 5, lambda r, now: (_rate(r.fast_ps), r.flow.fast_retrans),
           lambda r, now: str(r.flow.fast_retrans), fast_style,
           priority=12, help="fast-recovery episodes", depends="rate"),
    Column("rto", "RTO", 4, lambda r, now: (_rate(r.rto_ps), r.flow.timeouts),
           lambda r, now: str(r.flow.timeouts), rto_style,
           priority=13, help="retransmission timeouts", depends="rate"),
    Column("cwnd", "CWND", 6, lambda r, now: r.flow.cwnd, lambda r, now: str(r.flow.cwnd),
           priority=8, help="congestion window, segments"),
    Column("rtt", "RTT", 8, lambda r, now: _rtt_us(r), lambda r, now: fmt_us(_rtt_us(r)),
           priority=7, help="smoothed round-trip time"),
    Column("flight", "FLIGHT", 7, lambda r, now: r.flow.flight_size, lambda r, now: str(r.flow.flight_size),
           priority=14, help="segments in flight"),
    Column("sendq", "SEND-Q", 9, lambda r, now: r.flow.app_wqueue, lambda r, now: fmt_bytes(r.flow.app_wqueue),
           sendq_style, priority=10, help="bytes written, not yet acknowledged (yellow: growing)"),
    Column("rwnd", "RWND", 9, lambda r, now: r.flow.rwnd, lambda r, now: fmt_bytes(r.flow.rwnd), rwnd_style,
           descending=False, priority=11, help="peer's receive window (red: zero window)"),
    Column("age", "AGE", 6, lambda r, now: r.flow.age_s(now), lambda r, now: fmt_age(r.flow.age_s(now)),
           priority=15, help="time since the connection was established", depends="time"),
    # Why it fails: shown on wide terminals, or whenever sorted by (D sorts by drops).
    Column("drops", "DROPS", 6, lambda r, now: (_rate(r.rate("drops_total")), r.flow.drops_total),
           lambda r, now: str(r.flow.drops_total), drops_style,
           priority=16, help="packets of this connection the kernel dropped, with a reason (red: some in the last "
                             "interval)", depends="rate"),
    Column("reason", "DROP REASON", 18, lambda r, now: top_reason(r.flow.drops),
           lambda r, now: top_reason(r.flow.drops) or "-", drops_style, right=False, descending=False,
           priority=17, help="the kernel's most frequent reason for dropping this connection's packets"),
    Column("resets", "RST", 4, lambda r, now: r.flow.resets_sent + r.flow.resets_received,
           lambda r, now: str(r.flow.resets_sent + r.flow.resets_received), resets_style,
           priority=18, help="resets sent and received"),
)

COLUMN_BY_ID: dict[str, Column] = {c.id: c for c in COLUMNS}

# Flow field names and habits from other tools that mean a column.
_ALIASES = {
    "retrans_packets": "retrans", "retransmits": "retrans", "retr": "retrans",
    "fast_retrans": "fast", "timeouts": "rto", "app_wqueue": "sendq", "send_q": "sendq",
    "flight_size": "flight", "duration_s": "age", "duration": "age", "srtt_us": "rtt",
    "rtt_mean_us": "rtt", "tx_bps": "tx", "rx_bps": "rx", "send": "tx", "recv": "rx",
    "raddr": "remote", "laddr": "local", "rport": "remote", "lport": "local",
    "drops_total": "drops", "drop_reason": "reason", "last_reset_reason": "resets",
}

_FLOW_NUMBERS = {f.name for f in dc_fields(Flow) if f.type in ("int", "float")}
_FLOW_OTHERS = {f.name for f in dc_fields(Flow) if f.type in ("str", "bool")}


class UnknownSortField(ValueError):
    pass


def resolve_sort(name: str) -> Column:
    """A column for `name`: a column id or title, a Flow field, or a common alias."""
    key = name.strip().lower()
    if key in COLUMN_BY_ID:
        return COLUMN_BY_ID[key]
    for c in COLUMNS:
        if c.title.lower() == key:
            return c
    if key in _ALIASES:
        return COLUMN_BY_ID[_ALIASES[key]]
    if key in _FLOW_NUMBERS:
        # A metric without its own column (e.g. bytes_sent): sort by the raw value.
        return Column(key, key.upper(), 10, lambda r, now, k=key: getattr(r.flow, k),
                      lambda r, now, k=key: str(getattr(r.flow, k)), priority=99)
    if key in _FLOW_OTHERS:
        return Column(key, key.upper(), 10, lambda r, now, k=key: getattr(r.flow, k),
                      lambda r, now, k=key: str(getattr(r.flow, k)), right=False, descending=False, priority=99)
    choices = ", ".join(c.id for c in COLUMNS)
    raise UnknownSortField(f"unknown sort field {name!r} (one of {choices}, or a flow field)")


def fit_columns(width: int, sort_id: str, columns: tuple[Column, ...] = COLUMNS) -> list[Column]:
    """The columns that fit `width` cells, most useful first, shown in their usual order."""
    chosen: set[str] = set()
    used = 0
    must = next((c for c in columns if c.id == sort_id), None)
    if must is not None:
        chosen.add(must.id)
        used += must.width + 1
    for c in sorted(columns, key=lambda c: c.priority):
        if c.id in chosen:
            continue
        if used + c.width + 1 <= width or not chosen:
            chosen.add(c.id)
            used += c.width + 1
    return [c for c in columns if c.id in chosen]
