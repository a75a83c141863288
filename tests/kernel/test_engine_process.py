"""Who owns a flow: pid and comm of another process, for busy and for idle sockets."""

import subprocess
import sys
import textwrap

from kit import poll_until
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
    """The live flow whose local port is `port` (earlier runs may have left TIME_WAIT ends on it)."""
    return lambda snap: next((f for f in snap.flows if f.lport == port and f.state == "ESTABLISHED"), None)


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
    """The socket is older than tcptop and idle, so no event names its owner: /proc/PID/fd does."""

    p, port = run_child("idle")
    e = CoreEngine(EngineOptions(interval_s=0.2))
    try:
        f = poll_until(e, live(port))
        assert f.since_start
        assert f.pid == p.pid
        assert f.comm == "tt-owner-idle"
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
