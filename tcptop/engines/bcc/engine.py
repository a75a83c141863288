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
from tcptop.engines.bcc.flows import STAT_ADDR_FULL, STAT_CLOSED_FULL, STAT_NO_STORAGE, FlowEngine
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
        self.hooks: dict[str, str] = {}
        kernel_dir, headers = loader.kernel_source()
        self.hooks["tracefs"] = loader.ensure_tracefs()
        self.hooks["kernel headers"] = headers
        t0 = time.monotonic()
        kw = {"tracepoint_fields": tracepoint_fields} if tracepoint_fields else {}
        try:
            self.flows = FlowEngine(kernel_dir, max_closed=options.max_closed, **kw)
        except EngineError:
            self.close()
            raise
        self.compile_s = round(time.monotonic() - t0, 3)
        self._lat_hooks = {"packet-level engine": "off (--latency off)"} if options.latency == "off" else {}
        self._lat_degraded: tuple[str, ...] = ()
        self.host = socket.gethostname()
        self.kernel = platform.release()
        self._seq = 0
        self._last = time.monotonic()

    def poll(self) -> Snapshot:
        assert self.flows is not None
        flows = self.flows.poll()
        stats = self.flows.stats()
        now = time.monotonic()
        interval, self._last = now - self._last, now
        self._seq += 1
        run = RunInfo(
            engine=self.engine_name,
            flows_evicted=stats[STAT_NO_STORAGE],
            events_lost=stats[STAT_CLOSED_FULL] + stats[STAT_ADDR_FULL],
            hooks={**self.hooks, **self.flows.hooks, **self._lat_hooks},
            degraded=tuple(self.flows.degraded) + self._lat_degraded,
        )
        return Snapshot(ts=time.time(), interval_s=round(interval, 6), flows=flows, seq=self._seq,
                        host=self.host, kernel=self.kernel, run=run, latency=None)

    def program_ids(self) -> list[int]:
        return self.flows.program_ids() if self.flows else []

    def close(self) -> None:
        if self.flows is not None:
            self.flows.close()
            self.flows = None
