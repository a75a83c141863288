"""--demo: a small, known workload in private network namespaces, so every pane has something to show.

Two namespaces joined by two veth pairs carry four flows a newcomer can recognise:

    demo-bulk     → demo-sink :5001   clean bulk transfer (paced, so it does not eat the CPU)
    demo-lossy    → demo-sink :5002   5 % of its segments dropped by iptables `statistic`
    demo-stuck    → demo-stall:5003   the receiver never reads: zero window, send queue full
    demo-ratelim  → demo-sink :5004   a token bucket (tc tbf) holds it to ~4 Mbit/s

and, for the views of why connections fail (l, f, g), a dialer that keeps failing:

    demo-dialer   → demo-busy :5005   listen(4), never accepted: the accept queue overflows
    demo-dialer   →           :5006   nobody listens: refused (ECONNREFUSED)
    demo-dialer   →           :5007   SYNs dropped: the kernel gives up (ETIMEDOUT)

Only addresses inside the namespaces are used (10.213.0.0/16). Namespace names carry
our pid, children die with us (PR_SET_PDEATHSIG), `stop()` removes everything, and
`start()` first removes namespaces left by a demo whose process is gone (kill -9).
Run as `python -m tcptop.demo` to hold the workload up without the screen.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

PREFIX = "tcptop-demo-"
NET = "10.213.0.0/16"
# (veth pair index) → server address, client address
LINK0 = ("10.213.0.1", "10.213.0.2")   # clean, lossy, stalled flows
LINK1 = ("10.213.1.1", "10.213.1.2")   # the rate-limited flow has a link of its own for tbf
PORTS = {"bulk": 5001, "lossy": 5002, "stall": 5003, "ratelim": 5004, "busy": 5005, "closed": 5006,
         "blackhole": 5007}
LOSS_PROBABILITY = "0.05"
# A queue deep enough that the token bucket delays rather than drops: the rate-limited
# flow should show a low, steady rate, not the lossy flow's retransmissions.
TBF = ["rate", "4mbit", "burst", "32kbit", "limit", "4mb"]


class DemoError(RuntimeError):
    """The demo could not be set up (not root, no `ip`/`iptables`/`tc`...)."""


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except FileNotFoundError:
        raise DemoError(f"--demo needs `{cmd[0]}` (iproute2/iptables)") from None
    if check and res.returncode != 0:
        raise DemoError(f"--demo: `{' '.join(cmd)}` failed: {res.stderr.strip() or res.returncode}")
    return res


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> list[str]:
    """Delete demo namespaces whose tcptop process no longer exists."""
    res = _run("ip", "netns", "list", check=False)
    removed = []
    for line in res.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(re.escape(PREFIX) + r"(\d+)-[a-z]+", name)
        if m and not _pid_alive(int(m.group(1))):
            _run("ip", "netns", "del", name, check=False)
            removed.append(name)
    return removed


class Demo:
    """Owns the namespaces and the workload processes; `stop()` is idempotent."""

    def __init__(self) -> None:
        tag = f"{PREFIX}{os.getpid()}"
        self.srv_ns = f"{tag}-srv"
        self.cli_ns = f"{tag}-cli"
        self.procs: list[subprocess.Popen] = []
        self._started = False
        self._lock = threading.Lock()

    def filter_expression(self) -> str:
        return f"net {NET}"

    # -- set-up ------------------------------------------------------------------

    def start(self) -> None:
        if os.geteuid() != 0:
            raise DemoError("--demo needs root (it creates network namespaces)")
        remove_stale()
        self._started = True
        atexit.register(self.stop)
        # A closed terminal (SIGHUP) or a kill (SIGTERM) must not leave namespaces behind:
        # clean up first, then unwind normally so the screen restores the terminal.
        for sig in (signal.SIGHUP, signal.SIGTERM):
            if threading.current_thread() is threading.main_thread():
                signal.signal(sig, self._on_signal)
        try:
            self._build_network()
            self._start_workload()
        except BaseException:
            self.stop()
            raise

    def _build_network(self) -> None:
        srv, cli = self.srv_ns, self.cli_ns
        _run("ip", "netns", "add", srv)
        _run("ip", "netns", "add", cli)
        pid = os.getpid()
        for i, (saddr, caddr) in enumerate((LINK0, LINK1)):
            a, b = f"td{pid % 100000}s{i}", f"td{pid % 100000}c{i}"  # ≤ 15 chars
            _run("ip", "link", "add", a, "netns", srv, "type", "veth", "peer", "name", b, "netns", cli)
            _run("ip", "-n", srv, "addr", "add", f"{saddr}/24", "dev", a)
            _run("ip", "-n", cli, "addr", "add", f"{caddr}/24", "dev", b)
            _run("ip", "-n", srv, "link", "set", a, "up")
            _run("ip", "-n", cli, "link", "set", b, "up")
            if i == 1:
                _run("ip", "netns", "exec", cli, "tc", "qdisc", "add", "dev", b, "root", "tbf", *TBF)
        for ns in (srv, cli):
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        # Drop a share of the lossy flow's data segments as they arrive at the server: a drop in
        # the sender's own OUTPUT chain is reported back to TCP as a local error, not a loss.
        _run("ip", "netns", "exec", srv, "iptables", "-A", "INPUT", "-p", "tcp", "--dport", str(PORTS["lossy"]),
             "-m", "statistic", "--mode", "random", "--probability", LOSS_PROBABILITY, "-j", "DROP")
        # The dialer's connects to the blackhole time out after one SYN retry (a few seconds).
        _run("ip", "netns", "exec", srv, "iptables", "-A", "INPUT", "-p", "tcp", "--dport", str(PORTS["blackhole"]),
             "--syn", "-j", "DROP")
        _run("ip", "netns", "exec", cli, "sysctl", "-qw", "net.ipv4.tcp_syn_retries=1")

    def _spawn(self, ns: str, *role: str) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "tcptop.demo", "--role", *role],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent, start_new_session=True,
        )
        self.procs.append(proc)

    def _start_workload(self) -> None:
        s0, c0 = LINK0
        s1, c1 = LINK1
        self._spawn(self.srv_ns, "sink", "demo-sink", s0, str(PORTS["bulk"]), str(PORTS["lossy"]))
        self._spawn(self.srv_ns, "sink", "demo-sink", s1, str(PORTS["ratelim"]))
        self._spawn(self.srv_ns, "stall", "demo-stall", s0, str(PORTS["stall"]))
        self._spawn(self.cli_ns, "send", "demo-bulk", s0, str(PORTS["bulk"]), str(20 << 20))
        self._spawn(self.cli_ns, "send", "demo-lossy", s0, str(PORTS["lossy"]), str(4 << 20))
        self._spawn(self.cli_ns, "send", "demo-stuck", s0, str(PORTS["stall"]), "0")
        self._spawn(self.cli_ns, "send", "demo-ratelim", s1, str(PORTS["ratelim"]), "0")
        self._spawn(self.srv_ns, "busy", "demo-busy", s0, str(PORTS["busy"]))
        self._spawn(self.cli_ns, "dial", "demo-dialer", s0, str(PORTS["busy"]), str(PORTS["closed"]),
                    str(PORTS["blackhole"]))

    # -- tear-down ---------------------------------------------------------------

    def stop(self) -> None:
        with self._lock:
            if not self._started:
                return
            self._started = False
            for p in self.procs:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            for p in self.procs:
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            self.procs.clear()
            for ns in (self.cli_ns, self.srv_ns):
                _run("ip", "netns", "del", ns, check=False)

    def _on_signal(self, signum: int, _frame) -> None:
        self.stop()
        raise SystemExit(128 + signum)

    def __enter__(self) -> "Demo":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# -- the workload processes (run inside the namespaces) ------------------------------

def _set_comm(name: str) -> None:
    try:
        Path("/proc/self/comm").write_text(name[:15])
    except OSError:
        pass


def _listen(addr: str, port: int, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((addr, port))
    s.listen(16)
    return s


def _sink(addr: str, ports: list[int]) -> None:
    def serve(port: int) -> None:
        ls = _listen(addr, port)
        while True:
            conn, _ = ls.accept()
            threading.Thread(target=_drain, args=(conn,), daemon=True).start()

    for p in ports:
        threading.Thread(target=serve, args=(p,), daemon=True).start()
    while True:
        time.sleep(3600)


def _drain(conn: socket.socket) -> None:
    while conn.recv(1 << 16):
        pass


def _stall(addr: str, port: int) -> None:
    ls = _listen(addr, port, rcvbuf=32 << 10)
    held = []
    while True:
        conn, _ = ls.accept()
        held.append(conn)  # accepted, never read: the window closes


def _busy(addr: str, port: int) -> None:
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, port))
    ls.listen(4)  # never accepted: after 5 connections every handshake is dropped
    while True:
        time.sleep(3600)


def _dial(addr: str, busy: int, closed: int, blackhole: int) -> None:
    """Connects that go wrong, about one a second each, every socket held a while as a client would."""
    held: list[tuple[float, socket.socket]] = []
    n = 0
    while True:
        now = time.monotonic()
        targets = [busy, closed] + ([blackhole] if n % 4 == 0 else [])
        for port in targets:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect((addr, port))
            except OSError:
                pass
            held.append((now + (10 if port == blackhole else 3), s))
        for when, s in [h for h in held if h[0] <= now]:
            s.close()
        held = [h for h in held if h[0] > now]
        n += 1
        time.sleep(1.0)


def _send(addr: str, port: int, rate_bps: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            s = socket.create_connection((addr, port), timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    s.settimeout(None)
    chunk = b"x" * (64 << 10)
    sent = 0
    t0 = time.monotonic()
    while True:
        sent += s.send(chunk)
        if rate_bps:
            ahead = sent / rate_bps - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)


def _role_main(argv: list[str]) -> int:
    role, comm, addr, *rest = argv
    _set_comm(comm)
    if role == "sink":
        _sink(addr, [int(p) for p in rest])
    elif role == "stall":
        _stall(addr, int(rest[0]))
    elif role == "send":
        _send(addr, int(rest[0]), int(rest[1]))
    elif role == "busy":
        _busy(addr, int(rest[0]))
    elif role == "dial":
        _dial(addr, *(int(p) for p in rest))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--role"]:
        return _role_main(argv[1:])
    demo = Demo()
    try:
        demo.start()
    except DemoError as e:
        sys.stderr.write(f"tcptop: {e}\n")
        return 1
    print(f"demo running in {demo.srv_ns} / {demo.cli_ns}; filter: {demo.filter_expression()}; Ctrl-C stops")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        demo.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
