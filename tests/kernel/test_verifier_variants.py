"""Kernel builds of one version differ in what their verifier accepts. These tests load
variants of flows.bpf.c that the verifier refuses in one place on every kernel (built from
tests/kernel/bpf/), and check that only that part is lost, that the loss names its true
cause, and that what remains still agrees with the kernel's own accounting."""

import subprocess
import sys
import time

import pytest

from kit import NsPair, find_flow, loopback_pair, poll_until, recv_exactly, tcp_info, variant, wait_idle
from tcptop.engines import EngineOptions
from tcptop.engines.core.engine import CoreEngine


@pytest.fixture(scope="module")
def baseline():
    """What this kernel reports for the shipped object (the verifier's own answer here)."""

    e = CoreEngine(EngineOptions(interval_s=0.2, latency="off"))
    try:
        run = e.poll().run
    finally:
        e.close()  # detached before the tests: its sock_ops would hook their "older" sockets
    return run


def hooks_but(run, *names):
    return {h: v for h, v in run.hooks.items() if h not in names}


def owner_checks(e, pair):
    """Idle sockets held by another process in another namespace: their owner is found."""
    p = subprocess.Popen(["ip", "netns", "exec", pair.a, sys.executable, "-c", IDLE_HOLDER, pair.addr_a],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(p.stdout.readline())
        ns = pair.inode(pair.a)
        f = poll_until(e, lambda snap: next((f for f in snap.flows if f.lport == port and f.netns == ns
                                             and f.state == "ESTABLISHED"), None), lambda f: f.pid == p.pid, timeout=8)
        assert f.comm == "tt-idle-holder"
    finally:
        p.stdin.close()
        p.wait(5)


IDLE_HOLDER = """
import ctypes, socket, sys
ctypes.CDLL(None).prctl(15, b"tt-idle-holder", 0, 0, 0)
lsn = socket.socket(); lsn.bind((sys.argv[1], 0)); lsn.listen()
c = socket.create_connection(lsn.getsockname()); s, _ = lsn.accept()
print(c.getsockname()[1], flush=True)
sys.stdin.read()
"""


def test_refused_file_table_walk_falls_back_alone(baseline):
    """A task_file program that hands the file's socket to a helper wanting a trusted pointer
    (as sock->sk is untrusted on 6.18.44-fc-v1045): refused with the verifier's reason, owners
    come from /proc/PID/fd instead, and nothing else changes."""
    e = CoreEngine(EngineOptions(interval_s=0.2, latency="off"), flows_object=variant("flows_refused_files"))
    pair = NsPair.create("vfiles")
    try:
        run = e.poll().run
        assert run.hooks["iterator task_file"].startswith(
            "unavailable: the verifier refused it (R1 type=untrusted_ptr_")
        assert run.hooks["iterator task_file"].endswith("owners are found in /proc instead")
        assert hooks_but(run, "iterator task_file") == hooks_but(baseline, "iterator task_file")
        assert run.degraded == baseline.degraded
        owner_checks(e, pair)
    finally:
        e.close()
        pair.close()


def test_file_table_walk_loads_where_the_files_socket_is_untrusted(baseline):
    """The shipped task_file program reads the file's socket with probe reads only: built to see
    it through an untrusted pointer (the fc-v1045 verifier's view), it loads and names owners."""
    e = CoreEngine(EngineOptions(interval_s=0.2, latency="off"), flows_object=variant("flows_untrusted_files"))
    pair = NsPair.create("vuntr")
    try:
        run = e.poll().run
        assert run.hooks["iterator task_file"] == "ok"
        assert run.hooks == baseline.hooks
        owner_checks(e, pair)
    finally:
        e.close()
        pair.close()


def test_refused_lookup_walks_the_whole_table_instead(baseline):
    """Without the lookup program every poll walks every socket: busy flows stay exact."""
    e = CoreEngine(EngineOptions(interval_s=0.2, latency="off"), flows_object=variant("flows_refused_lookup"))
    try:
        run = e.poll().run
        assert run.hooks["socket lookup"].startswith("unavailable: the verifier refused it (program of this type "
                                                     "cannot use helper bpf_override_return")
        assert run.hooks["socket lookup"].endswith("every poll walks the whole table instead")
        assert hooks_but(run, "socket lookup") == hooks_but(baseline, "socket lookup")
        c, s = loopback_pair()
        for i in range(1, 4):
            c.sendall(b"w" * 1000)
            recv_exactly(s, 1000)
            wait_idle(c)
            f = poll_until(e, lambda snap: find_flow(snap, c))
            ti = tcp_info(c)
            assert f.write_bytes == 1000 * i and f.bytes_sent == ti["bytes_sent"] and f.srtt_us == ti["rtt"]
        c.close()
        s.close()
    finally:
        e.close()


def test_refused_setsockopt_loses_only_older_sockets_rto_callbacks(baseline):
    """bpf_setsockopt refused in the TCP iterator: older connections get no RTO callbacks (said
    so, with the verifier's reason); their RTT samples, which come from tcp_probe, still count."""

    old_c, old_s = loopback_pair()
    old_c.sendall(b"o" * 100)
    recv_exactly(old_s, 100)
    wait_idle(old_c)
    e = CoreEngine(EngineOptions(interval_s=0.2, latency="off"), flows_object=variant("flows_refused_setsockopt"))
    try:
        run = e.poll().run
        hook = run.hooks["sock_ops callbacks for older sockets"]
        assert hook.startswith("unavailable: the verifier refused bpf_setsockopt in the TCP iterator (R1 type=untrusted_ptr_")
        assert hooks_but(run, "sock_ops callbacks for older sockets") == \
            hooks_but(baseline, "sock_ops callbacks for older sockets")
        assert [d for d in run.degraded if "connections older than tcptop that time out" in d]
        for _ in range(5):
            old_c.sendall(b"p" * 100)
            recv_exactly(old_s, 100)
            old_s.sendall(b"q" * 10)
            recv_exactly(old_c, 10)
        wait_idle(old_c)
        old = poll_until(e, lambda snap: find_flow(snap, old_c), lambda f: f.write_bytes == 500)
        assert old.since_start and old.rtt_samples == 5
        old_c.close()
        old_s.close()
    finally:
        e.close()


def test_refused_latency_program_loses_only_its_stages():
    """The verifier refuses the program where received data is queued on a socket: the stages it
    bounds (rx tcp, rx app) are reported lost with the reason; the others still measure."""
    from tcptop.engines.core.latency import LatencyEngine

    lat = LatencyEngine(mode="continuous", period_s=0.2, object_path=variant("latency_refused_data_ready"))
    try:
        # The variant is refused on every kernel; the verifier's wording is its own.
        assert "the verifier refused on_data_ready (" in lat.hooks["rx_queued"]
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
