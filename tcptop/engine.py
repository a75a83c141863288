"""The live engine: checks what the machine allows, runs the kernel-side collectors, makes snapshots.

This is the interface every front end uses (`--json`, the screen's worker):
`poll() -> Snapshot`, `close()`. The CO-RE engine here is one implementation;
a BCC engine for kernels without BTF would be another with the same two calls.
"""

from __future__ import annotations

import os
import platform
import socket
import time

from tcptop.libbpf import BpfError
from tcptop.model import RunInfo, Snapshot

class EngineError(Exception):
    """The engine cannot start; the message is one line a user can act on."""


def preflight() -> None:
    """Refuse early, with a clear reason, what would otherwise fail deep in libbpf."""
    if os.geteuid() != 0 and not _has_bpf_caps():
        raise EngineError("tcptop needs root (or CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN) to load BPF programs; try sudo")
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        raise EngineError("this kernel has no BTF (/sys/kernel/btf/vmlinux missing; CONFIG_DEBUG_INFO_BTF=y is needed)")


def _has_bpf_caps() -> bool:
    # CAP_NET_ADMIN=12, CAP_PERFMON=38, CAP_BPF=39, from the effective set.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    caps = int(line.split()[1], 16)
                    return all(caps >> bit & 1 for bit in (12, 38, 39))
    except OSError:
        pass
    return False


class LiveEngine:
    """CO-RE engine: flows.bpf.o (and later the packet-level stages) behind poll()/close()."""

    engine_name = "core"

    def __init__(self, interval_s: float = 1.0, max_closed: int = 16384):
        from tcptop.flows import FlowEngine  # imports libbpf lazily: replay needs none of it

        preflight()
        self.interval_s = interval_s
        try:
            self.flows = FlowEngine(max_closed=max_closed)
        except BpfError as e:
            raise EngineError(_explain(e)) from None
        self.host = socket.gethostname()
        self.kernel = platform.release()
        self._seq = 0
        self._last = time.monotonic()

    def poll(self) -> Snapshot:
        flows = self.flows.poll()
        stats = self.flows.stats()
        now = time.monotonic()
        interval, self._last = now - self._last, now
        self._seq += 1
        from tcptop.flows import STAT_CLOSED_FULL, STAT_COUNTERS_FULL
        run = RunInfo(
            engine=self.engine_name,
            flows_evicted=self.flows.flows_without_counters,
            events_lost=stats[STAT_COUNTERS_FULL] + stats[STAT_CLOSED_FULL],
            hooks=dict(self.flows.hooks),
            degraded=tuple(self.flows.degraded),
        )
        return Snapshot(ts=time.time(), interval_s=round(interval, 6), flows=flows, seq=self._seq,
                        host=self.host, kernel=self.kernel, run=run)

    def program_ids(self) -> list[int]:
        return self.flows.program_ids()

    def close(self) -> None:
        self.flows.close()


def _explain(e: BpfError) -> str:
    """One line from a libbpf failure: the call, and the most telling log line."""
    msg = str(e.args[1] if len(e.args) > 1 else e)
    interesting = [ln for ln in e.log if ln and not ln.startswith("libbpf: prog '") or "failed" in ln]
    if interesting:
        msg += f" ({interesting[-1].removeprefix('libbpf: ').strip()})"
    return msg
