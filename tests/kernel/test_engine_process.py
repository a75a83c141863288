"""Who owns a flow: pid and comm of another process, for busy and for idle sockets."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from kit import poll_until, recv_exactly, ss_owners
from tcptop.engines import EngineOptions
from tcptop.engines.core.engine import CoreEngine

CHILD = textwrap.dedent("""
    import ctypes, socket, sys, time
    ctypes.CDLL(None).prctl(15, b"tt-owner-%s", 0, 0, 0)   # PR_SET_NAME: a comm we can recognise
    lsn = socket.socket(); lsn.bind(("127.0.0.1", 0)); lsn.listen()
    c = socket.create_connection(lsn.getsockname()); s, _ = lsn.accept()
    if sys.argv[1] == "busy":
        c.sendall(b"x" * 1000); s.recv(1000)
    print(c.getsockname()[1], flush=True)
    sys.stdin.read()
""")


def live(port):
    """The live loopback flow whose local port is `port` (earlier runs may have left TIME_WAIT ends
    on it, other namespaces may use the same number)."""
    return lambda snap: next((f for f in snap.flows if f.lport == port and f.laddr == "127.0.0.1"
                              and f.state == "ESTABLISHED"), None)


def run_child(mode):
    p = subprocess.Popen([sys.executable, "-c", CHILD % mode, mode], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    port = int(p.stdout.readline())
    return p, port


def test_owner_of_busy_socket_is_the_sending_process(engine):
    p, port = run_child("busy")
    try:
        f = poll_until(engine, live(port))
        assert f.pid == p.pid
        assert f.comm == "tt-owner-busy", f
        assert f.write_bytes == 1000
    finally:
        p.stdin.close()
        p.wait(5)


def test_owner_of_idle_socket_found_from_its_file_table():
    """The socket is older than tcptop and idle, so no event names its owner: the file tables do,
    in the first snapshot already where the kernel has the file-table iterator (the first file
    walk goes by socket inode: it runs before the TCP walk has made any cookie); where its
    verifier refuses it, /proc/PID/fd does in a later poll, and the hook says why."""

    p, port = run_child("idle")
    e = CoreEngine(EngineOptions(interval_s=0.2))
    try:
        snap = e.poll()
        files = e.flows.hooks["iterator task_file"]
        if files != "ok":
            assert files.startswith("unavailable"), files
            poll_until(e, live(port), lambda f: f.pid == p.pid)
            snap = e.poll()
        f = live(port)(snap)
        assert f is not None and f.since_start
        assert (f.pid, f.comm) == (p.pid, "tt-owner-idle")
        ends = [g for g in snap.flows if g.laddr == "127.0.0.1" and port in (g.lport, g.rport)
                and g.state == "ESTABLISHED"]
        assert sorted((g.lport == port, g.pid, g.comm) for g in ends) == \
            [(False, p.pid, "tt-owner-idle"), (True, p.pid, "tt-owner-idle")]
        assert e.flows.owners.scans >= 1
    finally:
        e.close()
        p.stdin.close()
        p.wait(5)


def test_container_identity_from_the_owners_cgroup(engine):
    """A process in a container-style cgroup (docker-<64 hex>.scope) is labelled with that container."""
    import os

    from tcptop.engines.core.libbpf import cgroup2_root

    cid = "%064x" % (0xC0FFEE0000 + os.getpid())
    path = os.path.join(cgroup2_root(), f"tcptop-test-{os.getpid()}", f"docker-{cid}.scope")
    os.makedirs(path)
    p = None
    try:
        p, port = run_child("busy")
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(p.pid))
        f = poll_until(engine, live(port), lambda f: f.container != "")
        assert f.pid == p.pid
        assert f.container == cid[:12]
        assert f.cgroup == f"/tcptop-test-{os.getpid()}/docker-{cid}.scope"
    finally:
        if p is not None:
            p.stdin.close()
            p.wait(5)
        os.rmdir(path)
        os.rmdir(os.path.dirname(path))


FORKER = textwrap.dedent("""
    import os, signal, socket, sys, time
    c = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    print(c.getsockname()[1], flush=True)
    if os.fork() == 0:                # the child: sends on SIGUSR2
        signal.signal(signal.SIGUSR2, lambda *a: c.sendall(b"k" * 500))
        print(os.getpid(), flush=True)
        while True:
            time.sleep(1)
    def let_go(*a):                   # the parent: lets go of its copy on SIGUSR1 (and exits, or stays)
        c.close()
        if sys.argv[2] == "exit":
            os._exit(0)
    signal.signal(signal.SIGUSR1, let_go)
    while True:
        time.sleep(1)
""")


@pytest.mark.parametrize("mode", ["stays", "exit"])
def test_owner_is_the_process_that_holds_the_socket_now(engine, mode):
    """A process connects and forks: both hold the socket, the one that connected is its owner.
    Then the parent lets go of it (and stays, or exits) and the child uses it: the owner is the
    child, as ss -p says."""
    lsn = socket.socket()
    lsn.bind(("127.0.0.1", 0))
    lsn.listen()
    p = subprocess.Popen([sys.executable, "-c", FORKER, str(lsn.getsockname()[1]), mode], stdout=subprocess.PIPE,
                         text=True)
    child = 0
    try:
        port = int(p.stdout.readline())
        child = int(p.stdout.readline())
        s, _ = lsn.accept()
        assert poll_until(engine, live(port), lambda f: f.pid == p.pid).pid == p.pid
        assert ss_owners(port) == {p.pid, child}
        os.kill(p.pid, signal.SIGUSR1)
        time.sleep(0.1)
        os.kill(child, signal.SIGUSR2)
        recv_exactly(s, 500)
        f = poll_until(engine, live(port), lambda f: f.pid == child, timeout=8)
        assert ss_owners(port) == {child}
        assert f.write_bytes == 500
        s.close()
    finally:
        for pid in (p.pid, child):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        p.wait(5)
        lsn.close()


def test_comm_follows_exec():
    """A process connects, then exec()s another program that keeps the socket: the flow's comm
    is the new program's, as ss -p says, though the socket never moved a byte since."""
    lsn = socket.socket()
    lsn.bind(("127.0.0.1", 0))
    lsn.listen()
    code = ("import os, socket, sys\n"
            "c = socket.create_connection(('127.0.0.1', int(sys.argv[1]))); c.set_inheritable(True)\n"
            "print(c.getsockname()[1], flush=True); sys.stdin.readline()\n"
            "os.execvp('sleep', ['sleep', '30'])\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(lsn.getsockname()[1])], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    e = CoreEngine(EngineOptions(interval_s=0.2, latency="off"))
    try:
        port = int(p.stdout.readline())
        s, _ = lsn.accept()
        poll_until(e, live(port))
        p.stdin.write("exec\n")
        p.stdin.flush()
        f = poll_until(e, live(port), lambda f: f.comm == "sleep", timeout=5)
        assert f.pid == p.pid and ss_owners(port) == {p.pid}
        s.close()
    finally:
        e.close()
        p.kill()
        p.wait(5)
        lsn.close()
