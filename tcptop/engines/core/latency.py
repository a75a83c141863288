"""Packet-level engine, user side: loads bpf/latency.bpf.o with the best hook per stage boundary, runs its windows.

Pairs with bpf/latency.h (the shared layouts, mirrored below with ctypes and checked against
the object's BTF). The kernel times every packet that starts a stage while a window is open
and folds the durations into log-linear histograms (tcptop/engines/histogram.py turns them
into percentiles). Two ways to run:

- "budget" (the default): the programs are attached only for windows, whose length and
  spacing tcptop/engines/core/latency_budget.py chooses so their cost stays within a share of
  the machine's busy CPU (when that allows, they stay attached: a continuous stretch).
- "continuous": attached all the time; a window is the time between two takes.

A thread of this engine runs the windows and takes each one's figures (when it has drained:
its started packets finished), just after a poll, so the summaries are made between polls;
poll() hands out the latest.

Either way a flow's figures are those of the last window in which it had packets, with that
window's id, end time and length, so a reader can tell their age.
"""

from __future__ import annotations

import ctypes
import enum
import os
import struct
import threading
import time
from collections import deque
from collections.abc import Container
from typing import Any, Callable

from tcptop.engines.histogram import BUCKETS, GROUPS, summary_of_pairs, stage_summary
from tcptop.engines.core.latency_budget import NS_PER_RUN, Budget, Cycle, HostPackets, Plan, busy_cpu_ns
from tcptop.engines.core.libbpf import (BpfError, BpfObject, CgroupRoot, KernelBtf, Link, lib, object_path,
                                        possible_cpus, refused_program)


# Mirrors of the enums in bpf/latency.h, checked against the object's BTF at load.
class Stage(enum.IntEnum):
    RX_DRIVER = 0
    RX_IP = 1
    RX_TCP = 2
    RX_APP = 3
    TX_TCP = 4
    TX_IP = 5
    TX_QDISC = 6
    TX_DRIVER = 7
    LAT_STAGES = 8


class LatPending(enum.IntEnum):
    PEND_RX_TCP = 0
    PEND_RX_APP = 1
    PEND_TX_TCP = 2
    PEND_QDISC = 3
    PEND_MAX = 4


class LatStat(enum.IntEnum):
    LS_RUNS = 0
    LS_RX_STARTED = 1
    LS_RX_REUSED = 2
    LS_RX_MATCHED = 3
    LS_RX_UNMATCHED = 4
    LS_RX_STALE = 5
    LS_TX_QUEUED = 6
    LS_TX_REUSED = 7
    LS_TX_MATCHED = 8
    LS_TX_STALE = 9
    LS_DRV_UNMATCHED = 10
    LS_PROBE_DONE = 11
    LS_PROBE_MISSED = 12
    LS_PROBE_MERGED = 13
    LS_EXPIRED = 14
    LS_FLOWS_FULL = 15
    LS_GSO_QUEUED = 16
    LS_GSO_MATCHED = 17
    LS_MAX = 18


RX_DRIVER, RX_IP, RX_TCP, RX_APP, TX_TCP, TX_IP, TX_QDISC, TX_DRIVER, STAGES = map(int, Stage)
PEND_RX_TCP, PEND_RX_APP, PEND_TX_TCP, PEND_QDISC, PEND_MAX = map(int, LatPending)
RATE_SPAN_S = 0.5  # a packet rate is measured over at least this long
FIRST_SPAN_S = 0.2  # ... and the first window's forecast (it waits for the first poll after start)
WATCH_STEP_S = 0.1  # how often a continuous stretch looks whether the traffic grew past the budget
# The snapshot's "matching" counters: the enum's names without the prefix (LS_RX_STARTED -> rx_started).
STAT_NAMES = tuple(m.name[3:].lower() for m in LatStat if m is not LatStat.LS_MAX)


class LatHist(ctypes.Structure):
    _fields_ = [("slots", ctypes.c_uint64 * BUCKETS), ("sum_ns", ctypes.c_uint64)]


class LatKey(ctypes.Structure):
    _fields_ = [("cookie", ctypes.c_uint64), ("stage", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class LatFlowHist(ctypes.Structure):
    _fields_ = [("sum_ns", ctypes.c_uint64), ("groups", ctypes.c_uint8 * GROUPS),
                ("slots", ctypes.c_uint32 * BUCKETS)]


class LatControl(ctypes.Structure):
    _fields_ = [("gen", ctypes.c_uint32), ("open", ctypes.c_uint32)]


class LatPend(ctypes.Structure):
    _fields_ = [("ts_sum", ctypes.c_uint64), ("seq", ctypes.c_uint32), ("n", ctypes.c_uint16),
                ("gen", ctypes.c_uint16)]


class LatProbes(ctypes.Structure):
    _fields_ = [("rx_tcp", LatPend * 8), ("rx_app", LatPend * 16), ("tx", LatPend * 16),
                ("newest", ctypes.c_uint8 * 3), ("pad", ctypes.c_uint8 * 5)]


class RxSkb(ctypes.Structure):
    _fields_ = [("driver_ts", ctypes.c_uint64), ("ip_ts", ctypes.c_uint64), ("gen", ctypes.c_uint32),
                ("pad", ctypes.c_uint32)]


class TxSkb(ctypes.Structure):
    _fields_ = [("cookie", ctypes.c_uint64), ("ip_ts", ctypes.c_uint64), ("queue_ts", ctypes.c_uint64),
                ("gen", ctypes.c_uint32), ("gso_segs", ctypes.c_uint16), ("pad", ctypes.c_uint16)]


MIRRORS = {"lat_hist": LatHist, "lat_key": LatKey, "lat_flow_hist": LatFlowHist, "lat_control": LatControl,
           "lat_pend": LatPend, "lat_probes": LatProbes, "rx_skb": RxSkb, "tx_skb": TxSkb}
ENUM_MIRRORS = {"lat_stage": Stage, "lat_stat": LatStat, "lat_pending": LatPending}
_SLOTS_OFF = LatFlowHist.slots.offset
_FLOW_HIST_SIZE = ctypes.sizeof(LatFlowHist)
_TX_SKB = struct.Struct("<QQQIHH")  # struct tx_skb, for reading a whole batch at C speed
_FLOW_HEAD = struct.Struct(f"<Q{GROUPS}s")  # lat_flow_hist: sum_ns, groups
_GROUP = struct.Struct("<8I")  # the slots of one group of 8 buckets

# Stage boundaries that have more than one candidate hook, best first. A rung
# is (kind, its programs, the kernel tracepoints/functions all of them need).
# The tracepoint rungs are what our CI kernels run; fentry/kprobe rungs are the
# same handlers behind a different entry, for kernels that allow them.
LADDERS: dict[str, tuple[str, list[tuple[str, tuple[str, ...], tuple[str, ...]]]]] = {
    "rx_ip": ("the IP layer takes a received packet (splits rx driver | ip)", [
        ("fentry", ("fe_ip_rcv", "fe_ipv6_rcv"), ("ip_rcv", "ipv6_rcv")),
        ("kprobe", ("kp_ip_rcv", "kp_ipv6_rcv"), ("ip_rcv", "ipv6_rcv")),
        ("tracepoint", ("on_netif_receive",), ("netif_receive_skb",)),
    ]),
    "rx_queued": ("data is queued on the socket (splits rx tcp | app)", [
        ("tracepoint", ("on_data_ready",), ("sk_data_ready",)),
        ("fentry", ("fe_tcp_data_ready",), ("tcp_data_ready",)),
        ("kprobe", ("kp_tcp_data_ready",), ("tcp_data_ready",)),
    ]),
    "rx_read": ("a read call has copied data (ends rx app)", [
        ("tracepoint", ("on_recv",), ("sock_recv_length",)),
        ("fentry", ("fe_tcp_cleanup_rbuf",), ("tcp_cleanup_rbuf",)),
        ("kprobe", ("kp_tcp_cleanup_rbuf",), ("tcp_cleanup_rbuf",)),
    ]),
    "tx_accept": ("a write hands bytes to TCP (starts tx tcp)", [
        ("tracepoint", ("on_sendmsg",), ("tcp_sendmsg_locked",)),
        ("fentry", ("fe_tcp_sendmsg_locked",), ("tcp_sendmsg_locked",)),
        ("kprobe", ("kp_tcp_sendmsg_locked",), ("tcp_sendmsg_locked",)),
    ]),
    "tx_leave_tcp": ("a segment leaves TCP for IP (splits tx tcp | ip)", [
        ("fentry", ("fe_ip_queue_xmit", "fe_inet6_csk_xmit"), ("ip_queue_xmit", "inet6_csk_xmit")),
        ("kprobe", ("kp_ip_queue_xmit", "kp_inet6_csk_xmit"), ("ip_queue_xmit", "inet6_csk_xmit")),
    ]),
}

# Hooks with a single candidate: program -> (tracepoint, or None for the
# cgroup hook; what is lost without it). The driver entry points are
# alternatives: drivers use one of them, and any subset is fine.
DRIVER_ENTRIES = {
    "on_netif_rx": "netif_rx",
    "on_gro_receive": "napi_gro_receive_entry",
    "on_gro_frags": "napi_gro_frags_entry",
    "on_receive_entry": "netif_receive_skb_entry",
    "on_receive_list_entry": "netif_receive_skb_list_entry",
}
FIXED = {
    "on_tcp_ingress": (None, "rx driver, ip and tcp stages (no point where a packet meets its socket)"),
    "on_dev_queue": ("net_dev_queue", "tx tcp(+ip), ip and qdisc stages"),
    "on_start_xmit": ("net_dev_start_xmit", "tx qdisc and driver stages"),
    "on_xmit": ("net_dev_xmit", "tx qdisc and driver stages"),
    "on_destroy": ("tcp_destroy_sock", "prompt end of a closing socket's unfinished packets (a window waits)"),
}
SKB_BOUNDARIES = {"rx_ip", "tx_leave_tcp"}  # boundaries only the per-skb stages use
SEQ_BOUNDARIES = {"rx_queued", "rx_read", "tx_accept", "tx_leave_tcp"}  # touch a socket's slots

# What each attached program does after a window closes (while started packets finish):
# START: it only starts stages, detached at once; SHORT: it ends stages of microseconds,
# detached after MIN_DRAIN_S; otherwise the pending groups it ends (detached when they are 0).
START, SHORT = "start", "short"
MIN_DRAIN_S = 0.002
DRAIN_POLL_S = 0.002
# A flow's skbs that entered the qdisc stage and could not be timed through it, and why.
QDISC_SPLIT_WHY = ("they reached the device layer as GSO skbs but never the driver under their own address: "
                   "they were split into new skbs on the way (by the qdisc: tbf does, with TSO/GSO on, for a "
                   "packet larger than its burst; or by software segmentation for a device without that "
                   "offload), so the packets that left cannot be matched with the ones queued")
QDISC_SPLIT_SHORT = "GSO skbs split before the driver"


def _role(prog: str, boundary: str | None, split_tx: bool) -> str | frozenset[int]:
    if prog in DRIVER_ENTRIES or boundary == "tx_accept":
        return START
    if boundary == "rx_ip" or prog in ("on_tcp_ingress", "on_xmit"):
        return SHORT
    if boundary == "rx_queued":
        return frozenset({PEND_RX_TCP})
    if boundary == "rx_read":
        return frozenset({PEND_RX_APP})
    if boundary == "tx_leave_tcp":
        return frozenset({PEND_TX_TCP})
    if prog == "on_dev_queue":
        return SHORT if split_tx else frozenset({PEND_TX_TCP})
    if prog == "on_start_xmit":
        return frozenset({PEND_QDISC})
    return frozenset({PEND_RX_TCP, PEND_RX_APP, PEND_TX_TCP})  # on_destroy


_fentry_verdict: tuple[bool, str] | None = None


def default_object_path() -> str:
    return object_path("latency.bpf.o")


def kprobes_available() -> bool:
    """kprobe attachment needs the kprobe PMU (CONFIG_KPROBE_EVENTS)."""
    return os.path.exists("/sys/bus/event_source/devices/kprobe/type")


def fentry_available(path: str) -> tuple[bool, str]:
    """Whether BPF trampolines load here: one small fentry program, loaded alone, once per process.

    Kernels with BTF can still refuse them (no trampoline support on the arch,
    lockdown, or a sandbox: ours answers EPERM), so asking BTF is not enough.
    """
    global _fentry_verdict
    if _fentry_verdict is None:
        obj = BpfObject(path)
        try:
            for name, prog in obj.programs.items():
                prog.set_autoload(name == "fe_ip_rcv")
            obj.load()
            _fentry_verdict = (True, "ok")
        except BpfError as e:
            _fentry_verdict = (False, f"fentry does not load here ({os.strerror(e.errno) if e.errno else e})")
        finally:
            obj.close()
    return _fentry_verdict


def _map_update(m, key: ctypes._CData, value: ctypes._CData) -> None:
    """bpf_map_update_elem on an already loaded map (the binding reads maps only)."""
    fn = lib().bpf_map_update_elem
    fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64]
    if fn(m.fd, ctypes.byref(key), ctypes.byref(value), 0):
        raise BpfError(f"update map {m.name}", ctypes.get_errno() or 22)


class _SplitWatch:
    """While a window drains: are the qdisc stage's unfinished skbs only GSO skbs that were
    split into new skbs (so will never finish)? Yes when no more GSO skbs are pending than
    went unmatched since the window opened, and no queued skb has reached the driver for a
    while (a tbf queue that still drains makes progress every few ms)."""

    STALL_S = 0.02

    def __init__(self, eng: "LatencyEngine"):
        self.eng = eng
        self.matched = -1
        self.since = time.monotonic()

    def only_split_left(self, pending: int) -> bool:
        eng = self.eng
        matched = eng._stat(LatStat.LS_TX_MATCHED)
        now = time.monotonic()
        if matched != self.matched:
            self.matched, self.since = matched, now
            return False
        unmatched_gso = eng._stat(LatStat.LS_GSO_QUEUED) - eng._stat(LatStat.LS_GSO_MATCHED) - eng._gso_at_open
        return now - self.since >= self.STALL_S and pending <= unmatched_gso


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


class LatencyEngine:
    """Owns the loaded latency.bpf.o, its links and (in budget mode) the thread that runs its windows.

    `poll()` -> (host, flows): host-wide latency, and per-flow latency keyed by socket cookie
    (Flow.id), each the figures of its last window. `close()` detaches all. `hooks` maps each
    program/boundary to "ok" or "unavailable: why"; `degraded` lists what is lost on this
    kernel, one line each; `describe()` says how packets are being timed and at what cost.
    """

    def __init__(self, mode: str = "budget", budget_pct: float = 0.5, period_s: float = 1.0,
                 max_flows: int = 65536, max_skb_age_s: float = 5.0, object_path: str | None = None,
                 allow_fentry: bool = True, allow_kprobe: bool = True, skb_stages: bool = True,
                 window_s: float | None = None, drain_max_s: float = 1.0):
        if mode not in ("budget", "continuous"):
            raise ValueError("mode is 'budget' or 'continuous'")
        self.mode = mode
        self.budget_pct = budget_pct
        self.period_s = period_s
        # A fixed window length (tests, experiments): the budget still measures, but does not choose.
        self.fixed_window_s = window_s
        self.drain_max_s = drain_max_s
        self.max_flows = max_flows
        self.max_skb_age_ns = int(max_skb_age_s * 1e9)
        self.hooks: dict[str, str] = {}
        self.degraded: list[str] = []
        self.chosen: dict[str, tuple[str, tuple[str, ...]] | None] = {}
        # The stages matched per skb below TCP (rx driver/ip, tx ip/qdisc/driver) are about
        # half of the engine's program runs per packet; off, only the sequence-matched
        # stages remain (rx tcp and app, tx tcp+ip).
        self.skb_stages = skb_stages
        self.budget = Budget(budget_pct, period_s)
        self._path = object_path or default_object_path()
        self._obj: BpfObject | None = None
        self._links: dict[str, Link] = {}
        self._attachable: dict[str, Callable[[], Link]] = {}
        self._roles: dict[str, str | frozenset[int]] = {}
        self._cgroup = CgroupRoot()
        self._rung_why: dict[tuple[str, str], str] = {}
        self._verifier_refused: dict[str, str] = {}
        self._allow = {"fentry": allow_fentry, "kprobe": allow_kprobe, "tracepoint": True}
        self._lock = threading.Lock()   # what a window publishes
        self._stop = threading.Event()
        self._polled = threading.Event()  # set by poll(): the window thread starts a cycle after it
        self._thread: threading.Thread | None = None
        self._gen = 0
        self._window_id = 0
        self._open_since = 0.0          # monotonic time the current window opened (0: none open)
        self._opened_ns = self._closed_ns = 0
        self._prev_host: list[tuple[list[int], int]] | None = None
        self._flow_lat: dict[int, dict] = {}
        self._host_lat: dict[str, Any] | None = None
        self._truncated = 0             # packets still unfinished when a window's drain gave up
        # (id, opened, closed) of recent windows, CLOCK_MONOTONIC ns (bpf_ktime_get_ns's clock).
        self.recent_windows: deque[tuple[int, int, int]] = deque(maxlen=256)
        self._gso_unmatched_seen = 0    # GSO skbs queued but not matched, as of the last tx_skbs scan
        self._gso_at_open = 0           # ... as of the window's opening
        self._windows = 0
        self._packets_seen: tuple[float, int] | None = None  # (when, packets) of the last rate's end
        self._packets_per_s: float | None = None
        self._packets = HostPackets()
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    # -- set-up -------------------------------------------------------------

    def _start(self) -> None:
        btf = KernelBtf()
        try:
            refused: set[tuple[str, str]] = set()  # (boundary, kind) whose load or attach failed
            for _ in range(len(LADDERS) + len(DRIVER_ENTRIES) + len(FIXED) + 4):
                self._choose(btf, refused)
                try:
                    self._load()
                except BpfError as e:
                    who = refused_program(e.log)
                    if who is None or not self._refuse(who[0], who[1], refused):
                        raise
                    continue
                failed = self._attach()
                if not failed:
                    break
                refused |= failed
                self._detach()
            else:
                raise BpfError("latency engine: hooks keep failing to load or attach", 0)
        finally:
            btf.close()
        self._prev_host = self._read_host_raw()
        self._mark = (time.monotonic(), busy_cpu_ns(), self._runs())  # where the next cycle's costs start
        self._packets_at_mark = self._packets()  # the first window's forecast counts packets from here
        self._cycle_start = time.monotonic() - self.period_s
        if self.mode == "continuous":
            self._open_window(attach=False)
        else:
            self._detach_links(list(self._links))  # attached once to learn what attaches; windows reattach
        self._thread = threading.Thread(target=self._run_windows, name="tcptop-latency-windows", daemon=True)
        self._thread.start()

    def _refuse(self, prog: str, why: str, refused: set[tuple[str, str]]) -> bool:
        """Leave out a program the verifier refused, on its own: its rung (the next one is
        tried), or its single hook (its stages are reported lost, with the reason)."""
        for boundary, (_, rungs) in LADDERS.items():
            for kind, progs, _ in rungs:
                if prog in progs and (boundary, kind) not in refused:
                    refused.add((boundary, kind))
                    self._rung_why[(boundary, kind)] = f"the verifier refused {prog} ({why})"
                    return True
        if (prog in FIXED or prog in DRIVER_ENTRIES) and prog not in self._verifier_refused:
            self._verifier_refused[prog] = why
            return True
        return False

    def _rung_ok(self, btf: KernelBtf, kind: str, names: tuple[str, ...]) -> tuple[bool, str]:
        if not self._allow[kind]:
            return False, f"{kind} disabled by option"
        if kind == "tracepoint":
            missing = [n for n in names if not btf.has_tracepoint(n)]
            return (not missing, f"no tracepoint {', '.join(missing)}")
        missing = [n for n in names if not btf.has_function(n)]
        if missing:
            return False, f"no kernel function {', '.join(missing)}"
        if kind == "kprobe":
            return (kprobes_available(), "kprobes not available (no kprobe PMU)")
        return fentry_available(self._path)

    def _choose(self, btf: KernelBtf, refused: set[tuple[str, str]]) -> None:
        self.hooks.clear()
        self.degraded.clear()
        self.chosen.clear()
        for boundary, (what, rungs) in LADDERS.items():
            if not self.skb_stages and boundary in SKB_BOUNDARIES:
                self.chosen[boundary] = None
                self.hooks[boundary] = "off: skb_stages=False"
                continue
            why_not = []
            for kind, progs, names in rungs:
                if (boundary, kind) in refused:
                    why_not.append(f"{kind}: {self._rung_why.get((boundary, kind), 'attach failed')}")
                    continue
                ok, why = self._rung_ok(btf, kind, names)
                if ok:
                    self.chosen[boundary] = (kind, progs)
                    self.hooks[boundary] = f"ok: {kind} {'+'.join(names)}"
                    break
                why_not.append(f"{kind}: {why}")
            else:
                self.chosen[boundary] = None
                self.hooks[boundary] = "unavailable: " + "; ".join(why_not)
                self.degraded.append(f"latency: no hook where {what} ({'; '.join(why_not)})")
        self._driver_entries = {p: tp for p, tp in DRIVER_ENTRIES.items()
                                if self.skb_stages and btf.has_tracepoint(tp) and p not in self._verifier_refused}
        for prog, why in self._verifier_refused.items():
            if prog in DRIVER_ENTRIES:
                self.hooks[prog] = f"unavailable: the verifier refused it ({why})"
        if not self._driver_entries and self.skb_stages:
            self.degraded.append("latency: rx driver stage unmeasured (no driver hand-over tracepoint)")
        self._fixed_missing = {p for p, (tp, _) in FIXED.items()
                               if (tp and not btf.has_tracepoint(tp)) or p in self._verifier_refused}
        self._fixed_off = set() if self.skb_stages else {"on_start_xmit", "on_xmit"}

    def _load(self) -> None:
        obj = BpfObject(self._path)
        try:
            for cname, mirror in MIRRORS.items():
                obj.check_mirror(cname, mirror)
            for cname, py_enum in ENUM_MIRRORS.items():
                obj.check_enum_mirror(cname, py_enum)
            wanted = set(self._driver_entries) | (set(FIXED) - self._fixed_missing - self._fixed_off)
            for choice in self.chosen.values():
                if choice:
                    wanted |= set(choice[1])
            for name, prog in obj.programs.items():
                prog.set_autoload(name in wanted)
            obj.maps["flows"].set_max_entries(self.max_flows)
            obj.maps["probes"].set_max_entries(self.max_flows if self._probe_map() else 1)
            self._set_rodata(obj)
            obj.load()
        except BaseException:
            obj.close()
            raise
        self._obj = obj

    def _set_rodata(self, obj: BpfObject) -> None:
        obj.set_rodata("max_skb_age_ns", self.max_skb_age_ns)
        obj.set_rodata("tx_split_ip", 1 if self.chosen.get("tx_leave_tcp") else 0)
        obj.set_rodata("track_skbs", 1 if self.skb_stages else 0)
        obj.set_rodata("probe_map", 1 if self._probe_map() else 0)

    def _probe_map(self) -> bool:
        """kprobe programs cannot use socket storage: with any kprobe rung on a sequence-matched
        boundary, every program keeps the per-socket slots in the cookie-keyed `probes` hash."""
        return any(c and c[0] == "kprobe" for b, c in self.chosen.items() if b in SEQ_BOUNDARIES)

    def _attach(self) -> set[tuple[str, str]]:
        """Attach every chosen program once (what fails is left out, with its reason), and
        remember how to attach each again, for the windows."""
        assert self._obj is not None
        progs = self._obj.programs
        split_tx = bool(self.chosen.get("tx_leave_tcp"))
        failed: set[tuple[str, str]] = set()
        for boundary, choice in self.chosen.items():
            if not choice:
                continue
            kind, names = choice
            try:
                for n in names:
                    self._add_link(n, progs[n].attach, _role(n, boundary, split_tx))
            except (BpfError, OSError):
                failed.add((boundary, kind))
        attached_entries = []
        for prog, tp in self._driver_entries.items():
            try:
                self._add_link(prog, progs[prog].attach, START)
                attached_entries.append(tp)
            except (BpfError, OSError) as e:
                self.hooks[prog] = f"unavailable: {e}"
        if attached_entries:
            self.hooks["rx_driver_entry"] = "ok: tracepoint " + "+".join(attached_entries)
        for prog, (tp, lost) in FIXED.items():
            if prog in self._fixed_off:
                self.hooks[prog] = "off: skb_stages=False"
                continue
            if prog in self._fixed_missing:
                why = self._verifier_refused.get(prog)
                self._degrade(prog, f"the verifier refused it ({why})" if why else f"no tracepoint {tp}", lost)
                continue
            p = progs[prog]
            attach = (lambda p=p: self._cgroup.attach(p)) if tp is None else p.attach
            try:
                self._add_link(prog, attach, _role(prog, None, split_tx))
                self.hooks[prog] = "ok"
            except (BpfError, OSError) as e:
                self._degrade(prog, str(e).split(": ", 1)[-1], lost)
        return failed

    def _add_link(self, name: str, attach: Callable[[], Link], role: str | frozenset[int]) -> None:
        self._links[name] = attach()
        self._attachable[name] = attach
        self._roles[name] = role

    def _degrade(self, prog: str, why: str, lost: str) -> None:
        self.hooks[prog] = f"unavailable: {why}"
        self.degraded.append(f"latency: {lost} unavailable ({why})")

    def _detach_links(self, names: list[str]) -> None:
        for n in names:
            link = self._links.pop(n, None)
            if link is not None:
                link.destroy()

    def _detach(self) -> None:
        self._detach_links(list(self._links))
        self._attachable.clear()
        self._roles.clear()
        if self._obj:
            self._obj.close()
            self._obj = None

    def program_ids(self) -> list[int]:
        return self._obj.program_ids() if self._obj else []

    def close(self) -> None:
        self._stop.set()
        self._polled.set()
        if self._thread is not None:
            self._thread.join(timeout=5 + self.drain_max_s)
            self._thread = None
        with self._lock:
            self._detach()
        self._cgroup.close()

    # -- what is measured on this kernel -------------------------------------

    def stage_keys(self) -> dict[str, list[tuple[str, int]]]:
        """Per direction, (JSON key, kernel stage) in packet order; merged stages get a joined key."""
        c = self.chosen
        fixed_ok = {p for p, s in self.hooks.items() if p in FIXED and s == "ok"}
        rx: list[tuple[str, int]] = []
        if "on_tcp_ingress" in fixed_ok:
            if c.get("rx_ip"):
                if self._driver_entries:
                    rx.append(("driver", RX_DRIVER))
                rx.append(("ip", RX_IP))
            elif self._driver_entries:
                rx.append(("driver+ip", RX_DRIVER))
            if c.get("rx_queued"):
                rx.append(("tcp", RX_TCP))
        if c.get("rx_queued") and c.get("rx_read"):
            rx.append(("app", RX_APP))
        tx: list[tuple[str, int]] = []
        if "on_dev_queue" in fixed_ok:
            if c.get("tx_leave_tcp"):
                if c.get("tx_accept"):
                    tx.append(("tcp", TX_TCP))
                tx.append(("ip", TX_IP))
            elif c.get("tx_accept"):
                tx.append(("tcp+ip", TX_TCP))
        if {"on_start_xmit", "on_xmit"} <= fixed_ok:
            if "on_dev_queue" in fixed_ok:
                tx.append(("qdisc", TX_QDISC))
            tx.append(("driver", TX_DRIVER))
        return {"rx": rx, "tx": tx}

    def stage_notes(self) -> dict[str, str]:
        """Which hooks bound each reported stage on this kernel (the snapshot's "stages" note)."""
        c = self.chosen
        drv = "tracepoints " + "/".join(self._driver_entries.values()) if self._driver_entries else "-"

        def rung(b: str, fallback: str = "-") -> str:
            ch = c.get(b)
            return f"{ch[0]} {self.hooks[b].split(' ', 2)[-1]}" if ch else fallback

        ip_start = rung("rx_ip")
        notes = {
            "rx.driver": f"{drv} -> {ip_start}",
            "rx.ip": f"{ip_start} -> cgroup_skb/ingress (in tcp_v4_rcv/tcp_v6_rcv, after socket lookup)",
            "rx.driver+ip": f"{drv} -> cgroup_skb/ingress (no IP-layer hook)",
            "rx.tcp": f"cgroup_skb/ingress -> {rung('rx_queued')} (by sequence number)",
            "rx.app": f"{rung('rx_queued')} -> {rung('rx_read')} (by sequence number)",
            "tx.tcp": f"{rung('tx_accept')} -> {rung('tx_leave_tcp')} (by sequence number)",
            "tx.ip": f"{rung('tx_leave_tcp')} -> tracepoint net_dev_queue (by skb address)",
            "tx.tcp+ip": f"{rung('tx_accept')} -> tracepoint net_dev_queue (by sequence number; "
                         "no hook where TCP hands the segment to IP)",
            "tx.qdisc": "tracepoint net_dev_queue -> tracepoint net_dev_start_xmit (by skb address)",
            "tx.driver": "tracepoint net_dev_start_xmit -> tracepoint net_dev_xmit (same CPU)",
        }
        keys = self.stage_keys()
        shown = {f"{d}.{k}" for d, ks in keys.items() for k, _ in ks}
        out = {k: v for k, v in notes.items() if k in shown}
        out["resolution"] = ("log-linear buckets, 8 per power of two (each at most 9.7 % wide; [0, 128 ns) "
                             "below): a percentile is within 9.7 % of the true one; means are exact")
        out["packets"] = ("every packet that starts a stage while a window is open is timed, to the end of "
                          "the stage (a closed window waits for them); tcp/app stages match every packet by "
                          "sequence number; counts are packets timed")
        return out

    # -- windows ------------------------------------------------------------

    def _control(self, gen: int, is_open: bool) -> None:
        assert self._obj is not None
        _map_update(self._obj.maps["control"], ctypes.c_uint32(0), LatControl(gen, 1 if is_open else 0))

    def _sum(self, name: str, count: int) -> list[int]:
        assert self._obj is not None
        return self._obj.maps[name].percpu_sums(count)

    def _runs(self) -> int:
        return self._stat(LatStat.LS_RUNS)

    def _pending(self) -> list[int]:
        return [_signed(v % (1 << 64)) for v in self._sum("pending", PEND_MAX)]

    def _zero_pending(self) -> None:
        assert self._obj is not None
        zeros = (ctypes.c_uint64 * possible_cpus())()
        for i in range(PEND_MAX):
            _map_update(self._obj.maps["pending"], ctypes.c_uint32(i), zeros)

    def _open_window(self, attach: bool = True) -> None:
        """A new generation: every start from now on is timed, until the window closes."""
        self._gen = self._gen % 0xFFFF + 1  # 16 bits in the per-socket slots; never 0
        self._zero_pending()
        self._control(self._gen, False)
        if attach:
            for name, fn in self._attachable.items():
                if name not in self._links:
                    self._links[name] = fn()
        self._gso_at_open = self._stat(LatStat.LS_GSO_QUEUED) - self._stat(LatStat.LS_GSO_MATCHED)
        self._control(self._gen, True)
        self._open_since = time.monotonic()
        self._opened_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        self._window_start_ts = time.time()

    def _close_window(self) -> tuple[int, int]:
        """Stop starts, wait for the started packets to finish (each end hook is detached once
        nothing it ends is pending), detach all. (runs when it closed, runs after)."""
        self._control(self._gen, False)
        self._closed_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        closed_at = time.monotonic()
        runs_closed = self._runs()
        self._detach_links([n for n in self._links if self._roles[n] == START])
        pending = self._pending()
        split = _SplitWatch(self)
        while self._links:
            waited = time.monotonic() - closed_at
            if waited >= self.drain_max_s:
                self._truncated += sum(max(0, p) for p in pending)
                break
            if pending[PEND_QDISC] > 0 and split.only_split_left(pending[PEND_QDISC]):
                pending[PEND_QDISC] = 0
            self._detach_links([n for n in self._links if self._drained(self._roles[n], pending, waited)])
            if self._links:
                time.sleep(DRAIN_POLL_S)
                pending = self._pending()
        self._detach_links(list(self._links))
        self._open_since = 0.0
        return runs_closed, self._runs() - runs_closed

    def _stat(self, idx: int) -> int:
        """One run-level counter, summed over CPUs."""
        assert self._obj is not None
        vals = (ctypes.c_uint64 * possible_cpus())()
        return sum(vals) if self._obj.maps["stats"].lookup(ctypes.c_uint32(idx), vals) else 0

    @staticmethod
    def _drained(role: str | frozenset[int], pending: list[int], waited: float) -> bool:
        if role == START:
            return True
        if role == SHORT:
            return waited >= MIN_DRAIN_S
        return all(pending[g] <= 0 for g in role)

    def _run_windows(self) -> None:
        """The budget mode's cycles, until close()."""
        try:
            while not self._stop.is_set():
                self._one_cycle()
        except Exception as e:  # noqa: BLE001 - reported, never silent: the figures stop
            with self._lock:
                self.degraded.append(f"latency: the window thread stopped ({e!r})")

    def _one_cycle(self) -> None:
        """Open a window (or keep timing, if the last cycle was continuous), take its figures when
        it has drained, and let the budget plan the next from what the cycle cost: everything
        since the last one (the programs count their runs; detached, they cost nothing)."""
        plan = self._next_plan()
        mark_t, mark_busy, mark_runs = self._mark
        own0 = time.thread_time_ns()
        if not self._open_since:
            self._wait_for_poll(plan.period_s)
            if self.budget.last is None and self.mode == "budget" and self.fixed_window_s is None:
                plan = self._first_plan(mark_t, mark_busy)
                if plan.period_s > self.period_s:  # even the first window costs more than a period allows
                    self._wait_for_poll(plan.period_s)
        packets0 = self._packets()
        # A continuous stretch goes on: this cycle times from the last one's end, not from
        # when the stretch began (that made each cycle's open time the whole stretch so far:
        # timed fractions over 1, windows reported as long as the stretch, and the budget's
        # runs per open second too low).
        opened_at = max(self._open_since, mark_t)
        if not self._open_since:
            self._open_window()
            opened_at = self._open_since
            if not plan.continuous:
                self._stop.wait(plan.window_s)
        # A stretch planned from the forecast alone is watched 4x as often for its first cycle:
        # traffic that starts right after tcptop (a load test) is timed whole until the watch
        # sees it. redis GET -c 20 started as tcptop's packet engine loaded: the engine's own
        # cost model over the ~11 s run said 0.61 % of busy CPU with 0.1 s, 0.23 % with 0.025 s
        # (the blind 5 ms first window before: 0.16 %; the budget is 0.5 %).
        step = WATCH_STEP_S / 4 if self.budget.last is None else WATCH_STEP_S
        if plan.continuous and self._wait_for_poll(plan.period_s, watch=(mark_busy, mark_runs), step=step):
            plan = Plan(time.monotonic() - opened_at, plan.period_s)  # the traffic grew: close now
        open_s = time.monotonic() - opened_at
        packets = self._packets() - packets0
        drain_runs = 0
        if not plan.continuous or self._stop.is_set():
            drain_runs = self._close_window()[1]
        self._take_window(open_s)
        now, busy, runs = time.monotonic(), busy_cpu_ns(), self._runs()
        self._mark = (now, busy, runs)
        nxt = self.budget.observe(Cycle(open_s=open_s, open_runs=runs - mark_runs - drain_runs, drain_runs=drain_runs,
                                        elapsed_s=now - mark_t, busy_ns=busy - mark_busy, packets_open=packets,
                                        own_ns=time.thread_time_ns() - own0))
        upcoming = nxt if self.mode == "budget" and self.fixed_window_s is None else self._next_plan()
        if self._open_since and not upcoming.continuous:
            self._close_window()  # a continuous stretch ends; its drain counts in the next cycle

    def _wait_for_poll(self, period_s: float, watch: tuple[int, int] | None = None,
                       step: float = WATCH_STEP_S) -> bool:
        """Wait for the first poll once a period has (nearly) passed since the last cycle began:
        packets are timed only while someone looks, the figures are taken and summarised between
        polls rather than during one, and every window's figures are there for at least one poll
        (the next cycle waits for a poll after they were). `watch` (busy CPU and runs when the
        cycle's costs began): while timing continuously, look every `step` s whether the traffic
        grew past what the budget allows, and return True at once if so."""
        earliest = self._cycle_start + 0.8 * period_s
        armed = False  # polls count from `earliest` on
        planned = self.mode == "budget" and self.fixed_window_s is None
        watching = watch is not None and planned
        # Without a watch, one wait for `earliest` and one for the poll (close() sets both
        # events): waking every 0.1 s cost this thread ~1.5 ms of CPU a second on a quiet host.
        # A period the traffic's cost stretched is looked at again once a base period: if the
        # traffic fell, the window comes sooner (not when the thread's own cost set the period,
        # as on a quiet host: waking once a period took it from 0.07 to 0.38 ms of CPU a second).
        step = step if watching else None
        replan = planned and watch is None and self.budget.spaced_by_traffic()
        if replan:
            step = self.period_s
        while not self._stop.is_set():
            if watching:
                spent = (self._runs() - watch[1]) * self.budget.ns_per_run
                busy = busy_cpu_ns() - watch[0]
                if busy > 0 and spent > 2 * self.budget.budget * busy:
                    self._cycle_start = time.monotonic()
                    return True
            rate = self._packet_rate() if replan and not armed else None
            if rate is not None:
                earliest = self._cycle_start + 0.8 * self.budget.period_now(rate)
            now = time.monotonic()
            if not armed and now >= earliest:
                self._polled.clear()
                armed = True
            if armed:
                if self._polled.wait(step):
                    break
            else:
                self._stop.wait(earliest - now if step is None else min(step, earliest - now))
        self._cycle_start = time.monotonic()
        return False

    def _next_plan(self) -> Plan:
        if self.mode == "continuous":
            return Plan(self.period_s, self.period_s)
        if self.fixed_window_s is not None:
            return Plan(self.fixed_window_s, self.period_s)
        return self.budget.adjust_for_load(self._packet_rate() or 0.0)

    def _first_plan(self, mark_t: float, mark_busy: int) -> Plan:
        """The budget's first plan from the traffic and busy CPU since the engine started
        (the blind default if that was less than FIRST_SPAN_S ago)."""
        elapsed = time.monotonic() - mark_t
        if elapsed < FIRST_SPAN_S:
            return self.budget.plan
        rate = (self._packets() - self._packets_at_mark) / elapsed
        return self.budget.first_plan(rate, (busy_cpu_ns() - mark_busy) / elapsed)

    def _packet_rate(self) -> float | None:
        """Packets a second the host took in (every namespace) since the last look at least
        RATE_SPAN_S before (a shorter span would count a few packets as a rate); None until known."""
        now, packets = time.monotonic(), self._packets()
        prev = self._packets_seen
        if prev is None:
            self._packets_seen = (now, packets)
        elif now - prev[0] >= RATE_SPAN_S:
            self._packets_seen = (now, packets)
            self._packets_per_s = (packets - prev[1]) / (now - prev[0])
        return self._packets_per_s

    # -- reading a window's figures -------------------------------------------

    def stats(self) -> dict[str, int]:
        """Matching counters summed over CPUs (see enum lat_stat in bpf/latency.h)."""
        assert self._obj is not None
        return dict(zip(STAT_NAMES, self._sum("stats", len(STAT_NAMES))))

    def _read_host_raw(self) -> list[tuple[list[int], int]]:
        assert self._obj is not None
        m = self._obj.maps["host"]
        ncpu = possible_cpus()
        out = []
        for stage in range(STAGES):
            vals = (LatHist * ncpu)()
            slots, total = [0] * BUCKETS, 0
            if m.lookup(ctypes.c_uint32(stage), vals):
                for h in vals:
                    for b, c in enumerate(h.slots):
                        if c:
                            slots[b] += c
                    total += h.sum_ns
            out.append((slots, total))
        return out

    def _take_window(self, open_s: float) -> None:
        """Read what the window timed (deleting the per-flow entries), summarise, publish."""
        end_ts = time.time()
        self._window_id += 1
        closed = self._closed_ns if not self._open_since else time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        self.recent_windows.append((self._window_id, self._opened_ns, closed))
        if self._open_since:
            self._opened_ns = closed
        self._windows += 1
        window = {"id": self._window_id, "end_ts": round(end_ts, 3), "s": round(open_s, 3)}
        keys = self.stage_keys()
        raw = self._read_host_raw()
        prev, self._prev_host = self._prev_host, raw
        if prev:
            raw = [([a - b for a, b in zip(s, ps)], t - pt) for (s, t), (ps, pt) in zip(raw, prev)]
        host: dict[str, Any] = {d: {k: stage_summary(*raw[st]) for k, st in ks} for d, ks in keys.items()}
        host["window"] = window
        flows = self._read_flows(keys, window)
        self._mark_unobservable_qdisc(flows, keys, window)
        host["stages"] = self.stage_notes()
        with self._lock:
            fresh = dict(self._flow_lat)
            fresh.update(flows)
            self._host_lat = host
            self._flow_lat = fresh

    def _read_flows(self, keys: dict[str, list[tuple[str, int]]], window: dict) -> dict[int, dict]:
        """Every flow with packets in the window: {cookie: {"rx": ..., "tx": ..., "window": ...}}."""
        assert self._obj is not None
        per: dict[int, dict[int, dict]] = {}
        for ks, values, n in self._obj.maps["flows"].batches(LatKey, LatFlowHist, delete=True, batch=512):
            raw = ctypes.string_at(ctypes.addressof(values), n * _FLOW_HIST_SIZE)
            for i in range(n):
                base = i * _FLOW_HIST_SIZE
                sum_ns, groups = _FLOW_HEAD.unpack_from(raw, base)
                pairs = []
                g = groups.find(1)
                while g >= 0:  # only the groups of 8 buckets the kernel marked non-empty
                    for j, c in enumerate(_GROUP.unpack_from(raw, base + _SLOTS_OFF + 32 * g)):
                        if c:
                            pairs.append((8 * g + j, c))
                    g = groups.find(1, g + 1)
                per.setdefault(ks[i].cookie, {})[ks[i].stage] = summary_of_pairs(pairs, sum_ns)
        out = {}
        for cookie, stages in per.items():
            lat = self._empty_flow(keys, window)
            for d, ks in keys.items():
                for k, st in ks:
                    if st in stages:
                        lat[d][k] = stages[st]
            out[cookie] = lat
        return out

    @staticmethod
    def _empty_flow(keys: dict[str, list[tuple[str, int]]], window: dict) -> dict[str, Any]:
        lat: dict[str, Any] = {d: {k: summary_of_pairs([], 0) for k, _ in ks} for d, ks in keys.items()}
        lat["window"] = window
        return lat

    def _mark_unobservable_qdisc(self, flows: dict[int, dict], keys: dict, window: dict) -> None:
        """Flows whose GSO skbs were queued in the window but never reached the driver under the
        same address: their qdisc stage says how many skbs it could not time, and why (with no
        sample at all, the stage was not observable for that flow)."""
        if not any(k == "qdisc" for k, _ in keys["tx"]):
            return
        stats = self.stats()
        unmatched_gso = stats["gso_queued"] - stats["gso_matched"]
        if unmatched_gso <= self._gso_unmatched_seen:
            return  # every GSO skb queued since the last look reached the driver whole: nothing to scan
        self._gso_unmatched_seen = unmatched_gso
        assert self._obj is not None
        m = self._obj.maps["tx_skbs"]
        now_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        left: dict[int, list[int]] = {}
        stuck: list[int] = []
        for ks, values, n in m.batches(ctypes.c_uint64, TxSkb, batch=4096):
            raw = ctypes.string_at(ctypes.addressof(values), n * ctypes.sizeof(TxSkb))
            for i, (c, _ip, queue_ts, gen, segs, _pad) in enumerate(_TX_SKB.iter_unpack(raw)):
                if not queue_ts or not c or gen != self._gen or segs <= 1:
                    continue
                if self.mode == "continuous" and now_ns - queue_ts < 1_000_000_000:
                    continue  # may still be in a queue
                acc = left.setdefault(c, [0, 0])
                acc[0] += 1
                acc[1] += segs
                stuck.append(ks[i])
        for key in stuck:
            m.delete(ctypes.c_uint64(key))
        for cookie, (gso, segs) in left.items():
            lat = flows.get(cookie)
            if lat is None:
                lat = flows[cookie] = self._empty_flow(keys, window)
            lat["tx"]["qdisc"] = dict(lat["tx"]["qdisc"], unobserved={
                "skbs": gso, "segments": segs, "why": QDISC_SPLIT_WHY, "short": QDISC_SPLIT_SHORT})

    # -- polling ------------------------------------------------------------

    def poll(self) -> tuple[dict | None, dict[int, dict]]:
        """(host-wide latency, {cookie: flow latency}) of the latest windows."""
        self._polled.set()
        with self._lock:
            host, flows = self._host_lat, self._flow_lat
        if host is None:
            return None, flows
        host = dict(host)
        host["window"] = dict(host["window"], age_s=round(max(0.0, time.time() - host["window"]["end_ts"]), 3))
        host["coverage"] = self.coverage()
        host["matching"] = dict(self.stats() if self._obj else {}, truncated=self._truncated, windows=self._windows)
        return host, flows

    def retain(self, cookies: Container[int]) -> None:
        """Forget the last figures of flows that are gone (the engine lists the live ones)."""
        with self._lock:
            if any(c not in cookies for c in self._flow_lat):
                self._flow_lat = {c: v for c, v in self._flow_lat.items() if c in cookies}

    def coverage(self) -> dict[str, Any]:
        """How packets are being timed, what share of the time, and at what cost (the model's)."""
        now = self._cycle_so_far()
        frac = self.budget.timed_fraction(now)
        cost = self.budget.cost_pct(now)
        own = self.budget.own_pct(now)
        plan = self.budget.plan
        d: dict[str, Any] = {
            "mode": self.mode,
            "budget_pct": self.budget_pct if self.mode == "budget" else None,
            "timed_fraction": None if frac is None else round(frac, 4),
            "window_s": round(plan.window_s, 4) if self.mode == "budget" else None,
            "period_s": round(plan.period_s, 3) if self.mode == "budget" else None,
            "cost_pct": None if cost is None else round(cost, 3),
            "own_cpu_pct": None if own is None else round(own, 3),
            "ns_per_run": NS_PER_RUN,
        }
        return d

    def _cycle_so_far(self) -> Cycle | None:
        """The cycle in progress, as far as it went (its thread's own CPU aside): the shares are
        reported over the finished cycles and this one. Over finished cycles alone, a busy
        host's first cycle (a few ms) stood for the seconds until the next one ended: 9.13 %
        of busy CPU reported where the time since start said 0.28 %; a continuous stretch
        whose first cycle ended before the traffic began said 0.0 %."""
        if self._obj is None:
            return None
        mark_t, mark_busy, mark_runs = self._mark  # read once: the window thread replaces it
        now = time.monotonic()
        since = self._open_since
        return Cycle(open_s=max(0.0, now - max(since, mark_t)) if since else 0.0,
                     open_runs=max(0, self._runs() - mark_runs), drain_runs=0, elapsed_s=max(0.0, now - mark_t),
                     busy_ns=max(0, busy_cpu_ns() - mark_busy))

    def describe(self, coverage: dict[str, Any] | None = None) -> str:
        """One line for the run info: how packets are timed and what it costs; `coverage`: the
        one this poll already took (each is a map read and a /proc/stat read)."""
        c = coverage or self.coverage()
        cost = f"{c['cost_pct']:.2f} %" if c["cost_pct"] is not None else "not yet measured"
        if self.mode == "continuous":
            return (f"ok: every packet timed, continuously (asked for); costs about {cost} of busy CPU "
                    "(yours to pay: --latency budget keeps it within a budget)")
        frac = f"{100 * c['timed_fraction']:.1f} %" if c["timed_fraction"] is not None else "-"
        return (f"ok: every packet timed in windows within {self.budget_pct:g} % of busy CPU: "
                f"{frac} of the last minute timed, costing about {cost}")
