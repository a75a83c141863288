"""Group-by (key `g`): one row per process, remote service (address:port) or local port, with the
sums and rates of its flows — the view that turns 100,000 flows into the few hundred rows a
person can read.

Groups are made on the worker from a frame's rows, after the filter: the filter picks flows,
and a group is the sum of the flows it let through. A group's counters are the sums of its
members' counters; its rates the sums of its members' rates, each from the flow's two
consecutive sightings (a flow that closes keeps counting until it leaves the list). Failed
connects (which have no flow once they are gone) join the process or destination they belong
to; a process or destination with failures only still gets a row.
"""

from __future__ import annotations

from typing import Callable, Hashable, Iterable, Mapping

from tcptop.frontends.screen.alerts import BAD, WARN
from tcptop.frontends.screen.columns import Column, state_text
from tcptop.frontends.screen.row import Row
from tcptop.frontends.screen.units import fmt_count_rate, fmt_endpoint, fmt_int, fmt_rate
from tcptop.model import Failure, Flow

# Modes in the order `g` cycles through them ("" is no grouping).
MODES = ("", "process", "remote", "lport")
MODE_NAMES = {"": "none", "process": "process", "remote": "remote service", "lport": "local port"}


def _process_key(pid: int, comm: str) -> tuple:
    return (pid, "" if pid else comm)


def flow_key(mode: str, f: Flow) -> Hashable:
    if mode == "process":
        return _process_key(f.pid, f.comm)
    if mode == "remote":
        return (f.raddr, f.rport)
    return f.lport


def failure_key(mode: str, f: Failure) -> Hashable | None:
    if mode == "process":
        return _process_key(f.pid, f.comm)
    if mode == "remote":
        return (f.raddr, f.rport)
    return None  # a connect that never established has no local port worth grouping by


def label(mode: str, key: Hashable, comm: str = "") -> str:
    if mode == "process":
        pid, _ = key  # type: ignore[misc]
        return f"{comm or '?'} ({pid})" if pid else f"{comm or '?'} (pid unknown)"
    if mode == "remote":
        addr, port = key  # type: ignore[misc]
        return fmt_endpoint(addr, port, 40)
    return f"local port {key}"


def _r(v: float | None) -> float:
    return v or 0.0


class GroupRow:
    """Sums and rates of one group's flows in one frame. Never changed once made."""

    __slots__ = ("id", "label", "members", "flows", "conns", "tx_bps", "rx_bps", "retrans", "retrans_ps",
                 "rto", "rto_ps", "drops", "drops_ps", "resets", "resets_ps", "fails", "fails_ps",
                 "opens_ps", "closes_ps")
    is_member = False

    def __init__(self, gid: tuple, text: str) -> None:
        self.id, self.label = gid, text
        self.members: list[int] = []
        self.flows = self.conns = self.retrans = self.rto = self.drops = self.resets = self.fails = 0
        self.tx_bps = self.rx_bps = self.retrans_ps = self.rto_ps = self.drops_ps = self.resets_ps = 0.0
        self.opens_ps = self.closes_ps = 0.0
        self.fails_ps: float | None = 0.0

    def add(self, row: Row) -> None:
        f = row.flow
        self.members.append(row.id)
        self.flows += 1
        self.conns += not f.closed
        self.tx_bps += _r(row.tx_bps)
        self.rx_bps += _r(row.rx_bps)
        self.retrans += f.retrans_packets
        self.retrans_ps += _r(row.retrans_ps)
        self.rto += f.timeouts
        self.rto_ps += _r(row.rto_ps)
        self.drops += f.drops_total
        self.drops_ps += _r(row.rate("drops_total"))
        self.resets += f.resets_sent + f.resets_received
        self.resets_ps += _r(row.rate("resets_sent")) + _r(row.rate("resets_received"))
        if row.born:
            self.opens_ps += 1 / row.dt
        if f.closed and (row.prev is None or not row.prev.closed):
            self.closes_ps += 1 / row.dt

    @property
    def tie(self) -> str:
        return self.label


class MemberRow:
    """A flow shown under its expanded group, answering the group columns."""

    __slots__ = ("id", "row", "label")
    is_member = True
    fails = fails_ps = opens_ps = closes_ps = None

    def __init__(self, row: Row) -> None:
        f = row.flow
        self.id = ("flow", row.id)
        self.row = row
        self.label = f"  {fmt_endpoint(f.laddr, f.lport, 26)} → {fmt_endpoint(f.raddr, f.rport, 26)} {state_text(f)}"

    flows = property(lambda self: 1)
    conns = property(lambda self: 0 if self.row.flow.closed else 1)
    tx_bps = property(lambda self: self.row.tx_bps)
    rx_bps = property(lambda self: self.row.rx_bps)
    retrans = property(lambda self: self.row.flow.retrans_packets)
    retrans_ps = property(lambda self: self.row.retrans_ps)
    rto = property(lambda self: self.row.flow.timeouts)
    rto_ps = property(lambda self: self.row.rto_ps)
    drops = property(lambda self: self.row.flow.drops_total)
    drops_ps = property(lambda self: self.row.rate("drops_total"))
    resets = property(lambda self: self.row.flow.resets_sent + self.row.flow.resets_received)
    resets_ps = property(lambda self: None)


def build_groups(mode: str, rows: Mapping[int, Row], order: Iterable[int], keep: Callable[[Flow], bool],
                 match_all: bool, failures: Iterable[Failure], keep_failure: Callable[[Failure], bool],
                 fails_before: Mapping[Hashable, int] | None, dt: float) -> dict[tuple, GroupRow]:
    """Groups of the flows in `order` (the flow list's, ascending) that `keep` lets through, with
    the failed connects `keep_failure` lets through; `fails_before` are those of the snapshot
    before, by group (None: there was none, so no rate yet)."""
    groups: dict[Hashable, GroupRow] = {}
    for fid in order:
        row = rows[fid]
        f = row.flow
        if not match_all and not keep(f):
            continue
        key = flow_key(mode, f)
        g = groups.get(key)
        if g is None:
            g = groups[key] = GroupRow((mode, key), label(mode, key, f.comm))
        g.add(row)
    fails: dict[Hashable, int] = {}
    for x in failures:
        key = failure_key(mode, x)
        if key is None or not keep_failure(x):
            continue
        fails[key] = fails.get(key, 0) + x.count
        if key not in groups:
            groups[key] = GroupRow((mode, key), label(mode, key, x.comm))
    for key, g in groups.items():
        g.fails = fails.get(key, 0)
        if fails_before is None:
            g.fails_ps = None
        else:
            g.fails_ps = max(0, g.fails - fails_before.get(key, 0)) / dt
    if mode == "lport":
        for g in groups.values():
            g.fails = None  # type: ignore[assignment]
            g.fails_ps = None
    return {g.id: g for g in groups.values()}


def _rate_key(v: float | None) -> float:
    return -1.0 if v is None else v


def _style_if(attr: str, bad: str = BAD) -> Callable[[object], str]:
    return lambda r: bad if getattr(r, attr) else ""


def _warn_if_any(total: str, rate: str) -> Callable[[object], str]:
    def style(r) -> str:
        if getattr(r, rate):
            return BAD
        return WARN if getattr(r, total) else ""
    return style


GROUP_COLUMNS: tuple[Column, ...] = (
    Column("group", "GROUP", 40, lambda r, now: r.label.lower(), lambda r, now: r.label, right=False,
           descending=False, priority=0, help="the process, remote service or local port"),
    Column("conns", "CONNS", 6, lambda r, now: r.conns, lambda r, now: fmt_int(r.conns), priority=1,
           help="open connections (closed ones stay listed a few refreshes)"),
    Column("tx", "TX/s", 10, lambda r, now: _rate_key(r.tx_bps), lambda r, now: fmt_rate(r.tx_bps), priority=2,
           help="bytes sent per second, all its flows"),
    Column("rx", "RX/s", 10, lambda r, now: _rate_key(r.rx_bps), lambda r, now: fmt_rate(r.rx_bps), priority=3,
           help="bytes received per second, all its flows"),
    Column("retrans", "RETRANS", 8, lambda r, now: (_rate_key(r.retrans_ps), r.retrans),
           lambda r, now: fmt_int(r.retrans), _warn_if_any("retrans", "retrans_ps"), priority=4,
           help="segments retransmitted (red: some in the last interval)"),
    Column("retrans_ps", "RETR/s", 7, lambda r, now: _rate_key(r.retrans_ps),
           lambda r, now: fmt_count_rate(r.retrans_ps), priority=9, help="retransmissions per second"),
    Column("rto", "RTO", 5, lambda r, now: (_rate_key(r.rto_ps), r.rto), lambda r, now: fmt_int(r.rto),
           _style_if("rto_ps"), priority=6, help="retransmission timeouts"),
    Column("drops", "DROPS", 7, lambda r, now: (_rate_key(r.drops_ps), r.drops), lambda r, now: fmt_int(r.drops),
           _warn_if_any("drops", "drops_ps"), priority=5, help="packets the kernel dropped, with a reason"),
    Column("drops_ps", "DROP/s", 7, lambda r, now: _rate_key(r.drops_ps), lambda r, now: fmt_count_rate(r.drops_ps),
           priority=10, help="drops per second"),
    Column("resets", "RST", 5, lambda r, now: r.resets, lambda r, now: fmt_int(r.resets),
           _warn_if_any("resets", "resets_ps"), priority=7, help="resets sent and received"),
    Column("fails", "FAILS", 6, lambda r, now: (_rate_key(r.fails_ps), r.fails if r.fails is not None else -1),
           lambda r, now: "" if r.fails is None else fmt_int(r.fails), _warn_if_any("fails", "fails_ps"),
           priority=8, help="connects that never established (process and remote service groups)"),
    Column("opens", "OPEN/s", 7, lambda r, now: _rate_key(r.opens_ps),
           lambda r, now: "" if r.opens_ps is None else fmt_count_rate(r.opens_ps), priority=11,
           help="connections opened per second"),
    Column("closes", "CLOSE/s", 7, lambda r, now: _rate_key(r.closes_ps),
           lambda r, now: "" if r.closes_ps is None else fmt_count_rate(r.closes_ps), priority=12,
           help="connections closed per second"),
)
DEFAULT_SORT = "tx"
