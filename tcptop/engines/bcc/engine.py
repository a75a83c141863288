"""The BCC engine: for hosts where CO-RE cannot run (no BTF), the same snapshots from BCC.

A snapshot source like any other engine (tcptop/engines/__init__.py): `poll() -> Snapshot`,
`close()`. The flow engine (flows.py + flows.c) and the packet-level stages (latency.py +
latency.c) each own one BCC module; this joins what they read into one snapshot.
"""

from __future__ import annotations

import platform
import socket
import time

from tcptop.engines import EngineError, EngineOptions, check_privileges
from tcptop.engines.bcc import loader
from tcptop.engines.bcc.flows import STAT_ADDR_FULL, STAT_CLOSED_FULL, STAT_NO_STORAGE, STAT_RTT_FULL, FlowEngine
from tcptop.engines.bcc.latency import NOT_HERE
from tcptop.model import RunInfo, Snapshot


def preflight() -> None:
    """What the BCC engine needs beyond privileges: BCC itself and some kernel headers."""
    loader.import_bcc()
    loader.kernel_source()


class BccEngine:
    """BCC engine: flows.c (and the packet-level latency.c) behind poll()/close()."""

    engine_name = "bcc"

    def __init__(self, options: EngineOptions = EngineOptions(), *, tracepoint_fields=None):
        check_privileges()
        preflight()
        self.interval_s = options.interval_s
        self.flows: FlowEngine | None = None
        self.latency = None
        self.hooks: dict[str, str] = {}
        self._lat_hooks: dict[str, str] = {}
        self._lat_degraded: tuple[str, ...] = ()
        kernel_dir, headers = loader.kernel_source()
        self.hooks["tracefs"] = loader.ensure_tracefs()
        self.hooks["kernel headers"] = headers
        kw = {"tracepoint_fields": tracepoint_fields} if tracepoint_fields else {}
        t0 = time.monotonic()
        try:
            self.flows = FlowEngine(kernel_dir, max_closed=options.max_closed, **kw)
            self._start_latency(options.latency, kernel_dir, kw)
        except BaseException:
            self.close()
            raise
        self.start_s = round(time.monotonic() - t0, 3)  # BCC compiles at start-up: what that cost
        self.host = socket.gethostname()
        self.kernel = platform.release()
        self._seq = 0
        self._last = time.monotonic()

    def _start_latency(self, mode: str, kernel_dir: str | None, kw: dict) -> None:
        """--latency full (and budget, which has no windows here): the device-layer stages (all
        BCC can time without kernel structs); light keeps only per-socket stages, which BCC
        cannot time, so it is the same as off."""
        if mode == "off":  # said in the header, so an empty waterfall is not mistaken for a fault
            self._lat_hooks = {"packet-level engine": "off (--latency off)"}
            return
        if mode == "light":
            self._lat_hooks = {"packet-level engine": "off: --latency light keeps only per-socket stages, "
                                                      "which the BCC engine cannot time"}
            self._lat_degraded = (NOT_HERE,)
            return
        from tcptop.engines.bcc.latency import LatencyEngine
        try:
            self.latency = LatencyEngine(kernel_dir, **kw)
        except EngineError as e:
            self._lat_hooks = {"packet-level engine": f"unavailable: {e}"}
            self._lat_degraded = (f"latency waterfall: the packet-level engine did not load ({e})",)
            return
        self._lat_hooks = dict(self.latency.hooks)
        self._lat_degraded = tuple(self.latency.degraded)
        if mode == "budget":  # the windows are the CO-RE engine's; BCC samples instead, and says so
            self._lat_hooks["packet-level engine"] = (f"ok: 1 packet in {self.latency.sample} timed continuously "
                                                      "(the BCC engine has no budget windows)")

    def poll(self) -> Snapshot:
        assert self.flows is not None
        flows = self.flows.poll()
        host_latency = self.latency.poll()[0] if self.latency is not None else None
        stats = self.flows.stats()
        lost = {"closed_records": stats[STAT_CLOSED_FULL] + self.flows.finals_missing,
                "recovery_entries": stats[STAT_ADDR_FULL], "rtt_samples": stats[STAT_RTT_FULL]}
        now = time.monotonic()
        interval, self._last = now - self._last, now
        self._seq += 1
        run = RunInfo(
            engine=self.engine_name,
            flows_evicted=stats[STAT_NO_STORAGE],
            events_lost=sum(lost.values()),
            events_lost_by=lost,
            hooks={**self.hooks, **self.flows.hooks, **self._lat_hooks},
            degraded=tuple(self.flows.degraded) + self._lat_degraded,
        )
        return Snapshot(ts=time.time(), interval_s=round(interval, 6), flows=flows, seq=self._seq,
                        host=self.host, kernel=self.kernel, run=run, latency=host_latency,
                        listeners=self.flows.listeners())

    def program_ids(self) -> list[int]:
        ids = self.flows.program_ids() if self.flows else []
        return ids + (self.latency.program_ids() if self.latency else [])

    def close(self) -> None:
        if self.latency is not None:
            self.latency.close()
            self.latency = None
        if self.flows is not None:
            self.flows.close()
            self.flows = None
