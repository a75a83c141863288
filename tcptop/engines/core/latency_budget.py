"""The packet-level engine's duty cycle: how long to time packets, and how often, within a CPU budget.

The engine's cost is the fixed price of each BPF program run (~100-300 ns here, whatever
the program does), times how many runs the traffic causes while the programs are attached.
Sampling packets inside a program does not remove that price; not being attached does. So
the engine attaches its programs for a window, times every packet in it, detaches them, and
chooses the next window's length from what the last cycle cost:

    cost of a cycle = (runs while open + runs while draining) * NS_PER_RUN
    allowed         = budget_pct % of the machine's busy CPU over the cycle

The runs are counted by the programs themselves (one per-CPU counter, a few ns a run;
kernel.bpf_stats is not needed and not touched), busy CPU comes from /proc/stat, and the
packets the host took in (/proc/net/softnet_stat, every namespace) say whether the traffic
grew since the last window (then the next one shrinks in proportion before it opens, rather
than after it overspent).

The engine's own thread (attaching, draining, summarising a window's flows) is held to a
quarter of that share: when its CPU per window would exceed it, windows come less often and
are longer, so the share of packets timed stays what the BPF budget allows.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

# What one program run costs, ns: the mean of our programs measured with kernel.bpf_stats
# (which adds some tens of ns of its own) on redis-benchmark GET over loopback: 293 ns every
# packet timed, 420 in windows, whose first packets find cold entries (benchmarks/latency_overhead.py;
# docs/latency.md).
NS_PER_RUN = 400
# The windows aim at this share of the budget: the per-run price is a mean over programs
# that cost 140-600 ns, and the traffic of the next window is a forecast.
AIM = 0.8
MIN_WINDOW_S = 0.005    # shorter windows time too few packets to be worth the attach
MAX_PERIOD_S = 60.0     # at most this long without a window, however busy the machine
RECENT_S = 60.0         # coverage and cost are reported over about this much of the past
GROWTH = 2.0            # a window at most doubles from one cycle to the next ...
# ... or, while the traffic is far within the budget (timing all of it for a whole period
# would cost at most this share of what a period allows: a quiet host), from one base
# period to the next: cycles spaced ~5 s apart by the thread's own cost took ~8 cycles
# (~40 s) to reach continuous timing on a quiet host, so a flow with a request a second had
# no stage figures for about as long.
QUIET_SHARE = 0.25
# The engine's own thread (attaching and detaching ~13 programs, ~5 ms a cycle; taking and
# summarising a window) gets this fraction of the budget's share of busy CPU: with the same
# share as the programs (it had AIM), it cost as much as they did (6.5 ms a second on redis
# GET, 2 s periods), and the tcptop process's own share went past 1 %. Windows come less
# often and are longer: the share of packets timed is the programs' budget, unchanged.
OWN_SHARE = 0.25
# Program runs for each packet the host takes in, for the forecast before any window has
# measured them: the default mode ran 18 a redis request over loopback (issue 9's table: 24.1
# with the flow engine's 6), two packets each received once, so 9 a packet; rounded up.
RUNS_PER_PACKET = 12
# It may always spend this much (0.2 % of one CPU): on a quiet host the budget's share of its
# little busy CPU would leave no room for the fixed cost of a window (~10 ms: a cycle every
# ~5 s, so windows still reach continuous timing within about a minute).
OWN_FLOOR_NS_PER_S = 2_000_000


def busy_cpu_ns() -> int:
    """The machine's busy CPU so far, ns: user+nice+system+irq+softirq of every CPU (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = v
    return (user + nice + system + irq + softirq) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


class HostPackets:
    """Packets the host's CPUs have taken in so far, every network namespace at once
    (/proc/net/softnet_stat's first column, per CPU): the traffic the stage programs will
    run on, containers included. /proc/net/snmp's segment counters were the measure before,
    but they count tcptop's own namespace only, blind to every container's traffic. Sent
    packets count where the host receives them too (loopback, veth); a physical NIC's are
    not counted, but the ACKs that answer them are, so the rate moves with the traffic. Each
    per-CPU counter is 32 bits: their differences are taken modulo 2**32."""

    def __init__(self, path: str = "/proc/net/softnet_stat"):
        self.path = path
        self._last: list[int] | None = None
        self._total = 0

    def __call__(self) -> int:
        try:
            with open(self.path) as f:
                now = [int(line.split(None, 1)[0], 16) for line in f]
        except (OSError, ValueError, IndexError):
            return self._total
        last, self._last = self._last, now
        if last is not None and len(last) == len(now):  # a CPU coming or going loses one look
            self._total += sum((b - a) & 0xFFFFFFFF for a, b in zip(last, now))
        return self._total


@dataclass(frozen=True)
class Plan:
    """The next cycle: the window is open for window_s, a new one starts every period_s.
    window_s >= period_s: time continuously (the programs stay attached)."""

    window_s: float
    period_s: float

    @property
    def continuous(self) -> bool:
        return self.window_s >= self.period_s


class _Basis(NamedTuple):
    """What a plan was made of (period_now scales the traffic's part to the rate now)."""

    per_s: float        # BPF ns allowed a second
    own_period: float   # the period the thread's own cost asks for
    open_rate: float    # BPF ns per open second
    drain: float        # BPF ns of the drain
    packets_per_s: float   # packets a second the host took in while the window was open (HostPackets)


@dataclass(frozen=True)
class Cycle:
    """What one cycle measured."""

    open_s: float       # seconds the window was open
    open_runs: int      # program runs while it was open
    drain_runs: int     # program runs after it closed, while started packets finished
    elapsed_s: float    # the whole cycle, open + drain + detached
    busy_ns: int        # the machine's busy CPU over the cycle
    packets_open: int = 0  # packets the host took in while open (HostPackets)
    own_ns: int = 0     # CPU the engine's own thread spent on the cycle (attach, drain, summaries)


class Budget:
    """Chooses window lengths so the engine's BPF time stays within `budget_pct` % of busy CPU."""

    def __init__(self, budget_pct: float, period_s: float, ns_per_run: int = NS_PER_RUN,
                 first_window_s: float = MIN_WINDOW_S):
        if not 0 < budget_pct <= 100:
            raise ValueError("budget_pct is a percentage in (0, 100]")
        self.budget = budget_pct / 100
        self.base_period_s = period_s
        self.ns_per_run = ns_per_run
        self.plan = Plan(min(first_window_s, period_s), period_s)
        self.last: Cycle | None = None
        self._recent: deque[tuple[Cycle, int]] = deque()  # (cycle, BPF ns the model says it spent)
        self._basis: _Basis | None = None  # what the last plan was made of

    def observe(self, c: Cycle) -> Plan:
        """Account one finished cycle and plan the next."""
        self.last = c
        self._recent.append((c, (c.open_runs + c.drain_runs) * self.ns_per_run))
        while sum(x.elapsed_s for x, _ in self._recent) - self._recent[0][0].elapsed_s > RECENT_S:
            self._recent.popleft()
        # Busy CPU over the recent cycles, not this one alone: /proc/stat counts in jiffies.
        elapsed = sum(x.elapsed_s for x, _ in self._recent)
        busy_rate = sum(x.busy_ns for x, _ in self._recent) / elapsed if elapsed > 0 else 0.0
        open_rate = c.open_runs * self.ns_per_run / c.open_s if c.open_s > 0 else 0.0  # BPF ns per open s
        drain = c.drain_runs * self.ns_per_run
        # Summarising a window costs CPU in proportion to the flows it saw, not to its length:
        # when that would take more than the budget's share, windows come less often (and,
        # with the same BPF share, each is longer).
        per_s = AIM * self.budget * busy_rate
        own_per_s = max(OWN_SHARE * self.budget * busy_rate, OWN_FLOOR_NS_PER_S)
        own_period = max(self.base_period_s, min(MAX_PERIOD_S, c.own_ns / own_per_s))
        period = own_period
        allowed = per_s * period
        if open_rate <= 0:
            window = period  # nothing ran: nothing to pay for
        else:
            window = (allowed - drain) / open_rate
        if not self.plan.continuous:
            growth = GROWTH
            if open_rate * period + drain <= QUIET_SHARE * allowed:
                # at most 2**30: past any period from a 5 ms window, and no float overflow
                # for a cycle of many short base periods
                growth = GROWTH ** min(30.0, max(1.0, c.elapsed_s / self.base_period_s))
            window = min(window, self.plan.window_s * growth)
        if window >= period:
            self.plan = Plan(period, period)
        elif window >= MIN_WINDOW_S:
            self.plan = Plan(window, period)
        else:
            # Even the shortest window costs more than one period allows: space them out.
            need = open_rate * MIN_WINDOW_S + drain
            longer = min(MAX_PERIOD_S, need / per_s) if per_s > 0 else MAX_PERIOD_S
            self.plan = Plan(MIN_WINDOW_S, max(longer, period))
        packets_rate = c.packets_open / c.open_s if c.open_s > 0 else 0.0
        self._basis = _Basis(per_s, own_period, open_rate, drain, packets_rate)
        return self.plan

    def first_plan(self, packets_per_s: float, busy_ns_per_s: float) -> Plan:
        """The first window, before any has measured what the traffic costs, from a forecast
        (packets a second the host takes in x RUNS_PER_PACKET x ns_per_run): where timing all
        of it would cost at most QUIET_SHARE of what the budget allows, time continuously at
        once (the continuous stretch's watch closes it if the traffic grows past twice the
        budget); where even the first window would cost more than a period allows, it comes
        later, as a measured one would. Otherwise it stays MIN_WINDOW_S long. Without this, a
        quiet host reached continuous timing only after windows had doubled for ~15 s, and a
        very busy one paid its first window blind (~12 ms of BPF time for 5 ms on this VM)."""
        per_s = AIM * self.budget * busy_ns_per_s
        if self.last is not None or per_s <= 0 or packets_per_s < 0:
            return self.plan
        open_rate = packets_per_s * RUNS_PER_PACKET * self.ns_per_run  # BPF ns per open second
        period, window = self.base_period_s, self.plan.window_s
        if open_rate <= QUIET_SHARE * per_s:
            self.plan = Plan(period, period)
        elif open_rate * window > per_s * period:
            self.plan = Plan(window, min(MAX_PERIOD_S, open_rate * window / per_s))
        return self.plan

    def spaced_by_traffic(self) -> bool:
        """Whether the traffic's cost, not the thread's own, set the planned period (to more
        than twice what the thread's cost asks for): then period_now is worth asking."""
        basis = self._basis
        return basis is not None and not self.plan.continuous and self.plan.period_s > 2 * basis.own_period

    def period_now(self, packets_per_s_now: float) -> float:
        """The period the budget would choose for the planned window at the host's packet rate
        now (HostPackets): after a burst spaced windows out, the next one comes when the budget
        affords the traffic there is, not the burst's (one window at the burst's rate could
        otherwise leave a quiet host untimed for up to MAX_PERIOD_S). Never longer than planned."""
        p, basis = self.plan, self._basis
        if basis is None or p.continuous:
            return p.period_s
        if basis.packets_per_s <= 0 or packets_per_s_now >= basis.packets_per_s or basis.per_s <= 0:
            return p.period_s
        scale = packets_per_s_now / basis.packets_per_s
        need = (basis.open_rate * p.window_s + basis.drain) * scale
        return min(p.period_s, max(basis.own_period, need / basis.per_s))

    def adjust_for_load(self, packets_per_s_now: float) -> Plan:
        """Before a window opens: if the host's packet rate (HostPackets) grew since the last
        window measured its cost, shorten the window in proportion (never lengthen it)."""
        c = self.last
        if c is None or c.open_s <= 0 or self.plan.continuous:
            return self.plan
        then = c.packets_open / c.open_s
        if then > 0 and packets_per_s_now > 1.5 * then:
            w = max(MIN_WINDOW_S, self.plan.window_s * then / packets_per_s_now)
            self.plan = Plan(w, self.plan.period_s)
        return self.plan

    def timed_fraction(self, current: Cycle | None = None) -> float | None:
        """Fraction of wall time a window was open, over the last minute or so; `current`: the
        cycle in progress so far (without it, a busy host's first cycle of a few ms stood for
        the seconds after it until the next one ended)."""
        recent = self._with(current)
        elapsed = sum(c.elapsed_s for c, _ in recent)
        return sum(c.open_s for c, _ in recent) / elapsed if elapsed > 0 else None

    def cost_pct(self, current: Cycle | None = None) -> float | None:
        """The model's BPF time as a percentage of busy CPU, over the last minute or so."""
        recent = self._with(current)
        busy = sum(c.busy_ns for c, _ in recent)
        return 100 * sum(ns for _, ns in recent) / busy if busy > 0 else None

    def own_pct(self, current: Cycle | None = None) -> float | None:
        """The engine thread's own CPU as a percentage of busy CPU, over the last minute or so."""
        recent = self._with(current)
        busy = sum(c.busy_ns for c, _ in recent)
        return 100 * sum(c.own_ns for c, _ in recent) / busy if busy > 0 else None

    def _with(self, current: Cycle | None) -> tuple[tuple[Cycle, int], ...]:
        recent = self.cycles()
        if current is None:
            return recent
        return recent + ((current, (current.open_runs + current.drain_runs) * self.ns_per_run),)

    def cycles(self) -> tuple[tuple[Cycle, int], ...]:
        """The recent cycles with the BPF ns the model says each spent (about the last minute),
        copied in one step: the window thread appends while a poll reads (iterating the deque
        itself raised "deque mutated during iteration" once)."""
        return tuple(self._recent)
