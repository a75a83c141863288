"""Packet-level engine on the real kernel: stage latencies of the test's own traffic.

Each test finds its flows by socket cookie (SO_COOKIE, the same number
bpf_get_socket_cookie() gives the kernel side) and checks the stage it
provoked: a slow reader, a rate-limited queue, an idle path, many short
connections. Host-wide numbers are shared with whatever else runs on the
machine, so assertions use the test's own flows, except the matching
counters, which are checked as rates.
"""

from __future__ import annotations

import os
import socket
import statistics
import struct
import threading
import time

import pytest

from kit import NsPair, loopback_pair, sh
from tcptop.engines.core.latency import LatencyEngine

SO_COOKIE = 57


def cookie(s: socket.socket) -> int:
    return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8), "little")


@pytest.fixture(scope="module")
def lat():
    # Every packet timed (sample=1): these tests check each stage on a few
    # dozen packets; test_sampled_stages_... checks the default sampling.
    e = LatencyEngine(max_flows=8192, sample=1)
    yield e
    e.close()


def stage(lat: LatencyEngine, s: socket.socket, direction: str, name: str) -> dict:
    _, flows = lat.poll()
    f = flows.get(cookie(s))
    assert f is not None, f"no latency for the test's socket {s.getsockname()}"
    return f[direction][name]


def test_stages_on_this_kernel_are_split_where_a_hook_separates_them(lat):
    keys = lat.stage_keys()
    assert [k for k, _ in keys["rx"]] == ["driver", "ip", "tcp", "app"]
    # No tracepoint between TCP handing a segment to IP and the device layer:
    # without fentry/kprobes the two are reported as one stage, named so.
    if not lat.chosen["tx_leave_tcp"]:
        assert [k for k, _ in keys["tx"]] == ["tcp+ip", "qdisc", "driver"]
    host, _ = lat.poll()
    assert set(host["rx"]) == {"driver", "ip", "tcp", "app"}
    assert "tx.tcp+ip" in host["stages"] or "tx.ip" in host["stages"]


def test_slow_reader_shows_its_wait_in_the_app_stage(lat):
    c, s = loopback_pair()
    try:
        for i in range(8):
            c.sendall(b"m" * 100)
            time.sleep(0.1)  # the data sits queued while the reader sleeps
            assert s.recv(4096)
        app = stage(lat, s, "rx", "app")
        assert app["count"] >= 6
        assert app["p50_us"] >= 50_000, app
        # The other receive stages of the same packets stay short.
        assert stage(lat, s, "rx", "tcp")["p50_us"] < 1000
    finally:
        c.close()
        s.close()


def test_prompt_reader_shows_a_short_app_stage(lat):
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
        app = stage(lat, s, "rx", "app")
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


def _qdisc_p50_us(lat: LatencyEngine, pair: NsPair, tbf_limit: str | None) -> float:
    """Median over 8 bulk flows of their transmit qdisc p50, with an optional tbf on the sender's veth."""
    if tbf_limit:
        # 200 kB of burst keeps 64 kB GSO skbs whole (tbf would segment bigger
        # ones into new skbs); 8 flows keep the queue full despite TCP small queues.
        sh("tc", "qdisc", "replace", "dev", "veth0", "root", "tbf", "rate", "20mbit",
           "burst", "200kb", "limit", tbf_limit, ns=pair.a)
    socks = [pair.connected() for _ in range(8)]
    try:
        _bulk(socks, 1.5)
        _, flows = lat.poll()
        p50s = [flows[cookie(c)]["tx"]["qdisc"]["p50_us"] for c, _ in socks
                if cookie(c) in flows and flows[cookie(c)]["tx"]["qdisc"]["count"]]
        assert len(p50s) >= 6, "the bulk flows left no qdisc samples"
        return statistics.median(p50s)
    finally:
        for c, s in socks:
            c.close()
            s.close()
        if tbf_limit:
            sh("tc", "qdisc", "del", "dev", "veth0", "root", ns=pair.a, check=False)


def test_qdisc_stage_grows_with_the_tbf_queue(lat, nspair):
    unlimited = _qdisc_p50_us(lat, nspair, None)
    small = _qdisc_p50_us(lat, nspair, "100kb")
    large = _qdisc_p50_us(lat, nspair, "400kb")
    assert unlimited < 1000, unlimited
    # A full tbf queue of L bytes at 20 Mbit/s holds a packet about L / rate:
    # 100 kB -> ~40 ms, 400 kB -> ~160 ms.
    assert 10_000 < small < 80_000, small
    assert large > 2 * small, (small, large)
    assert 60_000 < large < 400_000, large


@pytest.mark.parametrize("path", ["loopback", "veth"])
def test_idle_path_stages_are_short_and_sum_below_end_to_end(lat, path, request):
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
        _, flows = lat.poll()
        tx, rx = flows[cookie(c)]["tx"], flows[cookie(s)]["rx"]
        for name, st in [*(("tx." + k, v) for k, v in tx.items()), *(("rx." + k, v) for k, v in rx.items())]:
            assert st["count"] >= 150, (name, st)
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
POLL_EVERY = 2000


def test_matching_counters_stay_bounded_under_many_short_connections(lat, nspair):
    lsn = nspair.socket_in(nspair.b)
    lsn.bind((nspair.addr_b, 0))
    lsn.listen(1024)
    addr = lsn.getsockname()
    before = lat.stats()
    tracked = []
    try:
        for i in range(SHORT_CONNECTIONS):
            c = nspair.socket_in(nspair.a)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # no TIME_WAIT pile-up
            c.connect(addr)
            s, _ = lsn.accept()
            c.sendall(b"q")
            s.recv(1)
            s.sendall(b"r")
            c.recv(1)
            c.close()  # RST first: both sockets are destroyed now, none lingers in FIN_WAIT
            s.close()
            if i % POLL_EVERY == POLL_EVERY - 1:
                _, flows = lat.poll()  # closed flows are reported once, then freed
                tracked.append(len(flows))
        _, flows = lat.poll()
        _, flows = lat.poll()
    finally:
        lsn.close()
    after = lat.stats()
    d = {k: after[k] - before[k] for k in after}
    # Every connection's entries were freed: the map did not fill, a poll
    # sees only the two sockets of each connection since the last poll, and
    # what is left at the end are other tests' and the machine's live flows.
    assert d["flows_full"] == 0
    assert max(tracked) < 2 * POLL_EVERY + 500 and len(flows) < 500, (tracked, len(flows))
    # Per-skb entries that never finish are counted, and stay a small fraction.
    assert d["rx_started"] >= 6 * SHORT_CONNECTIONS
    never_finished = d["rx_reused"] + d["rx_unmatched"] + d["rx_stale"] + d["tx_reused"] + d["tx_stale"]
    assert never_finished < 0.01 * d["rx_started"], d
    assert d["probe_missed"] < 0.01 * d["probe_done"], d


def test_sampled_stages_time_one_packet_in_n_and_agree_with_every_packet(lat):
    """The default engine times 1 packet in N at every stage (a hash of the TCP
    header, or of the timed byte's sequence number, that every hook
    recomputes): about n/N samples per stage, at latencies like those of the
    engine that times every packet, and the snapshot says so."""
    n = 4000
    sampled = LatencyEngine(max_flows=1024)
    try:
        assert sampled.sample == 8
        c, s = loopback_pair()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for i in range(n):
                c.sendall(struct.pack("<Q", i))
                s.recv(8)
            host, flows = sampled.poll()
            _, every = lat.poll()
            rx, tx = flows[cookie(s)]["rx"], flows[cookie(c)]["tx"]
            rx_all, tx_all = every[cookie(s)]["rx"], every[cookie(c)]["tx"]
        finally:
            c.close()
            s.close()
    finally:
        sampled.close()
    assert host["sampled"] == "1/8" and "1/8" in host["stages"]["sampled"]
    assert set(rx) == set(rx_all) and set(tx) == set(tx_all)
    for name, st, full in [*((f"rx.{k}", v, rx_all[k]) for k, v in rx.items()),
                           *((f"tx.{k}", v, tx_all[k]) for k, v in tx.items())]:
        assert n / 8 * 0.6 < st["count"] < n / 8 * 1.5, (name, st, full)
        assert full["count"] >= n * 0.95, (name, full)
        assert st["p50_us"] < 1000, (name, st)
        # Same distribution: means within a factor of two (tiny stages, noisy machine).
        assert full["mean_us"] / 2 - 1 < st["mean_us"] < full["mean_us"] * 2 + 1, (name, st, full)


def test_without_skb_stages_only_the_sequence_matched_stages_remain():
    light = LatencyEngine(max_flows=1024, skb_stages=False, sample=1)
    try:
        keys = light.stage_keys()
        assert [k for k, _ in keys["rx"]] == ["tcp", "app"]
        assert [k for k, _ in keys["tx"]][:1] in (["tcp+ip"], ["tcp"])
        c, s = loopback_pair()
        try:
            for _ in range(20):
                c.sendall(b"x" * 10)
                s.recv(100)
            _, flows = light.poll()
            assert flows[cookie(s)]["rx"]["app"]["count"] >= 10
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
