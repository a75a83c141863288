"""The terminal the screen needs: checked before anything is loaded, keys taken from it,
and given back in a usable state whatever ends the screen.

Textual draws on stderr and reads keys from stdin. Without a terminal on both output
streams it would write escape codes into a file, so the screen refuses to start. Keys
may come from /dev/tty when stdin is a pipe (`tcptop --json ... | tcptop --replay -`),
as less(1) does it. The CLI asks before it loads anything into the kernel.
"""

from __future__ import annotations

import os
import select
import sys

_TTY = "/dev/tty"


def problem() -> str | None:
    """Why the screen cannot run here (one line), or None."""
    for name, stream in (("stdout", sys.__stdout__), ("stderr", sys.__stderr__)):
        if stream is None or not _isatty(stream.fileno()):
            return (f"the screen needs a terminal and {name} is not one; "
                    "use --json to write snapshots to a file or a pipe")
    if not _isatty(0) and not _can_open_tty():
        return "the screen reads keys from a terminal and has none (stdin is not one, no /dev/tty)"
    return None


def take_keyboard() -> None:
    """Read keys from the controlling terminal when stdin is something else (a replay
    piped in has been opened on its own descriptor by then)."""
    if _isatty(0):
        return
    fd = os.open(_TTY, os.O_RDWR | os.O_NOCTTY)
    try:
        os.dup2(fd, 0)
    finally:
        os.close(fd)


def hung_up() -> bool:
    """Whether the terminal the screen draws on is gone (SIGHUP from a closed window)."""
    if sys.__stderr__ is None:
        return True
    p = select.poll()
    p.register(sys.__stderr__.fileno(), select.POLLOUT)
    return any(ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, ev in p.poll(0))


def silence() -> None:
    """Send what is still written to a terminal that is gone to /dev/null: writes to it fail,
    and a failed write must not stop the screen from closing (and detaching)."""
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in (0, 1, 2):
            os.dup2(null, fd)
    finally:
        os.close(null)


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def _can_open_tty() -> bool:
    try:
        os.close(os.open(_TTY, os.O_RDWR | os.O_NOCTTY))
        return True
    except OSError:
        return False
