"""Workloads the benchmarks drive on loopback: idle connections held open, connect/close churn
at a given rate, and busy request/response flows. Each runs in processes of its own (one
process may hold at most RLIMIT_NOFILE's hard limit of descriptors, 20,000 on our VMs) and
stops when its context ends."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import textwrap
from contextlib import contextmanager

PER_PROCESS = 9000  # connections per holder process: two descriptors each

_HOLDER = textwrap.dedent("""
    import resource, socket, struct, sys
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    n = int(sys.argv[1])
    lsn = socket.socket(); lsn.bind(("127.0.0.1", 0)); lsn.listen(4096)
    socks = []
    for i in range(n):
        c = socket.socket(); c.setblocking(False)
        try:
            c.connect(lsn.getsockname())
        except BlockingIOError:
            pass
        socks.append(c)
        if i % 500 == 499 or i == n - 1:
            while len(socks) < 2 * (i + 1):
                s, _ = lsn.accept(); socks.append(s)
    lsn.close()
    print(len(socks), flush=True)
    sys.stdin.read()
    # an abort, not a FIN: no TIME_WAIT ends left for the next case to walk
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
""")

_CHURNER = textwrap.dedent("""
    import socket, struct, sys, time
    rate, seconds, reset = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "rst"
    lsn = socket.socket(); lsn.bind(("127.0.0.1", 0)); lsn.listen(4096)
    print(lsn.getsockname()[1], flush=True)
    sys.stdin.readline()
    linger0 = struct.pack("ii", 1, 0)
    made, t0 = 0, time.monotonic()
    while True:
        now = time.monotonic() - t0
        if now >= seconds:
            break
        if made > now * rate:
            time.sleep(0.001)
            continue
        c = socket.create_connection(lsn.getsockname()); s, _ = lsn.accept()
        c.send(b"q"); s.recv(1)
        if reset:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger0)
            c.close(); s.close()
        else:
            s.close(); c.close()   # the server closes first: TIME_WAIT on the server's side
        made += 1
    print(made, flush=True)
    sys.stdin.read()
""")

_BUSY = textwrap.dedent("""
    import resource, select, socket, sys
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    n = int(sys.argv[1])
    lsn = socket.socket(); lsn.bind(("127.0.0.1", 0)); lsn.listen(4096)
    pairs = []
    for _ in range(n):
        c = socket.create_connection(lsn.getsockname()); s, _ = lsn.accept()
        c.setblocking(False); s.setblocking(False)
        pairs.append((c, s))
    socks = {x.fileno(): x for pair in pairs for x in pair}
    ep = select.epoll()
    for fd in socks:
        ep.register(fd, select.EPOLLIN)
    msg = b"p" * 100
    for c, _ in pairs:
        c.send(msg)
    print("ready", flush=True)
    while True:                       # every message is answered at once: all flows stay busy
        for fd, _ in ep.poll(1.0):
            try:
                if socks[fd].recv(4096):
                    socks[fd].send(msg)
            except BlockingIOError:
                pass
""")


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@contextmanager
def held_connections(n: int):
    """n idle loopback connections (2n sockets), held by as many processes as it takes."""
    procs = []
    try:
        left = n
        while left > 0:
            k = min(PER_PROCESS, left)
            left -= k
            procs.append(subprocess.Popen([sys.executable, "-c", _HOLDER, str(k)], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, text=True))
        for p in procs:
            p.stdout.readline()
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.stdin.close()
        for p in procs:
            p.wait(60)


class Churn:
    """connect/send/close at `rate` connections per second in total, for `seconds`, spread over
    `procs` processes; half close with a FIN (server first), half with an RST (SO_LINGER 0)."""

    def __init__(self, rate: float, seconds: float, procs: int = 4):
        self.procs = []
        for i in range(procs):
            mode = "rst" if i % 2 else "fin"
            self.procs.append(subprocess.Popen([sys.executable, "-c", _CHURNER, str(rate / procs), str(seconds), mode],
                                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        self.ports = [int(p.stdout.readline()) for p in self.procs]
        self.made = 0

    def start(self) -> None:
        for p in self.procs:
            p.stdin.write("go\n")
            p.stdin.flush()

    def wait(self) -> int:
        """Connections made in all (once every process is done)."""
        self.made = sum(int(p.stdout.readline()) for p in self.procs)
        return self.made

    def close(self) -> None:
        for p in self.procs:
            try:
                p.stdin.close()
            except OSError:
                pass
            p.wait(30)

    def kill(self) -> None:
        """Stop at once, wherever the churn is (close() waits until it has run its seconds)."""
        for p in self.procs:
            p.kill()
            p.wait(10)


@contextmanager
def busy_flows(n: int):
    """n loopback connections ping-ponging 100-byte messages as fast as one process can."""
    p = subprocess.Popen([sys.executable, "-c", _BUSY, str(n)], stdout=subprocess.PIPE, text=True)
    try:
        p.stdout.readline()
        yield p.pid
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(10)
