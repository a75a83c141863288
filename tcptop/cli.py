"""Command line: parse options, pick the source (live engine or replay), run the screen or --json."""

from __future__ import annotations

import argparse
import dataclasses
import math
import signal
import sys
import time
from typing import Callable, Sequence

from tcptop.model import Flow


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        self.exit(2, f"tcptop: error: {message}\n")


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {s!r}")
    if v < 0.05:
        raise argparse.ArgumentTypeError(f"must be at least 0.05 s, got {s!r}")
    return v


def _int_in(lo: int, hi: int, what: str) -> Callable[[str], int]:
    def parse(s: str) -> int:
        try:
            v = int(s, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, got {s!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{what} must be between {lo} and {hi}, got {v}")
        return v
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tcptop", description="Live TCP connections with the kernel's own numbers (eBPF).")
    p.add_argument("--json", action="store_true", help="print one JSON snapshot per interval instead of the screen")
    p.add_argument("-i", "--interval", type=_positive_float, default=1.0, metavar="SECONDS",
                   help="time between snapshots (default 1)")
    p.add_argument("-n", "--count", type=_int_in(1, 2**31, "--count"), metavar="N",
                   help="with --json: stop after N snapshots")
    p.add_argument("-p", "--port", type=_int_in(1, 65535, "--port"), metavar="P",
                   help="only flows with local or remote port P")
    p.add_argument("--pid", type=_int_in(1, 2**22, "--pid"), metavar="PID", help="only flows owned by PID")
    p.add_argument("-f", "--filter", metavar="EXPR",
                   help="filter expression, e.g. 'port 443 and not host 10.0.0.1'")
    p.add_argument("-s", "--sort", metavar="FIELD", help="initial sort column (a flow field, e.g. retrans_packets)")
    p.add_argument("-r", "--reverse", action="store_true", help="reverse the initial sort")
    p.add_argument("--replay", metavar="FILE", help="play a file written by tcptop --json (no root needed)")
    p.add_argument("--demo", action="store_true",
                   help="start a small workload in a private network namespace and watch it")
    p.add_argument("--latency", choices=("full", "light", "off"), default="full",
                   help="packet-level stage timings of 1 packet in 8: full (every stage), light (per-socket stages only), off")
    p.add_argument("--max-closed", type=_int_in(64, 1 << 22, "--max-closed"), default=16384, metavar="N",
                   help="room for final records of connections closed within one interval (default 16384)")
    return p


def filter_expression(args: argparse.Namespace) -> str | None:
    """--port, --pid and --filter joined into one expression of the filter language."""
    parts = []
    if args.port is not None:
        parts.append(f"port {args.port}")
    if args.pid is not None:
        parts.append(f"pid {args.pid}")
    if args.filter:
        parts.append(f"({args.filter})")
    return " and ".join(parts) or None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.filter = filter_expression(args)
    if args.replay and args.demo:
        parser.error("--replay and --demo cannot be combined")
    if args.sort is not None:
        from tcptop.frontends.screen.columns import UnknownSortField, resolve_sort
        try:
            resolve_sort(args.sort)
        except UnknownSortField:
            parser.error(f"--sort: unknown field {args.sort!r} (a column such as rtt, tx, retrans, or a flow field)")
    keep: Callable[[Flow], bool] | None = None
    if args.filter:
        from tcptop.filter import FilterError, compile_filter
        try:
            keep = compile_filter(args.filter)
        except FilterError as e:
            parser.error(f"--filter: {e}")
    if args.json and args.replay:
        parser.error("--json reads the live kernel; --replay is for the screen")
    try:
        if args.json:
            return run_json(args, keep)
        return run_screen(args)
    except KeyboardInterrupt:
        return 130


def _open_live(args: argparse.Namespace):
    from tcptop.engines.core.engine import EngineError, LiveEngine
    try:
        return LiveEngine(interval_s=args.interval, max_closed=args.max_closed, latency=args.latency)
    except EngineError as e:
        sys.stderr.write(f"tcptop: {e}\n")
        raise SystemExit(1) from None


def run_json(args: argparse.Namespace, keep: Callable[[Flow], bool] | None) -> int:
    """Print snapshots as JSON lines until --count or a signal; always detach on the way out."""
    from tcptop.model import JsonEncoder

    engine = _open_live(args)
    encoder = JsonEncoder()
    stop = False

    def on_signal(signum, frame):
        nonlocal stop
        stop = True
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        n = 0
        next_at = time.monotonic()
        while not stop:
            try:
                snap = engine.poll()
            except OSError as e:  # includes BpfError: say it in one line, detach, exit 1
                sys.stderr.write(f"tcptop: reading the kernel failed: {e}\n")
                return 1
            if keep is not None:
                snap = dataclasses.replace(snap, flows=tuple(f for f in snap.flows if keep(f)))
            try:
                sys.stdout.write(encoder.encode(snap) + "\n")
                sys.stdout.flush()
            except BrokenPipeError:
                break
            n += 1
            if args.count and n >= args.count:
                break
            next_at += args.interval
            while not stop:
                left = next_at - time.monotonic()
                if left <= 0:
                    break
                time.sleep(min(left, 0.2))
    finally:
        engine.close()
    return 0


def run_screen(args: argparse.Namespace) -> int:
    source = None
    try:
        if args.replay:
            from tcptop.replay import ReplayError, ReplaySource
            try:
                source = ReplaySource(args.replay)
            except ReplayError as e:
                sys.stderr.write(f"tcptop: {e}\n")
                return 1
        elif args.demo:
            from tcptop.demo import Demo
            demo = Demo()
            try:
                # Engine first: the demo's connections are then seen from their birth.
                source = _open_live(args)
                demo.start()
                from tcptop.frontends.screen.app import run_tui
                if args.filter is None:
                    args.filter = demo.filter_expression()
                return run_tui(args, source)
            finally:
                if source is not None:
                    source.close()
                    source = None
                demo.stop()
        else:
            source = _open_live(args)
        from tcptop.frontends.screen.app import run_tui
        return run_tui(args, source)
    finally:
        if source is not None:
            source.close()
