"""Test kit for real-kernel tests: the kernel's own truth (TCP_INFO, SIOCOUTQ, MIB
counters), private network namespaces joined by veth, and polling helpers."""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import subprocess
import termios
import time
from dataclasses import dataclass
from typing import Callable

from tcptop.host import netns
from tcptop.model import Flow, Snapshot

# Offsets in struct tcp_info (UAPI, checked against this kernel's BTF).
_TI = {
    "state": (0, "B"), "ca_state": (1, "B"),
    "snd_mss": (16, "I"), "unacked": (24, "I"), "sacked": (28, "I"), "lost": (32, "I"),
    "retrans": (36, "I"), "rtt": (68, "I"), "snd_ssthresh": (76, "I"), "snd_cwnd": (80, "I"),
    "total_retrans": (100, "I"), "bytes_acked": (120, "Q"), "bytes_received": (128, "Q"),
    "min_rtt": (148, "I"), "bytes_sent": (200, "Q"), "snd_wnd": (228, "I"), "rcv_wnd": (232, "I"),
    "total_rto": (240, "H"),
}


def tcp_info(s: socket.socket) -> dict[str, int]:
    raw = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 280)
    return {k: struct.unpack_from("<" + fmt, raw, off)[0] for k, (off, fmt) in _TI.items()}


def siocoutq(s: socket.socket) -> int:
    buf = fcntl.ioctl(s.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")  # SIOCOUTQ == TIOCOUTQ
    return struct.unpack("i", buf)[0]


def flight_size(ti: dict[str, int]) -> int:
    return ti["unacked"] - ti["sacked"] - ti["lost"] + ti["retrans"]


def sock_cookie(s: socket.socket) -> int:
    """The kernel's cookie of a socket (SO_COOKIE), which the engines use as Flow.id: unique for
    the kernel's life, where a 4-tuple comes back as soon as ports are reused."""
    return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, 57, 8), "little")


def find_flow(snap: Snapshot, s: socket.socket) -> Flow | None:
    """The flow of one of the test's own sockets, by its 4-tuple and netns."""
    la, lp = s.getsockname()[:2]
    ra, rp = s.getpeername()[:2]
    for f in snap.flows:
        if f.lport == lp and f.rport == rp and f.laddr == la.removeprefix("::ffff:") and \
                f.raddr == ra.removeprefix("::ffff:") and not f.closed:
            return f
    return None


def poll_until(engine, pick: Callable[[Snapshot], Flow | None], ok: Callable[[Flow], bool] = lambda f: True,
               timeout: float | Callable[[], float] = 5.0, context: Callable[[], str] = lambda: "") -> Flow:
    """Poll the engine until `pick` finds a flow that satisfies `ok`; return it (or fail clearly).
    `timeout` may be a callable, asked at every poll (a wait that depends on the engine's own
    pace); `context` says what else the failure message should show."""
    start = time.monotonic()
    last = None
    while True:
        snap = engine.poll()
        last = pick(snap)
        if last is not None and ok(last):
            return last
        limit = timeout() if callable(timeout) else timeout
        if time.monotonic() - start > limit:
            raise AssertionError(f"no matching flow after {limit:.1f}s; last seen: {last}; {context()}")
        time.sleep(0.05)


def wait_idle(s: socket.socket, timeout: float = 10.0) -> None:
    """Wait until everything written is acknowledged (nothing in flight, nothing queued)."""
    deadline = time.monotonic() + timeout
    while siocoutq(s) or tcp_info(s)["unacked"]:
        if time.monotonic() > deadline:
            raise AssertionError(f"socket never went idle: outq={siocoutq(s)} info={tcp_info(s)}")
        time.sleep(0.02)


def sh(*cmd: str, ns: str | None = None, check: bool = True) -> str:
    if ns:
        cmd = ("ip", "netns", "exec", ns) + cmd
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r.stdout


def netstat(ns: str) -> dict[str, int]:
    """TcpExt MIB counters of one namespace (/proc/net/netstat read from inside it)."""
    lines = sh("cat", "/proc/net/netstat", ns=ns).splitlines()
    out: dict[str, int] = {}
    for head, vals in zip(lines[::2], lines[1::2]):
        prefix = head.split(":")[0]
        for k, v in zip(head.split()[1:], vals.split()[1:]):
            out[f"{prefix}.{k}"] = int(v)
    return out


@dataclass
class NsPair:
    """Two fresh network namespaces joined by a veth pair: a (10.x.y.1) <-> b (10.x.y.2).

    Names carry the pid and a counter, so parallel runs and leftovers never
    collide; `close()` deletes both namespaces (and with them the veth, the
    qdiscs and the iptables rules inside).
    """

    a: str
    b: str
    addr_a: str
    addr_b: str

    @classmethod
    def create(cls, tag: str) -> "NsPair":
        cls._n = getattr(cls, "_n", 0) + 1
        uid = f"{os.getpid() % 10000}{cls._n}"
        a, b = f"tt-{tag}-{uid}-a", f"tt-{tag}-{uid}-b"
        net = f"10.{200 + cls._n % 50}.{os.getpid() % 250}"
        pair = cls(a, b, f"{net}.1", f"{net}.2")
        try:
            sh("ip", "netns", "add", a)
            sh("ip", "netns", "add", b)
            sh("ip", "link", "add", "veth0", "netns", a, "type", "veth", "peer", "name", "veth0", "netns", b)
            for ns, addr in ((a, pair.addr_a), (b, pair.addr_b)):
                sh("ip", "addr", "add", f"{addr}/24", "dev", "veth0", ns=ns)
                sh("ip", "link", "set", "veth0", "up", ns=ns)
                sh("ip", "link", "set", "lo", "up", ns=ns)
        except Exception:
            pair.close()
            raise
        return pair

    def path(self, ns: str) -> str:
        return f"/run/netns/{ns}"

    def inode(self, ns: str) -> int:
        return os.stat(self.path(ns)).st_ino

    def socket_in(self, ns: str, family: int = socket.AF_INET) -> socket.socket:
        """A TCP socket that belongs to namespace `ns` (sockets keep the ns they were made in)."""
        with netns.entered(self.path(ns)):
            return socket.socket(family, socket.SOCK_STREAM)

    def connected(self) -> tuple[socket.socket, socket.socket]:
        """(client in a, server-side socket in b) over the veth."""
        lsn = self.socket_in(self.b)
        lsn.bind((self.addr_b, 0))
        lsn.listen()
        c = self.socket_in(self.a)
        c.connect(lsn.getsockname())
        s, _ = lsn.accept()
        lsn.close()
        return c, s

    def close(self) -> None:
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def loopback_pair(family: int = socket.AF_INET) -> tuple[socket.socket, socket.socket]:
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    lsn = socket.socket(family, socket.SOCK_STREAM)
    lsn.bind((host, 0))
    lsn.listen()
    c = socket.create_connection(lsn.getsockname()[:2])
    s, _ = lsn.accept()
    lsn.close()
    return c, s


def recv_exactly(s: socket.socket, n: int) -> int:
    got = 0
    while got < n:
        b = s.recv(min(1 << 20, n - got))
        if not b:
            break
        got += len(b)
    return got


def ss_ends(port: int) -> dict[tuple[str, int, str, int], tuple[str, float]]:
    """TIME-WAIT and FIN-WAIT-2 ends `ss` lists with `port` at either end:
    (laddr, lport, raddr, rport) -> (ss state name, seconds left on its timer)."""
    out = sh("ss", "-tan", "-o", "state", "time-wait", "state", "fin-wait-2")
    ends = {}
    for line in out.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 5 or parts[0] not in ("TIME-WAIT", "FIN-WAIT-2"):
            continue
        state, local, remote = parts[0], parts[3], parts[4]
        la, lp = local.rsplit(":", 1)
        ra, rp = remote.rsplit(":", 1)
        if port not in (int(lp), int(rp)):
            continue
        left = 0.0
        if "timer:(" in line:
            t = line.split("timer:(", 1)[1].split(",")[1]
            left = _ss_seconds(t)
        ends[(la.strip("[]"), int(lp), ra.strip("[]"), int(rp))] = (state, left)
    return ends


def _ss_seconds(t: str) -> float:
    """ss's timer text ('59sec', '1min3sec', '120ms') in seconds."""
    total, num = 0.0, ""
    i = 0
    while i < len(t):
        if t[i].isdigit() or t[i] == ".":
            num += t[i]
            i += 1
            continue
        for unit, scale in (("min", 60.0), ("sec", 1.0), ("ms", 0.001)):
            if t.startswith(unit, i):
                total += float(num or 0) * scale
                num = ""
                i += len(unit)
                break
        else:
            i += 1
    return total


def ss_owners(port: int) -> set[int]:
    """pids `ss -tnp` names for the connection whose local port is `port`."""
    out = sh("ss", "-tnpH", "sport", f"= :{port}")
    return {int(p.split("=")[1]) for p in out.replace(",", " ").replace(")", " ").split() if p.startswith("pid=")}


def variant(name: str) -> str:
    """A test build of a BPF object made to be refused somewhere (tests/kernel/bpf/, `make test-bpf`)."""
    import pytest

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "build", "test", f"{name}.bpf.o")
    if not os.path.exists(path):
        pytest.fail(f"{path} missing: run `make test-bpf`")
    return path
