"""The BCC engine beside the CO-RE engine on the same connections, and both against the kernel.

BCC compiles here against Debian's 6.1 headers on a 6.18 kernel: struct layouts from
those headers are wrong for this kernel, so equal numbers show that nothing in the BCC
engine depends on them. Skipped, with the reason, where BCC cannot compile.
"""

import os
import socket
import threading
import time

import pytest

from kit import (find_flow, flight_size, loopback_pair, netstat, poll_until, recv_exactly, sh,
                 siocoutq, tcp_info, wait_idle)
from tcptop.engines import EngineOptions
from tcptop.engines.core.engine import CoreEngine
from tcptop.host import netns

# Kernel-kept numbers both engines read from the kernel at poll time: equal, always.
KERNEL_KEPT = ("state", "family", "laddr", "lport", "raddr", "rport", "netns", "flight_size", "rwnd", "cwnd",
               "mss", "retrans_packets", "bytes_sent", "bytes_received", "timeouts", "app_wqueue", "srtt_us",
               "min_rtt_us", "rcv_wnd", "ssthresh", "ca_state")
# Counted from the same kernel events by both: every RTT sample the estimator takes (here, where
# kprobes are missing, the BCC engine derives them from tcp_probe as the CO-RE engine does),
# entries into fast recovery (tcp_cong_state_set).
EVENTS = ("rtt_samples", "rtt_sum_us", "rtt_hist", "fast_retrans")


def open_bcc(**kw):
    """A BCC engine, or a skip with the reason when BCC cannot compile on this machine at all
    (beyond that, a failure is the engine's and fails the test)."""
    from tcptop.engines.bcc import loader
    from tcptop.engines.bcc.engine import BccEngine
    why = loader.why_cannot_compile()
    if why:
        pytest.skip(f"BCC cannot compile on this machine, BCC engine tests skipped: {why}")
    return BccEngine(EngineOptions(interval_s=0.2, latency="off"), **kw)


@pytest.fixture(scope="module")
def bcc():
    e = open_bcc()
    yield e
    e.close()


@pytest.fixture(scope="module")
def core():
    e = CoreEngine(EngineOptions(interval_s=0.2, latency="off"))
    yield e
    e.close()


def both(core, bcc, sock, ok=lambda f: True, fields=KERNEL_KEPT + EVENTS):
    """The flow of one of our sockets as each engine sees it, polled back to back (again, a few
    times, if the connection moved between the two polls). The BCC engine finds owners in /proc
    file tables, as ss -p does, at most every 2 s: wait for that first."""
    poll_until(bcc, lambda snap: find_flow(snap, sock), lambda f: ok(f) and f.pid != 0)
    for _ in range(20):
        fc = poll_until(core, lambda snap: find_flow(snap, sock), ok)
        fb = poll_until(bcc, lambda snap: find_flow(snap, sock), ok)
        if all(getattr(fc, k) == getattr(fb, k) for k in fields):
            break
    return fc, fb


def assert_same(fc, fb, fields=KERNEL_KEPT + EVENTS):
    diff = {k: (getattr(fc, k), getattr(fb, k)) for k in fields if getattr(fc, k) != getattr(fb, k)}
    assert not diff, f"CO-RE vs BCC differ: {diff}"


def ping_pong(c, s, rounds, request=1000, reply=100):
    for _ in range(rounds):
        c.sendall(b"q" * request)
        recv_exactly(s, request)
        s.sendall(b"r" * reply)
        recv_exactly(c, reply)


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_idle_loopback_flow_same_as_core_and_tcp_info(core, bcc, family):
    t0 = time.monotonic()
    c, s = loopback_pair(family)
    ping_pong(c, s, 20)
    wait_idle(c)
    wait_idle(s)
    for sock, wrote, read, role in ((c, 20000, 2000, "client"), (s, 2000, 20000, "server")):
        fc, fb = both(core, bcc, sock)
        ti = tcp_info(sock)
        assert_same(fc, fb)
        assert fb.cwnd == ti["snd_cwnd"] and fb.mss == ti["snd_mss"] and fb.rwnd == ti["snd_wnd"]
        assert fb.bytes_sent == ti["bytes_sent"] == wrote
        assert fb.bytes_received == ti["bytes_received"] == read
        assert fb.srtt_us == ti["rtt"] and fb.rcv_wnd == ti["rcv_wnd"]
        assert fb.flight_size == flight_size(ti) == 0
        assert fb.app_wqueue == siocoutq(sock) == 0
        assert fb.write_bytes == fc.write_bytes == wrote
        assert fb.read_bytes == fc.read_bytes == read
        assert fb.pid == fc.pid == os.getpid() and fb.comm == fc.comm
        assert fb.netns == netns.current_inode()
        assert not fb.since_start and fb.role == role
        assert fb.rtt_samples >= 1
        assert abs(fb.age_s(time.time()) - fc.age_s(time.time())) < 0.05
        assert fb.duration_s <= time.monotonic() - t0 + 0.001
    c.close()
    s.close()


def test_ping_pongs_give_the_same_rtt_samples(core, bcc):
    """Both engines count every sample the estimator takes: the same samples, sum and histogram."""
    c, s = loopback_pair()
    for sock in (c, s):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ping_pong(c, s, 50)
    wait_idle(c)
    wait_idle(s)
    for sock in (c, s):
        fc, fb = both(core, bcc, sock)
        assert_same(fc, fb)
        ti = tcp_info(sock)
        assert fb.rtt_samples >= 50 if sock is c else fb.rtt_samples >= 1
        assert ti["min_rtt"] <= fb.rtt_sum_us / fb.rtt_samples <= max(8 * ti["rtt"], ti["min_rtt"] + 1000)
    c.close()
    s.close()


def test_rtt_callbacks_are_the_last_resort_one_sample_per_round_trip(core):
    """Without tcp_probe (and without kprobes, as here) RTT samples come from the sock_ops RTT
    callbacks, said to be one per round trip. A ping-pong with no delayed ACKs is one round trip
    per exchange, so the client's count is every sample's (the CO-RE engine's); the server's
    callbacks are switched on after its handshake sample, one fewer."""
    from tcptop.engines.bcc import loader

    def without_probe(category, event):
        return None if event == "tcp_probe" else loader.tracepoint_fields(category, event)

    e = open_bcc(tracepoint_fields=without_probe)
    try:
        run = e.poll().run
        assert run.hooks["tracepoint tcp_probe (reads tcp_sock)"] == "unavailable: no such tracepoint"
        if run.hooks["kprobe tcp_rtt_estimator"] == "ok":
            pytest.skip("kprobes count every sample here: the callbacks are not used")
        assert run.hooks["sock_ops RTT callbacks"] == "ok"
        assert [d for d in run.degraded if d.startswith("rtt_samples, rtt_sum_us, rtt_hist: one sample per round "
                                                         "trip, not every sample (sock_ops RTT callbacks: ")]
        c, s = loopback_pair()
        for sock in (c, s):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        ping_pong(c, s, 30)
        wait_idle(c)
        wait_idle(s)
        fc, fb = both(core, e, c, fields=("rtt_samples", "rtt_sum_us", "rtt_hist"))
        assert_same(fc, fb, ("rtt_samples", "rtt_sum_us", "rtt_hist"))
        assert fb.rtt_samples >= 31
        gc, gb = both(core, e, s, ok=lambda g: g.rtt_samples > 1, fields=())
        assert gb.rtt_samples == gc.rtt_samples - 1 and sum(n for _, n in gb.rtt_hist) == gb.rtt_samples
        c.close()
        s.close()
    finally:
        e.close()


def test_stalled_receiver_zero_window_and_send_queue(core, bcc):
    """The reader never reads: the window closes, the send queue is what SIOCOUTQ says. The BCC
    engine samples the queue's peak only at polls (no stable hook sees write_seq at a send)."""
    c, s = loopback_pair()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.setblocking(False)
    written = 0
    try:
        while True:
            written += c.send(b"z" * 65536)
    except BlockingIOError:
        pass
    deadline = time.monotonic() + 5
    while tcp_info(c)["snd_wnd"] != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    fc, fb = both(core, bcc, c)
    ti = tcp_info(c)
    assert ti["snd_wnd"] == 0 and fb.rwnd == 0
    assert_same(fc, fb, KERNEL_KEPT)
    assert fb.app_wqueue == siocoutq(c) > 0
    assert fb.write_bytes == fc.write_bytes == written
    assert fb.app_wqueue <= fb.app_wqueue_max <= fc.app_wqueue_max
    g = poll_until(bcc, lambda snap: find_flow(snap, s))
    assert g.read_bytes == 0 and g.bytes_received == tcp_info(s)["bytes_received"] > 0
    c.close()
    s.close()


def bulk(c, s, nbytes):
    got = []
    t = threading.Thread(target=lambda: got.append(recv_exactly(s, nbytes)))
    t.start()
    c.sendall(b"b" * nbytes)
    t.join(60)
    return got[0]


def test_lossy_veth_same_retransmissions_and_recoveries(core, bcc, nspair):
    """Every 20th segment into the receiver dropped: both engines report the kernel's retransmits,
    and the fast-recovery entries the namespace's MIB counted."""
    c, s = nspair.connected()
    before = netstat(nspair.a)
    sh("iptables", "-A", "INPUT", "-p", "tcp", "-m", "statistic", "--mode", "nth",
       "--every", "20", "--packet", "0", "-j", "DROP", ns=nspair.b)
    n = 4 << 20
    assert bulk(c, s, n) == n
    sh("iptables", "-F", "INPUT", ns=nspair.b)
    wait_idle(c, timeout=30)
    after = netstat(nspair.a)
    recoveries = sum(after[k] - before[k] for k in ("TcpExt.TCPSackRecovery", "TcpExt.TCPRenoRecovery"))
    ti = tcp_info(c)
    fc, fb = both(core, bcc, c)
    assert recoveries > 0 and ti["total_retrans"] > 0, "no loss happened; the test proves nothing"
    assert_same(fc, fb)
    assert fb.fast_retrans == recoveries
    assert fb.retrans_packets == ti["total_retrans"]
    assert fb.write_bytes == fc.write_bytes == n
    assert fb.netns == nspair.inode(nspair.a)
    g = poll_until(bcc, lambda snap: find_flow(snap, s))
    assert g.read_bytes == n and g.netns == nspair.inode(nspair.b)
    c.close()
    s.close()


def test_blackhole_timeouts_same_as_total_rto(core, bcc, nspair):
    c, s = nspair.connected()
    c.sendall(b"w" * 1000)
    recv_exactly(s, 1000)
    wait_idle(c)
    sh("iptables", "-A", "INPUT", "-p", "tcp", "-j", "DROP", ns=nspair.b)
    try:
        c.sendall(b"x" * 5000)
        deadline = time.monotonic() + 10
        while tcp_info(c)["total_rto"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sh("iptables", "-F", "INPUT", ns=nspair.b)
    assert recv_exactly(s, 5000) == 5000
    wait_idle(c, timeout=30)
    ti = tcp_info(c)
    fc, fb = both(core, bcc, c)
    assert ti["total_rto"] >= 2
    assert_same(fc, fb)
    assert fb.timeouts == ti["total_rto"]
    assert fb.retrans_packets == ti["total_retrans"]
    c.close()
    s.close()


def test_fin_is_not_counted_as_data(bcc):
    """bytes_acked and bytes_received count a FIN as one byte; read_bytes and write_bytes do not,
    on either side of a half-close, before and after the reader saw EOF."""
    c, s = loopback_pair()
    c.sendall(b"f" * 3000)
    c.shutdown(socket.SHUT_WR)
    wait_idle(c)
    f = poll_until(bcc, lambda snap: find_flow(snap, c))
    assert f.state == "FIN_WAIT2" and f.write_bytes == 3000
    g = poll_until(bcc, lambda snap: find_flow(snap, s))
    assert g.state == "CLOSE_WAIT" and g.read_bytes == 0 and tcp_info(s)["bytes_received"] == 3001
    assert recv_exactly(s, 3000) == 3000
    g = poll_until(bcc, lambda snap: find_flow(snap, s), lambda g: g.read_bytes == 3000)
    assert s.recv(10) == b""  # EOF: the reader is now past the FIN
    g = poll_until(bcc, lambda snap: find_flow(snap, s))
    assert g.read_bytes == 3000
    s.sendall(b"g" * 500)
    s.shutdown(socket.SHUT_WR)  # LAST_ACK until the client acknowledges
    assert recv_exactly(c, 500) == 500
    c.close()
    s.close()


def test_closed_flow_final_values(core, bcc):
    c, s = loopback_pair()
    ping_pong(c, s, 5)
    wait_idle(c)
    port = c.getsockname()[1]
    both(core, bcc, c)
    lost_before = bcc.poll().run.events_lost
    c.sendall(b"y" * 7000)  # after the last poll: only the final record can know
    recv_exactly(s, 7000)
    wait_idle(c)
    s.close()  # the peer first: c's end closes (LAST_ACK, CLOSE), s's stays the kernel's in TIME_WAIT
    c.close()

    def closed(snap):
        return next((f for f in snap.flows if f.lport == port and f.closed), None)

    fc = poll_until(core, closed)
    # A poll can fall between the socket leaving the hash table and its final callback: the
    # final record then replaces the last polled values a poll later, while it is listed.
    # The engine records every connection closing on the host: if tests running beside this
    # one closed more than --max-closed meanwhile, the record may be dropped, and counted; and
    # a tcptop started meanwhile (another test run) may switch this socket's sock_ops callbacks
    # off, so that no final record comes, which is counted too once the flow leaves the list.
    listed = []
    for _ in range(bcc.flows.closed_keep_polls + 2):
        snap = bcc.poll()
        if (f := closed(snap)) is not None:
            listed.append(f)
    assert 1 <= len(listed) <= bcc.flows.closed_keep_polls
    fb = listed[-1]
    assert fb.state == "CLOSE" and fb.closed_ts >= fb.established_ts
    if snap.run.events_lost == lost_before:
        assert_same(fc, fb, ("bytes_received", "retrans_packets", "cwnd", "mss", "rtt_samples", "rtt_sum_us",
                             "flight_size", "fast_retrans"))
    else:  # the record was dropped for lack of room, and said so: the last polled values stay
        assert fb.bytes_sent == 5000


def test_listener_queues_and_drops_same_as_core(core, bcc):
    """A listener with a backlog of 2 and six connects: its accept queue, backlog and drop counter
    (sock_diag, as ss -tlm shows them) equal the CO-RE engine's (read from the socket)."""
    lsn = socket.socket()
    lsn.bind(("127.0.0.1", 0))
    lsn.listen(2)
    port = lsn.getsockname()[1]
    conns = []
    for _ in range(6):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        conns.append(c)
    try:
        deadline = time.monotonic() + 5
        while True:  # dropped SYNs are retried: compare once both read the same counters
            lc = next(x for x in core.poll().listeners if x.lport == port)
            lb = next(x for x in bcc.poll().listeners if x.lport == port)
            same = [(x.accept_queue, x.accept_queue_max, x.drops, x.laddr, x.netns, x.id) for x in (lc, lb)]
            if same[0] == same[1] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert same[0] == same[1]
        assert lb.accept_queue_max == 2 and lb.accept_queue == 3 and lb.drops > 0
        lb = poll_until(bcc, lambda snap: next((x for x in snap.listeners if x.lport == port), None),
                        lambda x: x.pid != 0)
        assert lb.pid == os.getpid()
    finally:
        for c in conns:
            c.close()
        lsn.close()
