"""A process's CPU time, as the benchmarks read it.

The process's CPU-time clock (clock_getcpuclockid) counts every thread's time, ended threads
included, to the nanosecond. /proc/PID/stat counts in clock ticks (10 ms here): a tcptop share
of a redis run on a fast machine was 0-5 ticks, printed as 0 or 50 ns a request.
"""

from __future__ import annotations

import os
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    """A process's CPU so far, seconds (its CPU-time clock; ticks if the clock cannot be read)."""
    try:
        return time.clock_gettime(((~pid) << 3) | 2)  # CPUCLOCK_SCHED of the whole process
    except OSError:
        return ticks_cpu_s(str(pid))


def ticks_cpu_s(task: str) -> float:
    """utime + stime of /proc/TASK/stat ("PID" or "PID/task/TID"), seconds, in clock ticks."""
    with open(f"/proc/{task}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK
