"""Flows between private network namespaces over veth: loss, timeouts, fast recovery, namespaces.

Each test gets its own pair of namespaces (see kit.NsPair), so the namespace's
MIB counters hold only the test's own flow and are an independent truth.
"""

import threading
import time

from kit import find_flow, flight_size, netstat, poll_until, recv_exactly, sh, tcp_info, wait_idle


def bulk(c, s, nbytes):
    """Send nbytes from c to s (s drains in a thread); return bytes the receiver read."""
    got = []
    t = threading.Thread(target=lambda: got.append(recv_exactly(s, nbytes)))
    t.start()
    c.sendall(b"b" * nbytes)
    t.join(60)
    return got[0]


def test_flows_in_other_namespaces_are_seen(engine, nspair):
    """After the first poll, other namespaces are reached through the file tables of the
    processes holding their sockets (one pass for all), or, where this kernel's verifier
    refuses that iterator, by walking every namespace; either way the flows are there."""
    hook = engine.poll().run.hooks["iterator task_file"]
    assert hook == "ok" or hook.startswith("unavailable: the verifier refused it (")
    c, s = nspair.connected()
    c.sendall(b"n" * 3000)
    recv_exactly(s, 3000)
    wait_idle(c)
    f = poll_until(engine, lambda snap: find_flow(snap, c))
    g = poll_until(engine, lambda snap: find_flow(snap, s))
    assert f.netns == nspair.inode(nspair.a)
    assert g.netns == nspair.inode(nspair.b)
    assert f.laddr == nspair.addr_a and f.raddr == nspair.addr_b
    assert f.bytes_sent == tcp_info(c)["bytes_sent"] == 3000
    assert g.read_bytes == 3000
    c.close()
    s.close()


def test_retransmissions_and_fast_recovery_under_loss(engine, nspair):
    """5 % of segments dropped at the receiver: retransmits and recoveries equal the kernel's counts."""
    c, s = nspair.connected()
    before = netstat(nspair.a)
    # Every 20th segment into the receiver is dropped: 5 % loss, deterministic, so the
    # test cannot pass vacuously on a lucky draw.
    sh("iptables", "-A", "INPUT", "-p", "tcp", "-m", "statistic", "--mode", "nth",
       "--every", "20", "--packet", "0", "-j", "DROP", ns=nspair.b)
    n = 8 << 20
    assert bulk(c, s, n) == n
    rules = sh("iptables", "-L", "INPUT", "-v", "-x", "-n", ns=nspair.b)
    sh("iptables", "-F", "INPUT", ns=nspair.b)
    wait_idle(c, timeout=30)
    after = netstat(nspair.a)
    ti = tcp_info(c)
    f = poll_until(engine, lambda snap: find_flow(snap, c))
    recoveries = (after["TcpExt.TCPSackRecovery"] - before["TcpExt.TCPSackRecovery"]
                  + after["TcpExt.TCPRenoRecovery"] - before["TcpExt.TCPRenoRecovery"])
    assert ti["total_retrans"] > 0, f"no retransmission; the loss rule said:\n{rules}"
    assert f.retrans_packets == ti["total_retrans"]
    assert recoveries > 0, "no fast recovery happened; the test proves nothing"
    assert f.fast_retrans == recoveries
    assert f.timeouts == ti["total_rto"]
    assert f.bytes_sent == ti["bytes_sent"] >= n
    assert f.write_bytes == n
    assert f.cwnd == ti["snd_cwnd"]
    assert f.flight_size == flight_size(ti) == 0
    c.close()
    s.close()


def test_timeouts_during_blackhole(engine, nspair):
    """Everything to the receiver dropped for 1.5 s: the RTO fires, and tcptop counts each firing."""
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
    f = poll_until(engine, lambda snap: find_flow(snap, c))
    assert ti["total_rto"] >= 2
    assert f.timeouts == ti["total_rto"]
    assert f.retrans_packets == ti["total_retrans"] >= ti["total_rto"]
    c.close()
    s.close()
