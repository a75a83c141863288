"""`--serve`: a Prometheus exporter front end, /metrics over HTTP, from the same snapshots.

One thread polls the source every interval and folds the snapshot into bounded groups
(aggregate.py); the HTTP threads (server.py) only render the latest result. The engine
is therefore polled once per interval however many scrapers there are, and a scrape never
waits for the kernel. Modules: groups.py (which group a connection is counted in),
aggregate.py (monotonic counters, histograms, the series budget), metrics.py (names,
HELP, the collector), server.py (listening, rendering, serving).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from typing import Callable

from tcptop.frontends import gc_tuning, stop_signals
from tcptop.frontends.exporter.aggregate import Aggregator, Frame
from tcptop.frontends.exporter.server import ListenError, MetricsServer, listen
from tcptop.model import Flow
from tcptop.source import SnapshotSource

__all__ = ["Exporter", "ListenError", "listen", "run"]


class Exporter:
    """Polls `source` every `interval_s` into `server`'s exposition until `stop()`."""

    def __init__(self, source: SnapshotSource, server: MetricsServer, aggregator: Aggregator,
                 interval_s: float) -> None:
        self.source = source
        self.server = server
        self.aggregator = aggregator
        self.interval_s = interval_s
        self._stop = threading.Event()

    def poll_once(self) -> Frame:
        t0 = time.perf_counter()
        snap = self.source.poll()
        gc_tuning.fit(len(snap.flows))
        frame = self.aggregator.update(snap, engine_s=time.perf_counter() - t0)
        self.server.exposition.publish(frame)
        return frame

    def serve(self, on_ready: Callable[[], None] | None = None) -> None:
        """Poll, serve, and keep polling until stop(); a failed poll raises (OSError)."""
        http = None
        try:
            self.poll_once()  # nothing is served before there is something to serve
            http = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                    name="tcptop-http", daemon=True)
            http.start()
            if on_ready is not None:
                on_ready()
            next_at = time.monotonic()
            while True:
                next_at += self.interval_s
                now = time.monotonic()
                if next_at < now:  # a poll overran: resume the rhythm from now, do not catch up
                    next_at = now
                if self._stop.wait(next_at - now):
                    break
                self.poll_once()
        finally:
            if http is not None:
                self.server.shutdown()
            self.server.server_close()

    def stop(self) -> None:
        self._stop.set()


def run(args: argparse.Namespace, source: SnapshotSource, keep: Callable[[Flow], bool] | None = None,
        server: MetricsServer | None = None) -> int:
    """Serve /metrics until SIGINT/SIGTERM; the caller closes the source. `server` is the endpoint
    the CLI bound before it started the engine (bound here if not given)."""
    if server is None:
        try:
            server = listen(*args.serve)
        except ListenError as e:
            sys.stderr.write(f"tcptop: {e}\n")
            return 1
    aggregator = Aggregator(keep, remote_mode=args.serve_remote, top_flows=args.serve_flows,
                            max_series=args.serve_max_series)
    exporter = Exporter(source, server, aggregator, args.interval)
    if threading.current_thread() is threading.main_thread():
        for signum in stop_signals():  # a service's stop and hang-up
            signal.signal(signum, lambda *_: exporter.stop())

    def ready() -> None:
        sys.stderr.write(f"tcptop: serving {server.url} (a poll every {args.interval:g} s, "
                         f"at most {args.serve_max_series} series)\n")
        sys.stderr.flush()
    try:
        exporter.serve(on_ready=ready)
    except OSError as e:  # includes BpfError: one line, exit 1 (the caller detaches; a supervisor restarts)
        sys.stderr.write(f"tcptop: reading the kernel failed: {e}\n")
        return 1
    return 0
