"""The exporter scraped by a real Prometheus (Debian's package), with real traffic in private namespaces.

Each test starts its own Prometheus (temporary storage, a free loopback port, a 1 s
scrape of the exporter on loopback) and always stops it. The stored series are compared
with what the engine itself reported for the same connections (the exact snapshot the
exporter folded, by poll number) and with the kernel's own accounting (TCP_INFO, the
namespace's MIB counters, the test's own byte counts).
"""

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from kit import netstat, recv_exactly, sh, tcp_info, wait_idle
from tcptop.engines import EngineOptions
from tcptop.engines.core.engine import CoreEngine
from tcptop.filter import compile_filter
from tcptop.host import netns
from tcptop.frontends.exporter import Exporter, listen
from tcptop.frontends.exporter.aggregate import Aggregator

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TCPTOP = [sys.executable, "-m", "tcptop"]
LABELS = ("comm", "role", "port", "remote", "netns", "container")
COUNTERS = {  # exported counter -> the flow field it sums
    "tcptop_retransmitted_segments_total": "retrans_packets",
    "tcptop_fast_recoveries_total": "fast_retrans",
    "tcptop_rto_timeouts_total": "timeouts",
    "tcptop_sent_bytes_total": "bytes_sent",
    "tcptop_received_bytes_total": "bytes_received",
    "tcptop_read_bytes_total": "read_bytes",
    "tcptop_written_bytes_total": "write_bytes",
}


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Prometheus:
    """A Prometheus server of the test's own: scrapes `target` every second into a temporary TSDB."""

    def __init__(self, tmp_path, target: str):
        self.dir = tmp_path / "prometheus"
        self.dir.mkdir()
        config = self.dir / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: tcptop\n"
            "    scrape_interval: 1s\n"
            "    scrape_timeout: 1s\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n")
        self.proc = None
        for _ in range(3):  # the free port may be taken between finding and binding it
            self.port = free_port()
            self.log = open(self.dir / "log", "w")
            self.proc = subprocess.Popen(
                ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={self.dir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
                stdout=self.log, stderr=subprocess.STDOUT)
            if self._ready():
                return
            self.stop()
        raise AssertionError(f"prometheus did not start: {(self.dir / 'log').read_text()[-2000:]}")

    def _ready(self, timeout: float = 20) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    def query(self, q: str, at: float | None = None) -> list[tuple[dict, float]]:
        params = {"query": q}
        if at is not None:
            params["time"] = f"{at:.3f}"
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{q}: {e.read().decode(errors='replace')}") from None
        assert body["status"] == "success", body
        return [(s["metric"], float(s["value"][1])) for s in body["data"]["result"]]

    def value(self, q: str, at: float | None = None) -> float | None:
        res = self.query(q, at)
        assert len(res) <= 1, res
        return res[0][1] if res else None

    def wait_for(self, q: str, ok, timeout: float = 30) -> tuple[float, float]:
        """Poll `q` until ok(value); return (evaluation time, value)."""
        deadline = time.monotonic() + timeout
        while True:
            at = time.time()
            v = self.value(q, at)
            if v is not None and ok(v):
                return at, v
            if time.monotonic() > deadline:
                raise AssertionError(f"{q} never satisfied the test (last: {v}); log:\n"
                                     f"{(self.dir / 'log').read_text()[-1500:]}")
            time.sleep(0.2)

    def resets(self, window: str, at: float) -> float:
        """Counter resets over `window` summed over every tcptop counter series Prometheus holds."""
        names = {m["__name__"] for m, _ in self.query('{job="tcptop",__name__=~"tcptop_.+_total"}', at)}
        assert names, "no counter stored"
        return sum(self.value(f'sum(resets({n}{{job="tcptop"}}[{window}]))', at) or 0 for n in names)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture
def prometheus(tmp_path):
    started = []

    def start(target: str) -> Prometheus:
        p = Prometheus(tmp_path, target)
        started.append(p)
        return p
    yield start
    for p in started:
        p.stop()


class Tee:
    """The engine as the exporter's source, keeping each snapshot by its poll number."""

    def __init__(self, engine):
        self.engine = engine
        self.interval_s = engine.interval_s
        self.snaps = {}
        self.windows = {}  # (flow id, packet-level window id) -> (poll seq, the flow's latency of that window)

    def poll(self):
        snap = self.engine.poll()
        self.snaps[snap.seq] = snap
        self.snaps.pop(snap.seq - 50, None)
        for f in snap.flows:
            if f.latency:
                self.windows.setdefault((f.id, f.latency["window"]["id"]), (snap.seq, f.latency))
        return snap

    def close(self):
        pass


@pytest.fixture
def in_process_exporter():
    """An exporter thread over a live engine (interval 0.5 s); yields (url host:port, tee)."""
    made = []

    def start(keep):
        # Every packet timed (the default times windows within a budget, and a short transfer may
        # fall between them): the stage histograms are then checked on every packet.
        engine = CoreEngine(EngineOptions(interval_s=0.5, latency="full"))
        tee = Tee(engine)
        server = listen("127.0.0.1", 0)
        exporter = Exporter(tee, server, Aggregator(keep), interval_s=0.5)
        ready = threading.Event()
        t = threading.Thread(target=exporter.serve, kwargs={"on_ready": ready.set}, daemon=True)
        t.start()
        made.append((engine, exporter, t))
        assert ready.wait(30)
        return f"127.0.0.1:{server.server_address[1]}", tee
    yield start
    for engine, exporter, t in made:
        exporter.stop()
        t.join(15)
        engine.close()


class ServeProcess:
    """`tcptop --serve 127.0.0.1:0 ...` as its own process; `target` is where it listens."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen(TCPTOP + ["--serve", "127.0.0.1:0", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=ROOT)
        line = self.proc.stderr.readline()
        assert line.startswith("tcptop: serving http://127.0.0.1:"), line + self.proc.stderr.read()
        self.target = line.split("http://", 1)[1].split("/", 1)[0]

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://{self.target}/metrics", timeout=10) as r:
            return r.read().decode()

    def stop(self) -> tuple[int, str]:
        """SIGTERM; (exit status, what it wrote on stderr after its start line)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(5)
        return rc, self.proc.stderr.read()


@pytest.fixture
def serve_process():
    started = []

    def start(*args):
        p = ServeProcess(*args)
        started.append(p)
        return p
    yield start
    for p in started:
        p.stop()


def listener(ns_socket, addr, port, backlog=128):
    lsn = ns_socket()
    lsn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsn.bind((addr, port))
    lsn.listen(backlog)
    return lsn


def bulk(c, s, nbytes):
    got = []
    t = threading.Thread(target=lambda: got.append(recv_exactly(s, nbytes)))
    t.start()
    c.sendall(b"b" * nbytes)
    t.join(60)
    return got[0]


def subnet(pair) -> str:
    return str(ipaddress.ip_network(f"{pair.addr_a}/24", strict=False))


def by_labels(series, name):
    return {tuple(m.get(k, "") for k in LABELS): v for m, v in series if m["__name__"] == name}


def test_prometheus_stores_what_the_engine_reported_for_each_group(nspair, prometheus, in_process_exporter):
    """A lossy flow (every 20th segment dropped) and a clean one: per group, the stored counters,
    gauges and histogram counts equal the sums over the engine's own flows in the snapshot of
    that poll, and the kernel's TCP_INFO and MIB counters; closing the lossy flow keeps them."""
    a, b = nspair.a, nspair.b
    keep = compile_filter(f"host {nspair.addr_a} or host {nspair.addr_b}")
    target, tee = in_process_exporter(keep)
    prom = prometheus(target)
    lossy_port, clean_port = 5201, 5202
    sh("iptables", "-A", "INPUT", "-p", "tcp", "--dport", str(lossy_port), "-m", "statistic", "--mode", "nth",
       "--every", "20", "--packet", "0", "-j", "DROP", ns=b)
    mib_before = netstat(a)
    pairs = {}
    for port in (lossy_port, clean_port):
        lsn = listener(lambda: nspair.socket_in(b), nspair.addr_b, port)
        c = nspair.socket_in(a)
        c.connect((nspair.addr_b, port))
        s, _ = lsn.accept()
        lsn.close()
        pairs[port] = (c, s)
    n = 4 << 20
    for port, (c, s) in pairs.items():
        assert bulk(c, s, n) == n
        s.sendall(b"r" * 1000)  # and a reply, so both ends send and read
        assert recv_exactly(c, 1000) == 1000
        wait_idle(c, timeout=30)
        wait_idle(s, timeout=30)
    rules = sh("iptables", "-L", "INPUT", "-v", "-x", "-n", ns=b)
    sh("iptables", "-F", "INPUT", ns=b)
    mib = netstat(a)
    lossy_ti = tcp_info(pairs[lossy_port][0])
    assert lossy_ti["total_retrans"] > 0, f"no retransmission; the loss rule said:\n{rules}"

    # A scrape that holds a poll made after the traffic went idle, and that poll's snapshot.
    idle_seq = max(tee.snaps)
    at, seq = prom.wait_for('tcptop_exporter_polls_total{job="tcptop"}', lambda v: v >= idle_seq + 1)
    snap = tee.snaps[int(seq)]
    series = prom.query('{job="tcptop",__name__=~"tcptop_.+"}', at)

    ns_a = str(nspair.inode(a))
    expected = {}
    for f in snap.flows:
        if not keep(f) or f.closed:
            continue
        client = str(f.netns) == ns_a
        port = f.rport if client else f.lport
        remote = f.raddr if client else str(ipaddress.ip_network(f"{f.raddr}/24", strict=False))
        key = (f.comm, "client" if client else "server", str(port), remote, str(f.netns), f.container)
        expected.setdefault(key, []).append(f)
    assert len(expected) == 4 and all(len(fs) == 1 for fs in expected.values()), expected.keys()
    for name, field in COUNTERS.items():
        stored = by_labels(series, name)
        for key, flows in expected.items():
            assert stored[key] == sum(getattr(f, field) for f in flows), (name, key)
    conns = {k[:6]: v for k, v in ((tuple(m.get(x, "") for x in LABELS + ("state",)), v) for m, v in series
                                  if m["__name__"] == "tcptop_connections")}
    assert conns == {k: 1 for k in expected}
    for key, flows in expected.items():
        samples = sum(n for f in flows for _, n in f.rtt_hist)
        stored = by_labels(series, "tcptop_rtt_seconds_count").get(key)
        assert stored == (samples or None), key  # no histogram series until there is a sample

    # The kernel's own accounting, through Prometheus.
    lossy_client = next(k for k in expected if k[1] == "client" and k[2] == str(lossy_port))
    retrans = by_labels(series, "tcptop_retransmitted_segments_total")
    assert retrans[lossy_client] == lossy_ti["total_retrans"]
    assert by_labels(series, "tcptop_sent_bytes_total")[lossy_client] == lossy_ti["bytes_sent"]
    assert by_labels(series, "tcptop_written_bytes_total")[lossy_client] == n
    recoveries = sum(mib[k] - mib_before[k] for k in ("TcpExt.TCPSackRecovery", "TcpExt.TCPRenoRecovery"))
    clients = [k for k in expected if k[1] == "client"]
    assert sum(by_labels(series, "tcptop_fast_recoveries_total")[k] for k in clients) == recoveries > 0
    rto = by_labels(series, "tcptop_rto_timeouts_total")
    for port, (c, _) in pairs.items():
        assert rto[next(k for k in clients if k[2] == str(port))] == tcp_info(c)["total_rto"]

    # Stage histograms (filtered: the kept flows' own): counts equal the flows' sums over every
    # packet-level window the engine reported for them up to that poll (each window once).
    stage_counts = {(m["direction"], m["stage"]): v for m, v in series
                    if m["__name__"] == "tcptop_packet_stage_latency_seconds_count"}
    kept_ids = {f.id for flows in expected.values() for f in flows}
    want = {}
    for (fid, _), (poll_seq, lat) in tee.windows.items():
        if fid not in kept_ids or poll_seq > int(seq):
            continue
        for d in ("rx", "tx"):
            for st, summary in lat[d].items():
                want[(d, st)] = want.get((d, st), 0) + summary["count"]
    assert {k: v for k, v in stage_counts.items() if v} == {k: v for k, v in want.items() if v}
    assert sum(want.values()) > 0, "no stage samples: the histogram comparison proves nothing"

    # prometheus-client's exposition passes Prometheus's own linter.
    with urllib.request.urlopen(f"http://{target}/metrics", timeout=10) as r:
        exposition = r.read()
    lint = subprocess.run(["promtool", "check", "metrics"], input=exposition, capture_output=True)
    assert lint.returncode == 0 and not lint.stdout and not lint.stderr, lint.stdout + lint.stderr

    # Close the lossy connection: once its final record has left the snapshots, its groups keep its
    # final values (the FIN each end received counts as one more byte received, as in TCP_INFO).
    before_close = {name: by_labels(series, name) for name in COUNTERS}
    lossy_keys = {k: flows[0].id for k, flows in expected.items() if k[2] == str(lossy_port)}
    for sock in pairs.pop(lossy_port):
        sock.close()
    gone_seq = max(tee.snaps) + 5  # closed flows are listed for three more polls
    at, _ = prom.wait_for('tcptop_exporter_polls_total{job="tcptop"}', lambda v: v >= gone_seq)
    after = prom.query('{job="tcptop",__name__=~"tcptop_.+"}', at)
    # the end that closed first stays the kernel's in TIME_WAIT: its values are final too
    finals = {f.id: f for seq_ in sorted(tee.snaps) for f in tee.snaps[seq_].flows if f.ended}
    assert set(lossy_keys.values()) <= set(finals)
    for name, field in COUNTERS.items():
        now = by_labels(after, name)
        for key in expected:
            assert now[key] >= before_close[name][key], (name, key)
            if key in lossy_keys:
                assert now[key] == getattr(finals[lossy_keys[key]], field), (name, key)
    closed = by_labels(after, "tcptop_closed_connections_total")
    assert {k: closed[k] for k in expected} == {k: int(k[2] == str(lossy_port)) for k in expected}
    live = {tuple(m.get(x, "") for x in LABELS) for m, _ in after
            if m["__name__"] == "tcptop_connections" and m["state"] not in ("TIME_WAIT", "FIN_WAIT2")}
    assert live == {k for k in expected if k[2] == str(clean_port)}
    assert prom.resets("10m", at) == 0
    for sock in pairs.pop(clean_port):
        sock.close()


def test_counters_never_decrease_across_churn_and_count_every_short_connection(nspair, prometheus, serve_process):
    """3,000 connections of 1,000 bytes each, opened and closed while Prometheus scrapes every second:
    no counter ever goes down, and the totals are exactly the bytes and connections the test made."""
    port, count, size = 5301, 3000, 1000
    exp = serve_process("--interval", "0.5", "--latency", "off", "--filter", f"port {port} and net {subnet(nspair)}")
    prom = prometheus(exp.target)
    prom.wait_for('up{job="tcptop"}', lambda v: v == 1)
    lsn = listener(lambda: nspair.socket_in(nspair.b), nspair.addr_b, port, backlog=512)
    served = []

    def serve():
        for _ in range(count):
            s, _ = lsn.accept()
            served.append(recv_exactly(s, size))
            s.close()
    t = threading.Thread(target=serve)
    t.start()
    started = time.time()
    for i in range(count):
        c = nspair.socket_in(nspair.a)
        c.connect((nspair.addr_b, port))
        c.sendall(b"c" * size)
        c.close()
        if i % 500 == 499:
            time.sleep(0.5)  # spread the churn over several scrapes
    t.join(60)
    lsn.close()
    assert sum(served) == count * size
    last_poll = prom.value('tcptop_exporter_polls_total{job="tcptop"}')
    at, _ = prom.wait_for('tcptop_exporter_polls_total{job="tcptop"}', lambda v: v >= last_poll + 6)
    window = f"[{int(at - started) + 5}s]"
    assert prom.value('sum(tcptop_engine_events_lost_total{job="tcptop"})', at) == 0
    assert prom.resets(window.strip("[]"), at) == 0
    samples = prom.value(f'max(count_over_time(tcptop_sent_bytes_total{{job="tcptop"}}{window}))', at)
    assert samples >= 4, "fewer than four scrapes during the churn"

    def total(name, role):
        return prom.value(f'sum({name}{{job="tcptop",role="{role}",port="{port}"}})', at)
    assert total("tcptop_sent_bytes_total", "client") == count * size
    assert total("tcptop_written_bytes_total", "client") == count * size
    # The kernel's bytes_received also counts a FIN that reached the full socket (one byte in
    # sequence space), not one that reached it after it became a time-wait socket.
    assert count * size <= total("tcptop_received_bytes_total", "server") <= count * (size + 1)
    assert total("tcptop_read_bytes_total", "server") == count * size
    assert total("tcptop_closed_connections_total", "client") == count
    assert total("tcptop_closed_connections_total", "server") == count
    rc, err = exp.stop()
    assert rc == 0 and err == ""


def test_series_stay_under_the_cap_with_10000_connections(nspair, prometheus, serve_process):
    """5,000 connections (10,000 sockets) to 100 ports, with the remote label as the peer address:
    200 groups do not fit in 2,000 series, so the rest is counted in the overflow group; the
    number of stored series stays under the cap and every socket is still counted once."""
    cap, ports, per_port = 2000, 100, 50
    exp = serve_process("--interval", "1", "--serve-max-series", str(cap), "--serve-remote", "addr",
                        "--filter", f"net {subnet(nspair)}")
    prom = prometheus(exp.target)
    socks = []
    try:
        for p in range(ports):
            lsn = listener(lambda: nspair.socket_in(nspair.b), nspair.addr_b, 6000 + p, backlog=per_port)
            for _ in range(per_port):
                c = nspair.socket_in(nspair.a)
                c.connect((nspair.addr_b, 6000 + p))
                socks.append(c)
            for _ in range(per_port):
                socks.append(lsn.accept()[0])
            lsn.close()
        assert len(socks) == 10000
        at, _ = prom.wait_for('sum(tcptop_connections{job="tcptop"})', lambda v: v == 10000, timeout=60)
        stored = prom.value('count({job="tcptop",__name__=~"tcptop_.+"})', at)
        assert stored <= cap
        assert stored == prom.value('tcptop_exporter_series{job="tcptop"}', at)
        overflowed = prom.value('tcptop_exporter_overflowed_connections_total{job="tcptop"}', at)
        assert overflowed > 0
        assert prom.value('sum(tcptop_connections{job="tcptop",comm="_overflow_"})', at) == overflowed
    finally:
        for s in socks:
            s.close()
    rc, err = exp.stop()
    assert rc == 0 and err == ""


def test_exposition_passes_promtool_and_survives_a_scraper_that_hangs_up(nspair, prometheus, serve_process):
    """The real command with per-connection series: promtool's linter accepts the exposition, a scraper
    that resets its connection mid-response leaves the exporter serving, and SIGTERM ends it cleanly."""
    exp = serve_process("--interval", "0.5", "--serve-flows", "20", "--filter", f"net {subnet(nspair)}")
    prom = prometheus(exp.target)
    pairs = [nspair.connected() for _ in range(30)]
    for c, s in pairs:
        c.sendall(b"x" * 5000)
        recv_exactly(s, 5000)
    prom.wait_for('count(tcptop_flow_sent_bytes_total{job="tcptop"})', lambda v: v == 20)
    text = exp.scrape()
    lint = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True)
    assert lint.returncode == 0 and not lint.stdout and not lint.stderr, lint.stdout + lint.stderr
    host, port = exp.target.rsplit(":", 1)
    for _ in range(5):
        s = socket.create_connection((host, int(port)))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        s.recv(100)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
    polls = prom.value('tcptop_exporter_polls_total{job="tcptop"}')
    prom.wait_for('tcptop_exporter_polls_total{job="tcptop"}', lambda v: v >= polls + 3)
    assert prom.value('up{job="tcptop"}') == 1
    for c, s in pairs:
        c.close()
        s.close()
    rc, err = exp.stop()
    assert rc == 0 and err == ""


def test_a_busy_port_fails_before_loading_anything():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    r = subprocess.run(TCPTOP + ["--serve", f"127.0.0.1:{port}"], capture_output=True, text=True, cwd=ROOT,
                       timeout=60)
    taken.close()
    assert r.returncode == 1
    assert r.stderr == f"tcptop: cannot listen on 127.0.0.1:{port}: the port is already in use\n"


IDLE_OWNER = """
import socket, sys
lsn = socket.socket(); lsn.bind(("127.0.0.1", 0)); lsn.listen()
c = socket.create_connection(lsn.getsockname()); s, _ = lsn.accept()
print(c.getsockname()[1], lsn.getsockname()[1], flush=True)
sys.stdin.read()
"""


def unit_capabilities() -> list[str]:
    with open(os.path.join(ROOT, "deploy", "systemd", "tcptop-exporter.service")) as f:
        line = next(ln for ln in f if ln.startswith("CapabilityBoundingSet="))
    return [c.removeprefix("CAP_").lower() for c in line.split("=", 1)[1].split()]


def owners_seen(caps: list[str], ends: list[tuple[int, int, int]]) -> tuple[int, dict[int, int], dict]:
    """Run tcptop --json as root bounded to `caps` (as the systemd unit runs it) and look for
    the (netns, lport, rport) ends; (status, {lport: pid}, run info)."""
    r = subprocess.run(["setpriv", "--bounding-set=-all," + ",".join("+" + c for c in caps), "--inh-caps=-all"]
                       + TCPTOP + ["--json", "--count", "10", "--interval", "0.3",
                                   "--filter", " or ".join(f"lport {p}" for _, p, _ in ends)],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    if r.returncode:
        return r.returncode, {}, []
    last = json.loads(r.stdout.splitlines()[-1])
    # 3 s of polls: an owner the first walk missed is looked up in the file tables within the
    # 2 s scan interval. Other connections may use the same local port (here, to another peer, or in
    # another test's namespace): only ours count.
    return 0, {f["lport"]: f["pid"] for f in last["flows"] if (f["netns"], f["lport"], f["rport"]) in ends}, \
        last["run"]


def test_the_deployed_capability_set_is_enough_and_each_part_of_it_is_needed(nspair):
    """The unit's (and the DaemonSet's) capabilities, as root: idle connections of an unprivileged
    process, here and in another namespace, are all seen with their owner. Without SYS_ADMIN other
    namespaces cannot be entered (skipped and reported); without SYS_PTRACE or DAC_READ_SEARCH owners of idle sockets
    stay unknown where they must be found in /proc/PID/fd (kernels that refuse the task_file iterator)."""
    children, ports, peers = [], [], []
    try:
        for ns in (None, nspair.a):
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", IDLE_OWNER]
            if ns:
                cmd = ["ip", "netns", "exec", ns] + cmd
            p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            children.append(p)
            lport, rport = map(int, p.stdout.readline().split())
            ports.append(lport)
            peers.append(rport)
        ends = list(zip((netns.current_inode(), nspair.inode(nspair.a)), ports, peers))
        caps = unit_capabilities()
        assert set(caps) == {"bpf", "perfmon", "net_admin", "sys_admin", "sys_ptrace", "dac_read_search"}
        rc, owners, run = owners_seen(caps, ends)
        assert rc == 0
        assert not [d for d in run["degraded"] if "network namespace" in d]
        here, there = children[0].pid, children[1].pid
        # setpriv execs python: the pid is the child's own. Each port is one end of its connection.
        assert owners.get(ports[0]) == here and owners.get(ports[1]) == there, owners
        rc, owners, run = owners_seen([c for c in caps if c != "sys_admin"], ends)
        # other namespaces skipped and said so; this namespace's connection still listed, owned
        assert rc == 0 and owners.get(ports[0]) == here and ports[1] not in owners, owners
        assert [d for d in run["degraded"] if d.startswith("connections in ") and "CAP_SYS_ADMIN" in d], run
        for missing in ("sys_ptrace", "dac_read_search"):
            rc, owners, run = owners_seen([c for c in caps if c != missing], ends)
            assert rc == 0
            if run["hooks"]["iterator task_file"] == "ok":  # the kernel walks the file tables: no /proc
                assert owners.get(ports[0]) == here, (missing, owners)
            else:  # refused by this kernel's verifier: /proc/PID/fd of another user is not readable
                assert owners.get(ports[0]) == 0, (missing, owners)
    finally:
        for p in children:
            p.stdin.close()
            p.wait(10)
