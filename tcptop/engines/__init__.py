"""Engines: what turns the kernel's state into snapshots, one folder per engine.

Every engine is a snapshot source (`poll() -> Snapshot`, `close()`, `interval_s`,
`program_ids()`) built from the same `EngineOptions`. `open_engine` chooses one by name;
"auto" takes the first whose own preflight passes, so the CLI never names an engine class.
The privilege check is common to every engine and runs first.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass


class EngineError(Exception):
    """An engine cannot start; the message is one line a user can act on."""


@dataclass(frozen=True, slots=True)
class EngineOptions:
    interval_s: float = 1.0
    max_closed: int = 65536   # room for final records of flows closed within one interval
    latency: str = "budget"   # packet-level stages: "budget", "full", "light" or "off"
    latency_budget_pct: float = 0.5  # with "budget": the engine's BPF time, % of busy CPU


# name -> module that exports `preflight()` and `Engine`; "auto" tries them in this order.
ENGINES: dict[str, str] = {
    "core": "tcptop.engines.core",  # CO-RE: needs the kernel's BTF
    "bcc": "tcptop.engines.bcc",    # BCC: compiles at start-up; for hosts without BTF
}
ENGINE_NAMES = ("auto", *ENGINES)


def check_privileges() -> None:
    """Refuse early, with a clear reason, what would otherwise fail deep in a BPF loader."""
    if os.geteuid() != 0 and not _has_bpf_caps():
        raise EngineError("tcptop needs root (or CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN) to load BPF programs "
                          "(and CAP_SYS_ADMIN to see other network namespaces); try sudo")


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


def open_engine(name: str, options: EngineOptions):
    """The engine called `name` ("auto": the first that can run here), started."""
    if name != "auto" and name not in ENGINES:
        raise EngineError(f"unknown engine {name!r} (one of {', '.join(ENGINE_NAMES)})")
    check_privileges()
    reasons = []
    for candidate in ENGINES if name == "auto" else (name,):
        module = importlib.import_module(ENGINES[candidate])
        try:
            module.preflight()
        except EngineError as e:
            if name != "auto":
                raise
            reasons.append(f"{candidate}: {e}")
            continue
        return module.Engine(options)
    raise EngineError("no engine can run on this machine (" + "; ".join(reasons) + ")")
