"""Packet-level engine on the real kernel: stage latencies of the test's own traffic.

Each test finds its flows by socket cookie (SO_COOKIE, the same number
bpf_get_socket_cookie() gives the kernel side) and checks the stage it
provoked: a slow reader, a rate-limited queue, an idle path, many short
connections. Where an independent count is possible, the stages are compared
with an every-packet oracle: bpftrace on the kernel's tracepoints (other hooks
or another matching method than the engine's), or the test's own clock.
Host-wide numbers are shared with whatever else runs on the machine, so
assertions use the test's own flows, except the matching counters, which are
checked as rates.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import struct
import subprocess
import threading
import time

import pytest

from kit import NsPair, loopback_pair, sh
from tcptop.engines.core.latency import LatencyEngine
from tcptop.engines.histogram import UPPER_NS, summary_of_pairs

SO_COOKIE = 57
BUCKET_OF_UPPER = {u: b for b, u in enumerate(UPPER_NS)}


def cookie(s: socket.socket) -> int:
    return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8), "little")


class Windows:
    """Every window's figures for each flow and stage, each window counted once (as a consumer
    that accumulates them, like the exporter, does): a flow's figures are its last window's."""

    def __init__(self, lat: LatencyEngine):
        self.lat = lat
        self.seen: dict[tuple[int, str, str], dict[int, dict]] = {}

    def poll(self) -> tuple[dict | None, dict[int, dict]]:
        host, flows = self.lat.poll()
        for c, f in flows.items():
            for d in ("rx", "tx"):
                for k, st in f[d].items():
                    self.seen.setdefault((c, d, k), {})[f["window"]["id"]] = st
        return host, flows

    def settle(self) -> tuple[dict | None, dict[int, dict]]:
        """Poll until two more windows have been taken: the one open now (whose packets may
        still be finishing) is then in, and every packet the test sent before."""
        host, flows = self.poll()
        first = host["window"]["id"] if host else 0
        deadline = time.monotonic() + 10
        while (host["window"]["id"] if host else 0) < first + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            host, flows = self.poll()
        return host, flows

    def stage(self, s: socket.socket | int, direction: str, name: str) -> dict:
        """All windows' samples of one stage of one flow, summarised as the engine would."""
        measured_or_refused(self.lat, direction, name)
        self.settle()
        c = s if isinstance(s, int) else cookie(s)
        return merged(self.seen.get((c, direction, name), {}).values())


def measured_or_refused(lat: LatencyEngine, direction: str, name: str) -> None:
    """Kernel builds of one version differ in what their verifier accepts: a stage this
    kernel's verifier took from us must be reported lost, with the verifier's reason (then
    the test of that stage has nothing to measure here); any other absence is a failure."""
    if name in {k for k, _ in lat.stage_keys()[direction]}:
        return
    refused = sorted(v for v in lat.hooks.values() if "verifier refused" in v)
    assert refused and [d for d in lat.degraded if "verifier refused" in d], (direction, name, lat.hooks)
    pytest.skip(f"{direction} {name} not measured on this kernel: {refused}")


def merged(stages) -> dict:
    pairs: dict[int, int] = {}
    total_ns = 0.0
    unobserved = None
    for st in stages:
        total_ns += (st["mean_us"] or 0) * st["count"] * 1000
        for ub, n in st["buckets"]:
            b = BUCKET_OF_UPPER[ub]
            pairs[b] = pairs.get(b, 0) + n
        if st.get("unobserved"):
            u = st["unobserved"]
            unobserved = dict(u, skbs=u["skbs"] + (unobserved["skbs"] if unobserved else 0))
    out = summary_of_pairs(sorted(pairs.items()), round(total_ns))
    if unobserved:
        out["unobserved"] = unobserved
    return out


@pytest.fixture(scope="module")
def lat():
    # Every packet, continuously: these tests check each stage on a few dozen packets;
    # the windows of the default mode have tests of their own below.
    e = LatencyEngine(mode="continuous", period_s=0.2)
    yield e
    e.close()


@pytest.fixture
def timed(lat):
    return Windows(lat)


def test_stages_on_this_kernel_are_split_where_a_hook_separates_them(lat):
    for name in ("driver", "ip", "tcp", "app"):
        measured_or_refused(lat, "rx", name)
    keys = lat.stage_keys()
    assert [k for k, _ in keys["rx"]] == ["driver", "ip", "tcp", "app"]
    # No tracepoint between TCP handing a segment to IP and the device layer:
    # without fentry/kprobes the two are reported as one stage, named so.
    if not lat.chosen["tx_leave_tcp"]:
        assert [k for k, _ in keys["tx"]] == ["tcp+ip", "qdisc", "driver"]
    host, _ = Windows(lat).settle()
    assert set(host["rx"]) == {"driver", "ip", "tcp", "app"}
    assert "tx.tcp+ip" in host["stages"] or "tx.ip" in host["stages"]
    assert host["coverage"]["mode"] == "continuous" and host["coverage"]["budget_pct"] is None


def test_continuous_timing_reports_each_cycle_once(lat):
    """Continuous timing is taken cycle by cycle (every 0.2 s here): each window is the time
    since the cycle before, and the share of the time timed is at most all of it. (Each cycle
    counted the whole stretch so far: windows as long as the engine had run, fractions over 1,
    and the budget's runs per second of window too low.)"""
    timed = Windows(lat)
    timed.settle()
    time.sleep(1.0)
    host, _ = timed.settle()
    assert 0 < host["window"]["s"] <= 0.2 + 0.5, host["window"]
    assert 0.5 <= host["coverage"]["timed_fraction"] <= 1.0, host["coverage"]


def test_slow_reader_shows_its_wait_in_the_app_stage(timed):
    c, s = loopback_pair()
    try:
        for i in range(8):
            c.sendall(b"m" * 100)
            time.sleep(0.1)  # the data sits queued while the reader sleeps
            assert s.recv(4096)
        app = timed.stage(s, "rx", "app")
        assert app["count"] == 8
        assert app["p50_us"] >= 90_000, app
        # The other receive stages of the same packets stay short.
        assert timed.stage(s, "rx", "tcp")["p50_us"] < 1000
    finally:
        c.close()
        s.close()


def test_prompt_reader_shows_a_short_app_stage(timed):
    c, s = loopback_pair()
    got = []

    def reader():
        while True:
            b = s.recv(4096)  # blocked in recv before each message arrives
            if not b:
                return
            got.append(len(b))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(30):
            c.sendall(b"m" * 100)
            time.sleep(0.01)
        c.shutdown(socket.SHUT_WR)
        t.join(5)
        app = timed.stage(s, "rx", "app")
        assert app["count"] >= 20
        assert app["p50_us"] < 1000, app
    finally:
        c.close()
        s.close()


def _bulk(socks: list[tuple[socket.socket, socket.socket]], seconds: float) -> None:
    """Bulk senders on every pair at once, with readers that drain as fast as they can."""
    stop = time.monotonic() + seconds

    def send(c: socket.socket) -> None:
        buf = b"x" * 65536
        c.settimeout(0.2)
        while time.monotonic() < stop:
            try:
                c.send(buf)
            except socket.timeout:
                pass

    def recv(s: socket.socket) -> None:
        s.settimeout(0.5)
        try:
            while s.recv(1 << 20):
                pass
        except OSError:
            pass

    threads = [threading.Thread(target=send, args=(c,)) for c, _ in socks]
    threads += [threading.Thread(target=recv, args=(s,)) for _, s in socks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _tbf(pair: NsPair, dev: str, rate: str, burst: str, limit: str) -> None:
    sh("tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate, "burst", burst, "limit", limit, ns=pair.a)


def _qdisc_p50_us(timed: Windows, pair: NsPair, tbf_limit: str | None) -> float:
    """Median over 8 bulk flows of their transmit qdisc p50, with an optional tbf on the sender's veth."""
    if tbf_limit:
        # 200 kB of burst keeps 64 kB GSO skbs whole (tbf would segment bigger
        # ones into new skbs); 8 flows keep the queue full despite TCP small queues.
        _tbf(pair, "veth0", "20mbit", "200kb", tbf_limit)
    socks = [pair.connected() for _ in range(8)]
    try:
        _bulk(socks, 1.5)
        p50s = [st["p50_us"] for st in (timed.stage(c, "tx", "qdisc") for c, _ in socks) if st["count"]]
        assert len(p50s) >= 6, "the bulk flows left no qdisc samples"
        return statistics.median(p50s)
    finally:
        for c, s in socks:
            c.close()
            s.close()
        if tbf_limit:
            sh("tc", "qdisc", "del", "dev", "veth0", "root", ns=pair.a, check=False)


def test_qdisc_stage_grows_with_the_tbf_queue(timed, nspair):
    unlimited = _qdisc_p50_us(timed, nspair, None)
    small = _qdisc_p50_us(timed, nspair, "100kb")
    large = _qdisc_p50_us(timed, nspair, "400kb")
    assert unlimited < 1000, unlimited
    # A full tbf queue of L bytes at 20 Mbit/s holds a packet about L / rate:
    # 100 kB -> ~40 ms, 400 kB -> ~160 ms.
    assert 10_000 < small < 80_000, small
    assert large > 2 * small, (small, large)
    assert 60_000 < large < 400_000, large


@pytest.mark.parametrize("path", ["loopback", "veth"])
def test_idle_path_stages_are_short_and_sum_below_end_to_end(timed, path, request):
    if path == "veth":
        pair = NsPair.create("latidle")
        request.addfinalizer(pair.close)
        c, s = pair.connected()
    else:
        c, s = loopback_pair()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    e2e_ns = []
    try:
        for i in range(200):
            c.sendall(struct.pack("<Q", time.monotonic_ns()))
            b = s.recv(8)  # one 8-byte message per packet: NODELAY and a prompt reader
            e2e_ns.append(time.monotonic_ns() - struct.unpack("<Q", b)[0])
            time.sleep(0.002)
        timed.poll()
        tx = {k: timed.stage(c, "tx", k) for k, _ in timed.lat.stage_keys()["tx"]}
        rx = {k: timed.stage(s, "rx", k) for k, _ in timed.lat.stage_keys()["rx"]}
        for name, st in [*(("tx." + k, v) for k, v in tx.items()), *(("rx." + k, v) for k, v in rx.items())]:
            assert st["count"] >= 190, (name, st)
            assert st["p50_us"] < 1000, (name, st)
        # Means are exact (the kernel sums nanoseconds), so they add up; every
        # stage lies inside the test's send-to-read interval.
        stage_sum_us = sum(v["mean_us"] for v in tx.values()) + sum(v["mean_us"] for v in rx.values())
        e2e_mean_us = statistics.mean(e2e_ns) / 1000
        assert stage_sum_us < e2e_mean_us, (stage_sum_us, e2e_mean_us, tx, rx)
    finally:
        c.close()
        s.close()


# 100,000 in the issue; 20,000 by default keeps this test near 15 s on a shared
# 2-core machine (the bounds are rates and per-poll sizes, so the scale does
# not change them). TCPTOP_SHORT_CONNECTIONS=100000 runs the full count.
SHORT_CONNECTIONS = int(os.environ.get("TCPTOP_SHORT_CONNECTIONS", "20000"))
POLL_EVERY = 1000  # each connection leaves ~16 (flow, stage) entries in a window: 16k per window


def test_matching_counters_stay_bounded_under_many_short_connections(lat, nspair):
    lsn = nspair.socket_in(nspair.b)
    lsn.bind((nspair.addr_b, 0))
    lsn.listen(1024)
    addr = lsn.getsockname()
    before = lat.stats()
    per_window = []
    ours: set[int] = set()
    try:
        for i in range(SHORT_CONNECTIONS):
            c = nspair.socket_in(nspair.a)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # no TIME_WAIT pile-up
            c.connect(addr)
            s, _ = lsn.accept()
            ours |= {cookie(c), cookie(s)}
            c.sendall(b"q")
            s.recv(1)
            s.sendall(b"r")
            c.recv(1)
            c.close()  # RST first: both sockets are destroyed now, none lingers in FIN_WAIT
            s.close()
            if i % POLL_EVERY == POLL_EVERY - 1:
                host, flows = Windows(lat).settle()  # a window's flows are read and deleted from the kernel map
                wid = host["window"]["id"]
                per_window.append(sum(1 for k, f in flows.items() if f["window"]["id"] == wid and k in ours))
                lat.retain(set())  # the connections are gone: what the engine (CoreEngine) does with live ids
    finally:
        lsn.close()
    after = lat.stats()
    d = {k: after[k] - before[k] for k in after}
    # Every window's entries were freed: the map did not fill, and a window holds only the two
    # sockets of each of this test's connections since the last poll (other tests' flows, which
    # the host-wide programs see too, are not counted).
    assert d["flows_full"] == 0
    assert max(per_window) <= 2 * POLL_EVERY, per_window
    # Per-skb entries that never finish are counted, and stay a small fraction. The counters
    # are host-wide: bulk traffic of tests running beside this one has GSO skbs split before
    # the driver (software segmentation on loopback and veth), each of which can leave at most
    # one entry that never finishes (its address reused: tx_reused, or aged: tx_stale). The
    # programs count those skbs (gso_queued - gso_matched): they are not this test's.
    assert d["rx_started"] >= 6 * SHORT_CONNECTIONS
    split_gso = max(0, d["gso_queued"] - d["gso_matched"])
    never_finished = d["rx_reused"] + d["rx_unmatched"] + d["rx_stale"] + d["tx_reused"] + d["tx_stale"]
    assert never_finished - split_gso < 0.01 * d["rx_started"], d
    assert d["probe_missed"] < 0.01 * d["probe_done"], d


def test_without_skb_stages_only_the_sequence_matched_stages_remain():
    light = LatencyEngine(mode="continuous", period_s=0.2, max_flows=1024, skb_stages=False)
    try:
        keys = light.stage_keys()
        assert [k for k, _ in keys["rx"]] == ["tcp", "app"]
        assert [k for k, _ in keys["tx"]][:1] in (["tcp+ip"], ["tcp"])
        c, s = loopback_pair()
        try:
            for _ in range(20):
                c.sendall(b"x" * 10)
                s.recv(100)
            assert Windows(light).stage(s, "rx", "app")["count"] == 20
            _, flows = light.poll()
            assert "driver" not in flows[cookie(s)]["rx"]
        finally:
            c.close()
            s.close()
    finally:
        light.close()


def test_kprobe_variants_pass_the_verifier_here():
    """The kprobe rungs cannot attach on this kernel (no kprobe PMU), but they load:
    the same handlers as the tested tracepoint paths, behind a different entry."""
    from tcptop.engines.core.libbpf import BpfObject
    from tcptop.engines.core.latency import default_object_path

    obj = BpfObject(default_object_path())
    try:
        kp = [n for n in obj.programs if n.startswith("kp_")]
        assert len(kp) >= 5
        for name, prog in obj.programs.items():
            prog.set_autoload(name in kp)
        obj.load()
    finally:
        obj.close()


# -- every packet, against an oracle ---------------------------------------------------------

@pytest.fixture(scope="module")
def tracefs():
    """bpftrace attaches tracepoints through tracefs; mount it if this boot has not. It stays
    mounted (as the BCC engine leaves it): tests of other suites may be running beside this one,
    and an unmount under them would change what their engines can attach."""
    if not shutil.which("bpftrace"):
        pytest.skip("bpftrace is not installed (scripts/setup-system.sh installs it): no oracle")
    if not os.path.exists("/sys/kernel/tracing/events/tcp"):
        r = subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], capture_output=True, text=True)
        if r.returncode and not os.path.exists("/sys/kernel/tracing/events/tcp"):  # (or another test just did)
            pytest.skip(f"tracefs cannot be mounted ({r.stderr.strip()}): bpftrace cannot attach tracepoints")


class Bpftrace:
    """An every-packet oracle: a bpftrace program printing one line per event. Its output is read
    as it comes (a full pipe would stall it), and taken when it is stopped."""

    def __init__(self, program: str):
        self.p = subprocess.Popen(["bpftrace", "-B", "none", "-e", program], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        first = self.p.stdout.readline()
        if not first.startswith("Attaching"):
            err = self.p.communicate(timeout=10)[1]
            pytest.skip(f"bpftrace cannot run here: {(first + err).strip().splitlines()[-1:]}")
        self._out: list[str] = []
        self._reader = threading.Thread(target=lambda: self._out.extend(self.p.stdout), daemon=True)
        self._reader.start()

    def lines(self) -> list[list[str]]:
        self.p.send_signal(2)
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:  # every line is already out (-B none): stop it harder
            self.p.kill()
            self.p.wait(timeout=10)
        self._reader.join(timeout=10)
        self.p.stderr.close()
        return [ln.split() for ln in self._out if ln[:2] in ("A ", "R ", "Q ")]


def _after(a: int, b: int) -> bool:
    """Sequence number a is at or after b (32-bit wrap)."""
    return (a - b) % (1 << 32) < 1 << 31


def _oracle_app_delays(lines: list[list[str]]) -> list[tuple[int, int]]:
    """(arrival ns, wait ns) of every packet that brought new data, until the read call that
    returned its last byte. Arrivals come from tcp:tcp_probe with the segment's sequence number
    (a retransmitted duplicate, ending where data already arrived, brings nothing and is left
    out); reads from sock:sock_recv_length with the socket's copied_seq after the call. A
    packet is read by the first call whose copied_seq reaches its end. Sequence numbers, not
    byte counts, so an event the tracer dropped loses that event only."""
    packets: list[tuple[int, int]] = []  # (arrival ns, sequence number its data ends at)
    reads: list[tuple[int, int]] = []    # (ns, copied_seq)
    last_end = None
    for p in lines:
        if p[0] == "R":
            reads.append((int(p[1]), int(p[2])))
            continue
        seq = int.from_bytes(int(p[3]).to_bytes(4, "little"), "big")  # network order
        end = (seq + int(p[2])) % (1 << 32)
        if last_end is None or (_after(end, last_end) and end != last_end):
            packets.append((int(p[1]), end))
            last_end = end
    out, r = [], 0
    for ts, end in packets:
        while r < len(reads) and not _after(reads[r][1], end):
            r += 1
        if r < len(reads):
            out.append((ts, reads[r][0] - ts))
    return out


def _bursty_reader(s: socket.socket, c: socket.socket, seconds: float, poll=None) -> None:
    """A sender every 7 ms, a reader that sleeps 50 ms between reads: data arrives in bursts,
    and a packet's wait depends on where in the reader's sleep it lands."""
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stop = time.monotonic() + seconds

    def sender():
        while time.monotonic() < stop:
            c.send(b"m" * 100)
            time.sleep(0.007)

    t = threading.Thread(target=sender)
    t.start()
    s.setblocking(False)
    while time.monotonic() < stop + 0.1:
        time.sleep(0.05)
        try:
            while s.recv(1 << 16):
                pass
        except BlockingIOError:
            pass
        if poll:
            poll()
    t.join()


def _app_oracle(s: socket.socket) -> Bpftrace:
    return Bpftrace(f"""
tracepoint:tcp:tcp_probe /args->sock_cookie == {cookie(s)} && args->data_len > 0/ {{
    @sk = (uint64)args->skaddr;
    $th = (struct tcphdr *)((struct sk_buff *)args->skbaddr)->data;
    printf("A %lu %u %u %u\\n", nsecs, args->data_len, $th->seq, ((struct tcp_sock *)args->skaddr)->rcv_nxt);
}}
tracepoint:sock:sock_recv_length /(uint64)args->sk == @sk && args->ret > 0/ {{
    printf("R %lu %u\\n", nsecs, ((struct tcp_sock *)args->sk)->copied_seq);
}}
""")


def _within(ours: float, oracle: float, tolerance: float = 0.10) -> bool:
    return abs(ours - oracle) <= tolerance * oracle


def _residuals(what: str, ours: dict, oracle_ns: list[int]) -> None:
    """Print the engine's figures against the oracle's (pytest -s or -rP shows them; the figures
    quoted in docs/latency.md come from these lines)."""
    if not oracle_ns or not ours["count"]:
        print(f"oracle {what}: count {ours['count']} vs {len(oracle_ns)}")
        return
    p50, mean = statistics.median(oracle_ns) / 1000, statistics.mean(oracle_ns) / 1000
    print(f"oracle {what}: count {ours['count']} vs {len(oracle_ns)}; p50 {ours['p50_us']} vs {p50:.1f} us "
          f"({100 * (ours['p50_us'] / p50 - 1):+.1f} %); mean {ours['mean_us']} vs {mean:.1f} us "
          f"({100 * (ours['mean_us'] / mean - 1):+.1f} %)")


def test_bursty_reader_app_stage_matches_an_every_packet_oracle(timed, tracefs):
    """Timing one byte per socket at a time took the first packet after each read, which
    waits the longest: p50 and mean 17-20 % high. Every packet is timed now."""
    c, s = loopback_pair()
    try:
        oracle = _app_oracle(s)
        _bursty_reader(s, c, 5.0)
        time.sleep(0.2)
        delays = [d for _, d in _oracle_app_delays(oracle.lines())]
        app = timed.stage(s, "rx", "app")
    finally:
        c.close()
        s.close()
    _residuals("bursty reader, rx app", app, delays)
    assert len(delays) > 500
    assert abs(app["count"] - len(delays)) <= 3, (app, len(delays))
    assert _within(app["p50_us"], statistics.median(delays) / 1000), (app, statistics.median(delays))
    assert _within(app["mean_us"], statistics.mean(delays) / 1000), (app, statistics.mean(delays))


def test_windows_time_every_packet_that_starts_in_them(tracefs):
    """The default (budget) mode: the programs are attached for windows (100 ms every 0.5 s
    here, fixed for the test). The packets that start a stage while a window is open are all
    timed, however long they wait after it closed: the same packets, the same figures, as the
    oracle's packets that arrived in those windows."""
    lat = LatencyEngine(mode="budget", period_s=0.5, window_s=0.1)
    timed = Windows(lat)
    c, s = loopback_pair()
    try:
        oracle = _app_oracle(s)
        _bursty_reader(s, c, 6.0, poll=timed.poll)
        for _ in range(12):  # the last window drains, its figures are taken
            time.sleep(0.1)
            timed.poll()
        delays = _oracle_app_delays(oracle.lines())
        app = timed.stage(s, "rx", "app")
        windows = [(opened, closed) for _, opened, closed in lat.recent_windows]
        host, _ = lat.poll()
    finally:
        c.close()
        s.close()
        lat.close()
    in_windows = [d for ts, d in delays if any(o <= ts < c for o, c in windows)]
    _residuals("bursty reader in 100 ms windows, rx app", app, in_windows)
    assert len(windows) >= 10 and len(in_windows) > 100
    assert 0.1 < host["coverage"]["timed_fraction"] < 0.4, host["coverage"]
    assert abs(app["count"] - len(in_windows)) <= 3, (app, len(in_windows))
    assert _within(app["p50_us"], statistics.median(in_windows) / 1000), (app, statistics.median(in_windows))
    assert _within(app["mean_us"], statistics.mean(in_windows) / 1000), (app, statistics.mean(in_windows))


def _renamed_pair(tag: str) -> tuple[NsPair, str]:
    """A veth pair whose sending end has a name no other test's device has (the oracle filters by it)."""
    pair = NsPair.create(tag)
    dev = f"tq{os.getpid() % 100000}"
    try:
        sh("ip", "link", "set", "veth0", "down", ns=pair.a)
        sh("ip", "link", "set", "veth0", "name", dev, ns=pair.a)
        sh("ip", "link", "set", dev, "up", ns=pair.a)
    except Exception:
        pair.close()
        raise
    return pair, dev


def _qdisc_oracle(dev: str) -> Bpftrace:
    return Bpftrace(f"""
tracepoint:net:net_dev_queue /str(args->name) == "{dev}"/ {{ @q[args->skbaddr] = nsecs; }}
tracepoint:net:net_dev_start_xmit /str(args->name) == "{dev}"/ {{
    $t = @q[args->skbaddr];
    if ($t) {{ printf("Q %lu %lu\\n", $t, nsecs - $t); delete(@q[args->skbaddr]); }}
}}
""")


def test_tbf_queue_qdisc_stage_matches_an_every_packet_oracle(timed, tracefs):
    """8 bulk flows through a tbf of 20 Mbit/s holding up to 100 kB: every skb's time in the
    queue, by the engine and by bpftrace on the same two tracepoints."""
    pair, dev = _renamed_pair("lattbf")
    try:
        _tbf(pair, dev, "20mbit", "200kb", "100kb")
        oracle = _qdisc_oracle(dev)
        socks = [pair.connected() for _ in range(8)]
        try:
            _bulk(socks, 2.0)
            queued = [int(p[2]) for p in oracle.lines()]
            timed.settle()
            qdisc = merged(st for c, _ in socks for st in timed.seen.get((cookie(c), "tx", "qdisc"), {}).values())
        finally:
            for c, s in socks:
                c.close()
                s.close()
    finally:
        pair.close()
    _residuals("tbf queue, tx qdisc", qdisc, queued)
    assert len(queued) > 200
    assert abs(qdisc["count"] - len(queued)) <= 0.05 * len(queued), (qdisc["count"], len(queued))
    assert _within(qdisc["p50_us"], statistics.median(queued) / 1000), (qdisc, statistics.median(queued))
    assert _within(qdisc["mean_us"], statistics.mean(queued) / 1000), (qdisc, statistics.mean(queued))


def test_qdisc_stage_says_why_it_is_not_observable_when_tbf_splits_gso_skbs(timed, tracefs):
    """With TSO on, a tbf whose burst is smaller than the GSO skbs TCP hands it cuts each into
    new skbs: no skb that left was one that was queued. The flow's qdisc stage says how many
    skbs it could not time and why, instead of an empty or misleading bar (what it did time are
    the skbs small enough to pass whole); its other stages still measure. The oracle, matching
    by skb address on the same tracepoints, finds no more than the engine does."""
    pair, dev = _renamed_pair("latsplit")
    try:
        _tbf(pair, dev, "1gbit", "1600", "400kb")
        c, s = pair.connected()
        try:
            oracle = _qdisc_oracle(dev)
            _bulk([(c, s)], 2.5)
            matched = len(oracle.lines())
            timed.poll()
            qdisc = timed.stage(c, "tx", "qdisc")
            driver = timed.stage(c, "tx", "driver")
        finally:
            c.close()
            s.close()
    finally:
        pair.close()
    u = qdisc.get("unobserved")
    print(f"split GSO: unobserved {u and {k: u[k] for k in ('skbs', 'segments')}}, timed {qdisc['count']}, "
          f"oracle matched {matched}, driver {driver['count']}")
    assert u and "split into new skbs on the way (by the qdisc: tbf does" in u["why"], qdisc
    # What passed whole and was timed are skbs of one segment (anything larger than the
    # 1,600-byte burst is split): most of the flow's segments went in skbs that could not be
    # timed (how many single-segment skbs TCP sends depends on the machine's load, so the
    # comparison is by segments, not skbs), and the oracle could not time them either.
    assert u["segments"] >= 2 * u["skbs"] > 0, u  # each split skb held 2 segments or more
    assert u["segments"] > qdisc["count"], (u, qdisc)
    assert qdisc["count"] <= matched + 5, (qdisc["count"], matched)
    assert driver["count"] > u["segments"] / 2, driver  # the segments tbf made are timed in the driver


# -- the budget ---------------------------------------------------------------------------------

def test_budget_mode_keeps_its_cost_within_its_share_of_busy_cpu():
    """Loopback ping-pong as fast as Python goes: timing every packet would cost several per cent
    of the busy CPU (about 18 program runs per round trip). The default mode times windows
    instead, and its cost (program runs counted by the programs, at NS_PER_RUN each) stays
    within the budget, while windows still open."""
    lat = LatencyEngine(mode="budget", budget_pct=0.5, period_s=0.25)
    c, s = loopback_pair()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        # 5 s at least, and until a second window has opened: when the window thread's own CPU
        # per window exceeds its share of busy CPU the period grows (~8 s for a 10 ms cycle here)
        start = time.monotonic()
        next_poll = 0.0
        while True:
            c.send(b"p")
            s.recv(1)
            if time.monotonic() > next_poll:  # someone looks: windows open after polls
                host, _ = lat.poll()
                next_poll = time.monotonic() + 0.25
                waited = time.monotonic() - start
                if waited > 30 or (waited > 5 and host["matching"]["windows"] >= 2):
                    break
        host, flows = lat.poll()
    finally:
        c.close()
        s.close()
        lat.close()
    cov = host["coverage"]
    assert cov["mode"] == "budget" and cov["budget_pct"] == 0.5
    # The first window opens blind (5 ms, before any cost is known): on a fast machine it alone
    # is ~12 ms of BPF time, 39 % of its own short cycle, and in a run this short it decided
    # whether the whole passed (0.72-1.1 %). The budget is what the windows it planned cost.
    planned = lat.budget.cycles()[1:]
    cost = 100 * sum(ns for _, ns in planned) / sum(c.busy_ns for c, _ in planned)
    assert cost <= 0.5 * 1.5, (cost, cov)
    assert 0 < cov["timed_fraction"] < 0.5, cov
    # Windows keep opening after the first (within 30 s: how many fit depends on the machine's load).
    assert host["matching"]["windows"] >= 2


def test_a_flow_keeps_its_last_windows_figures_with_their_age():
    """Traffic, then silence: later windows time nothing of the flow, and it keeps the figures
    of the last window that saw it, with that window's id and end time (its age). Windows open
    only after polls: nobody looking, nothing timed."""
    lat = LatencyEngine(mode="budget", period_s=0.2, window_s=0.1)
    c, s = loopback_pair()
    try:
        stop = time.monotonic() + 1.0
        while time.monotonic() < stop:
            c.send(b"x" * 10)
            s.recv(10)
            lat.poll()
            time.sleep(0.002)
        for _ in range(5):  # the last window that saw the traffic drains and is published
            time.sleep(0.1)
            lat.poll()
        _, flows = lat.poll()
        first = flows[cookie(s)]
        for _ in range(10):  # more windows, without the flow's packets
            time.sleep(0.1)
            host, flows = lat.poll()
        later = flows[cookie(s)]
    finally:
        c.close()
        s.close()
        lat.close()
    assert first["rx"]["app"]["count"] > 0
    assert later is first  # the same figures, not re-counted
    assert host["window"]["id"] > first["window"]["id"]  # later windows came, the flow kept its figures
    assert host["window"]["end_ts"] > first["window"]["end_ts"]  # whose age a reader can tell


def test_host_packets_count_the_traffic_of_other_namespaces(nspair):
    """The budget's traffic forecast counts every namespace's packets (containers'), not only
    tcptop's own: 300 request/response exchanges over loopback inside another namespace are
    all counted, against that namespace's own InSegs, while ours sees none of them."""
    from tcptop.engines.core.latency_budget import HostPackets

    script = ("import socket\n"
              "l = socket.create_server(('127.0.0.1', 0)); c = socket.create_connection(l.getsockname())\n"
              "s, _ = l.accept()\n"
              "for _ in range(300):\n"
              "    c.sendall(b'q'); s.recv(1); s.sendall(b'r'); c.recv(1)\n"
              "c.close(); s.close()\n")

    def in_segs(ns: str | None) -> int:
        lines = [ln.split() for ln in sh("cat", "/proc/net/snmp", ns=ns).splitlines() if ln.startswith("Tcp:")]
        return int(lines[1][lines[0].index("InSegs")])

    count = HostPackets()
    count()
    theirs0, ours0 = in_segs(nspair.a), in_segs(None)
    sh("python3", "-c", script, ns=nspair.a)
    theirs, ours = in_segs(nspair.a) - theirs0, in_segs(None) - ours0
    seen = count()
    assert theirs >= 600  # 300 requests and 300 replies, each received once (plus the handshake)
    assert seen >= theirs, (seen, theirs)
    assert ours < theirs / 2, (ours, theirs)  # the old measure (our namespace's snmp) missed them
