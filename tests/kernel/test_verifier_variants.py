"""Kernel builds of one version differ in what their verifier accepts. These tests load
variants of flows.bpf.c that the verifier refuses in one place on every kernel (built from
tests/kernel/bpf/), and check that only that part is lost, that the loss names its true
cause, and that what remains still agrees with the kernel's own accounting."""

import os
import time

import pytest

from kit import NsPair, find_flow, loopback_pair, poll_until, recv_exactly, tcp_info, wait_idle
from tcptop.engines import EngineOptions
from tcptop.engines.core.engine import CoreEngine

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def variant(name):
    path = os.path.join(ROOT, "build", "test", f"{name}.bpf.o")
    if not os.path.exists(path):
        pytest.fail(f"{path} missing: run `make test-bpf`")
    return path


@pytest.fixture(scope="module")
def baseline():
    """What this kernel reports for the shipped object (the verifier's own answer here)."""

    e = CoreEngine(EngineOptions(interval_s=0.2, latency="off"))
    try:
        run = e.poll().run
    finally:
        e.close()  # detached before the tests: its sock_ops would hook their "older" sockets
    return run


def test_refused_namespace_iterator_falls_back_alone(baseline):
    """As on 6.18.44-fc-v1045: task_file refused. Other namespaces are walked one by one instead,
    their flows are still exact, and the RTT callbacks for older sockets are unaffected."""

    e = CoreEngine(EngineOptions(interval_s=0.2, latency="off"), flows_object=variant("flows_refused_files"))
    pair = NsPair.create("vfiles")
    try:
        run = e.poll().run
        assert run.hooks["iterator task_file"].startswith(
            "unavailable: the verifier refused it (R1 type=untrusted_ptr_")
        assert run.hooks["iterator task_file"].endswith("every namespace is walked instead")
        # independent: the iterator's own optional part is whatever the kernel says of it alone
        assert run.hooks["sock_ops callbacks for older sockets"] == baseline.hooks["sock_ops callbacks for older sockets"]
        others = {h: v for h, v in run.hooks.items() if h != "iterator task_file"}
        assert others == {h: v for h, v in baseline.hooks.items() if h != "iterator task_file"}
        assert run.degraded == baseline.degraded
        c, s = pair.connected()
        for _ in range(3):  # several polls: later polls take the other-namespace path
            c.sendall(b"v" * 2500)
            recv_exactly(s, 2500)
            e.poll()
        wait_idle(c)
        f = poll_until(e, lambda snap: find_flow(snap, c), lambda f: f.write_bytes == 7500)
        g = poll_until(e, lambda snap: find_flow(snap, s), lambda f: f.read_bytes == 7500)
        assert f.netns == pair.inode(pair.a) and g.netns == pair.inode(pair.b)
        ti = tcp_info(c)
        assert f.bytes_sent == ti["bytes_sent"] == 7500
        assert f.cwnd == ti["snd_cwnd"] and f.srtt_us == ti["rtt"]
        c.close()
        s.close()
    finally:
        e.close()
        pair.close()


def sockops_attached() -> bool:
    import json
    import subprocess

    from tcptop.engines.core.libbpf import cgroup2_root

    out = subprocess.run(["bpftool", "-j", "cgroup", "show", cgroup2_root()], capture_output=True, text=True).stdout
    return any("sock_ops" in p.get("attach_type", "") for p in json.loads(out or "[]"))


def test_refused_setsockopt_loses_only_older_sockets_rtt(baseline):
    """bpf_setsockopt refused in the TCP iterator: older connections get no RTT samples (said so,
    with the verifier's reason), new ones still do, and the namespace iterator is unaffected."""

    old_c, old_s = loopback_pair()
    old_c.sendall(b"o" * 100)
    recv_exactly(old_s, 100)
    wait_idle(old_c)
    e = CoreEngine(EngineOptions(interval_s=0.2, latency="off"), flows_object=variant("flows_refused_setsockopt"))
    try:
        run = e.poll().run
        hook = run.hooks["sock_ops callbacks for older sockets"]
        assert hook.startswith("unavailable: the verifier refused bpf_setsockopt in the TCP iterator (R1 type=untrusted_ptr_")
        assert run.hooks["iterator task_file"] == baseline.hooks["iterator task_file"]
        assert [d for d in run.degraded if d.startswith("rtt_samples and rtt_sum_us of connections older than tcptop:")]
        new_c, new_s = loopback_pair()
        for sock, peer in ((old_c, old_s), (new_c, new_s)):
            for _ in range(5):
                sock.sendall(b"p" * 100)
                recv_exactly(peer, 100)
                peer.sendall(b"q" * 10)
                recv_exactly(sock, 10)
            wait_idle(sock)
        old = poll_until(e, lambda snap: find_flow(snap, old_c), lambda f: f.write_bytes == 500)
        new = poll_until(e, lambda snap: find_flow(snap, new_c), lambda f: f.write_bytes == 500)
        assert old.since_start and old.rtt_samples == 0 and old.rtt_sum_us == 0
        assert new.rtt_samples >= 5
        for sock in (old_c, old_s, new_c, new_s):
            sock.close()
    finally:
        e.close()


def test_refused_latency_program_loses_only_its_stages():
    """The verifier refuses the program where received data is queued on a socket: the stages it
    bounds (rx tcp, rx app) are reported lost with the reason; the others still measure."""
    from tcptop.engines.core.latency import LatencyEngine

    lat = LatencyEngine(mode="continuous", period_s=0.2, object_path=variant("latency_refused_data_ready"))
    try:
        assert "the verifier refused on_data_ready (R2 type=untrusted_ptr_" in lat.hooks["rx_queued"]
        assert [d for d in lat.degraded if "on_data_ready" in d and "data is queued on the socket" in d]
        keys = lat.stage_keys()
        assert not {k for k, _ in keys["rx"]} & {"tcp", "app"}
        assert "tcp+ip" in {k for k, _ in keys["tx"]} or "tcp" in {k for k, _ in keys["tx"]}
        c, s = loopback_pair()
        for _ in range(20):
            c.sendall(b"t" * 1000)
            recv_exactly(s, 1000)
        wait_idle(c)
        tx_first = keys["tx"][0][0]
        deadline = time.monotonic() + 5
        while True:  # the engine takes a window's figures after a poll
            host, _ = lat.poll()
            if host and host["tx"][tx_first]["count"] or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert host["tx"][tx_first]["count"] >= 1  # the write side still times packets
        assert "tcp" not in host["rx"] and "app" not in host["rx"]
        c.close()
        s.close()
    finally:
        lat.close()
