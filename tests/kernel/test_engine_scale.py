"""Many connections, idle and churning, at a scale a test can afford (the benchmark goes to
100,000): every socket listed with its values, an idle poll reading nothing, and every
connection of a fast churn reported closed once, with nothing lost."""

import socket
import subprocess
import sys
import textwrap
import time

from kit import recv_exactly, sh, tcp_info, wait_idle
from tcptop.engines import EngineOptions
from tcptop.engines.core.engine import CoreEngine
from tcptop.host import netns

HOLDER = textwrap.dedent("""
    import resource, socket, sys
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    n = int(sys.argv[1])
    lsn = socket.socket(); lsn.bind(("127.0.0.1", 0)); lsn.listen(4096)
    socks = []
    for i in range(n):
        c = socket.create_connection(lsn.getsockname()); s, _ = lsn.accept()
        socks += [c, s]
    print(lsn.getsockname()[1], flush=True)
    sys.stdin.read()
""")

CHURNER = textwrap.dedent("""
    import socket, struct, sys
    lsn = socket.socket(); lsn.bind(("127.0.0.1", 0)); lsn.listen(4096)
    print(lsn.getsockname()[1], flush=True)
    sys.stdin.readline()
    for i in range(int(sys.argv[1])):
        c = socket.create_connection(lsn.getsockname()); s, _ = lsn.accept()
        c.sendall(b"x" * (i % 100 + 1)); s.recv(200)
        if i % 2:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close(); s.close()
    print("done", flush=True)
    sys.stdin.read()
""")


def test_idle_connections_are_all_listed_and_an_idle_poll_decodes_nothing():
    """2,000 idle connections: the first snapshot lists all 4,000 ends as ss does; later polls
    hand back the very same Flow objects (nothing was read again, nothing decoded)."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER, "2000"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    e = None
    try:
        port = int(p.stdout.readline())
        e = CoreEngine(EngineOptions(interval_s=1, latency="off"))
        snap = e.poll()
        here = netns.current_inode()  # another test's namespace may use the same port number
        mine = {f.id: f for f in snap.flows
                if port in (f.lport, f.rport) and f.state == "ESTABLISHED" and f.netns == here}
        ss = sh("ss", "-tanH", "state", "established", f"( sport = :{port} or dport = :{port} )").splitlines()
        assert len(mine) == len(ss) == 4000
        assert all(f.pid == p.pid and f.bytes_sent == 0 and f.app_wqueue == 0 for f in mine.values())
        for _ in range(3):
            again = {f.id: f for f in e.poll().flows if f.id in mine}
            assert len(again) == 4000 and all(again[i] is mine[i] for i in mine)
    finally:
        if e is not None:
            e.close()
        p.stdin.close()
        p.wait(10)


def test_every_connection_of_a_churn_is_reported_closed_once():
    """2,000 connections opened, used and closed as fast as one process can (half with a FIN,
    half with an RST) while the engine polls every 0.2 s: every client end is reported closed
    or kept in TIME_WAIT, with the bytes it wrote, and no final record is lost."""
    p = subprocess.Popen([sys.executable, "-c", CHURNER, "2000"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    e = CoreEngine(EngineOptions(interval_s=0.2, latency="off"))
    try:
        port = int(p.stdout.readline())
        lost0 = e.poll().run.events_lost
        p.stdin.write("go\n")
        p.stdin.flush()
        ends, done, here = {}, False, netns.current_inode()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            snap = e.poll()
            # Another test's namespace may use the same port number, and an end another test
            # left here (a TIME_WAIT end lingers 60 s) may have had it as its peer's: the churn's
            # ends are born after the engine's first poll, never since_start.
            for f in snap.flows:
                if f.rport == port and f.netns == here and not f.since_start and (f.closed or f.state == "TIME_WAIT"):
                    ends.setdefault(f.lport, f)
            if done and len(ends) >= 2000:
                break
            done = done or bool(select_line(p))
            time.sleep(0.2)
        oldest = sorted(ends.values(), key=lambda f: f.established_ts)[:3]
        assert len(ends) == 2000, (f"{len(ends)} ends; lport 0: {sum(1 for lp in ends if lp == 0)}; the oldest: "
                                   + "; ".join(f"{f.lport} {f.state} born {f.established_ts:.3f} wrote {f.write_bytes}"
                                               for f in oldest))
        assert sorted(f.write_bytes for f in ends.values()) == sorted(i % 100 + 1 for i in range(2000))
        assert sum(f.state == "TIME_WAIT" for f in ends.values()) == 1000  # the FIN half closed first
        assert snap.run.events_lost == lost0
    finally:
        e.close()
        p.stdin.close()
        p.wait(10)


def select_line(p):
    import select
    if select.select([p.stdout], [], [], 0)[0]:
        return p.stdout.readline()
    return ""


def test_lost_notices_make_the_next_poll_walk_every_socket():
    """A notice ring too small for what changed between two polls: the loss is counted, and
    that poll walks the whole table, so every socket that moved data is current."""
    from tcptop.engines.core.flow_layout import Stat
    from tcptop.engines.core.flows import FlowEngine

    eng = FlowEngine(notice_ring_bytes=4096, walk_ms=0.01)  # room for ~50 notices; no walk to speak of
    pairs = []
    try:
        lsn = socket.socket()
        lsn.bind(("127.0.0.1", 0))
        lsn.listen(256)
        for _ in range(150):
            c = socket.create_connection(lsn.getsockname())
            pairs.append((c, lsn.accept()[0]))
        server = lsn.getsockname()[1]
        lsn.close()
        eng.poll()
        eng.poll()
        lost_before = eng.stats()[Stat.STAT_NOTICES_LOST]
        for i, (c, s) in enumerate(pairs):
            c.sendall(b"n" * (100 + i))
            recv_exactly(s, 100 + i)
        for c, _ in pairs:
            wait_idle(c)
        flows = {f.lport: f for f in eng.poll() if f.rport == server and f.laddr == "127.0.0.1"}
        assert eng.stats()[Stat.STAT_NOTICES_LOST] > lost_before
        for i, (c, s) in enumerate(pairs):
            assert flows[c.getsockname()[1]].write_bytes == 100 + i
            assert flows[c.getsockname()[1]].bytes_sent == tcp_info(c)["bytes_sent"]
    finally:
        for c, s in pairs:
            c.close()
            s.close()
        eng.close()
