"""The failures view's rows (key `f`): connects that never established, one row per destination.

A snapshot lists failed connects by process, destination and errno since tcptop started; a
person asks "which destination is failing, how fast, why, and for whom", so entries the filter
lets through are summed per destination (address:port), with their reasons and processes, and
a rate from consecutive snapshots.
"""

from __future__ import annotations

from typing import Callable, Mapping

from tcptop.frontends.screen.alerts import BAD, WARN
from tcptop.frontends.screen.columns import Column
from tcptop.frontends.screen.units import fmt_count_rate, fmt_endpoint, fmt_int
from tcptop.model import Failure, Snapshot


class FailureRow:
    """Failed connects to one destination, as of one frame. Never changed once made."""

    __slots__ = ("id", "raddr", "rport", "count", "reasons", "processes", "prev_count", "dt")

    def __init__(self, key: tuple[str, int], entries: list[Failure], prev_count: int | None, dt: float) -> None:
        self.id = key
        self.raddr, self.rport = key
        reasons: dict[str, int] = {}
        procs: dict[tuple[int, str], int] = {}
        for f in entries:
            reasons[f.reason] = reasons.get(f.reason, 0) + f.count
            procs[(f.pid, f.comm)] = procs.get((f.pid, f.comm), 0) + f.count
        self.count = sum(reasons.values())
        self.reasons = dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
        self.processes = dict(sorted(procs.items(), key=lambda kv: (-kv[1], kv[0])))
        self.prev_count = prev_count
        self.dt = dt

    @property
    def per_s(self) -> float | None:
        if self.prev_count is None:
            return None
        return max(0, self.count - self.prev_count) / self.dt

    @property
    def tie(self) -> tuple:
        return (self.raddr, self.rport)

    def reasons_text(self) -> str:
        return ", ".join(f"{r} {n}" for r, n in self.reasons.items())

    def processes_text(self) -> str:
        return ", ".join(f"{comm or '?'}({pid})" if pid else (comm or "?") for pid, comm in self.processes)


def failure_rows(snap: Snapshot, keep: Callable[[Failure], bool], prev: Mapping[tuple, "FailureRow"],
                 dt: float) -> dict[tuple, FailureRow]:
    by_dest: dict[tuple[str, int], list[Failure]] = {}
    for f in snap.failures:
        if keep(f):
            by_dest.setdefault((f.raddr, f.rport), []).append(f)
    out = {}
    for key, entries in by_dest.items():
        p = prev.get(key)
        out[key] = FailureRow(key, entries, p.count if p is not None else None, dt)
    return out


def _rate(v: float | None) -> float:
    return -1.0 if v is None else v


def count_style(r: FailureRow) -> str:
    return BAD if r.per_s else WARN


FAILURE_COLUMNS: tuple[Column, ...] = (
    Column("remote", "DESTINATION", 26, lambda r, now: (":" in r.raddr, r.raddr, r.rport),
           lambda r, now: fmt_endpoint(r.raddr, r.rport, 26), right=False, descending=False, priority=0,
           help="address:port the connects went to"),
    Column("per_s", "FAILS/s", 8, lambda r, now: (_rate(r.per_s), r.count), lambda r, now: fmt_count_rate(r.per_s),
           count_style, priority=1, help="failed connects per second"),
    Column("count", "FAILS", 8, lambda r, now: r.count, lambda r, now: fmt_int(r.count), count_style, priority=2,
           help="failed connects since tcptop started"),
    Column("reasons", "WHY (errno: count)", 34, lambda r, now: r.reasons_text(), lambda r, now: r.reasons_text(),
           right=False, descending=False, priority=3,
           help="the errno the kernel gave connect()"),
    Column("processes", "PROCESSES", 40, lambda r, now: r.processes_text(), lambda r, now: r.processes_text(),
           right=False, descending=False, priority=4, help="who tried, most failures first"),
)
DEFAULT_SORT = "per_s"
