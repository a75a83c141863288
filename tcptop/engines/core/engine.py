"""The CO-RE engine: runs the kernel-side collectors (flows, packet stages, failures), makes snapshots.

It is a snapshot source like any other engine (tcptop/engines/__init__.py): `poll() ->
Snapshot`, `close()`; the flow engine (flows.py), the packet-level engine (latency.py) and
the failure engine (failures.py) each own their BPF object, and this joins what they read
into one snapshot.
"""

from __future__ import annotations

import os
import platform
import socket
import threading
import time
from typing import Callable

from tcptop.engines import EngineError, EngineOptions, check_privileges
from tcptop.engines.core.flow_layout import Stat
from tcptop.engines.core.flows import FlowEngine
from tcptop.engines.core.join import FlowJoin
from tcptop.engines.core.libbpf import BpfError
from tcptop.model import RunInfo, Snapshot

# run.events_lost_by: the flow engine's loss counters by the name each cause has there.
LOST_CAUSES = {"flow_counters": Stat.STAT_COUNTERS_FULL, "closed_records": Stat.STAT_CLOSED_LOST,
               "notices": Stat.STAT_NOTICES_LOST, "lookups": Stat.STAT_GOT_FULL}


def preflight() -> None:
    """What the CO-RE engine needs beyond privileges: the kernel's BTF."""
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        raise EngineError("this kernel has no BTF (/sys/kernel/btf/vmlinux missing; CONFIG_DEBUG_INFO_BTF=y is needed)")


class CoreEngine:
    """CO-RE engine: flows.bpf.o and the packet-level latency.bpf.o behind poll()/close().

    `latency` chooses the packet-level engine: "budget" (every stage, timed in windows whose
    cost stays within `latency_budget_pct` % of busy CPU), "full" (every stage, every packet,
    continuously), "light" (continuously, only the per-socket stages: rx tcp/app, tx tcp+ip),
    or "off". If it cannot load, the flows still run and the reason is reported in the
    snapshot's run info.
    """

    engine_name = "core"

    def __init__(self, options: EngineOptions = EngineOptions(), *, flows_object: str | None = None):
        check_privileges()
        preflight()
        self.interval_s = options.interval_s
        max_closed, latency = options.max_closed, options.latency
        self.latency = None
        self._lat_hooks: dict[str, str] = {}
        self._lat_degraded: tuple[str, ...] = ()
        self.failures = None
        self._fail_hooks: dict[str, str] = {}
        self._fail_degraded: tuple[str, ...] = ()
        self._join = FlowJoin()
        self._starting: threading.Thread | None = None
        self._start_error: BaseException | None = None
        self._latency_args: tuple[str, float] | None = None  # the packet engine, until it is started
        self._lat_starting: threading.Thread | None = None
        try:
            self.flows = FlowEngine(max_closed=max_closed, object_path=flows_object)
        except BpfError as e:
            self.close()
            raise EngineError(_explain(e)) from None
        if latency == "off":  # said in the header, so an empty waterfall is not mistaken for a fault
            self._lat_hooks = {"packet-level engine": "off (--latency off)"}
        else:
            self._lat_hooks = {"packet-level engine": "loading (after the first snapshot)"}
            self._latency_args = (latency, options.latency_budget_pct)
        # The failure engine loads (~0.1 s, mostly the kernel's verifier) while the flow engine
        # takes its first walk and decodes it; every use of it waits for this first. The packet
        # engine (~0.3-0.5 s of verifier) loads only once the first snapshot is out: on two
        # cores it slowed a first snapshot of 200,000 sockets by ~0.7 s, and its first window
        # could not come sooner than a poll later anyway.
        self._starting = self._loading(self._start_failures)
        self.host = socket.gethostname()
        self.kernel = platform.release()
        self._seq = 0
        self._last_ts = time.time()  # the previous snapshot's ts: rates divide by the time between reads

    def _loading(self, start: Callable[..., None], *args) -> threading.Thread:
        """`start(*args)` in a thread; what it raises is raised again where the engine is used."""
        def run() -> None:
            try:
                start(*args)
            except BaseException as e:  # noqa: BLE001
                self._start_error = e
        thread = threading.Thread(target=run, name=f"tcptop-{start.__name__.strip('_')}", daemon=True)
        thread.start()
        return thread

    def _started(self) -> None:
        """Wait for the failure engine to be loaded (or to have failed: raised here)."""
        self._starting = self._joined(self._starting, wait=True)

    def _latency_ready(self, wait: bool) -> bool:
        """Start the packet engine's load if it is due; whether it is done (waiting for it if
        `wait`). Until then snapshots carry no packet timing and the hook says it is loading."""
        if self._latency_args is not None:
            args, self._latency_args = self._latency_args, None
            self._lat_starting = self._loading(self._start_latency, *args)
        self._lat_starting = self._joined(self._lat_starting, wait)
        return self._lat_starting is None

    def _joined(self, thread: threading.Thread | None, wait: bool) -> threading.Thread | None:
        """None once `thread` (a load) has ended, raising what it raised; else the thread."""
        if thread is None or (not wait and thread.is_alive()):
            return thread
        thread.join()
        if self._start_error is not None:
            e, self._start_error = self._start_error, None
            if isinstance(e, BpfError):
                raise EngineError(_explain(e)) from None
            raise e
        return None

    def _start_latency(self, mode: str, budget_pct: float) -> None:
        from tcptop.engines.core.latency import LatencyEngine
        try:
            if mode == "budget":
                self.latency = LatencyEngine(mode="budget", budget_pct=budget_pct, period_s=self.interval_s)
            else:
                self.latency = LatencyEngine(mode="continuous", skb_stages=mode == "full")
        except BpfError as e:
            self._lat_hooks = {"packet-level engine": f"unavailable: {_explain(e)}"}
            self._lat_degraded = (f"latency waterfall: the packet-level engine did not load ({_explain(e)})",)
            return
        self._lat_hooks = dict(self.latency.hooks)
        self._lat_degraded = tuple(self.latency.degraded)

    def _start_failures(self) -> None:
        from tcptop.engines.core.failures import FailureEngine
        try:
            self.failures = FailureEngine()
        except BpfError as e:
            self._fail_hooks = {"failure engine": f"unavailable: {_explain(e)}"}
            self._fail_degraded = (f"drops, resets, listeners and failed connects: the failure engine did not load "
                                   f"({_explain(e)})",)
            return
        self._fail_hooks = dict(self.failures.hooks)
        self._fail_degraded = tuple(self.failures.degraded)

    def poll(self) -> Snapshot:
        """A snapshot whose ts is when the flow engine read the kernel (before any decoding)."""
        self.flows.refresh()
        self._started()
        ts = self.flows.read_ts
        timing = dict(self.flows.timing)
        host_latency, stages = None, {}
        if self._seq and self._latency_ready(wait=False) and self.latency is not None:
            t0 = time.perf_counter()
            host_latency, stages = self.latency.poll()
            if self._seq % 30 == 0:
                self.latency.retain(self.flows.by_id)
            self._lat_hooks["packet-level engine"] = self.latency.describe(host_latency and host_latency["coverage"])
            timing["latency_ms"] = (time.perf_counter() - t0) * 1e3
        report = None
        if self.failures is not None:
            t0 = time.perf_counter()
            report = self.failures.poll(self.flows.by_id.values(), by_id=self.flows.by_id, touched=self.flows.touched)
            timing["failures_ms"] = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        flows = self._join.update(self.flows.by_id, self.flows.touched, stages, report.per_flow if report else {})
        timing["join_ms"] = (time.perf_counter() - t0) * 1e3
        stats = self.flows.last_stats
        lost = {cause: stats[i] for cause, i in LOST_CAUSES.items()}
        lost["skipped_runs"] = self.flows.recursion_misses  # the kernel skipped a hook's run
        if report is not None:
            lost.update(report.lost)
        interval, self._last_ts = ts - self._last_ts, ts
        self._seq += 1
        run = RunInfo(
            engine=self.engine_name,
            flows_evicted=self.flows.flows_without_counters,
            events_lost=sum(lost.values()),
            events_lost_by=lost,
            hooks={**self.flows.hooks, **self._lat_hooks, **self._fail_hooks},
            degraded=tuple(self.flows.degraded) + self._lat_degraded + self._fail_degraded,
            timing={k: round(v, 3) for k, v in timing.items()},
        )
        extra = {}
        if report is not None:
            extra = dict(listeners=report.listeners, failures=report.failures, unmatched=report.unmatched)
        if self._seq == 1:
            self._latency_ready(wait=False)  # the first snapshot is out: the packet engine loads now
        return Snapshot(ts=round(ts, 6), interval_s=round(interval, 6), flows=flows, seq=self._seq,
                        host=self.host, kernel=self.kernel, run=run, latency=host_latency,
                        changes=self._join.changes, **extra)

    def program_ids(self) -> list[int]:
        self._started()
        self._latency_ready(wait=True)
        ids = self.flows.program_ids() if getattr(self, "flows", None) else []
        ids += self.failures.program_ids() if self.failures else []
        return ids + (self.latency.program_ids() if self.latency else [])

    def close(self) -> None:
        self._latency_args = None  # not started now
        for thread in (self._starting, self._lat_starting):
            if thread is not None:
                thread.join()
        self._starting = self._lat_starting = None
        if self.failures is not None:
            self.failures.close()
            self.failures = None
        if self.latency is not None:
            self.latency.close()
            self.latency = None
        if getattr(self, "flows", None) is not None:
            self.flows.close()


def _explain(e: BpfError) -> str:
    """One line from a libbpf failure: the call, and the most telling log line."""
    msg = str(e.args[1] if len(e.args) > 1 else e)
    interesting = [ln for ln in e.log if ln and not ln.startswith("libbpf: prog '") or "failed" in ln]
    if interesting:
        msg += f" ({interesting[-1].removeprefix('libbpf: ').strip()})"
    return msg
