"""Who owns a socket: what /proc says about a process, and who holds a socket when the
kernel side could not tell.

The flow engine learns owners from the kernel (the process that connected, accept()'s
caller, the holders its file-table walk finds); this module keeps what it needs per
process: comm (refreshed by exec), cgroup and container, whether the process still
exists. Where the kernel cannot walk file tables, `scan_inodes` finds holders the way
`ss -p` does, from /proc/PID/fd, at most once per `min_scan_interval_s`.
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
    """pid -> (comm, cgroup, container), pid liveness, and the /proc holder scan.

    Process facts are cached for `info_ttl_s` (a process can move to another cgroup);
    comm is replaced whenever the kernel reports it (accept, exec, a file-table walk).
    What was known of a process that exited stays (`last_known`) until its pid is given
    again: the sockets it let go of by exiting still name it.
    """

    def __init__(self, min_scan_interval_s: float = 2.0, info_ttl_s: float = 30.0):
        self.min_scan_interval_s = min_scan_interval_s
        self.info_ttl_s = info_ttl_s
        self.scans = 0
        self._info: dict[int, tuple[str, str, str, float]] = {}
        self._alive: dict[int, bool] = {}
        self._exited: set[int] = set()
        self._last: dict[int, tuple[str, str, str]] = {}  # exited pid -> its last (comm, cgroup, container)
        self._alive_at = 0.0
        self._by_inode: dict[int, int] = {}
        self._last_scan = -1e9

    def note(self, pid: int, comm: str, exec_: bool = False) -> bool:
        """The kernel named this process (exec_: it just exec()ed). True if its comm changed."""
        if not pid:
            return False
        got = self._info.get(pid)
        if got is not None and not exec_:
            if comm and got[0] != comm:
                self._info[pid] = (comm,) + got[1:]
                return True
            return False
        cg = read_cgroup(pid)
        self._info[pid] = (comm or read_comm(pid), cg, container_of(cg), time.monotonic())
        self._exited.discard(pid)
        return got is None or got[0] != self._info[pid][0]

    def exited(self, pid: int, comm: str = "") -> None:
        """The kernel said this process exited (a zombie still has /proc/PID), with the name
        it had then (its last: a write to /proc/PID/comm or prctl renames without an exec)."""
        got = self._info.pop(pid, None)
        if got is not None or comm:
            self._last[pid] = (comm or got[0], got[1], got[2]) if got else (comm, "", "")
        self._exited.add(pid)
        if len(self._exited) > 65536:
            self._exited.clear()
            self._last.clear()

    def born(self, pid: int) -> None:
        """The kernel said this pid belongs to a new process."""
        self._exited.discard(pid)
        self._info.pop(pid, None)
        self._last.pop(pid, None)

    def last_known(self, pid: int) -> tuple[str, str, str]:
        """(comm, cgroup, container) of a process that is gone, as last known; empty strings
        for what was never read (a process that exited before anyone asked)."""
        got = self._last.get(pid) or self._info.get(pid)
        return got[:3] if got else ("", "", "")

    def alive(self, pid: int) -> bool:
        """Whether a process exists: not reported exited, and in /proc (asked once per pid per
        second at most)."""
        if pid in self._exited:
            return False
        now = time.monotonic()
        if now - self._alive_at > 1.0:
            self._alive.clear()
            self._alive_at = now
        alive = self._alive.get(pid)
        if alive is None:
            alive = self._alive[pid] = os.path.exists(f"/proc/{pid}")
        return alive

    def lookup(self, pid: int) -> tuple[str, str, str] | None:
        """(comm, cgroup, container) of a live process, None if it is gone (cached)."""
        got = self._info.get(pid)
        if got is not None and self._alive.get(pid) and pid not in self._exited and \
                time.monotonic() - got[3] <= self.info_ttl_s:
            return got[:3]
        if not self.alive(pid):
            return None
        return self.info(pid)

    def info(self, pid: int) -> tuple[str, str, str]:
        """(comm, cgroup, container) of a pid, cached."""
        if not pid:
            return ("", "", "")
        got = self._info.get(pid)
        now = time.monotonic()
        if got is None or now - got[3] > self.info_ttl_s:
            cg = read_cgroup(pid)
            comm = read_comm(pid) or (got[0] if got else "")
            got = (comm, cg, container_of(cg), now)
            if comm:
                self._info[pid] = got
            if len(self._info) > 65536:
                self._info.clear()
        return got[:3]

    def may_scan(self) -> bool:
        """Whether a walk of every file table may run now (they cost O(all descriptors))."""
        now = time.monotonic()
        if now - self._last_scan < self.min_scan_interval_s:
            return False
        self._last_scan = now
        return True

    def pid_of_inode(self, ino: int) -> int:
        return self._by_inode.get(ino, 0)

    def resolve(self, inodes: set[int]) -> None:
        """Look these socket inodes up in /proc if some are new and a scan may run now; an inode
        nobody holds is remembered as pid 0 (closed fd, kernel socket), so it is not scanned again."""
        missing = {i for i in inodes if i and i not in self._by_inode}
        if not missing or not self.may_scan():
            return
        found = self.scan_inodes(missing)
        for i in missing - found.keys():
            self._by_inode[i] = 0

    def trim(self, live_sockets: int) -> None:
        """Keep the inode cache bounded: start afresh when it holds far more than what is live."""
        if len(self._by_inode) > 2 * live_sockets + 1024:
            self._by_inode.clear()

    def scan_inodes(self, inodes: set[int]) -> dict[int, set[int]]:
        """socket inode -> pids whose /proc/PID/fd hold it (the fallback for kernels that
        refuse the file-table iterator)."""
        self.scans += 1
        found: dict[int, set[int]] = {}
        targets = {f"socket:[{i}]": i for i in inodes if i}
        if not targets:
            return found
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
                        ino = targets.get(os.readlink(f"{fd_dir}/{fd}"))
                    except OSError:
                        continue
                    if ino is not None:
                        found.setdefault(ino, set()).add(pid)
        for ino, pids in found.items():
            self._by_inode[ino] = min(pids)
        if len(self._by_inode) > 262144:
            self._by_inode.clear()
        return found
