"""The exporter's HTTP side and command line, without a kernel: a synthetic source behind a real socket."""

import gzip
import http.client
import socket
import struct
import threading
import time

import pytest

from factories import make_flow, make_snapshot
from tcptop import cli
from tcptop.frontends.exporter import Exporter, ListenError, listen
from tcptop.frontends.exporter.aggregate import Aggregator


class CountingSource:
    """A source whose one connection sends 1000 more bytes at every poll; counts its polls."""

    interval_s = 0.05

    def __init__(self, flows=200):
        self.polls = 0
        self.flows = flows

    def poll(self):
        self.polls += 1
        flows = [make_flow(i, role="client", lport=40000 + i, raddr=f"10.9.{i // 200}.{i % 200}",
                           bytes_sent=1000 * self.polls) for i in range(self.flows)]
        return make_snapshot(flows, seq=self.polls)

    def close(self):
        pass


@pytest.fixture
def served():
    server = listen("127.0.0.1", 0)
    source = CountingSource()
    exporter = Exporter(source, server, Aggregator(remote_mode="addr", top_flows=50), interval_s=0.05)
    ready = threading.Event()
    t = threading.Thread(target=exporter.serve, kwargs={"on_ready": ready.set}, daemon=True)
    t.start()
    assert ready.wait(10)
    yield server, source, exporter
    exporter.stop()
    t.join(10)
    assert not t.is_alive()


def get(server, path="/metrics", headers=None):
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", path, headers=headers or {})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r, body


def test_metrics_are_served_in_the_text_format(served):
    server, _, _ = served
    r, body = get(server)
    assert r.status == 200
    assert r.getheader("Content-Type").startswith("text/plain; version=0.0.4")
    assert b"# TYPE tcptop_sent_bytes_total counter" in body
    r, _ = get(server, "/nothing")
    assert r.status == 404


def test_openmetrics_and_gzip_when_the_scraper_asks():
    server = listen("127.0.0.1", 0)
    exporter = Exporter(CountingSource(3), server, Aggregator(), interval_s=0.05)
    exporter.poll_once()
    data, ctype, zipped = server.exposition.body("application/openmetrics-text; version=1.0.0", "gzip")
    assert zipped and ctype.startswith("application/openmetrics-text")
    text = gzip.decompress(data).decode()
    assert "# UNIT tcptop_sent_bytes bytes" in text and text.endswith("# EOF\n")
    server.server_close()


def test_many_scrapes_of_one_poll_render_it_once():
    server = listen("127.0.0.1", 0)
    source = CountingSource(3)
    exporter = Exporter(source, server, Aggregator(), interval_s=60)
    exporter.poll_once()
    bodies = {server.exposition.body(None, None)[0] for _ in range(20)}
    assert len(bodies) == 1 and server.exposition.renders == 1 and source.polls == 1
    exporter.poll_once()
    server.exposition.body(None, None)
    assert server.exposition.renders == 2
    server.server_close()


def test_a_scraper_that_hangs_up_mid_response_does_not_stop_the_exporter(served):
    server, source, _ = served
    host, port = server.server_address[:2]
    _, full = get(server)
    assert len(full) > 200_000  # large enough that the reply is still being written when the client resets
    for _ in range(5):
        s = socket.create_connection((host, port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        s.recv(100)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
        s.close()
    silent = socket.create_connection((host, port))  # connects, never sends a request
    polls = source.polls
    time.sleep(0.3)
    r, body = get(server)
    assert r.status == 200 and b"tcptop_exporter_polls_total" in body
    assert source.polls > polls  # the poll loop went on
    silent.close()


def test_a_busy_port_is_one_clear_error():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    with pytest.raises(ListenError, match=f"cannot listen on 127.0.0.1:{port}: the port is already in use"):
        listen("127.0.0.1", port)
    taken.close()


def test_cli_reports_a_busy_port_in_one_line_with_status_1(capsys):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    assert cli.main(["--serve", f"127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err
    assert err == f"tcptop: cannot listen on 127.0.0.1:{port}: the port is already in use\n"
    taken.close()


@pytest.mark.parametrize("spec,expected", [
    ("9977", ("", 9977)), (":9977", ("", 9977)), ("127.0.0.1:9977", ("127.0.0.1", 9977)),
    ("[::1]:9977", ("::1", 9977)), ("0", ("", 0)), ("localhost:80", ("localhost", 80)),
])
def test_listen_addresses_that_parse(spec, expected):
    assert cli._listen_address(spec) == expected


@pytest.mark.parametrize("args,message", [
    (["--serve", "70000"], "port must be between 0 and 65535, got 70000"),
    (["--serve", "abc"], "expected [ADDR:]PORT, got 'abc'"),
    (["--serve", "300.1.2.3:9977"], "not an IPv4 address: '300.1.2.3'"),
    (["--serve", "::1:9977"], "put an IPv6 address in brackets"),
    (["--serve", "[nope]:9977"], "not an IPv6 address: 'nope'"),
    (["--serve", "9977", "--json"], "--serve and --json cannot be combined"),
    (["--serve-flows", "5"], "--serve-flows needs --serve"),
    (["--serve", "9977", "--serve-flows", "1000", "--serve-max-series", "1000"], "needs 7000 series"),
    (["--serve", "9977", "--serve-max-series", "10"], "--serve-max-series must be between 1000"),
])
def test_bad_serve_arguments_give_one_line_and_exit_2(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tcptop: error:")
    assert message in err
