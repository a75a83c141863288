"""Two tcptop engines on one host (an SRE's screen beside the exporter): each loads its own
objects and names every connection's owner and numbers exactly as it would alone, while a
third starts and stops beside them."""

import socket
import subprocess
import sys
import textwrap
import time

from kit import recv_exactly, ss_ends
from tcptop.engines import EngineOptions
from tcptop.engines.core.engine import CoreEngine
from tcptop.host import netns

# A short-lived client with a comm of its own: connects, sends, says its port, and exits at
# once (`hold` 0) or when the test closes its stdin (`hold` 1).
CLIENT = textwrap.dedent("""
    import socket, sys
    name, port, size, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
    with open("/proc/self/comm", "w") as f:
        f.write(name)
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(b"k" * size)
    print(c.getsockname()[1], flush=True)
    if hold:
        sys.stdin.read()
""")
CLIENTS = 12


def test_two_engines_each_name_every_short_lived_client_with_its_bytes():
    """Twelve clients, each with its own comm and byte count: half exit before either engine
    polls (their owner is known only from the kernel's record of the connect()), half while
    both watch. Both engines list every client end with the client's pid and comm and the
    bytes it sent, and every accepted end with the bytes the test read; a third engine
    loads, polls and detaches in the middle."""
    here = netns.current_inode()
    engines = [CoreEngine(EngineOptions(interval_s=0.05, latency="off")) for _ in range(2)]
    lsn = socket.socket()
    lsn.bind(("127.0.0.1", 0))
    lsn.listen(64)
    server_port = lsn.getsockname()[1]
    kids: dict[int, tuple[subprocess.Popen, str, int]] = {}  # client port -> (process, comm, bytes sent)
    seen: list[dict[int, object]] = [{}, {}]  # per engine: client port -> its last sighting
    servers: list[socket.socket] = []

    def poll_both() -> None:
        for e, mine in zip(engines, seen):
            for f in e.poll().flows:
                if f.rport == server_port and f.laddr == "127.0.0.1" and f.netns == here:
                    mine[f.lport] = f

    try:
        for i in range(CLIENTS):
            comm, size, hold = f"tt-side-{i}", 1000 + 37 * i, i % 2
            p = subprocess.Popen([sys.executable, "-c", CLIENT, comm, str(server_port), str(size), str(hold)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            kids[int(p.stdout.readline())] = (p, comm, size)
            if not hold:
                p.wait(10)  # gone before any engine reads its socket
            if i == CLIENTS // 2:
                third = CoreEngine(EngineOptions(interval_s=0.05, latency="off"))
                try:
                    third.poll()
                finally:
                    third.close()
            poll_both()
        for p, _, _ in kids.values():
            p.stdin.close()
            p.wait(10)
        for _ in kids:
            s, (_, port) = lsn.accept()
            servers.append(s)
            assert recv_exactly(s, kids[port][2]) == kids[port][2]
        # the server ACKs a FIN late (delayed ACK): poll once every client end is FIN-WAIT-2
        ends = {}
        for _ in range(200):
            ends = {lport for (_, lport, _, _), (state, _) in ss_ends(server_port).items() if state == "FIN-WAIT-2"}
            if ends >= set(kids):
                break
            time.sleep(0.02)
        assert ends >= set(kids)
        for _ in range(2):
            poll_both()
        accepted = [{f.rport: f for f in e.poll().flows
                     if f.lport == server_port and f.netns == here and f.rport in kids} for e in engines]
    finally:
        for p, _, _ in kids.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        for s in servers:
            s.close()
        lsn.close()
        for e in engines:
            e.close()
    # the client's end is the kernel's now, waiting for the server's FIN (as ss lists it)
    clients = {port: (p.pid, comm, "client", size, size, "FIN_WAIT2", False) for port, (p, comm, size) in kids.items()}
    servers_read = {port: (size, size + 1, "server") for port, (_, _, size) in kids.items()}  # + the client's FIN
    for mine, theirs in zip(seen, accepted):
        assert {port: (f.pid, f.comm, f.role, f.bytes_sent, f.write_bytes, f.state, f.closed)
                for port, f in mine.items() if port in kids} == clients
        assert {port: (f.read_bytes, f.bytes_received, f.role) for port, f in theirs.items()} == servers_read
