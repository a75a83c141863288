"""Exporter HTTP side: the listening socket, and /metrics rendered once per poll and format.

The poll loop publishes a Frame; a scrape renders it with prometheus-client (text format,
or OpenMetrics when the scraper's Accept header asks for it; gzip when accepted) and keeps
the bytes, so any number of scrapers within one interval cost one rendering per format.
A scraper that hangs up mid-response, or never finishes its request, ends only its own
connection: each connection has its own thread and a time limit, and errors on it are not
printed.
"""

from __future__ import annotations

import errno
import gzip
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client.exposition import choose_encoder, gzip_accepted

from tcptop.frontends.exporter.aggregate import Frame
from tcptop.frontends.exporter.metrics import FrameCollector


class ListenError(Exception):
    """The endpoint cannot listen; the message is one line a user can act on."""


class Exposition:
    """The latest Frame and its rendered forms, shared by the poll loop and the HTTP threads."""

    def __init__(self) -> None:
        self._frame: Frame | None = None
        self._lock = threading.Lock()
        self._cache: dict[tuple[int, str, bool], bytes] = {}
        self.renders = 0  # how many times an exposition was rendered (tests, benchmark)

    def publish(self, frame: Frame) -> None:
        self._frame = frame

    @property
    def frame(self) -> Frame | None:
        return self._frame

    def body(self, accept: str | None, accept_encoding: str | None) -> tuple[bytes, str, bool]:
        """(bytes, content type, gzipped) of the latest frame in the format the scraper accepts."""
        frame = self._frame
        encoder, content_type = choose_encoder(accept or "")
        zipped = gzip_accepted(accept_encoding or "")
        key = (frame.seq if frame else -1, content_type, zipped)
        with self._lock:  # a second scraper of the same frame waits, then reuses the bytes
            data = self._cache.get(key)
            if data is None:
                data = encoder(FrameCollector(lambda: frame))
                if zipped:
                    data = gzip.compress(data, compresslevel=6)
                self._cache = {k: v for k, v in self._cache.items() if k[0] == key[0]}
                self._cache[key] = data
                self.renders += 1
        return data, content_type, zipped


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: Prometheus reuses its connection
    timeout = 60                   # a connection idle this long is closed (frees its thread)
    server: "MetricsServer"

    def do_GET(self) -> None:
        self._respond(with_body=True)

    def do_HEAD(self) -> None:
        self._respond(with_body=False)

    def _respond(self, with_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            data, ctype, zipped = self.server.exposition.body(self.headers.get("Accept"),
                                                              self.headers.get("Accept-Encoding"))
            extra = {"Content-Encoding": "gzip"} if zipped else {}
            self._send(200, ctype, data, with_body, extra)
        elif path == "/":
            self._send(200, "text/plain; charset=utf-8",
                       b"tcptop exporter: metrics are at /metrics\n", with_body)
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found: metrics are at /metrics\n", with_body)

    def _send(self, code: int, ctype: str, data: bytes, with_body: bool, extra: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if with_body:
            self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:  # no line per scrape on stderr
        pass


class MetricsServer(ThreadingHTTPServer):
    """A bound, not yet serving, HTTP server for /metrics (a thread per connection)."""

    daemon_threads = True
    allow_reuse_address = True  # a restart is not refused by the last run's TIME_WAIT sockets
    exposition: Exposition

    def __init__(self, family: int, address: tuple, dual_stack: bool) -> None:
        self.address_family = family
        self._dual_stack = dual_stack
        self.exposition = Exposition()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        if self._dual_stack:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def handle_error(self, request, client_address) -> None:
        """A scraper's connection failed (hung up, reset, timed out): only that connection ends."""

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}/metrics"


def listen(host: str, port: int) -> MetricsServer:
    """Bind the endpoint: `host` "" means every address (IPv6 and IPv4 when the host has IPv6)."""
    where = f"[{host}]:{port}" if ":" in host else f"{host or '*'}:{port}"
    try:
        if host == "":
            try:
                return MetricsServer(socket.AF_INET6, ("::", port), dual_stack=True)
            except OSError as e:
                if e.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                    raise
                return MetricsServer(socket.AF_INET, ("0.0.0.0", port), dual_stack=False)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, sockaddr = infos[0]
        return MetricsServer(family, sockaddr, dual_stack=False)
    except socket.gaierror as e:
        raise ListenError(f"cannot listen on {where}: cannot resolve {host!r} ({e.strerror})") from None
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ListenError(f"cannot listen on {where}: the port is already in use") from None
        raise ListenError(f"cannot listen on {where}: {e.strerror or e}") from None
