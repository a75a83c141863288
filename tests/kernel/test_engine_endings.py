"""How connections end, against TCP_INFO: every way a connection can end leaves a final
record with the values the kernel had at the end (before it resets ports, addresses and
counters), and the ends the kernel keeps (TIME_WAIT, FIN_WAIT2) are listed as ss lists them.

Where the socket stays readable after the end (the test still holds it and the kernel did
not reset it), the truth is TCP_INFO read after the end; where the end resets or purges it
(an RST, a timeout), TCP_INFO read just before.
"""

import dataclasses
import socket
import struct
import time

import pytest

from kit import (flight_size, loopback_pair, poll_until, recv_exactly, sh, siocoutq, ss_ends, tcp_info,
                 wait_idle)
from tcptop.filter import compile_filter


def four_tuple(s):
    la, lp = s.getsockname()[:2]
    ra, rp = s.getpeername()[:2]
    return la.removeprefix("::ffff:"), lp, ra.removeprefix("::ffff:"), rp


def ended(engine, tup, states=("TIME_WAIT", "FIN_WAIT2"), timeout=10.0):
    """The flow of this 4-tuple once it is closed or in one of `states`."""
    def pick(snap):
        for f in snap.flows:
            if (f.laddr, f.lport, f.raddr, f.rport) == tup and (f.closed or f.state in states):
                return f
        return None
    return poll_until(engine, pick, timeout=timeout)


def state_of(s):
    return tcp_info(s)["state"]


def wait_state(s, state, timeout=10.0):
    deadline = time.monotonic() + timeout
    while state_of(s) != state:
        if time.monotonic() > deadline:
            raise AssertionError(f"socket never reached state {state}: {tcp_info(s)}")
        time.sleep(0.005)


def assert_final(f, ti, outq, wrote, read):
    assert f.bytes_sent == ti["bytes_sent"]
    assert f.bytes_received == ti["bytes_received"]
    assert f.srtt_us == ti["rtt"]
    assert f.cwnd == ti["snd_cwnd"]
    assert f.mss == ti["snd_mss"]
    assert f.retrans_packets == ti["total_retrans"]
    assert f.timeouts == ti["total_rto"]
    assert f.flight_size == flight_size(ti)
    assert f.app_wqueue == outq
    assert f.write_bytes == wrote
    assert f.read_bytes == read


def exchange(c, s, up=3000, down=700):
    c.sendall(b"u" * up)
    recv_exactly(s, up)
    s.sendall(b"d" * down)
    recv_exactly(c, down)
    wait_idle(c)
    wait_idle(s)


def test_fin_ends_keep_their_values_and_the_time_wait_end_is_listed_as_ss_lists_it(engine):
    """Both ends close with a FIN (half-closing, so the test can still read them): the end that
    closed first is kept by the kernel in TIME_WAIT for 60 s, listed with its timer; the other
    closes. Both carry what TCP_INFO says of them after the end."""
    c, s = loopback_pair()
    exchange(c, s)
    ct, st = four_tuple(c), four_tuple(s)
    c.shutdown(socket.SHUT_WR)
    wait_state(c, 5)  # FIN_WAIT2: our FIN was acknowledged
    assert s.recv(10) == b""  # the FIN, read
    s.sendall(b"l" * 400)
    recv_exactly(c, 400)
    s.shutdown(socket.SHUT_WR)
    wait_state(s, 7)  # its FIN acknowledged: CLOSE
    assert c.recv(10) == b""
    wait_state(c, 7)  # TIME_WAIT is the kernel's now; the socket we hold is CLOSE
    fc = ended(engine, ct)
    fs = ended(engine, st)
    assert fc.state == "TIME_WAIT" and not fc.closed
    assert_final(fc, tcp_info(c), siocoutq(c), wrote=3000, read=1100)
    assert_final(fs, tcp_info(s), siocoutq(s), wrote=1100, read=3000)
    assert fs.closed and fs.state == "CLOSE"
    state, left = ss_ends(ct[1])[ct]
    assert state == "TIME-WAIT"
    assert abs((fc.tw_expires_ts - time.time()) - left) <= 1.5  # ss rounds to seconds
    assert 55 <= fc.tw_expires_ts - time.time() <= 60.5
    # a user can hide what the kernel keeps for closed connections
    hide = compile_filter("not state TIME-WAIT")
    assert not hide(fc) and hide(dataclasses.replace(fc, state="ESTABLISHED"))
    c.close()
    s.close()


def test_rst_sent_on_close_with_linger_zero_keeps_ports_addresses_and_counters(engine, nspair):
    """SO_LINGER 0: close() sends an RST and tcp_disconnect() zeroes the ports, the peer's
    address and the counters; the final record has them as they were, data in flight too."""
    c, s = nspair.connected()
    exchange(c, s)
    sh("iptables", "-A", "INPUT", "-p", "tcp", "-m", "length", "--length", "200:65535", "-j", "DROP", ns=nspair.b)
    c.sendall(b"f" * 5000)  # into a hole: stays in flight
    time.sleep(0.05)
    tup = four_tuple(c)
    ti, outq = tcp_info(c), siocoutq(c)
    assert flight_size(ti) > 0 and outq == 5000
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    f = ended(engine, tup)
    assert f.closed and f.state == "CLOSE"
    assert (f.laddr, f.lport, f.raddr, f.rport) == tup
    assert_final(f, ti, outq, wrote=8000, read=700)
    s.close()


def test_rst_received_keeps_what_was_in_flight(engine, nspair):
    """The peer resets the connection while our data is in flight: the kernel purges the
    retransmit queue before closing; the final record has the flight size of just before."""
    c, s = nspair.connected()
    exchange(c, s)
    sh("iptables", "-A", "INPUT", "-p", "tcp", "-m", "length", "--length", "200:65535", "-j", "DROP", ns=nspair.b)
    c.sendall(b"f" * 6000)
    time.sleep(0.05)
    tup = four_tuple(c)
    ti, outq = tcp_info(c), siocoutq(c)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()  # RST to c
    wait_state(c, 7)
    assert tcp_info(c)["unacked"] == 0  # what TCP_INFO says after the end: purged
    f = ended(engine, tup)
    assert f.closed and (f.laddr, f.lport, f.raddr, f.rport) == tup
    assert flight_size(ti) > 0
    assert_final(f, ti, outq, wrote=9000, read=700)
    c.close()


def test_timeout_keeps_what_was_in_flight(engine, nspair):
    """Everything to the peer dropped, TCP_USER_TIMEOUT 1 s: the retransmission timer gives
    up, the kernel purges and closes; the final record is TCP_INFO of the last moment."""
    c, s = nspair.connected()
    exchange(c, s)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 1000)
    sh("iptables", "-A", "INPUT", "-p", "tcp", "-j", "DROP", ns=nspair.b)
    tup = four_tuple(c)
    c.sendall(b"t" * 4000)
    last = None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        ti, outq = tcp_info(c), siocoutq(c)
        if ti["state"] != 1:
            break
        last = (ti, outq)
        time.sleep(0.002)
    assert last is not None and tcp_info(c)["state"] == 7
    ti, outq = last
    assert ti["total_rto"] >= 1
    f = ended(engine, tup)
    assert f.closed
    assert_final(f, ti, outq, wrote=7000, read=700)
    c.close()
    s.close()


def test_orphan_left_in_fin_wait2_is_listed_with_its_timer(engine):
    """A client that closed before its peer (it exited, say) leaves the kernel an orphan in
    FIN_WAIT2 that waits tcp_fin_timeout for the peer's FIN: listed as ss lists it, with the
    values the connection ended with, and the peer's FIN later moves it to TIME_WAIT."""
    c, s = loopback_pair()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_LINGER2, 30)
    exchange(c, s)
    tup = four_tuple(c)
    ti, outq = tcp_info(c), siocoutq(c)
    c.close()
    f = ended(engine, tup, states=("FIN_WAIT2",))
    assert f.state == "FIN_WAIT2" and not f.closed
    state, left = ss_ends(tup[1])[tup]
    assert state == "FIN-WAIT-2"
    assert abs((f.tw_expires_ts - time.time()) - left) <= 1.5 and 25 <= left <= 30
    assert f.write_bytes == 3000 and f.read_bytes == 700 and f.bytes_received == ti["bytes_received"]
    assert f.app_wqueue == outq == 0
    s.close()  # its FIN: the kept end becomes TIME_WAIT, with a fresh 60 s timer
    f = ended(engine, tup, states=("TIME_WAIT",))
    assert f.state == "TIME_WAIT" and 55 <= f.tw_expires_ts - time.time() <= 60.5


def test_a_connection_that_ends_between_the_first_walk_and_its_final_record_is_listed_as_it_ended():
    """The first poll walks every socket, then takes the final records: a client that closes
    in between (its end the kernel's now, FIN_WAIT2) is listed as the kernel keeps it, with
    the values it ended with, not as the walk saw it alive a moment before."""
    from tcptop.engines.core.flows import FlowEngine

    c, s = loopback_pair()
    exchange(c, s)
    tup = four_tuple(c)
    eng = FlowEngine()
    first_owners = eng._first_owners
    ti = {}

    def then_close_the_client():
        first_owners()
        ti.update(tcp_info(c))
        c.close()
        deadline = time.monotonic() + 10
        while ss_ends(tup[1]).get(tup, ("",))[0] != "FIN-WAIT-2" and time.monotonic() < deadline:
            time.sleep(0.005)

    eng._first_owners = then_close_the_client
    try:
        for _ in range(2):
            f = next(f for f in eng.poll() if (f.laddr, f.lport, f.raddr, f.rport) == tup)
            assert (f.state, f.closed, f.bytes_sent, f.bytes_received) == \
                ("FIN_WAIT2", False, ti["bytes_sent"], ti["bytes_received"])
    finally:
        eng.close()
        s.close()


def test_data_read_after_the_connection_closed_is_counted(engine):
    """A FIN arrives behind data the application has not read: the socket closes (TIME_WAIT
    for the kernel), and the application reads the data afterwards. read_bytes counts it."""
    c, s = loopback_pair()
    exchange(c, s)
    tup = four_tuple(c)
    c.shutdown(socket.SHUT_WR)
    wait_state(c, 5)
    s.sendall(b"r" * 9000)
    s.close()
    wait_state(c, 7)
    f = ended(engine, tup)
    assert f.read_bytes == 700  # not read yet
    assert recv_exactly(c, 9000) == 9000 and c.recv(10) == b""
    ti = tcp_info(c)
    c.close()  # its final read is sent when the socket is released
    f = poll_until(engine, lambda snap: next((x for x in snap.flows if (x.laddr, x.lport, x.raddr, x.rport) == tup
                                              and x.read_bytes == 9700), None))
    assert f.bytes_received == ti["bytes_received"]


@pytest.mark.parametrize("linger", [False, True], ids=["fin", "rst"])
def test_every_closed_connection_of_a_burst_has_one_final_record(linger):
    """300 connections opened and closed within one interval (FIN, and RST by SO_LINGER 0):
    each appears once, closed or kept by the kernel, with its own ports and byte counts."""
    from tcptop.engines import EngineOptions
    from tcptop.engines.core.engine import CoreEngine

    e = CoreEngine(EngineOptions(interval_s=0.2, latency="off"))
    try:
        e.poll()
        lost0 = e.poll().run.events_lost
        sent = {}
        for i in range(300):
            c, s = loopback_pair()
            c.sendall(b"b" * (i + 1))
            recv_exactly(s, i + 1)
            sent[four_tuple(c)] = i + 1
            if linger:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
            s.close()
        time.sleep(0.1)
        seen = {}
        for _ in range(3):
            snap = e.poll()
            for f in snap.flows:
                t = (f.laddr, f.lport, f.raddr, f.rport)
                if t in sent and (f.closed or f.state == "TIME_WAIT"):
                    seen[t] = f
        assert set(seen) == set(sent)
        assert all(seen[t].bytes_sent == sent[t] and seen[t].write_bytes == sent[t] for t in sent)
        assert snap.run.events_lost == lost0
    finally:
        e.close()


def test_a_time_wait_end_a_new_connection_takes_over_is_listed_closed_as_ss_drops_it(engine):
    """A client that connects again from the same port (as a busy client cycling its ports
    does) sends a SYN to the server's TIME_WAIT end of that 4-tuple; the kernel drops the end
    with no event and the new connection takes its place. The end is listed closed (it was
    listed in TIME_WAIT up to its 60 s timer before), the new connection ESTABLISHED, and
    the TIME_WAIT ends listed for the server's port are those ss lists."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(8)
    port = lst.getsockname()[1]
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    c.bind(("127.0.0.1", 0))
    c.connect(("127.0.0.1", port))
    s, _ = lst.accept()
    exchange(c, s)
    st = four_tuple(s)
    s.close()  # the server closes first: its end is kept in TIME_WAIT
    assert c.recv(10) == b""
    c.close()
    old = ended(engine, st, states=("TIME_WAIT",))
    assert old.state == "TIME_WAIT" and not old.closed
    assert ss_ends(port)[st][0] == "TIME-WAIT"
    c2 = socket.socket()
    c2.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    c2.bind(("127.0.0.1", st[3]))
    c2.connect(("127.0.0.1", port))  # the SYN the TIME_WAIT end gives way to
    s2, _ = lst.accept()
    assert four_tuple(s2) == st and st not in ss_ends(port)

    def both(snap):
        by_id = {f.id: f for f in snap.flows}
        new = [f for f in snap.flows if (f.laddr, f.lport, f.raddr, f.rport) == st and f.id != old.id]
        gone = by_id.get(old.id)
        return (gone, new[0]) if new and gone is not None and gone.closed else None
    snap_pair = None
    deadline = time.monotonic() + 10
    while snap_pair is None:
        snap = engine.poll()
        snap_pair = both(snap)
        assert snap_pair is not None or time.monotonic() < deadline, \
            f"still listed: {[f for f in snap.flows if (f.laddr, f.lport, f.raddr, f.rport) == st]}"
        time.sleep(0.05)
    gone, new = snap_pair
    assert gone.closed and gone.tw_expires_ts == 0 and new.state == "ESTABLISHED" and not new.closed
    kept = {(f.laddr, f.lport, f.raddr, f.rport) for f in snap.flows
            if f.state == "TIME_WAIT" and not f.closed and port in (f.lport, f.rport)}
    assert kept == {t for t, (state, _) in ss_ends(port).items() if state == "TIME-WAIT"}
    for x in (c2, s2, lst):
        x.close()
