"""Which BPF programs a process holds, and whether any outlives it.

Other engineers' tcptop runs (and other tools) load programs on the same machine at any
time, so a test never counts programs by name: it counts the ids its own process holds
(program and link fds show "prog_id:" in /proc/PID/fdinfo) while that process is alive.
A program that is still loaded after its process is gone and that no live process holds
would be one left attached (a legacy cgroup attachment, a pin): that is what a leak is.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time


def held_prog_ids(pid: int) -> set[int]:
    """Ids of the BPF programs a process holds (its program and link fds)."""
    ids: set[int] = set()
    d = f"/proc/{pid}/fdinfo"
    try:
        fds = os.listdir(d)
    except OSError:
        return ids
    for fd in fds:
        try:
            with open(f"{d}/{fd}") as f:
                for line in f:
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
        except OSError:
            pass
    return ids


def loaded_prog_ids() -> set[int]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True).stdout
    return {p["id"] for p in json.loads(out or "[]")}


def held_by_anyone() -> set[int]:
    ids: set[int] = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            ids |= held_prog_ids(int(name))
    return ids


def wait_released(ids: set[int], timeout: float = 10.0) -> set[int]:
    """Of `ids`, those still loaded once the kernel had time to free them (an RCU grace period)."""
    deadline = time.monotonic() + timeout
    while (left := ids & loaded_prog_ids()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def orphans_since(before: set[int], timeout: float = 10.0) -> set[int]:
    """Programs loaded after `before` was taken that no live process holds (after a grace period)."""
    deadline = time.monotonic() + timeout
    while True:
        left = (loaded_prog_ids() - before) - held_by_anyone()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


class Holdings:
    """Samples what a process holds every few ms until it exits: the union of every id it held."""

    def __init__(self, pid: int, every_s: float = 0.005) -> None:
        self.pid = pid
        self.ids: set[int] = set()
        self._stop = threading.Event()
        self._every = every_s
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and os.path.exists(f"/proc/{self.pid}"):
            self.ids |= held_prog_ids(self.pid)
            time.sleep(self._every)

    def wait_for_any(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while not self.ids and time.monotonic() < deadline:
            if not os.path.exists(f"/proc/{self.pid}"):
                return False
            time.sleep(0.002)
        return bool(self.ids)

    def stop(self) -> set[int]:
        self._stop.set()
        self._thread.join(5)
        return self.ids
