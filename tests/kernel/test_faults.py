"""Faults injected into the live engine, judged by what a user sees and by what stays in the kernel.

- SIGKILL/SIGTERM/SIGHUP (and SIGINT to the screen) at points of start-up and polling:
  nothing the process held stays loaded; the screen, run in tmux, gives the terminal back
  (main screen, cursor, no mouse tracking, the same stty settings) wherever the signal
  lets it run a handler.
- The closed-records map full (--max-closed at its minimum, a burst of closes): the loss is
  counted and shown, and every closed flow still has its true final values.
- Network namespaces and processes that vanish while the engine polls.
- The cgroup2 mount, tracefs or the kernel's BTF missing (private mount namespaces):
  one line or a degraded hook with its reason, never a traceback.

Signal points are fixed, with a seeded jitter, so a run is repeatable; the number of
faults each test injects is in its name or its parameters.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
import uuid
from collections import Counter
from pathlib import Path

import pytest
from bpfprogs import Holdings, loaded_prog_ids, orphans_since, wait_released
from kit import loopback_pair, recv_exactly, sh, sock_cookie, wait_idle

from tcptop.engines import EngineOptions
from tcptop.engines.core.engine import CoreEngine
from tcptop.frontends.screen.app import TcptopApp  # noqa: F401  (the screen's modules, in their order)
from tcptop.host import netns
from tcptop.model import snapshot_from_json
from tcptop.widgets.header import run_warnings

ROOT = Path(__file__).resolve().parents[2]
TCPTOP = [sys.executable, "-m", "tcptop"]
JITTER = random.Random(10)  # the same "random" points on every run


@contextlib.contextmanager
def killed_at_end(p: subprocess.Popen):
    """Whatever happens inside, the process does not outlive the block."""
    try:
        yield p
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def _hangup_default() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)  # whatever the test runner was started under (nohup)


def spawn(*args, hangup=_hangup_default, **kw) -> subprocess.Popen:
    return subprocess.Popen(TCPTOP + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, preexec_fn=hangup, **kw)


# -- signals to --json ----------------------------------------------------------------

JSON_POINTS = ("spawn", "loading", "first-snapshot", "polling")


@pytest.mark.parametrize("point", JSON_POINTS)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_at_any_point_leaves_nothing_attached(sig, point):
    p = spawn("--json", "--interval", "0.2")
    held = Holdings(p.pid)
    with killed_at_end(p):
        if point == "spawn":
            time.sleep(JITTER.uniform(0.0, 0.05))
        elif point == "loading":
            assert held.wait_for_any(), p.stderr.read()  # the first program is loaded: mid start-up
        else:
            assert p.stdout.readline()
            if point == "polling":
                time.sleep(JITTER.uniform(0.05, 0.5))
        p.send_signal(sig)
        rc = p.wait(20)
    ids = held.stop()
    err = p.stderr.read()
    assert "Traceback" not in err, err
    if sig == signal.SIGKILL:
        assert rc == -signal.SIGKILL
    elif point in ("first-snapshot", "polling"):
        assert rc == 0 and err == ""  # handled: a clean exit that detaches
    else:
        assert rc in (0, -sig)  # before the handler exists, the default action ends it
    if point != "spawn":
        assert ids, "the process never held a program: the point was not reached"
    assert not wait_released(ids), "programs outlived the process"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_stop_signal_ends_a_run_whose_reader_stopped_reading(sig):
    """A reader that no longer reads fills the pipe and blocks tcptop in write(): a stop
    signal still ends it, detached, without a traceback (the unwritten rest is dropped)."""
    pairs = [loopback_pair() for _ in range(150)]  # 300 flows: a line is ~200 KB, a pipe 64 KB
    p = spawn("--json", "--interval", "0.1", "--latency", "off")
    held = Holdings(p.pid)
    try:
        with killed_at_end(p):
            assert p.stdout.readline()  # then nothing more is read
            assert _blocked_writing(p.pid), "never blocked on the pipe"
            p.send_signal(sig)
            rc = p.wait(20)
    finally:
        for c, s in pairs:
            c.close()
            s.close()
    ids = held.stop()
    err = p.stderr.read()
    assert rc == 0 and "Traceback" not in err, err
    assert ids and not wait_released(ids), "programs outlived the process"


def test_under_nohup_a_hang_up_is_ignored_and_a_stop_still_detaches():
    """Started with SIGHUP ignored (`nohup tcptop --json > log &`), tcptop outlives its terminal:
    a hang-up neither ends nor disturbs it (lines keep coming, one per interval), and SIGTERM
    still ends it cleanly, detached."""
    p = spawn("--json", "--interval", "0.2", "--latency", "off",
              hangup=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    held = Holdings(p.pid)
    with killed_at_end(p):
        first = snapshot_from_json(p.stdout.readline())
        p.send_signal(signal.SIGHUP)
        seqs = [snapshot_from_json(p.stdout.readline()).seq for _ in range(5)]
        assert p.poll() is None
        p.send_signal(signal.SIGTERM)
        rc = p.wait(20)
    ids = held.stop()
    err = p.stderr.read()
    assert seqs == list(range(first.seq + 1, first.seq + 6))
    assert rc == 0 and err == "", err
    assert ids and not wait_released(ids), "programs outlived the process"


def _blocked_writing(pid: int, timeout_s: float = 10.0) -> bool:
    """The main thread asleep in a pipe write (its wchan), seen twice in a row."""
    seen, end = 0, time.monotonic() + timeout_s
    while time.monotonic() < end and seen < 2:
        with open(f"/proc/{pid}/wchan") as f:
            seen = seen + 1 if "pipe" in f.read() else 0
        time.sleep(0.3)
    return seen >= 2


# -- signals to the screen, in a real terminal ----------------------------------------

needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
TERMINAL_STATE = "#{alternate_on} #{cursor_flag} #{mouse_any_flag} #{mouse_standard_flag} #{mouse_sgr_flag}"
RESTORED = "0 1 0 0 0"


class Tmux:
    """One tmux session running tcptop's screen; its terminal state read back after the end."""

    def __init__(self, tmp: Path, args: str) -> None:
        self.session = f"tcptop-fault-{uuid.uuid4().hex[:8]}"
        self.tmux = ["tmux", "-L", self.session]  # a server of its own: no other session is touched
        self.tmp = tmp
        cmd = (f"cd {ROOT} && stty -g > {tmp}/stty.before; "
               f"sh -c 'echo $$ > {tmp}/pid; exec {sys.executable} -m tcptop {args}'; "
               f"echo $? > {tmp}/status.tmp; stty -g > {tmp}/stty.after; mv {tmp}/status.tmp {tmp}/status; "
               "sleep 600")
        subprocess.run(self.tmux + ["new-session", "-d", "-s", self.session, "-x", "160", "-y", "45", cmd],
                       check=True)
        deadline = time.monotonic() + 10
        while not (tmp / "pid").exists() or not (tmp / "pid").read_text().strip():
            assert time.monotonic() < deadline, "tcptop never started"
            time.sleep(0.01)
        self.pid = int((tmp / "pid").read_text())

    def screen(self) -> str:
        return subprocess.run(self.tmux + ["capture-pane", "-p", "-t", self.session], capture_output=True,
                              text=True).stdout

    def state(self) -> str:
        return subprocess.run(self.tmux + ["display", "-p", "-t", self.session, TERMINAL_STATE],
                              capture_output=True, text=True).stdout.strip()

    def wait_for_screen(self, words: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while words not in self.screen():
            assert time.monotonic() < deadline, self.screen()
            time.sleep(0.05)

    def status(self, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while not (self.tmp / "status").exists():
            assert time.monotonic() < deadline, "tcptop did not exit"
            time.sleep(0.05)
        return int((self.tmp / "status").read_text())

    def close(self) -> None:
        subprocess.run(self.tmux + ["kill-server"], capture_output=True)
        Path(f"/tmp/tmux-{os.getuid()}/{self.session}").unlink(missing_ok=True)  # its socket file


@pytest.fixture
def tmux_screen(tmp_path):
    sessions: list[Tmux] = []

    def start(args: str = "--interval 0.2") -> Tmux:
        t = Tmux(tmp_path, args)
        sessions.append(t)
        return t
    yield start
    for t in sessions:
        if os.path.exists(f"/proc/{t.pid}"):
            os.kill(t.pid, signal.SIGKILL)
        t.close()


@needs_tmux
@pytest.mark.parametrize("point", ["loading", "polling"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGKILL],
                         ids=lambda s: s.name)
def test_a_signal_to_the_screen_gives_the_terminal_back(tmux_screen, tmp_path, sig, point):
    """Before, TERM and HUP left the alternate screen, mouse tracking and a hidden cursor."""
    t = tmux_screen()
    held = Holdings(t.pid)
    if point == "loading":
        assert held.wait_for_any()
    else:
        t.wait_for_screen(" flows")
        time.sleep(JITTER.uniform(0.1, 0.6))
    os.kill(t.pid, sig)
    status = t.status()
    ids = held.stop()
    assert ids
    assert not wait_released(ids), "programs outlived the screen"
    assert "Traceback" not in t.screen()  # the screen draws on stderr: what it printed last is there
    if sig == signal.SIGKILL:
        assert status == 128 + signal.SIGKILL
        return  # nothing can run after KILL: the terminal stays as it was
    assert status in (0, 128 + sig)  # 0 once the screen's handler is in place
    if point == "polling":
        assert status == 0
    assert t.state() == RESTORED
    assert (tmp_path / "stty.after").read_text() == (tmp_path / "stty.before").read_text()


@needs_tmux
def test_closing_the_terminal_under_the_screen_detaches_everything(tmux_screen):
    """The window goes away (SIGHUP, and every write to the terminal fails from then on)."""
    t = tmux_screen()
    held = Holdings(t.pid)
    t.wait_for_screen(" flows")
    t.close()
    deadline = time.monotonic() + 20
    while os.path.exists(f"/proc/{t.pid}") and open(f"/proc/{t.pid}/stat").read().split()[2] != "Z":
        assert time.monotonic() < deadline, "tcptop hangs after its terminal closed"
        time.sleep(0.05)
    ids = held.stop()
    assert ids and not wait_released(ids)


# -- a full map ---------------------------------------------------------------------

def test_a_burst_of_closes_beyond_max_closed_is_counted_shown_and_exact():
    """400 sockets close within one interval with room for 64 final records (the ring rounds it
    up to a power of two): the records beyond its room are lost and counted; those flows still close, with the values of the last poll (they were
    idle, so those are their final values)."""
    engine = CoreEngine(EngineOptions(interval_s=0.2, max_closed=64, latency="off"))
    engine.flows.stop_keeper()  # what a full ring does: nothing takes records out between polls
    lsn = socket.socket()
    try:
        lsn.bind(("127.0.0.1", 0))
        lsn.listen(512)
        port = lsn.getsockname()[1]
        pairs = []
        for i in range(200):
            c = socket.create_connection(("127.0.0.1", port))
            s, _ = lsn.accept()
            c.sendall(b"c" * (1000 + i))
            recv_exactly(s, 1000 + i)
            pairs.append((c, s))
        for c, _ in pairs:
            wait_idle(c)
        ours = {}
        deadline = time.monotonic() + 10
        clients = {c.getsockname()[1] for c, _ in pairs}  # not another test's port numbers
        while len(ours) < 400:
            assert time.monotonic() < deadline, len(ours)
            snap = engine.poll()
            ours = {f.id: f for f in snap.flows if not f.closed and
                    ((f.lport, f.rport) in ((port, f.rport), (f.lport, port))) and ({f.lport, f.rport} & clients)}
        lost_before = snap.run.events_lost_by["closed_records"]
        sent = {c.getsockname()[1]: 1000 + i for i, (c, _) in enumerate(pairs)}
        for c, s in pairs:
            c.close()
            s.close()
        time.sleep(0.2)
        snap = engine.poll()
        lost = snap.run.events_lost_by["closed_records"] - lost_before
        room = engine.flows.closed_room  # 64 rounded up to what a power-of-two ring holds
        assert 64 <= room < 200
        assert lost >= 400 - room  # every record beyond the ring's room (other sockets' closes may add)
        assert snap.run.events_lost == sum(snap.run.events_lost_by.values())
        said = [w for w in run_warnings(snap) if w.startswith(f"{snap.run.events_lost:,} events lost (")]
        assert len(said) == 1 and f"closed records {snap.run.events_lost_by['closed_records']:,}" in said[0]
        closed = [f for f in snap.flows if f.id in ours]
        assert len(closed) == 400 and all(f.ended for f in closed)  # closed, or a TIME_WAIT end
        for f in closed:
            assert (f.laddr, f.raddr) == ("127.0.0.1", "127.0.0.1")
            if f.rport == port:  # the client end: its own count of bytes
                assert f.bytes_sent == sent[f.lport]
            else:  # the kernel counts a received FIN as one byte (so does TCP_INFO): in a final record
                assert f.lport == port and f.bytes_received - sent[f.rport] in (0, 1), f
    finally:
        lsn.close()
        engine.close()


def test_final_records_the_closed_ring_refuses_go_whole_to_its_rescue_ring():
    """With room for 64 final records in the closed ring (99 once rounded up to a power of
    two), as many in its rescue ring, and nothing taking them out between polls, 150 ends
    close: the ring refuses the records past its room and the rescue ring takes them whole
    (each client's last 2 bytes, sent after the last poll, are in its final record alone)."""
    from tcptop.engines.core.flow_layout import Stat
    from tcptop.engines.core.flows import _RING_REC

    engine = CoreEngine(EngineOptions(interval_s=0.2, max_closed=64, latency="off"))
    engine.flows.stop_keeper()
    pairs = [loopback_pair() for _ in range(75)]
    try:
        mine = {sock_cookie(x) for pair in pairs for x in pair}
        clients = {sock_cookie(c) for c, _ in pairs}
        for c, s in pairs:
            c.sendall(b"a")
            recv_exactly(s, 1)
        deadline = time.monotonic() + 10
        while sum(1 for f in engine.poll().flows if f.id in mine) < 150:
            assert time.monotonic() < deadline
        main_room = (engine.flows._closed_ring.size - 1) // _RING_REC
        assert main_room < 150 <= engine.flows.closed_room
        rescued0 = engine.flows.stats()[Stat.STAT_RESERVE_RESCUED]
        for c, s in pairs:  # after the last poll: only a final record can tell these bytes
            c.sendall(b"bb")
            recv_exactly(s, 2)
            wait_idle(c)
        for c, s in pairs:
            s.close()
            c.close()
        time.sleep(0.2)
        snap = engine.poll()
        ends = {f.id: f for f in snap.flows if f.id in mine}
        assert len(ends) == 150 and all(f.ended for f in ends.values())
        assert sorted(f.bytes_sent for i, f in ends.items() if i in clients) == [3] * 75
        assert engine.flows.stats()[Stat.STAT_RESERVE_RESCUED] - rescued0 >= 150 - main_room
    finally:
        for c, s in pairs:
            c.close()
            s.close()
        engine.close()


# -- things that vanish while the engine polls ------------------------------------------

def _refused_files_object() -> str | None:
    path = ROOT / "build" / "test" / "flows_refused_files.bpf.o"
    return str(path) if path.exists() else None


def _churn_namespaces(stop: threading.Event, made: list[str], tag: str) -> None:
    """Create namespaces holding a connection each and delete them again, until stopped."""
    i = 0
    while not stop.is_set():
        name = f"tt-vanish-{tag}-{i}"
        i += 1
        sh("ip", "netns", "add", name)
        made.append(name)
        try:
            sh("ip", "link", "set", "lo", "up", ns=name)
            with netns.entered(f"/run/netns/{name}"):
                c, s = loopback_pair()
            c.sendall(b"v" * 100)
            recv_exactly(s, 100)
            time.sleep(0.02)
            c.close()
            s.close()
        finally:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.mark.parametrize("walk", ["files iterator", "every namespace"])
def test_namespaces_that_vanish_mid_poll(walk):
    """Namespaces are found, entered and walked while others delete them; a poll never fails.
    'every namespace' uses the object whose task_file iterator the verifier refuses, so every
    poll enters every namespace (setns) instead of only the first."""
    obj = None
    if walk == "every namespace":
        obj = _refused_files_object()
        if obj is None:
            pytest.skip("build/test objects not built (make test-bpf)")
    engine = CoreEngine(EngineOptions(interval_s=0.05, latency="off"), flows_object=obj)
    stop = threading.Event()
    made: list[str] = []
    tag = f"{os.getpid() % 10000}{walk[0]}"
    churn = threading.Thread(target=_churn_namespaces, args=(stop, made, tag))
    polls, seen = 0, Counter()
    try:
        churn.start()
        deadline = time.monotonic() + 60  # a safety net only: the loop ends on counts
        while (polls < 15 or len(made) < 5) and time.monotonic() < deadline:
            snap = engine.poll()
            polls += 1
            for f in snap.flows:
                if f.laddr == "127.0.0.1" and f.netns != netns.current_inode():
                    seen["closed" if f.closed else "live"] += 1
    finally:
        stop.set()
        churn.join(30)
        engine.close()
    assert polls >= 15 and len(made) >= 5, (polls, len(made))
    assert seen["live"] or seen["closed"], "no connection of a vanishing namespace was ever seen"
    assert not any(os.path.exists(f"/run/netns/{n}") for n in made)


def test_namespace_walk_skips_namespaces_deleted_between_listing_and_entering():
    """The race itself, made certain: a namespace listed, then deleted, then entered."""
    name = f"tt-gone-{os.getpid() % 10000}"
    sh("ip", "netns", "add", name)
    paths = netns.namespace_paths()
    sh("ip", "netns", "del", name)
    real = netns.namespace_paths
    try:
        netns.namespace_paths = lambda: paths
        inodes = [ino for ino, _ in netns.in_each(lambda: 1)]
    finally:
        netns.namespace_paths = real
    assert netns.current_inode() in inodes


def test_processes_that_exit_mid_poll():
    """40 short-lived clients connect, send, and exit while the engine polls: one is started
    before each poll, so exits and polls interleave whatever the machine's load."""
    engine = CoreEngine(EngineOptions(interval_s=0.05, latency="off"))
    lsn = socket.socket()
    lsn.bind(("127.0.0.1", 0))
    lsn.listen(128)
    lsn.settimeout(0.01)
    port = lsn.getsockname()[1]
    code = ("import socket,sys,time; c=socket.create_connection(('127.0.0.1', int(sys.argv[1])));"
            "c.sendall(b'p'*777); time.sleep(float(sys.argv[2]))")
    kids: list[subprocess.Popen] = []
    servers: list[socket.socket] = []
    clients_seen: dict[int, object] = {}  # flow id -> its last sighting (closed ones leave after 3 polls)

    def accept_waiting() -> None:
        while True:
            try:
                servers.append(lsn.accept()[0])
            except socket.timeout:
                return

    def poll() -> None:
        for f in engine.poll().flows:
            if f.rport == port and f.laddr == "127.0.0.1":
                clients_seen[f.id] = f

    polls = 0
    try:
        while len(kids) < 40 or any(k.poll() is None for k in kids):
            if len(kids) < 40:
                kids.append(subprocess.Popen([sys.executable, "-c", code, str(port), str(JITTER.uniform(0, 0.1))]))
            accept_waiting()
            poll()
            polls += 1
        accept_waiting()
        client_ports = {s.getpeername()[1] for s in servers}
        for s in servers:
            recv_exactly(s, 777)
        for _ in range(5):
            time.sleep(0.05)
            poll()
        snap = engine.poll()
    finally:
        for k in kids:
            k.kill()
            k.wait()
        for s in servers:
            s.close()
        lsn.close()
        engine.close()
    kid_pids = {k.pid for k in kids}
    assert polls >= 40 and len(client_ports) == 40
    # Another test's connection may use our listener's number as its ephemeral port: keep ours.
    clients_seen = {i: f for i, f in clients_seen.items() if f.lport in client_ports}
    # every client names the process that made it, also those gone before a poll read them
    assert sorted(f.pid for f in clients_seen.values()) == sorted(kid_pids)
    # an exited client's end is the kernel's, waiting for the server's FIN: listed as ss lists it
    assert all((f.closed or f.state == "FIN_WAIT2") and f.bytes_sent == 777 for f in clients_seen.values()), \
        {(f.state, f.closed, f.bytes_sent) for f in clients_seen.values()}
    server_side = [f for f in snap.flows if f.lport == port and f.rport in client_ports]
    assert len(server_side) == 40 and all(f.pid == os.getpid() for f in server_side)


# -- mounts missing (private mount namespaces) ------------------------------------------

def run_unshared(unmount: str, *args: str) -> subprocess.CompletedProcess:
    """tcptop in a private mount namespace where `unmount` (a shell snippet) has run."""
    script = f"{unmount} && exec {sys.executable} -m tcptop {' '.join(args)}"
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def _mounts(fstype: str) -> list[str]:
    with open("/proc/mounts") as f:
        return [line.split()[1] for line in f if line.split()[2] == fstype]


def _unmount_all(fstype: str) -> str:
    points = _mounts(fstype)
    return " && ".join(f"umount -l {p}" for p in points) or "true"


def test_without_cgroup2_only_what_sock_ops_gives_is_degraded_with_its_reason():
    """sock_ops needs cgroup v2; RTT samples come from tcp_probe and stay counted."""
    before = loaded_prog_ids()
    c, s = loopback_pair()
    ports = {c.getsockname()[1], s.getsockname()[1]}  # --port also matches other sockets' ephemeral ports
    try:
        c.sendall(b"g" * 3000)
        recv_exactly(s, 3000)
        wait_idle(c)
        script = _unmount_all("cgroup2") + " && ! grep -q ' cgroup2 ' /proc/mounts"
        args = ("--json", "--count", "3", "--interval", "0.5", "--port", str(s.getsockname()[1]))
        with ThreadPoolExecutor(1) as pool:  # ping-pongs while it runs: samples it must count
            run = pool.submit(run_unshared, script, *args)
            rounds = 0
            while not run.done():
                c.sendall(b"p")
                recv_exactly(s, 1)
                s.sendall(b"q")
                recv_exactly(c, 1)
                rounds += 1
                time.sleep(0.02)
            r = run.result()
    finally:
        c.close()
        s.close()
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    snap = snapshot_from_json(r.stdout.splitlines()[-1])
    assert snap.run.hooks["cgroup sock_ops"] == "unavailable: cgroup v2 is not mounted"
    assert [d for d in snap.run.degraded if d.startswith("flight_size in final records of connections that "
                                                         "timed out") and "cgroup v2 is not mounted" in d]
    assert not [d for d in snap.run.degraded if "rtt_samples" in d]
    assert snap.run.hooks["iterator tcp"] == "ok" and snap.run.hooks["tracepoint tcp_probe"] == "ok"
    mine = [f for f in snap.flows if {f.lport, f.rport} == ports]
    lo, hi = sorted(f.bytes_sent for f in mine)
    assert hi - lo in (2999, 3000, 3001)  # each round: a byte each way, one may be under way
    assert rounds > 5 and all(f.rtt_samples > 0 for f in mine)
    assert not orphans_since(before)


def test_without_tracefs_only_the_syscall_tracepoints_are_lost():
    """Every hook but the accept() syscall tracepoints is a BTF tracepoint, an iterator or a
    cgroup program and needs no tracefs; those two are reported, and owners of accepted
    sockets are then found in the file tables."""
    with_fs = run_unshared("true", "--json", "--count", "1")
    without = run_unshared(_unmount_all("tracefs") + " && ! grep -q ' tracefs ' /proc/mounts",
                           "--json", "--count", "1")
    assert with_fs.returncode == 0 and without.returncode == 0, without.stderr
    assert without.stderr == ""
    run_with = snapshot_from_json(with_fs.stdout).run
    run_without = snapshot_from_json(without.stdout).run
    syscalls = {h for h in run_with.hooks if h.startswith("tracepoint syscalls/")}
    assert syscalls == {"tracepoint syscalls/sys_exit_accept4", "tracepoint syscalls/sys_exit_accept"}
    assert {h: v for h, v in run_without.hooks.items() if h not in syscalls} == \
        {h: v for h, v in run_with.hooks.items() if h not in syscalls}
    for h in syscalls:
        assert run_without.hooks[h].startswith("unavailable: no tracepoint syscalls/sys_exit_accept")
        assert "tracefs not mounted" in run_without.hooks[h]
    assert [d for d in run_without.degraded if d.startswith("owners of accepted sockets at once")]


def test_without_btf_one_line_and_nothing_loaded():
    # --engine core: with BCC installed, "auto" runs the BCC engine there (test_bcc_engine.py)
    r = run_unshared("mount -t tmpfs none /sys/kernel/btf", "--json", "--count", "1", "--engine", "core")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("tcptop: ") and "BTF" in r.stderr


# -- output faults with the live engine --------------------------------------------------

def test_json_to_a_full_disk_is_one_line_and_detaches():
    before = loaded_prog_ids()
    with open("/dev/full", "w") as full:
        r = subprocess.run(TCPTOP + ["--json", "--interval", "0.2"], stdout=full, stderr=subprocess.PIPE,
                           text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 1
    assert r.stderr == "tcptop: cannot write to stdout: No space left on device\n"
    assert not orphans_since(before)


def test_json_with_stdout_closed_is_one_line_before_loading_anything():
    r = subprocess.run(TCPTOP + ["--json"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                       cwd=ROOT, timeout=60, preexec_fn=lambda: os.close(1))
    assert r.returncode == 1
    assert r.stderr == "tcptop: cannot write snapshots: stdout is closed\n"


def test_json_into_a_pipe_closed_early_ends_quietly():
    """`tcptop --json | head -1`: the reader goes away; no traceback, status 0."""
    p = subprocess.run(f"{sys.executable} -m tcptop --json --interval 0.1 | head -c 10 >/dev/null; "
                       "echo ${PIPESTATUS[0]}", shell=True, executable="/bin/bash", capture_output=True,
                       text=True, cwd=ROOT, timeout=60)
    assert p.stdout.strip() == "0" and p.stderr == ""


def test_the_screen_without_a_terminal_refuses_in_one_line(tmp_path):
    """Before, escape codes were drawn into the file."""
    out = tmp_path / "out.txt"
    with open(out, "w") as f:
        r = subprocess.run(TCPTOP, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                           timeout=60)
    assert r.returncode == 2
    text = out.read_text()
    assert text == ("tcptop: the screen needs a terminal and stdout is not one; "
                    "use --json to write snapshots to a file or a pipe\n")
