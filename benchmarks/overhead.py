#!/usr/bin/env python3
"""What tcptop costs the machine it watches, and what a poll costs at scale (root, loopback only).

Sections (--only, comma-separated; all by default):
  requests  redis-benchmark GET (-c 20) and iperf3 over loopback. Per request (per MB for
            iperf3): the machine's busy CPU without tcptop (/proc/stat), the BPF time of
            tcptop's own programs (kernel.bpf_stats_enabled, in a run of its own: the stats add
            to every program run), the flow engine's share apart, runs per request of each
            program, the tcptop process's own CPU, and throughput without/with tcptop (median
            of --pairs runs each, alternating).
  poll      --busy busy flows, the packet-level engine as configured: CPU per poll and per part.
  scale     --connections idle connections: time to the first snapshot, CPU per poll, every
            socket listed (against ss), ss -tin as the floor; --json full lines and --changes
            lines: size and CPU.
  churn     --churn-rate connections/s for --churn-seconds (half FIN, half RST) under
            `tcptop --json --changes`: gaps between lines, closed connections reported against
            those made, events lost (by cause), CPU.
  screen    --connections idle connections under the real screen (`python -m tcptop --interval 1`,
            each --latency mode) in a tmux pane 200x50 of a private tmux server, TERM=xterm-256color
            COLORTERM=truecolor: time until the header counts the held sockets, then for
            --screen-seconds the tcptop process's CPU (all its threads) and the refreshes seen by
            capturing the pane every 0.1 s; then the same sorted by AGE (`s`, the picker), a column
            that moves with the clock. Waits first until the TIME_WAIT ends of an earlier run are gone;
            --screen-churn R: R connections/s come and go meanwhile (half FIN, half RST).

Usage: benchmarks/overhead.py [--only S,...] [--latency MODE,...] [--engine core|bcc] [--quick].
(`--latency` also lists the modes of the screen section: `default` is tcptop without --latency.)
Prints Markdown.
Run it under `flock -x /tmp/tcptop-machine.lock`; read medians and ratios, not single runs.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if "--tree" in sys.argv:  # measure another checkout (e.g. an older commit, for before/after)
    ROOT = os.path.abspath(sys.argv[sys.argv.index("--tree") + 1])
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads  # noqa: E402
from bpfstats import bpf_stats  # noqa: E402
from cputime import proc_cpu_s, ticks_cpu_s  # noqa: E402

TCPTOP = [sys.executable, "-m", "tcptop"]
LOADING = '"loading (after the first snapshot)"'  # the packet-level engine's hook until it has loaded
ENGINE: list[str] = []  # ["--engine", NAME] when asked for; tcptop's own default otherwise
CHANGES = True  # the checkout has --json --changes
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- measuring ---------------------------------------------------------------------------

def busy_cpu_s() -> float:
    """Busy CPU time of the whole machine so far (every CPU; /proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        v = list(map(int, f.readline().split()[1:9]))
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def thread_cpu_s(pid: int) -> dict[int, float]:
    """tid -> utime+stime of each thread of a process (/proc/PID/task/TID/stat)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out[int(tid)] = ticks_cpu_s(f"{pid}/task/{tid}")
        except OSError:  # the thread ended
            pass
    return out


def proc_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def prog_stats(pid: int) -> dict[int, tuple[int, int]]:
    """prog id -> (run_time_ns, run_cnt) of the BPF programs a process holds (/proc/PID/fdinfo)."""
    out = {}
    d = f"/proc/{pid}/fdinfo"
    for fd in os.listdir(d):
        try:
            with open(f"{d}/{fd}") as f:
                text = f.read()
        except OSError:
            continue
        m = re.search(r"^prog_id:\s+(\d+)", text, re.M)
        ns = re.search(r"^run_time_ns:\s+(\d+)", text, re.M)
        cnt = re.search(r"^run_cnt:\s+(\d+)", text, re.M)
        if m and ns and cnt:  # a program's own fd (a link's names the program, without its stats)
            out[int(m.group(1))] = (int(ns.group(1)), int(cnt.group(1)))
    return out


def prog_names(ids) -> dict[int, str]:
    progs = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True).stdout or "[]")
    return {p["id"]: p.get("name", "?") for p in progs if p["id"] in ids}



class Tcptop:
    """`tcptop --json ARGS` running, its output read (and counted) by a thread."""

    def __init__(self, *args: str):
        self.p = subprocess.Popen(TCPTOP + ["--json", *ENGINE, *args], cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, bufsize=1 << 20)
        self.started = time.monotonic()
        first = self.p.stdout.readline()
        if not first:
            raise SystemExit(f"tcptop did not start: {self.p.stderr.read()}")
        self.first_line_s = time.monotonic() - self.started
        self.lines = [(time.monotonic(), len(first), first)]
        self.keep = False
        self.loaded_at: float | None = None if LOADING in first else self.lines[0][0]
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        for line in self.p.stdout:
            now = time.monotonic()
            if self.loaded_at is None and LOADING not in line:
                self.loaded_at = now
            self.lines.append((now, len(line), line if self.keep else ""))

    def wait_loaded(self, limit_s: float = 60.0) -> tuple[float, float]:
        """Wait for the first line whose packet-level engine has loaded (it loads after the
        first snapshot; its verifier time is this process's CPU): measure the steady state
        from here. (seconds from start, CPU seconds used until now)."""
        end = time.monotonic() + limit_s
        while self.loaded_at is None and time.monotonic() < end and self.p.poll() is None:
            time.sleep(0.05)
        if self.loaded_at is None:
            raise SystemExit(f"tcptop's packet-level engine did not load within {limit_s:g} s")
        return self.loaded_at - self.started, proc_cpu_s(self.pid)

    @property
    def pid(self) -> int:
        return self.p.pid

    def stop(self) -> None:
        self.p.send_signal(2)
        self.p.wait(30)
        self._t.join(10)

    def __enter__(self) -> "Tcptop":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fmt_runs(vals, unit_scale=1.0, digits=1) -> str:
    return " ".join(f"{v * unit_scale:.{digits}f}" for v in vals)


def spread(vals) -> str:
    """The runs' spread around their median, as a percentage (max - min) / median."""
    m = statistics.median(vals)
    return f"±{50 * (max(vals) - min(vals)) / m:.1f} %" if m else "-"


# -- section: requests ---------------------------------------------------------------------

class Workload:
    """One loopback workload: run() -> (units done, wall seconds); `unit` names what a unit is."""

    def __init__(self, kind: str, size: float):
        self.kind, self.size = kind, size
        self.unit = "request" if kind == "redis" else "MB"
        self._srv = None
        self._tmp = None
        self.port = free_port()
        if kind == "redis":
            self._tmp = tempfile.mkdtemp(prefix="tcptop-bench-")
            self._srv = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                          "--appendonly", "no", "--dir", self._tmp], stdout=subprocess.DEVNULL)
        else:
            self._srv = subprocess.Popen(["iperf3", "-s", "-p", str(self.port)], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
        time.sleep(0.5)

    def run(self) -> tuple[float, float]:
        t0 = time.monotonic()
        if self.kind == "redis":
            n = int(self.size)
            subprocess.run(["redis-benchmark", "-p", str(self.port), "-t", "get", "-n", str(n), "-c", "20", "-q"],
                           capture_output=True, check=True, timeout=600)
            return n, time.monotonic() - t0
        out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(self.port), "-t", str(self.size), "-J"],
                             capture_output=True, text=True, check=True, timeout=120).stdout
        return json.loads(out)["end"]["sum_received"]["bytes"] / 1e6, time.monotonic() - t0

    def close(self) -> None:
        self._srv.terminate()
        self._srv.wait(10)
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)


def measure_requests(w: Workload, modes: list[str], pairs: int, warmup_s: float = 0.0) -> list[dict]:
    """Per mode: paired throughput without/with, busy CPU per unit, tcptop's CPU per unit, then a
    bpf_stats run for BPF time per unit by program. `warmup_s`: the workload runs that long with
    tcptop attached before the bpf_stats run, so --latency budget's windows (they start at 5 ms
    and at most double per cycle) have reached their steady length."""
    rows = []
    for mode in modes:
        args = [] if mode == "default" else ["--latency", mode]
        off, on, busy_off, proc_on, startup = [], [], [], [], []
        for i in range(pairs):
            for attached in ((False, True) if i % 2 == 0 else (True, False)):
                if attached:
                    with Tcptop("--interval", "1", *args) as t:
                        loaded_s, c0 = t.wait_loaded()
                        startup.append((t.first_line_s, loaded_s, c0))
                        units, secs = w.run()
                        proc_on.append((proc_cpu_s(t.pid) - c0) / units)
                    on.append(units / secs)
                else:
                    b0 = busy_cpu_s()
                    units, secs = w.run()
                    busy_off.append((busy_cpu_s() - b0) / units)
                    off.append(units / secs)
        with Tcptop("--interval", "1", *args) as t:
            t.keep = True
            t.wait_loaded()
            warm_until = time.monotonic() + warmup_s
            while time.monotonic() < warm_until:
                try:
                    w.run()
                except (KeyError, subprocess.CalledProcessError):  # iperf3's server between two clients
                    time.sleep(0.5)
            with bpf_stats():
                before = prog_stats(t.pid)
                units, _ = w.run()
                after = prog_stats(t.pid)
            names = prog_names(after.keys())
            coverage = (json.loads(t.lines[-1][2]).get("latency") or {}).get("coverage") if t.lines[-1][2] else None
        per_prog = {}
        for pid_, (ns, cnt) in after.items():
            ns0, cnt0 = before.get(pid_, (0, 0))
            name = names.get(pid_, str(pid_))
            a, b = per_prog.get(name, (0, 0))
            per_prog[name] = (a + ns - ns0, b + cnt - cnt0)
        rows.append({"mode": mode, "unit": w.unit, "off": off, "on": on, "busy": statistics.median(busy_off),
                     "busy_runs": busy_off, "proc": statistics.median(proc_on), "units": units, "progs": per_prog,
                     "coverage": coverage, "startup": startup})
    return rows


def print_requests(name: str, rows: list[dict]) -> None:
    print(f"\n### {name}\n")
    print("| tcptop mode | busy CPU per unit without | BPF per unit: flow engine / all (share of busy) | "
          "tcptop process per unit (share) | throughput with/without (median) | runs without | runs with |")
    print("|---|---:|---:|---:|---:|---|---|")
    for r in rows:
        flow_ns = sum(ns for n, (ns, _) in r["progs"].items() if n.startswith("tcptop_"))
        all_ns = sum(ns for ns, _ in r["progs"].values())
        busy_ns = r["busy"] * 1e9
        u = r["units"]
        off_m, on_m = statistics.median(r["off"]), statistics.median(r["on"])
        scale = 1 / 1000 if r["unit"] == "request" else 1.0
        print(f"| {r['mode']} | {busy_ns / 1000:.2f} us/{r['unit']} | {flow_ns / u:.0f} ns ({100 * flow_ns / u / busy_ns:.2f} %)"
              f" / {all_ns / u:.0f} ns ({100 * all_ns / u / busy_ns:.2f} %) | {r['proc'] * 1e9:.0f} ns "
              f"({100 * r['proc'] / r['busy']:.2f} %) | {on_m / off_m:.3f} | {fmt_runs(r['off'], scale)} ({spread(r['off'])}) | "
              f"{fmt_runs(r['on'], scale)} ({spread(r['on'])}) |")
    for r in rows:
        first, loaded, cpu = (statistics.median(x) for x in zip(*r["startup"]))
        print(f"\n{r['mode']}: measured from the first line whose packet-level engine had loaded; before it "
              f"(not counted above): first line after {first:.2f} s, loaded after {loaded:.2f} s, "
              f"{cpu:.2f} s of tcptop's CPU until then (medians of the paired runs)")
    for r in rows:
        cov = r.get("coverage")
        if cov:
            print(f"\n{r['mode']}: the packet-level engine's last report in the bpf_stats run: {cov['mode']}, "
                  f"timed_fraction {cov['timed_fraction']}, window {cov['window_s']} s every {cov['period_s']} s, "
                  f"cost_pct {cov['cost_pct']} (its own model), own_cpu_pct {cov['own_cpu_pct']}")
    for r in rows:
        print(f"\nBPF programs, tcptop {r['mode']} ({r['units']:.0f} {r['unit']}s, bpf_stats on):\n")
        print(f"| program | runs per {r['unit']} | ns per run | ns per {r['unit']} |")
        print("|---|---:|---:|---:|")
        for n, (ns, cnt) in sorted(r["progs"].items(), key=lambda kv: -kv[1][0]):
            if cnt:
                print(f"| {n} | {cnt / r['units']:.2f} | {ns / cnt:.0f} | {ns / r['units']:.0f} |")


# -- section: poll -------------------------------------------------------------------------

def measure_poll(busy: int, latency: str, polls: int) -> dict:
    from tcptop.engines import EngineOptions
    from tcptop.engines.core.engine import CoreEngine
    with workloads.busy_flows(busy):
        e = CoreEngine(EngineOptions(interval_s=1, latency=latency))
        try:
            e.poll()
            time.sleep(1)
            cpu, parts = [], []
            for _ in range(polls):
                c0 = time.process_time()
                snap = e.poll()
                cpu.append((time.process_time() - c0) * 1e3)
                parts.append(getattr(snap.run, "timing", {}))
                time.sleep(1)
            n = sum(1 for f in snap.flows if f.state == "ESTABLISHED")
        finally:
            e.close()
    med = {k: statistics.median(p.get(k, 0.0) for p in parts) for k in parts[-1]}
    return {"cpu": cpu, "parts": med, "flows": n}


# -- section: scale ------------------------------------------------------------------------

def measure_scale(n: int, latency: str, polls: int) -> dict:
    from tcptop.engines import EngineOptions
    from tcptop.engines.core.engine import CoreEngine
    out = {}
    with workloads.held_connections(n):
        ss_t0 = os.times()
        listed = subprocess.run(["ss", "-tinH", "state", "established"], capture_output=True, text=True).stdout
        ss_t1 = os.times()
        out["ss_cpu_s"] = (ss_t1.children_user + ss_t1.children_system) - (ss_t0.children_user + ss_t0.children_system)
        out["ss_sockets"] = sum(1 for line in listed.splitlines() if line and not line[0].isspace())
        c0, t0 = time.process_time(), time.monotonic()
        e = CoreEngine(EngineOptions(interval_s=1, latency=latency))
        try:
            snap = e.poll()
            out["first_s"] = time.monotonic() - t0
            out["first_cpu_s"] = time.process_time() - c0
            out["first_parts"] = getattr(snap.run, "timing", {})
            out["listed"] = sum(1 for f in snap.flows if f.state == "ESTABLISHED")
            cpu, parts = [], []
            for _ in range(polls):
                time.sleep(1)
                c0 = time.process_time()
                snap = e.poll()
                cpu.append((time.process_time() - c0) * 1e3)
                parts.append(getattr(snap.run, "timing", {}))
            out["cpu"] = cpu
            out["parts"] = {k: statistics.median(p.get(k, 0.0) for p in parts) for k in parts[-1]}
            out["walk_cycle_s"] = max(getattr(e.flows, "walk_period_s", 0),
                                      out["listed"] * getattr(e.flows, "_walk_cost_ns", 0) / (getattr(e.flows, "walk_ms", 1) * 1e6))
        finally:
            e.close()
        for changes in (False, True) if CHANGES else (False,):
            key = "changes" if changes else "full"
            args = ["--interval", "1", "--latency", latency] + (["--changes"] if changes else [])
            with Tcptop(*args) as t:
                first, first_bytes = t.first_line_s, t.lines[0][1]
                c0 = proc_cpu_s(t.pid)
                l0 = len(t.lines)
                time.sleep(8)
                lines = t.lines[l0:]
                cpu = proc_cpu_s(t.pid) - c0
                rss = proc_rss_mib(t.pid)
            out[key] = {"first_s": first, "first_bytes": first_bytes, "lines": len(lines),
                        "bytes": statistics.median(b for _, b, _ in lines) if lines else 0,
                        "cpu_pct": 100 * cpu / 8, "rss": rss}
    return out


# -- section: churn ------------------------------------------------------------------------

def _wait_caught_up(t: Tcptop, ports: set[int], limit_s: float = 20.0) -> float | None:
    """When two lines in a row (from now on) brought no new end of the churn's connections
    (None: not within limit_s). With --changes an end is in one line only."""
    seen, quiet, parsed, end = set(), 0, len(t.lines), time.monotonic() + limit_s
    while time.monotonic() < end:
        lines = t.lines[parsed:]
        complete = [x for x in lines if x[2].endswith("\n")]
        for _, _, line in complete:
            before = len(seen)
            for f in json.loads(line)["flows"]:
                if f["rport"] in ports and (f["closed"] or f["state"] == "TIME_WAIT"):
                    seen.add(f["id"])
            quiet = quiet + 1 if len(seen) == before else 0
            if quiet >= 2:
                return time.monotonic()
        parsed += len(complete)
        time.sleep(0.2)
    return None


def measure_churn(rate: float, seconds: float, latency: str) -> dict:
    churn = workloads.Churn(rate, seconds)
    ports = set(churn.ports)
    expr = " or ".join(f"port {p}" for p in ports)
    try:
        args = ["--interval", "1", "--filter", expr] + (["--latency", latency] if latency != "default" else [])
        if CHANGES:
            args.append("--changes")
        with Tcptop(*args) as t:
            t.keep = True
            t.wait_loaded()
            time.sleep(0.5)
            c0, w0 = proc_cpu_s(t.pid), time.monotonic()
            churn.start()
            sampler = _CpuSampler(t.pid, min(CHURN_WINDOW_S, seconds / 2))
            made = churn.wait()
            done = time.monotonic()
            windows = sampler.stop()
            caught_up = _wait_caught_up(t, ports)  # the last ends reach a line (tcptop may lag)
            cpu, wall = proc_cpu_s(t.pid) - c0, time.monotonic() - w0
        stamps = [ts for ts, _, _ in t.lines]
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        ends, lost, last, stamps_ts, first_ts = set(), 0, None, [], None
        for _, _, line in t.lines:
            if not line:
                continue
            d = json.loads(line)
            last = d
            stamps_ts.append(d["ts"])
            first_ts = first_ts or (d["ts"] if d["flows"] else None)
            for f in d["flows"]:
                if f["closed"] or f["state"] == "TIME_WAIT":
                    ends.add((f["id"], f["rport"]))  # by socket: 100,000 connections reuse local ports
        lost = last["run"]["events_lost"] if last else -1
        lost_by = {k: n for k, n in last["run"].get("events_lost_by", {}).items() if n} if last else {}
        client_ends = {e for e in ends if e[1] in ports}
        ts_gaps = [b - a for a, b in zip(stamps_ts, stamps_ts[1:])]  # when tcptop read the kernel
        # how long the churn was held: from the snapshot with its first ends to the last one before
        # the first gap over 1.5 s
        late = [a for a, b in zip(stamps_ts, stamps_ts[1:]) if b - a > 1.5 and first_ts and a >= first_ts]
        held_s = (late[0] - first_ts) if late else None
        return {"made": made, "rate": made / seconds, "client_ends": len(client_ends), "all_ends": len(ends),
                "caught_up_s": caught_up - done if caught_up else None,
                "max_gap": max(gaps), "gaps_over": sum(1 for g in gaps if g > 1.5), "cpu_pct": 100 * cpu / wall,
                "max_ts_gap": max(ts_gaps), "ts_gaps_over": sum(1 for g in ts_gaps if g > 1.5),
                "lost": lost, "lost_by": lost_by, "windows": windows, "window_s": min(CHURN_WINDOW_S, seconds / 2),
                "held_s": held_s}
    finally:
        churn.close()


CHURN_WINDOW_S = 10.0  # the churn's CPU is also told per window (half the churn if shorter): its steady state


class _CpuSampler:
    """A process's CPU in each `window_s` while the churn runs (% of a core per window):
    the first window holds no expiry yet (closed flows go polls later, kept ends a minute
    later), so a short churn's mean is below what a sustained one costs."""

    def __init__(self, pid: int, window_s: float):
        self.pid, self.window_s, self.out = pid, window_s, []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        c0, w0 = proc_cpu_s(self.pid), time.monotonic()
        while not self._stop.wait(self.window_s):
            c, w = proc_cpu_s(self.pid), time.monotonic()
            self.out.append(100 * (c - c0) / (w - w0))
            c0, w0 = c, w

    def stop(self) -> list[float]:
        self._stop.set()
        self._t.join(5)
        return self.out


# -- section: screen -----------------------------------------------------------------------

def time_wait_sockets() -> int:
    out = subprocess.run(["ss", "-tanH", "state", "time-wait"], capture_output=True, text=True).stdout
    return out.count("\n")


def wait_time_wait_gone(most: int = 2000, limit_s: float = 90.0) -> tuple[int, int]:
    """Wait (up to limit_s) until at most `most` TIME_WAIT sockets are left, e.g. the 100,000
    ends of a run before: tcptop lists them too. (count before, count after)."""
    before = n = time_wait_sockets()
    end = time.monotonic() + limit_s
    while n > most and time.monotonic() < end:
        time.sleep(2)
        n = time_wait_sockets()
    return before, n


class Screen:
    """The real screen (`python -m tcptop ARGS`) in a pane of a private tmux server (-L NAME:
    no one else's session is touched). The pane stays after tcptop exits, so its last words
    can be read."""

    WIDTH, HEIGHT = 200, 50

    def __init__(self, args: list[str]):
        self.name = f"tcptop-screenbench-{os.getpid()}-{int(time.monotonic() * 1000)}"
        self.tmux = ["tmux", "-L", self.name, "-f", "/dev/null"]
        cmd = (f"cd {shlex.quote(ROOT)} && exec env TERM=xterm-256color COLORTERM=truecolor "
               + " ".join(map(shlex.quote, TCPTOP + ENGINE + args)))
        self.started = time.monotonic()
        subprocess.run(self.tmux + ["start-server", ";", "set-option", "-g", "remain-on-exit", "on", ";",
                                    "new-session", "-d", "-s", "bench", "-x", str(self.WIDTH), "-y", str(self.HEIGHT),
                                    cmd], check=True)
        pids = self._display("#{pane_pid} #{pid}").split()
        self.pid, self.server_pid = int(pids[0]), int(pids[1])

    def _display(self, fmt: str) -> str:
        return subprocess.run(self.tmux + ["display", "-p", "-t", "bench", fmt], capture_output=True,
                              text=True).stdout.strip()

    def capture(self) -> str:
        return subprocess.run(self.tmux + ["capture-pane", "-p", "-t", "bench"], capture_output=True,
                              text=True).stdout

    def dead(self) -> bool:
        return self._display("#{pane_dead}") != "0"

    def keys(self, *keys: str) -> None:
        for k in keys:
            subprocess.run(self.tmux + ["send-keys", "-t", "bench", k], check=True)
            time.sleep(0.05)

    def close(self) -> None:
        """The server killed (tcptop gets its SIGHUP and detaches), tcptop waited for, killed if it lingers."""
        subprocess.run(self.tmux + ["kill-server"], capture_output=True)
        end = time.monotonic() + 15
        while os.path.exists(f"/proc/{self.pid}") and time.monotonic() < end:
            try:
                with open(f"/proc/{self.pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        break
            except OSError:
                break
            time.sleep(0.1)
        else:
            if os.path.exists(f"/proc/{self.pid}"):
                os.kill(self.pid, 9)
        try:
            os.unlink(f"/tmp/tmux-{os.getuid()}/{self.name}")
        except OSError:
            pass


_HEADER_FLOWS = re.compile(r"([\d,]+)/([\d,]+) flows")


def screen_flows(text: str) -> int | None:
    """The flow total the header shows (`shown/total flows`), None before the first snapshot."""
    m = _HEADER_FLOWS.search(text.split("\n", 1)[0])
    return int(m.group(2).replace(",", "")) if m else None


def watch_screen(scr: Screen, seconds: float) -> dict:
    """For `seconds`: the pane captured every 0.1 s, tcptop's CPU read every second. A refresh is
    a change of the pane's text; a change within 0.3 s of the one before is counted as part of
    it (a frame that reached the terminal in pieces). Idle connections change nothing but
    their AGE (and the latency pane's window line), which moves with every snapshot's clock."""
    changes, last_hash = [], None
    flows_at_start = screen_flows(scr.capture())
    threads0 = thread_cpu_s(scr.pid)
    cpu_marks = [(time.monotonic(), proc_cpu_s(scr.pid), proc_cpu_s(scr.server_pid))]
    end = cpu_marks[0][0] + seconds
    next_cpu = cpu_marks[0][0] + 1
    while True:
        now = time.monotonic()
        if now >= end:
            break
        h = hashlib.blake2b(scr.capture().encode(), digest_size=16).digest()
        t = time.monotonic()
        if h != last_hash:
            if last_hash is not None:
                changes.append(t)
            last_hash = h
        if t >= next_cpu:
            cpu_marks.append((t, proc_cpu_s(scr.pid), proc_cpu_s(scr.server_pid)))
            next_cpu += 1
        time.sleep(max(0.0, 0.1 - (time.monotonic() - now)))
    cpu_marks.append((time.monotonic(), proc_cpu_s(scr.pid), proc_cpu_s(scr.server_pid)))
    threads1 = thread_cpu_s(scr.pid)
    flows_at_end = screen_flows(scr.capture())
    refreshes = []
    for t in changes:
        if not refreshes or t - refreshes[-1] >= 0.3:
            refreshes.append(t)
    gaps = [b - a for a, b in zip(refreshes, refreshes[1:])]
    per_s = [100 * (c1 - c0) / (t1 - t0) for (t0, c0, _), (t1, c1, _) in zip(cpu_marks, cpu_marks[1:])]
    (t0, c0, s0), (t1, c1, s1) = cpu_marks[0], cpu_marks[-1]
    return {"refreshes": len(refreshes), "changes": len(changes), "gaps": gaps,
            "cpu_per_s": per_s, "cpu_mean": 100 * (c1 - c0) / (t1 - t0), "tmux_mean": 100 * (s1 - s0) / (t1 - t0),
            "rss": proc_rss_mib(scr.pid), "seconds": t1 - t0, "flows": (flows_at_start, flows_at_end),
            # the UI thread (the main one) and the rest (the worker that polls and builds frames, the
            # engine's and Textual's own threads), in % of a core over the window
            "ui_pct": 100 * (threads1.get(scr.pid, 0) - threads0.get(scr.pid, 0)) / (t1 - t0),
            "others_pct": 100 * sum(c - threads0.get(tid, 0) for tid, c in threads1.items() if tid != scr.pid)
            / (t1 - t0)}


@contextlib.contextmanager
def _killed(churn: workloads.Churn | None):
    try:
        yield
    finally:
        if churn is not None:
            churn.kill()


def measure_screen(n: int, latency: str, seconds: float, by_age: bool, churn_rate: float = 0.0) -> dict:
    tw_before, tw_after = wait_time_wait_gone()
    out: dict = {"latency": latency, "time_wait": (tw_before, tw_after), "churn": churn_rate}
    args = ["--interval", "1"] + ([] if latency == "default" else ["--latency", latency])
    churn = None
    if churn_rate:  # for longer than the run can last; stopped when it is done
        churn = workloads.Churn(churn_rate, 2 * seconds + 200, procs=2)
        churn.start()
    t_hold = time.monotonic()
    with workloads.held_connections(n), _killed(churn):
        out["hold_s"] = time.monotonic() - t_hold
        scr = Screen(args)
        try:
            first = full = None
            deadline = scr.started + 120
            while time.monotonic() < deadline:
                text = scr.capture()
                total = screen_flows(text)
                t = time.monotonic() - scr.started
                if total is not None and first is None:
                    first = (t, total)
                if total is not None and total >= 2 * n:
                    full = (t, total)
                    break
                if scr.dead():
                    raise SystemExit(f"tcptop's screen ended:\n{text}")
                time.sleep(0.05)
            if full is None:
                raise SystemExit(f"the screen never counted {2 * n:,} flows in 120 s:\n{scr.capture()}")
            out["first"], out["full"], out["first_cpu_s"] = first, full, proc_cpu_s(scr.pid)
            out["window"] = watch_screen(scr, seconds)
            if by_age:
                scr.keys("s", "End", "Up", "Up", "Up", "Enter")  # the picker lists AGE fourth from the end
                t0 = time.monotonic()
                while "sort AGE" not in scr.capture().split("\n", 1)[0]:
                    if time.monotonic() - t0 > 30:
                        raise SystemExit(f"the screen did not sort by AGE:\n{scr.capture()}")
                    time.sleep(0.05)
                out["sort_key_s"] = time.monotonic() - t0
                time.sleep(1)
                out["by_age"] = watch_screen(scr, seconds)
            out["screen"] = scr.capture()
        finally:
            scr.close()
    return out


def print_screen(n: int, runs: list[dict]) -> None:
    churn = runs[0]["churn"] if runs else 0
    print(f"\n### the screen at {n:,} idle connections ({2 * n:,} sockets), tmux {Screen.WIDTH}x{Screen.HEIGHT}, "
          f"`tcptop --interval 1`{f', {churn:g} connections/s coming and going' if churn else ''}\n")
    print("| --latency | sort | time to first screen (all held sockets counted) | CPU % of a core: median of "
          "1 s samples (mean) | refresh interval median / max | gaps > 1.5 s | refreshes seen | RSS MiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        for key, sort in (("window", "TX/s (default)"), ("by_age", "AGE")):
            w = r.get(key)
            if not w:
                continue
            gaps = w["gaps"]
            first = f"{r['full'][0]:.1f} s" if key == "window" else f"key → sorted {r['sort_key_s']:.1f} s"
            gap_txt = f"{statistics.median(gaps):.2f} / {max(gaps):.2f} s" if gaps else "-"
            print(f"| {r['latency']} | {sort} | {first} | {statistics.median(w['cpu_per_s']):.1f} ({w['cpu_mean']:.1f}) | "
                  f"{gap_txt} | {sum(1 for g in gaps if g > 1.5)} | {w['refreshes']} in {w['seconds']:.0f} s | "
                  f"{w['rss']:.0f} |")
    for r in runs:
        w = r["window"]
        print(f"\n- {r['latency']}: connections held in {r['hold_s']:.1f} s; TIME_WAIT sockets {r['time_wait'][0]:,} "
              f"before the wait, {r['time_wait'][1]:,} at the start; first snapshot on screen after "
              f"{r['first'][0]:.1f} s ({r['first'][1]:,} flows), all counted after {r['full'][0]:.1f} s "
              f"({r['full'][1]:,}); tcptop's CPU by then {r['first_cpu_s']:.1f} s; the tmux server "
              f"{w['tmux_mean']:.1f} % of a core; pane changes {w['changes']} (merged into {w['refreshes']} refreshes); "
              f"1 s CPU samples {fmt_runs(w['cpu_per_s'], digits=0)}; intervals {fmt_runs(w['gaps'], digits=2)}")
        for key, sort in (("window", "TX/s"), ("by_age", "AGE")):
            w = r.get(key)
            if w:
                print(f"  sorted by {sort}: UI thread {w['ui_pct']:.1f} %, other threads (worker: polls, frames) "
                      f"{w['others_pct']:.1f} % of a core; flows counted {w['flows'][0]:,} → {w['flows'][1]:,}"
                      + (f"; 1 s CPU samples {fmt_runs(w['cpu_per_s'], digits=0)}; intervals {fmt_runs(w['gaps'], digits=2)}"
                         if key == "by_age" else ""))


# -- main ------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="requests,poll,scale,churn,screen")
    ap.add_argument("--latency", default="default,off", help="tcptop modes for 'requests' and 'screen' (default = no --latency)")
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--warmup", type=float, default=0.0, metavar="S",
                    help="requests: run the workload S seconds with tcptop attached before the bpf_stats run "
                         "(--latency budget's windows grow to their steady length over ~10 s)")
    ap.add_argument("--requests", type=int, default=200000, help="redis GET requests per run")
    ap.add_argument("--seconds", type=float, default=4, help="iperf3 run length")
    ap.add_argument("--busy", type=int, default=1000)
    ap.add_argument("--connections", type=int, default=100000)
    ap.add_argument("--screen-seconds", type=float, default=20, help="screen: seconds measured (each sort)")
    ap.add_argument("--screen-sorts", choices=("default", "both"), default="both",
                    help="screen: the default sort only, or then sorted by AGE as well")
    ap.add_argument("--screen-churn", type=float, default=0.0, metavar="R",
                    help="screen: R connections/s come and go during the run (default 0: idle)")
    ap.add_argument("--churn-rate", type=float, default=10000)
    ap.add_argument("--churn-seconds", type=float, default=10)
    ap.add_argument("--quick", action="store_true", help="small sizes, to check the script works")
    ap.add_argument("--engine", choices=("core", "bcc"), help="tcptop's engine (default: tcptop's own choice)")
    ap.add_argument("--tree", metavar="DIR", help="the tcptop checkout to measure (default: this one; build/ built)")
    a = ap.parse_args()
    if a.quick:
        a.pairs, a.requests, a.seconds, a.busy, a.connections, a.churn_rate, a.churn_seconds = 1, 20000, 1, 50, 2000, 500, 2
        a.screen_seconds = 5
    if os.geteuid() != 0:
        sys.exit("overhead.py: run as root (it loads tcptop's BPF programs)")
    for tool in ("iperf3", "redis-server", "redis-benchmark", "bpftool", "ss", "tmux"):
        if not shutil.which(tool):
            sys.exit(f"overhead.py: {tool} missing; run `make setup`")
    only = set(a.only.split(","))
    global CHANGES, ENGINE
    ENGINE = ["--engine", a.engine] if a.engine else []
    CHANGES = "--changes" in subprocess.run(TCPTOP + ["--help"], cwd=ROOT, capture_output=True, text=True).stdout
    modes = a.latency.split(",")
    workloads._raise_nofile()
    print(f"# tcptop overhead ({os.uname().release}, {os.cpu_count()} CPUs)")

    if "requests" in only:
        for kind, size in (("redis", a.requests), ("iperf3", a.seconds)):
            w = Workload(kind, size)
            try:
                rows = measure_requests(w, modes, a.pairs, a.warmup)
            finally:
                w.close()
            title = ("redis-benchmark GET -c 20, per request" if kind == "redis" else
                     f"iperf3 loopback {a.seconds:g} s, per MB received")
            print_requests(title, rows)

    if "poll" in only:
        for lat in ("budget", "full"):
            r = measure_poll(a.busy, lat, 8)
            print(f"\n### poll of {r['flows']} busy connections' ends (--latency {lat})\n")
            print(f"CPU per poll: median {statistics.median(r['cpu']):.1f} ms (runs {fmt_runs(r['cpu'])}); parts "
                  + ", ".join(f"{k} {v:.1f}" for k, v in r["parts"].items()))

    if "scale" in only:
        for lat in ("off", "budget"):
            r = measure_scale(a.connections, lat, 8)
            print(f"\n### {a.connections:,} idle connections, --latency {lat}\n")
            print(f"- listed {r['listed']:,} established sockets (ss: {r['ss_sockets']:,}); `ss -tin` takes "
                  f"{r['ss_cpu_s']:.2f} s of CPU for them")
            print(f"- first snapshot (engine): {r['first_s']:.2f} s after start ({r['first_cpu_s']:.2f} s CPU); parts "
                  + ", ".join(f"{k} {v:.0f}" for k, v in r["first_parts"].items()))
            print(f"- CPU per poll after: median {statistics.median(r['cpu']):.1f} ms (runs {fmt_runs(r['cpu'])}); parts "
                  + ", ".join(f"{k} {v:.1f}" for k, v in r["parts"].items()))
            print(f"- the table walk passes every socket every {r['walk_cycle_s']:.0f} s")
            for key in ("full", "changes"):
                j = r[key]
                print(f"- `tcptop --json{' --changes' if key == 'changes' else ''}`: first line after {j['first_s']:.2f} s "
                      f"({j['first_bytes'] / 1e6:.1f} MB), then {j['lines']} lines in 8 s of median {j['bytes'] / 1e6:.3f} MB, "
                      f"{j['cpu_pct']:.1f} % of a core, RSS {j['rss']:.0f} MiB")

    if "churn" in only:
        r = measure_churn(a.churn_rate, a.churn_seconds, "default")
        print(f"\n### churn: {r['made']:,} connections in {a.churn_seconds:g} s ({r['rate']:,.0f}/s), "
              "half FIN half RST, `tcptop --json --changes --interval 1`\n")
        caught = f"{r['caught_up_s']:.1f} s" if r["caught_up_s"] is not None else "not within 20 s"
        print(f"- caught up (two lines without a new end) {caught} after the churn stopped")
        print(f"- client ends reported closed (or kept in TIME_WAIT): {r['client_ends']:,} of {r['made']:,}; "
              f"events lost: {r['lost']:,}" + (f" ({', '.join(f'{k} {n:,}' for k, n in r['lost_by'].items())})"
                                               if r["lost_by"] else ""))
        print(f"- longest gap between snapshots (their ts) {r['max_ts_gap']:.2f} s ({r['ts_gaps_over']} over 1.5 s); "
              f"between lines as they reached the reader {r['max_gap']:.2f} s ({r['gaps_over']} over 1.5 s); "
              f"tcptop used {r['cpu_pct']:.1f} % of a core")
        if r["windows"]:
            steady = r["windows"][1:] or r["windows"]
            print(f"- CPU in each {r['window_s']:g} s of the churn: {fmt_runs(r['windows'])} % of a core "
                  f"(after the first window: median {statistics.median(steady):.1f} %)")
        print("- snapshots held within 1.5 s of each other "
              + (f"for {r['held_s']:.0f} s of the churn's ends" if r["held_s"] is not None
                 else "throughout"))
    if "screen" in only:
        runs = [measure_screen(a.connections, mode, a.screen_seconds, a.screen_sorts == "both", a.screen_churn)
                for mode in modes]
        print_screen(a.connections, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
