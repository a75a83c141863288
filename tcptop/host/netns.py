"""Network namespaces: find them all, and run a call inside one.

The kernel's TCP iterator walks only the sockets of the namespace that
created it, so reaching containers' connections means entering each
namespace in turn. setns() changes only the calling thread, which is what we
want: the rest of the process stays where it is.
"""

from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
T = TypeVar("T")

# Where `ip netns` and other tools pin namespaces that may hold no process.
PIN_DIRS = ("/run/netns", "/var/run/netns")


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


def current_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def namespace_paths() -> dict[int, str]:
    """inode -> one path that opens it, for every network namespace we can reach."""
    found: dict[int, str] = {}
    for d in PIN_DIRS:
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for n in names:
            p = os.path.join(d, n)
            try:
                found.setdefault(os.stat(p).st_ino, p)
            except OSError:
                pass
    with os.scandir("/proc") as it:
        for e in it:
            if not e.name.isdigit():
                continue
            p = f"/proc/{e.name}/ns/net"
            try:
                found.setdefault(os.stat(p).st_ino, p)
            except OSError:  # the process exited, or a kernel thread
                pass
    return found


@contextmanager
def entered(path: str) -> Iterator[None]:
    """Run the body with this thread inside the namespace at `path`, then come back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def in_each(fn: Callable[[], T], denied: set[int] | None = None) -> Iterator[tuple[int, T]]:
    """Call fn once inside every reachable namespace; namespaces that vanish are skipped, and
    so are those this process may not enter (setns needs CAP_SYS_ADMIN): their inodes go
    into `denied`, for the caller to report."""
    home = current_inode()
    for ino, path in namespace_paths().items():
        if ino == home:
            yield ino, fn()
            continue
        try:
            with entered(path):
                result = fn()
        except FileNotFoundError:
            continue
        except OSError as e:
            if e.errno in (2, 3, 22):  # ENOENT, ESRCH, EINVAL: it went away meanwhile
                continue
            if e.errno in (1, 13):  # EPERM, EACCES
                if denied is not None:
                    denied.add(ino)
                continue
            raise
        yield ino, result


def denied_sentence(denied: set[int], what: str) -> str:
    """The degradation line for namespaces that could not be entered."""
    return (f"{what} in {len(denied)} other network namespace{'s' if len(denied) != 1 else ''}: not seen "
            f"(entering a namespace needs CAP_SYS_ADMIN; setns was refused)")
