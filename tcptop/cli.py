"""Command line: parse and check the options, open the source they ask for, hand it to a front end."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Callable, Sequence

from tcptop.engines import ENGINE_NAMES
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
    p.add_argument("--changes", action="store_true",
                   help="with --json: after a first full snapshot, only the flows that changed and the ids of "
                        "flows gone")
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
    p.add_argument("--engine", choices=ENGINE_NAMES, default="auto",
                   help="kernel engine: core (CO-RE, needs BTF), or auto (the first that can run here)")
    p.add_argument("--max-closed", type=_int_in(64, 1 << 22, "--max-closed"), default=65536, metavar="N",
                   help="room for final records of connections closed within one interval (default 65536)")
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
    if args.changes and not args.json:
        parser.error("--changes goes with --json")
    from tcptop.source import SourceError, open_source
    demo = None
    if args.demo:
        from tcptop.demo import Demo
        demo = Demo()
        if args.filter is None:
            args.filter = demo.filter_expression()
    source = None
    try:
        try:
            source = open_source(args)  # first, so the demo's connections are seen from birth
        except SourceError as e:
            sys.stderr.write(f"tcptop: {e}\n")
            return 1
        if demo is not None:
            demo.start()
        if args.json:
            from tcptop.frontends import json
            return json.run(args, source, keep)
        from tcptop.frontends import screen
        return screen.run(args, source)
    except KeyboardInterrupt:
        return 130
    finally:
        if source is not None:
            source.close()
        if demo is not None:
            demo.stop()
