"""The BCC engine's packet-level stages: the device layer, timed by skb address, beside the CO-RE
engine timing the same skbs. Skipped, with the reason, where BCC cannot compile."""

import socket
import threading
import time

import pytest

from tcptop.engines.core.latency import LatencyEngine as CoreLatency
from tcptop.engines.histogram import bucket_bounds
from kit import sh

SO_COOKIE = 57


@pytest.fixture(scope="module")
def bcc_lat():
    from tcptop.engines.bcc import loader
    from tcptop.engines.bcc.latency import LatencyEngine
    why = loader.why_cannot_compile()
    if why:
        pytest.skip(f"BCC cannot compile on this machine, BCC engine tests skipped: {why}")
    e = LatencyEngine(loader.kernel_source()[0])
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


def slow(hist, floor_ns=4_000_000):
    """Samples in buckets that start at or above floor_ns."""
    return sum(c for b, c in enumerate(hist) if bucket_bounds(b)[0] >= floor_ns)


def test_tbf_queue_same_slow_packets_as_core(bcc_lat, nspair):
    """A tbf queue on the sender's veth holds packets for tens of ms: the BCC engine's host-wide
    qdisc stage gains exactly the slow samples the CO-RE engine times for the test's own flows
    (both match the same skbs by address between the same two tracepoints)."""
    from tcptop.engines.bcc.latency import TX_QDISC
    core = CoreLatency(sample=1, skb_stages=True)
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
        _, core_flows = core.poll()
        after = bcc_lat.histogram(TX_QDISC)[0]
        ours = [core_flows[int.from_bytes(c.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8), "little")]
                for c, _ in socks]
        core_slow = sum(slow(_buckets(f["tx"]["qdisc"]["buckets"])) for f in ours)
        bcc_slow = slow([a - b for a, b in zip(after, before)])
        assert core_slow >= 20, "the tbf queue held too few packets; the test proves nothing"
        # Other tests on the machine may add slow packets of their own; none can be missing.
        assert core_slow <= bcc_slow <= core_slow + max(5, core_slow // 10), (core_slow, bcc_slow)
    finally:
        core.close()
        for c, s in locals().get("socks", []):
            c.close()
            s.close()


def _buckets(pairs):
    """Kernel buckets back from a stage summary's [[upper bound ns or null, samples], ...]."""
    out = [0] * 32
    for bound, n in pairs:
        b = 31 if bound is None else next(i for i in range(32) if bucket_bounds(i)[1] == bound)
        out[b] = n
    return out
