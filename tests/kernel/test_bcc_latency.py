"""The BCC engine's packet-level stages: the device layer, timed by skb address, beside the CO-RE
engine timing the same skbs. Skipped, with the reason, where BCC cannot compile."""

import socket
import threading
import time

import pytest

from tcptop.engines.core.latency import LatencyEngine as CoreLatency
from tcptop.engines.histogram import BUCKETS, UPPER_NS, bucket_bounds
from kit import sh

SO_COOKIE = 57


@pytest.fixture(scope="module", autouse=True)
def bcc_compiles():
    from tcptop.engines.bcc import loader
    why = loader.why_cannot_compile()
    if why:
        pytest.skip(f"BCC cannot compile on this machine, BCC engine tests skipped: {why}")


@pytest.fixture(scope="module")
def bcc_lat():
    from tcptop.engines.bcc import loader
    from tcptop.engines.bcc.latency import LatencyEngine
    e = LatencyEngine(loader.kernel_source()[0], sample=1)  # every packet, as the CO-RE engine beside it
    yield e
    e.close()


def test_device_stages_and_what_is_not_measured(bcc_lat):
    from tcptop.engines.bcc.latency import NOT_HERE
    keys = bcc_lat.stage_keys()
    assert [k for k, _ in keys["rx"]] == ["driver"]
    assert [k for k, _ in keys["tx"]] == ["qdisc", "driver"]
    host, flows = bcc_lat.poll()
    assert flows == {}
    assert set(host["stages"]) >= {"rx.driver", "tx.qdisc", "tx.driver"}
    assert "any protocol" in host["stages"]["tx.qdisc"]
    assert NOT_HERE in bcc_lat.degraded


def test_default_sampling_times_one_packet_in_eight():
    """Every 8th packet per CPU at a stage's first hook: of N packets the test sends on loopback
    (each crosses the device layer once), at least N/8 - one per CPU are timed."""
    import os

    from kit import loopback_pair, recv_exactly
    from tcptop.engines.bcc import loader
    from tcptop.engines.bcc.latency import TX_QDISC, LatencyEngine
    e = LatencyEngine(loader.kernel_source()[0])
    try:
        assert e.sample == 8
        before = sum(e.histogram(TX_QDISC)[0])
        c, s = loopback_pair()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        n = 800
        for _ in range(n):  # one segment and one ACK each way: 2n packets through the device layer
            c.sendall(b"p")
            recv_exactly(s, 1)
            s.sendall(b"a")
            recv_exactly(c, 1)
        host, _ = e.poll()
        assert host["sampled"] == "1/8" and "1/8" in host["stages"]["sampled"]
        timed = sum(e.histogram(TX_QDISC)[0]) - before
        assert timed >= 2 * n // 8 - os.cpu_count(), timed
        c.close()
        s.close()
    finally:
        e.close()


def slow(hist, floor_ns=4_000_000):
    """Samples in buckets that start at or above floor_ns."""
    return sum(c for b, c in enumerate(hist) if bucket_bounds(b)[0] >= floor_ns)


def test_tbf_queue_same_slow_packets_as_core(bcc_lat, nspair):
    """A tbf queue on the sender's veth holds packets for tens of ms. Both engines match the same
    skbs by address between the same two tracepoints, every packet: the BCC engine's host-wide
    qdisc stage gains at least the slow samples the CO-RE engine times for the test's own flows,
    and no more than the CO-RE engine's host-wide TCP count over the same time (other tests
    may run tbf queues meanwhile) plus a few non-TCP packets."""
    from tcptop.engines.bcc.latency import TX_QDISC
    core = CoreLatency(mode="continuous", period_s=0.2, skb_stages=True)
    try:
        before = bcc_lat.histogram(TX_QDISC)[0]
        sh("tc", "qdisc", "replace", "dev", "veth0", "root", "tbf", "rate", "20mbit",
           "burst", "200kb", "limit", "100kb", ns=nspair.a)
        socks = [nspair.connected() for _ in range(4)]
        stop = time.monotonic() + 1.5

        def send(c):
            while time.monotonic() < stop:
                c.sendall(b"t" * 65536)

        def recv(s):
            s.settimeout(3)
            try:
                while s.recv(1 << 20):
                    pass
            except OSError:
                pass

        threads = [threading.Thread(target=send, args=(c,)) for c, _ in socks]
        threads += [threading.Thread(target=recv, args=(s,)) for _, s in socks]
        for t in threads:
            t.start()
        for t in threads[:4]:
            t.join()
        for c, _ in socks:
            c.shutdown(socket.SHUT_WR)
        for t in threads[4:]:
            t.join()
        core_host, core_flows = _core_windows(core)
        after = bcc_lat.histogram(TX_QDISC)[0]
        ours = [core_flows.get(int.from_bytes(c.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8), "little"),
                               [0] * BUCKETS) for c, _ in socks]
        core_slow = sum(slow(f) for f in ours)
        bcc_slow = slow([a - b for a, b in zip(after, before)])
        assert core_slow >= 20, "the tbf queue held too few packets; the test proves nothing"
        # Other tests on the machine may add slow packets of their own; none can be missing.
        core_host_slow = slow(core_host)
        assert core_slow <= bcc_slow <= core_host_slow + 5, (core_slow, core_host_slow, bcc_slow)
    finally:
        core.close()
        for c, s in locals().get("socks", []):
            c.close()
            s.close()


def _buckets(pairs):
    """Kernel buckets back from a stage summary's [[upper bound ns or null, samples], ...]."""
    out = [0] * BUCKETS
    for bound, n in pairs:
        out[UPPER_NS.index(bound)] = n
    return out


def _core_windows(core):
    """The CO-RE engine's tx qdisc buckets, host-wide and per flow, summed over every window it
    takes until two more are in: its first window covers everything since it started (nothing
    polled it before), the second the packets that were still finishing."""
    host, flows, seen = [0] * BUCKETS, {}, set()
    first = None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        h, per_flow = core.poll()
        wid = h["window"]["id"] if h else 0
        first = wid if first is None else first
        if h and wid not in seen:
            seen.add(wid)
            host = [a + b for a, b in zip(host, _buckets(h["tx"]["qdisc"]["buckets"]))]
            for c, f in per_flow.items():
                if f["window"]["id"] == wid:
                    flows[c] = [a + b for a, b in zip(flows.get(c, [0] * BUCKETS), _buckets(f["tx"]["qdisc"]["buckets"]))]
        if wid >= first + 2:
            break
        time.sleep(0.05)
    return host, flows
