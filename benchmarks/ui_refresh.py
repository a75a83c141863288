"""How fast the screen is: refresh time at 10,000 flows and key response at 100,000 (headless).

Drives the real TcptopApp under Textual's Pilot on synthetic snapshots in memory (the
worker's JSON parsing is the source's cost, not the screen's). A refresh is timed from
handing the snapshot to the app until the screen has been composed and written, both
halves on one thread ("refresh"), and the UI thread's half alone when the worker has
built the frame ("UI part"); a key from the key press until its effect is on screen.

The "while snapshots arrive" cases run the real worker thread at a 1 s interval and press
keys at random moments: a key is timed from the moment it was due, so a key that falls
during a refresh waits for it, as a key read from the terminal would (and shares the
interpreter with the worker's frame building).

Prints a table; it is a measurement, not a test, and has no pass/fail thresholds.

    python benchmarks/ui_refresh.py [--flows 10000] [--big 100000] [--refreshes 30] [--live-keys 12]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from textual import events  # noqa: E402

from tcptop.frontends.screen import gc_tuning  # noqa: E402
from tcptop.frontends.screen.app import TcptopApp  # noqa: E402
from tcptop.model import Flow, RunInfo, Snapshot  # noqa: E402

COMMS = ["nginx", "postgres", "redis-server", "curl", "python3", "java", "envoy", "sshd"]


def synthetic(n: int, steps: int, churn: float, seed: int = 1, reuse: bool = False) -> list[Snapshot]:
    """`steps` snapshots of n flows; each step a `churn` share of flows moves its counters.

    With `reuse`, as the live engine does, a flow that did not move is the very same Flow
    object as in the snapshot before (its age comes from `established_ts`)."""
    rnd = random.Random(seed)
    base = []
    for i in range(n):
        base.append(dict(
            id=i + 1, family="ipv4", laddr=f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
            lport=rnd.choice([443, 80, 5432, 6379]) if i % 3 else 30000 + i % 30000,
            raddr=f"192.168.{i >> 8 & 255}.{i & 255}", rport=rnd.randint(1024, 65535),
            state="ESTABLISHED", pid=1000 + i % 500, comm=COMMS[i % len(COMMS)], netns=4026531840,
            flight_size=rnd.randint(0, 50), rwnd=65535, cwnd=rnd.randint(1, 100), mss=1448,
            retrans_packets=0, bytes_sent=rnd.randint(0, 10**9), bytes_received=rnd.randint(0, 10**9),
            fast_retrans=0, timeouts=0, app_wqueue=0, app_wqueue_max=0, rtt_samples=100,
            rtt_sum_us=100 * rnd.randint(50, 50_000), read_bytes=0, write_bytes=0, duration_s=100.0,
            srtt_us=rnd.randint(50, 50_000), established_ts=900.0 - i % 1000 if reuse else 0.0))
    snaps = []
    objs = [Flow(**d) for d in base] if reuse else []
    for t in range(steps):
        movers = range(n) if churn >= 1 else rnd.sample(range(n), int(n * churn))
        for i in movers:
            d = base[i]
            d["bytes_sent"] += rnd.randint(0, 10**6)
            d["bytes_received"] += rnd.randint(0, 10**5)
            if rnd.random() < 0.01:
                d["retrans_packets"] += 1
            d["duration_s"] += 1.0
            if reuse:
                objs[i] = Flow(**d)
        if not reuse:
            objs = [Flow(**d) for d in base]
        snaps.append(Snapshot(ts=1000.0 + t, interval_s=1.0, flows=tuple(objs), seq=t + 1,
                              host="bench", kernel="synthetic", run=RunInfo(engine="synthetic")))
    return snaps


async def settle(pilot) -> None:
    """Process every queued event and what it posted, then compose and write the screen now.

    Pilot.pause() waits for the process to look idle (a CPU-time heuristic with sleeps),
    which would add its own tens of ms; this waits for exactly the work that is queued.
    """
    app = pilot.app
    for _ in range(20):  # a key can post a message that posts another (Input → FilterBar → App)
        await pilot._wait_for_screen()
        nodes = [app, *app.screen.walk_children(with_self=True)]
        if all(n._message_queue.empty() for n in nodes):
            break
    app.screen._on_timer_update()


async def timed_key(pilot, key: str, due: float | None = None) -> float:
    """Seconds from the key press (or from `due`, when it was meant to be pressed) to the screen."""
    app = pilot.app
    char = {"slash": "/", "less_than_sign": "<", "space": " "}.get(key, key if len(key) == 1 else None)
    t0 = time.perf_counter() if due is None else due
    ev = events.Key(key, char)
    ev.set_sender(app)
    app._driver.send_message(ev)  # what a terminal key press does
    await settle(pilot)
    return time.perf_counter() - t0


class CyclingSource:
    """A live-like source: the next synthetic snapshot every `interval_s`, with a clock that moves on."""

    def __init__(self, snaps: list[Snapshot], interval_s: float = 1.0) -> None:
        self.snaps = snaps
        self.interval_s = interval_s
        self.polls = 0

    def poll(self) -> Snapshot:
        snap = self.snaps[self.polls % len(self.snaps)]
        self.polls += 1
        return dataclasses.replace(snap, ts=1000.0 + self.polls * self.interval_s, seq=self.polls)

    def close(self) -> None:
        pass


class StillSource:
    """Gives the first snapshot once; the benchmark hands the rest to the app itself."""

    def __init__(self, first: Snapshot) -> None:
        self.first = first
        self.interval_s = 3600.0

    def poll(self) -> Snapshot:
        return self.first

    def close(self) -> None:
        pass


def ms(xs: list[float]) -> str:
    xs = sorted(xs)
    p95 = xs[min(len(xs) - 1, int(len(xs) * 0.95))]
    return f"{statistics.median(xs) * 1000:8.1f} {p95 * 1000:8.1f} {xs[-1] * 1000:8.1f}"


async def bench_refresh(snaps: list[Snapshot], size: tuple[int, int], sort: str) -> tuple[list[float], list[float]]:
    """Whole refreshes on the UI thread, then (when the app has a worker half) the UI half alone."""
    app = TcptopApp(StillSource(snaps[0]), sort=sort)
    times, ui_times = [], []
    async with app.run_test(size=size) as pilot:
        while app.store.snapshot is None:
            await pilot.pause(0.01)
        for snap in snaps[1:]:
            t0 = time.perf_counter()
            app.apply_snapshot(snap)
            await settle(pilot)  # the screen is composed and written to the (headless) terminal
            times.append(time.perf_counter() - t0)
        if hasattr(app, "apply_frame"):
            for snap in snaps[1:]:
                store = app.store
                frame = store.builder.build(dataclasses.replace(snap, ts=snap.ts + 1000), store.view,
                                            frozenset(store.watched))
                t0 = time.perf_counter()
                app.apply_frame(frame)
                await settle(pilot)
                ui_times.append(time.perf_counter() - t0)
    return times, ui_times


async def bench_keys(snaps: list[Snapshot], size: tuple[int, int], rounds: int) -> dict[str, list[float]]:
    app = TcptopApp(StillSource(snaps[0]))
    out: dict[str, list[float]] = {}
    async with app.run_test(size=size) as pilot:
        while app.store.snapshot is None:
            await pilot.pause(0.01)
        app.apply_snapshot(snaps[1])
        await pilot.pause()

        async def key(name: str, *keys: str) -> None:
            total = 0.0
            for k in keys:
                total += await timed_key(pilot, k)
            out.setdefault(name, []).append(total / len(keys))

        for _ in range(rounds):
            await key("down", "down")
            await key("pagedown", "pagedown")
            await key("end", "end")
            await key("home", "home")
            await key("r (reverse)", "r")
            await key("R (sort by retrans)", "R")
            await key("< (sort by next column)", "less_than_sign")
            await key("p (pause)", "p")
            await key("p (unpause)", "p")
        await pilot.press("slash", *"port 44")
        await pilot.pause()
        for _ in range(rounds):
            await key("filter keystroke (valid: 'port 443')", "3")
            await key("filter keystroke (invalid: '3 a')", "space", "a")
            for _ in range(3):
                await pilot.press("backspace")
            await pilot.pause()
        await pilot.press("escape")
        # a refresh at this size: the whole of it on one thread, and what of it the UI thread does
        for snap in snaps[2:]:
            t0 = time.perf_counter()
            app.apply_snapshot(snap)
            await settle(pilot)
            out.setdefault("refresh, build + UI on one thread", []).append(time.perf_counter() - t0)
        if hasattr(app, "apply_frame"):
            for snap in snaps[2:]:
                store = app.store
                t0 = time.perf_counter()
                frame = store.builder.build(dataclasses.replace(snap, ts=snap.ts + 1000), store.view,
                                            frozenset(store.watched))
                out.setdefault("refresh, worker's half (frame build)", []).append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                app.apply_frame(frame)
                await settle(pilot)
                out.setdefault("refresh, UI thread's half", []).append(time.perf_counter() - t0)
    return out


async def bench_live_keys(snaps: list[Snapshot], size: tuple[int, int], presses: int) -> dict[str, list[float]]:
    """Keys at random moments while the worker delivers a new snapshot every second."""
    src = CyclingSource(snaps, interval_s=1.0)
    app = TcptopApp(src)
    out: dict[str, list[float]] = {}
    rnd = random.Random(3)
    async with app.run_test(size=size) as pilot:
        while src.polls < 2 or app.store.snapshot is None or app.store.snapshot.seq < 2:
            await pilot.pause(0.05)
        cases = [("down", "down"), ("R (sort by retrans)", "R"), ("< (sort by next column)", "less_than_sign"),
                 ("r (reverse)", "r")]
        for _ in range(presses):
            for name, k in cases:
                due = time.perf_counter() + rnd.uniform(0.0, src.interval_s)
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                t = await timed_key(pilot, k, due)
                out.setdefault(f"{name}, while snapshots arrive", []).append(t)
        out["(snapshots shown during these keys)"] = [float(app.snapshots_applied)]
    return out


async def bench_steady(snaps: list[Snapshot], size: tuple[int, int], seconds: float) -> tuple[float, int]:
    """The screen's whole CPU (worker and UI thread) as a share of one core while the real worker
    takes a new snapshot every second: the cost of keeping a 1 s refresh, nothing pressed."""
    src = CyclingSource(snaps, interval_s=1.0)
    app = TcptopApp(src)
    async with app.run_test(size=size) as pilot:
        while app.snapshots_applied < 3:
            await pilot.pause(0.05)
        shown, cpu0, t0 = app.snapshots_applied, time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
        shown = app.snapshots_applied - shown
    return cpu / wall, shown


def bench_build(snaps: list[Snapshot], sort: str) -> list[float]:
    """The worker's half alone (FrameBuilder.build), each frame then installed as the UI would."""
    store = TcptopApp(StillSource(snaps[0]), sort=sort).store
    store.update(snaps[0])
    times = []
    for snap in snaps[1:]:
        t0 = time.perf_counter()
        frame = store.builder.build(snap, store.view, frozenset(store.watched))
        times.append(time.perf_counter() - t0)
        store.install(frame)
    return times[2:]  # the first two: rates settling after the first sighting


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=10_000)
    ap.add_argument("--big", type=int, default=100_000)
    ap.add_argument("--refreshes", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--live-keys", type=int, default=12, help="presses of each key while snapshots arrive")
    ap.add_argument("--steady", type=float, default=20.0, help="seconds of the steady 1 s refresh at --big flows")
    ap.add_argument("--only-steady", action="store_true", help="run only the steady-refresh case")
    args = ap.parse_args()
    gc_tuning.tune()
    size = (200, 50)
    print(f"tcptop screen benchmark, headless {size[0]}x{size[1]}, Python {sys.version.split()[0]}")
    print(f"{'case':64} {'median':>8} {'p95':>8} {'max':>8}  (ms)")
    if args.steady:
        steady = synthetic(args.big, 8, 0.01, reuse=True)
        gc.collect()
        gc.freeze()
        share, shown = asyncio.run(bench_steady(steady, size, args.steady))
        print(f"{f'{args.big:,} flows, 1% change, 1 s refresh: CPU share of one core':64} "
              f"{share * 100:7.1f}%  ({shown} refreshes in {args.steady:g} s)")
        del steady
        if args.only_steady:
            return 0
    for churn, label in ((1.0, "every flow changes"), (0.05, "5% of flows change")):
        snaps = synthetic(args.flows, args.refreshes + 1, churn)
        for sort in ("tx", "pid"):
            t, ui = asyncio.run(bench_refresh(snaps, size, sort))
            print(f"{f'refresh {args.flows:,} flows, {label}, sort {sort}':64} {ms(t)}")
            if ui:
                print(f"{'  of which the UI thread (frame built by the worker)':64} {ms(ui)}")
    # The realistic host: most connections idle, the engine reusing their Flow objects.
    idle = synthetic(args.flows, args.refreshes + 1, 0.01, reuse=True)
    for sort in ("tx", "rtt"):
        t, ui = asyncio.run(bench_refresh(idle, size, sort))
        print(f"{f'refresh {args.flows:,} flows, 1% change, rest reused, sort {sort}':64} {ms(t)}")
        print(f"{'  of which the UI thread (frame built by the worker)':64} {ms(ui)}")
    idle = synthetic(args.big, 12, 0.01, reuse=True)
    for sort in ("tx", "rtt", "remote", "retrans"):
        print(f"{f'{args.big:,} flows, 1% change, rest reused: frame build, sort {sort}':64} "
              f"{ms(bench_build(idle, sort))}")
    del idle
    snaps = synthetic(args.big, 6, 1.0)
    keys = asyncio.run(bench_keys(snaps, size, args.rounds))
    for name, t in keys.items():
        print(f"{f'{args.big:,} flows: {name}':64} {ms(t)}")
    if args.live_keys:
        # The synthetic snapshots stand in for what the engine would make one at a time; with
        # the earlier cases' garbage they would otherwise be scanned by the collector here.
        gc.collect()
        gc.freeze()
        live = asyncio.run(bench_live_keys(snaps, size, args.live_keys))
        for name, t in live.items():
            if name.startswith("("):
                print(f"{name:64} {int(t[0]):8d}")
            else:
                print(f"{f'{args.big:,} flows: {name}':64} {ms(t)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
