"""Who owns a socket: process id, command name, cgroup and container.

The kernel side names the last process that sent, received or connected on a
socket. Idle sockets (and those older than tcptop) have no such event, so
their owner is found the way `ss -p` does it: the process whose file table
holds the socket's inode. That scan is costly, so it runs only when unknown
inodes appear, and at most once per `min_scan_interval_s`.
"""

from __future__ import annotations

import os
import re
import time

_CONTAINER_RE = re.compile(r"([0-9a-f]{64})")


def read_comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


def read_cgroup(pid: int) -> str:
    """The process's cgroup v2 path ("0::/path"), or "" if it has none or is gone."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return ""


def container_of(cgroup: str) -> str:
    """Short container id from a cgroup path (docker, containerd, cri-o, podman all embed it)."""
    m = _CONTAINER_RE.search(cgroup)
    return m.group(1)[:12] if m else ""


class Owners:
    """Caches socket inode -> pid and pid -> (comm, cgroup, container)."""

    def __init__(self, min_scan_interval_s: float = 2.0):
        self.min_scan_interval_s = min_scan_interval_s
        self._by_inode: dict[int, int] = {}
        self._proc_info: dict[int, tuple[str, str, str]] = {}
        self._last_scan = -1e9
        self.scans = 0

    def pid_of_inode(self, ino: int) -> int:
        return self._by_inode.get(ino, 0)

    def resolve(self, inodes: set[int]) -> None:
        """Make sure these socket inodes are looked up (scans /proc if some are new)."""
        missing = {i for i in inodes if i and i not in self._by_inode}
        if not missing:
            return
        now = time.monotonic()
        if now - self._last_scan < self.min_scan_interval_s:
            return
        self._last_scan = now
        self.scans += 1
        found = self._scan(missing)
        self._by_inode.update(found)
        for i in missing - found.keys():
            self._by_inode[i] = 0  # nobody holds it (e.g. closed fd, kernel socket)

    def trim(self, live_flows: int) -> None:
        """Keep the caches bounded: start afresh when they hold far more than the live flows."""
        if len(self._by_inode) > 2 * live_flows + 1024:
            self._by_inode.clear()
        if len(self._proc_info) > 4096:
            self._proc_info.clear()

    def info(self, pid: int) -> tuple[str, str, str]:
        """(comm, cgroup, container) of a pid, cached."""
        if not pid:
            return ("", "", "")
        got = self._proc_info.get(pid)
        if got is None:
            cg = read_cgroup(pid)
            got = (read_comm(pid), cg, container_of(cg))
            if got[0]:
                self._proc_info[pid] = got
        return got

    @staticmethod
    def _scan(wanted: set[int]) -> dict[int, int]:
        found: dict[int, int] = {}
        targets = {f"socket:[{i}]": i for i in wanted}
        with os.scandir("/proc") as procs:
            for p in procs:
                if not p.name.isdigit():
                    continue
                fd_dir = f"/proc/{p.name}/fd"
                try:
                    fds = os.listdir(fd_dir)
                except OSError:
                    continue
                pid = int(p.name)
                for fd in fds:
                    try:
                        link = os.readlink(f"{fd_dir}/{fd}")
                    except OSError:
                        continue
                    ino = targets.get(link)
                    if ino is not None and ino not in found:
                        found[ino] = pid
                if len(found) == len(wanted):
                    return found
        return found
