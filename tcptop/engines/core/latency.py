"""Packet-level engine, user side: loads bpf/latency.bpf.o with the best hook per stage boundary, polls.

Pairs with bpf/latency.bpf.c (kernel side) and bpf/latency.h (the shared
layouts, mirrored below with ctypes and checked against the object's BTF).
The kernel folds every stage duration into histograms (tcptop/engines/histogram.py
says how buckets become percentiles); one poll reads the host-wide per-CPU histograms
and one batch pass over the per-flow map.
"""

from __future__ import annotations

import ctypes
import enum
import os
import struct
from typing import Any

from tcptop.engines.histogram import BUCKETS, stage_summary
from tcptop.engines.core.libbpf import (BpfError, BpfObject, CgroupRoot, KernelBtf, Link, object_path, possible_cpus,
                            refused_program)



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


class LatStat(enum.IntEnum):
    LS_RX_STARTED = 0
    LS_RX_REUSED = 1
    LS_RX_MATCHED = 2
    LS_RX_UNMATCHED = 3
    LS_RX_STALE = 4
    LS_TX_QUEUED = 5
    LS_TX_REUSED = 6
    LS_TX_MATCHED = 7
    LS_TX_STALE = 8
    LS_DRV_UNMATCHED = 9
    LS_PROBE_DONE = 10
    LS_PROBE_MISSED = 11
    LS_FLOWS_FULL = 12
    LS_MAX = 13


RX_DRIVER, RX_IP, RX_TCP, RX_APP, TX_TCP, TX_IP, TX_QDISC, TX_DRIVER, STAGES = map(int, Stage)
# The snapshot's "matching" counters: the enum's names without the prefix (LS_RX_STARTED -> rx_started).
STAT_NAMES = tuple(m.name[3:].lower() for m in LatStat if m is not LatStat.LS_MAX)


class LatHist(ctypes.Structure):
    _fields_ = [("slots", ctypes.c_uint64 * BUCKETS), ("sum_ns", ctypes.c_uint64), ("max_ns", ctypes.c_uint64)]


class LatProbe(ctypes.Structure):
    _fields_ = [("ts", ctypes.c_uint64), ("seq", ctypes.c_uint32), ("n", ctypes.c_uint32)]


class LatProbes(ctypes.Structure):
    _fields_ = [("rx_tcp", LatProbe), ("rx_app", LatProbe), ("tx", LatProbe)]


class LatFlow(ctypes.Structure):
    _fields_ = [
        ("slots", (ctypes.c_uint32 * BUCKETS) * STAGES),
        ("sum_ns", ctypes.c_uint64 * STAGES),
        ("closed_ns", ctypes.c_uint64),
    ]


class RxSkb(ctypes.Structure):
    _fields_ = [("driver_ts", ctypes.c_uint64), ("ip_ts", ctypes.c_uint64)]


class TxSkb(ctypes.Structure):
    _fields_ = [("cookie", ctypes.c_uint64), ("ip_ts", ctypes.c_uint64), ("queue_ts", ctypes.c_uint64)]


MIRRORS = {"lat_hist": LatHist, "lat_probe": LatProbe, "lat_probes": LatProbes, "lat_flow": LatFlow,
           "rx_skb": RxSkb, "tx_skb": TxSkb}
ENUM_MIRRORS = {"lat_stage": Stage, "lat_stat": LatStat}
FLOW_SIZE = ctypes.sizeof(LatFlow)
_SLOTS_FMT = f"<{BUCKETS * STAGES}I{STAGES}Q"
_HIST_END = LatFlow.closed_ns.offset  # a flow entry's histograms end where closed_ns starts

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
    "on_destroy": ("tcp_destroy_sock", "prompt release of closed flows' histograms (the map may fill)"),
}
SKB_BOUNDARIES = {"rx_ip", "tx_leave_tcp"}  # boundaries only the per-skb stages use
SEQ_BOUNDARIES = {"rx_queued", "rx_read", "tx_accept", "tx_leave_tcp"}  # touch a socket's timed bytes
# Every stage times 1 packet in 8 by default: see docs/latency.md (Overhead) for the measurements.
DEFAULT_SAMPLE = 8

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


class LatencyEngine:
    """Owns the loaded latency.bpf.o.

    `poll()` -> (host, flows): host-wide latency, and per-flow latency keyed by
    socket cookie (Flow.id). `close()` detaches all. `hooks` maps each
    program/boundary to "ok" or "unavailable: why"; `degraded` lists what is
    lost on this kernel, one line each.
    """

    def __init__(self, max_flows: int = 8192, window: str = "total",
                 max_skb_age_s: float = 5.0, object_path: str | None = None,
                 allow_fentry: bool = True, allow_kprobe: bool = True, skb_stages: bool = True,
                 sample: int = DEFAULT_SAMPLE):
        if window not in ("total", "interval"):
            raise ValueError("window is 'total' or 'interval'")
        if sample < 1 or sample > 1 << 16 or sample & (sample - 1):
            raise ValueError("sample is a power of two from 1 to 65536")
        # Every stage times 1 packet (or byte) in `sample`: the per-skb stages
        # the packets picked by a hash of the TCP header's seq/ack, which every
        # hook recomputes (no lookup for the others); the sequence-matched
        # stages the bytes picked by a hash of their sequence number. Counts
        # are samples; sample=1 times every packet.
        self.sample = sample
        self.max_flows = max_flows
        self.window = window
        self.max_skb_age_ns = int(max_skb_age_s * 1e9)
        self.hooks: dict[str, str] = {}
        self.degraded: list[str] = []
        self.chosen: dict[str, tuple[str, tuple[str, ...]] | None] = {}
        self._path = object_path or default_object_path()
        self._obj: BpfObject | None = None
        self._links: list[Link] = []
        self._cgroup = CgroupRoot()
        self._flow_cache: dict[int, tuple[bytes, dict]] = {}
        self._rung_why: dict[tuple[str, str], str] = {}
        self._verifier_refused: dict[str, str] = {}
        self._prev_host: list[tuple[tuple[int, ...], int]] | None = None
        self._prev_flow: dict[int, bytes] = {}
        self._allow = {"fentry": allow_fentry, "kprobe": allow_kprobe, "tracepoint": True}
        # The stages matched per skb below TCP (rx driver/ip, tx ip/qdisc/driver)
        # cost about half of the engine's time per packet; off, only the
        # sequence-matched stages remain (rx tcp and app, tx tcp+ip).
        self.skb_stages = skb_stages
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
            self._verifier_refused: dict[str, str] = {}  # single-candidate program -> the verifier's reason
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
                    return
                refused |= failed
                self._detach()
            raise BpfError("latency engine: hooks keep failing to load or attach", 0)
        finally:
            btf.close()

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
        obj.set_rodata("sample_shift", self.sample.bit_length() - 1)
        obj.set_rodata("probe_map", 1 if self._probe_map() else 0)

    def _probe_map(self) -> bool:
        """kprobe programs cannot use socket storage: with any kprobe rung on a sequence-matched
        boundary, every program keeps the timed bytes in the cookie-keyed `probes` hash."""
        return any(c and c[0] == "kprobe" for b, c in self.chosen.items() if b in SEQ_BOUNDARIES)

    def _attach(self) -> set[tuple[str, str]]:
        assert self._obj is not None
        progs = self._obj.programs
        failed: set[tuple[str, str]] = set()
        for boundary, choice in self.chosen.items():
            if not choice:
                continue
            kind, names = choice
            try:
                for n in names:
                    self._links.append(progs[n].attach())
            except (BpfError, OSError):
                failed.add((boundary, kind))
        attached_entries = []
        for prog, tp in self._driver_entries.items():
            try:
                self._links.append(progs[prog].attach())
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
            try:
                link = self._cgroup.attach(progs[prog]) if tp is None else progs[prog].attach()
                self._links.append(link)
                self.hooks[prog] = "ok"
            except (BpfError, OSError) as e:
                self._degrade(prog, str(e).split(": ", 1)[-1], lost)
        return failed

    def _degrade(self, prog: str, why: str, lost: str) -> None:
        self.hooks[prog] = f"unavailable: {why}"
        self.degraded.append(f"latency: {lost} unavailable ({why})")

    def _detach(self) -> None:
        for link in self._links:
            link.destroy()
        self._links.clear()
        if self._obj:
            self._obj.close()
            self._obj = None

    def program_ids(self) -> list[int]:
        return self._obj.program_ids() if self._obj else []

    def close(self) -> None:
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
        out["resolution"] = ("log2 buckets: [0,512ns), then [2^k, 2^(k+1)) ns; percentiles interpolated "
                             "geometrically inside their bucket (within 2x); tcp/app stages time one byte "
                             "per socket at a time")
        if self.sample > 1:
            out["sampled"] = (f"1/{self.sample}: every stage times 1 packet in {self.sample}, the same ones at "
                              "every hook (per-skb stages: a hash of the TCP header's seq/ack; tcp/app stages: "
                              "of the timed byte's sequence number); counts are samples, not packets")
        return out

    # -- polling ------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Matching counters summed over CPUs (see enum lat_stat in bpf/latency.h)."""
        assert self._obj is not None
        return dict(zip(STAT_NAMES, self._obj.maps["stats"].percpu_sums(len(STAT_NAMES))))

    def _read_host(self) -> list[tuple[list[int], int, int]]:
        assert self._obj is not None
        m = self._obj.maps["host"]
        ncpu = possible_cpus()
        out = []
        for stage in range(STAGES):
            vals = (LatHist * ncpu)()
            slots, total, mx = [0] * BUCKETS, 0, 0
            if m.lookup(ctypes.c_uint32(stage), vals):
                for h in vals:
                    for b in range(BUCKETS):
                        slots[b] += h.slots[b]
                    total += h.sum_ns
                    mx = max(mx, h.max_ns)
            out.append((slots, total, mx))
        return out

    def poll(self) -> tuple[dict, dict[int, dict]]:
        """(host-wide latency, {cookie: flow latency}); see the module docstring for the shape."""
        keys = self.stage_keys()
        host_raw = self._read_host()
        if self.window == "interval":
            prev = self._prev_host
            self._prev_host = [(tuple(s), t) for s, t, _ in host_raw]
            if prev:
                host_raw = [([a - b for a, b in zip(s, ps)], t - pt, mx)
                            for (s, t, mx), (ps, pt) in zip(host_raw, prev)]
        host: dict[str, Any] = {d: {k: stage_summary(*host_raw[st]) for k, st in ks} for d, ks in keys.items()}
        host["stages"] = self.stage_notes()
        host["sampled"] = f"1/{self.sample}"
        host["matching"] = self.stats()
        host["window"] = self.window
        return host, self._poll_flows(keys)

    def _poll_flows(self, keys: dict[str, list[tuple[str, int]]]) -> dict[int, dict]:
        assert self._obj is not None
        m = self._obj.maps["flows"]
        out: dict[int, dict] = {}
        closed: list[int] = []
        seen: set[int] = set()
        for ks, values, n in m.batches(ctypes.c_uint64, LatFlow, batch=256):
            base = ctypes.addressof(values)
            for i in range(n):
                cookie = ks[i]
                raw = ctypes.string_at(base + i * FLOW_SIZE, FLOW_SIZE)
                seen.add(cookie)
                if int.from_bytes(raw[_HIST_END:_HIST_END + 8], "little"):
                    closed.append(cookie)
                lat = self._flow_latency(cookie, raw, keys)
                if lat is not None:
                    out[cookie] = lat
        for cookie in closed:  # reported once more now; their sockets are gone
            m.delete(ctypes.c_uint64(cookie))
            seen.discard(cookie)
        for cookie in [c for c in self._flow_cache if c not in seen]:
            del self._flow_cache[cookie]
            self._prev_flow.pop(cookie, None)
        return out

    def _flow_latency(self, cookie: int, raw: bytes, keys: dict) -> dict | None:
        hist = raw[:_HIST_END]
        cached = self._flow_cache.get(cookie)
        if cached and cached[0] == hist and self.window == "total":
            return cached[1]
        vals = struct.unpack_from(_SLOTS_FMT, hist)
        sums = vals[BUCKETS * STAGES:]
        if self.window == "interval":
            prev = self._prev_flow.get(cookie)
            self._prev_flow[cookie] = hist
            if prev:
                pv = struct.unpack_from(_SLOTS_FMT, prev)
                vals = tuple(a - b for a, b in zip(vals, pv))
                sums = vals[BUCKETS * STAGES:]
        if not any(vals[:BUCKETS * STAGES]):
            lat = None
        else:
            lat = {d: {k: stage_summary(list(vals[st * BUCKETS:(st + 1) * BUCKETS]), sums[st])
                       for k, st in ks} for d, ks in keys.items()}
        self._flow_cache[cookie] = (hist, lat)
        return lat

