"""Command line: parse and check the options, open the source they ask for, hand it to a front end."""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import socket
import sys
from typing import Callable, Sequence

from tcptop.engines import ENGINE_NAMES
from tcptop.model import Flow


INTERVAL_MIN_S = 0.05
INTERVAL_MAX_S = 3600.0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        self.exit(2, f"tcptop: error: {message}\n")

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        return super().parse_args(self._values_attached(sys.argv[1:] if args is None else list(args)), namespace)

    def _values_attached(self, argv: list[str]) -> list[str]:
        """`--interval -inf` as `--interval=-inf`: argparse takes a value that starts with '-'
        and is not a plain negative number for an option, and would answer "expected one
        argument" instead of saying what is wrong with the value."""
        takes_value = {opt for a in self._actions if a.option_strings and a.nargs is None  # one value each
                       for opt in a.option_strings}
        out: list[str] = []
        i = 0
        while i < len(argv):
            a = argv[i]
            if a == "--":
                out.extend(argv[i:])
                break
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if a in takes_value and nxt is not None and nxt.startswith("-") and nxt != "-" \
                    and nxt.split("=", 1)[0] not in self._option_string_actions:
                out.append(f"{a}={nxt}" if a.startswith("--") else f"{a}{nxt}")
                i += 2
                continue
            out.append(a)
            i += 1
        return out


def _interval(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {s!r}")
    if not INTERVAL_MIN_S <= v <= INTERVAL_MAX_S:
        raise argparse.ArgumentTypeError(
            f"must be between {INTERVAL_MIN_S:g} and {INTERVAL_MAX_S:g} seconds, got {s!r}")
    return v


def _percent(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
    if not math.isfinite(v) or not 0 < v <= 100:
        raise argparse.ArgumentTypeError(f"must be a percentage above 0 and at most 100, got {s!r}")
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


def _listen_address(s: str) -> tuple[str, int]:
    """--serve's [ADDR:]PORT: "9977", ":9977", "127.0.0.1:9977", "[::1]:9977", "localhost:9977"."""
    text = s.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected [IPv6]:PORT, got {s!r}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an IPv6 address: {host!r}") from None
    else:
        host, _, port = text.rpartition(":")
        if ":" in host:
            raise argparse.ArgumentTypeError(f"put an IPv6 address in brackets, e.g. [::1]:9977, got {s!r}")
    try:
        number = int(port, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected [ADDR:]PORT, got {s!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 0 and 65535, got {number}")
    if host and not _is_ip(host):
        if all(part.isdigit() for part in host.split(".")):  # looks like IPv4, is not: no DNS look-up
            raise argparse.ArgumentTypeError(f"not an IPv4 address: {host!r}")
        try:
            socket.getaddrinfo(host, number, type=socket.SOCK_STREAM)
        except socket.gaierror:
            raise argparse.ArgumentTypeError(f"not an IP address, and no such host: {host!r}") from None
    return host, number


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tcptop", description="Live TCP connections with the kernel's own numbers (eBPF).")
    p.add_argument("--json", action="store_true", help="print one JSON snapshot per interval instead of the screen")
    p.add_argument("-i", "--interval", type=_interval, default=1.0, metavar="SECONDS",
                   help=f"time between snapshots, {INTERVAL_MIN_S:g} to {INTERVAL_MAX_S:g} (default 1)")
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
    p.add_argument("--replay", metavar="FILE",
                   help="play a file written by tcptop --json (no root needed); '-' or a pipe plays as lines arrive")
    p.add_argument("--follow", action="store_true",
                   help="with --replay FILE: keep playing lines appended to the file, as tail -f")
    p.add_argument("--demo", action="store_true",
                   help="start a small workload in a private network namespace and watch it")
    p.add_argument("--latency", choices=("budget", "full", "light", "off"), default="budget",
                   help="packet-level stage timings: budget (default: every packet, in windows whose cost stays "
                        "within --latency-budget), full (every packet, continuously: its cost is yours), "
                        "light (continuously, per-socket stages only), off")
    p.add_argument("--latency-budget", type=_percent, metavar="PCT",
                   help="with --latency budget: the packet-level engine's BPF time, in %% of the machine's "
                        "busy CPU (default 0.5)")
    p.add_argument("--engine", choices=ENGINE_NAMES, default="auto",
                   help="kernel engine: core (CO-RE, needs BTF), bcc (BCC, compiles at start-up; for hosts "
                        "without BTF), or auto (the first that can run here: core, then bcc)")
    p.add_argument("--max-closed", type=_int_in(64, 1 << 22, "--max-closed"), default=65536, metavar="N",
                   help="room for final records of connections closed within one interval (default 65536)")
    p.add_argument("--serve", type=_listen_address, metavar="[ADDR:]PORT",
                   help="serve Prometheus metrics at http://ADDR:PORT/metrics instead of the screen "
                        "(ADDR: every address when left out; PORT 0: any free port, printed at start)")
    p.add_argument("--serve-flows", type=_int_in(0, 10000, "--serve-flows"), default=0, metavar="K",
                   help="with --serve: also per-connection series for the K worst connections (default 0)")
    p.add_argument("--serve-max-series", type=_int_in(1000, 10_000_000, "--serve-max-series"), default=10000,
                   metavar="N", help="with --serve: most series one scrape returns (default 10000)")
    p.add_argument("--serve-remote", choices=("auto", "addr", "net", "none"), default="auto",
                   help="with --serve: the remote label: auto (a client's peer address, a server's peer /24 "
                        "or /64 network), addr, net, or none")
    return p


def _check_serve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.serve is None:
        for opt, default in (("serve_flows", 0), ("serve_max_series", 10000), ("serve_remote", "auto")):
            if getattr(args, opt) != default:
                parser.error(f"--{opt.replace('_', '-')} needs --serve")
        return
    if args.json:
        parser.error("--serve and --json cannot be combined")
    from tcptop.frontends.exporter.aggregate import FLOW_SERIES
    if args.serve_flows * FLOW_SERIES > args.serve_max_series // 2:
        parser.error(f"--serve-flows {args.serve_flows} needs {args.serve_flows * FLOW_SERIES} series, more than half "
                     f"of --serve-max-series {args.serve_max_series}")


def filter_expression(args: argparse.Namespace) -> str | None:
    """--port, --pid and --filter joined into one expression of the filter language."""
    parts = []
    if args.port is not None:
        parts.append(f"port {args.port}")
    if args.pid is not None:
        parts.append(f"pid {args.pid}")
    if args.filter:
        # Alone, the expression is kept as typed, so an error's column is the user's column.
        parts.append(f"({args.filter})" if parts else args.filter)
    return " and ".join(parts) or None


def _fill_closed_std_fds() -> None:
    """Put /dev/null on any of fds 0-2 that the caller closed (`tcptop >&-`), so that no
    file opened later (a BPF map, a socket) takes its number and gets written to."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stderr is None:  # stderr was closed: what would be said to it goes nowhere
        sys.stderr = open(os.devnull, "w")


def main(argv: Sequence[str] | None = None) -> int:
    _fill_closed_std_fds()
    parser = build_parser()
    args = parser.parse_args(argv)
    args.filter = filter_expression(args)
    if args.replay and args.demo:
        parser.error("--replay and --demo cannot be combined")
    if args.follow and not args.replay:
        parser.error("--follow goes with --replay FILE")
    if args.latency_budget is not None and args.latency != "budget":
        parser.error(f"--latency-budget applies to --latency budget, not --latency {args.latency} "
                     "(full and light time every packet, whatever it costs)")
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
    _check_serve(parser, args)
    if args.json and sys.stdout is None:  # fd 1 was closed when Python started
        sys.stderr.write("tcptop: cannot write snapshots: stdout is closed\n")
        return 1
    if not args.json and args.serve is None:
        from tcptop.frontends.screen import terminal
        why = terminal.problem()
        if why is not None:  # before anything is loaded into the kernel
            sys.stderr.write(f"tcptop: {why}\n")
            return 2
    server = None
    if args.serve is not None:  # before the engine loads: a busy port fails at once
        from tcptop.frontends import exporter
        try:
            server = exporter.listen(*args.serve)
        except exporter.ListenError as e:
            sys.stderr.write(f"tcptop: {e}\n")
            return 1
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
            if server is not None:
                server.server_close()
            return 1
        if demo is not None:
            demo.start()
        from tcptop.frontends import gc_tuning
        if args.json:
            from tcptop.frontends import json
            gc_tuning.tune()
            return json.run(args, source, keep)
        if server is not None:
            if keep is None and args.filter:  # the demo's own filter
                from tcptop.filter import compile_filter
                keep = compile_filter(args.filter)
            gc_tuning.tune()
            return exporter.run(args, source, keep, server=server)
        from tcptop.frontends.screen.app import run as run_screen
        return run_screen(args, source)
    except KeyboardInterrupt:
        return 130
    finally:
        if source is not None:
            source.close()
        if demo is not None:
            demo.stop()
