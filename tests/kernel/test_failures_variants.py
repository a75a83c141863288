"""The failure engine on stricter kernel builds: variants of failures.bpf.c that the verifier
refuses in one place on every kernel (tests/kernel/bpf/). Only that part is lost, the loss names
its true cause, and what remains still agrees with the kernel's own accounting."""

from __future__ import annotations

import os
import socket
import time

import pytest

from kit import NsPair, variant
from tcptop.engines.core.failures import OWNER_WAIT_POLLS, FailureEngine


def test_refused_listener_files_iterator_walks_every_namespace_instead():
    """task_file refused: listeners of other namespaces are still found, one TCP walk per namespace."""
    fe = FailureEngine(object_path=variant("failures_refused_files"))
    pair = NsPair.create("fvfiles")
    try:
        hook = fe.hooks["iterator task_file (listeners)"]
        assert hook.startswith("unavailable: the verifier refused it (R1 type=untrusted_ptr_")
        assert hook.endswith("every namespace is walked instead")
        assert fe.hooks["iterator tcp (listeners)"] == "ok" and fe.degraded == []
        lsn = pair.socket_in(pair.b)
        lsn.bind((pair.addr_b, 0))
        lsn.listen(3)
        port = lsn.getsockname()[1]
        report = fe.poll(())
        mine = [x for x in report.listeners if x.netns == pair.inode(pair.b) and x.lport == port]
        assert len(mine) == 1 and mine[0].accept_queue_max == 3 and mine[0].pid == os.getpid()
        lsn.close()
        # one of this namespace's, opened after the first poll: named once the next /proc scan may run
        here = socket.socket()
        here.bind(("127.0.0.1", 0))
        here.listen(2)
        port, scans, deadline = here.getsockname()[1], fe.owners.scans, time.monotonic() + 5
        while not (got := [x for x in fe.poll(()).listeners if x.lport == port and x.pid]):
            assert time.monotonic() < deadline, "this namespace's new listener never named"
            time.sleep(0.05)
        assert got[0].pid == os.getpid() and fe.owners.scans == scans + 1
        here.close()
    finally:
        fe.close()
        pair.close()


SO_COOKIE = 57


def test_untrusted_file_socket_still_names_every_listener_by_its_cookie():
    """The socket reached from a file is untrusted (as on 6.18.44-fc-v1045): the listeners'
    task_file program loads all the same and reads the cookie the socket holds. A listener
    nobody asked a cookie of (0 there) gets its own from one walk of its namespace: listed
    once, under the id SO_COOKIE gives, with its owner, at the first poll that sees it."""
    fe = FailureEngine(object_path=variant("failures_untrusted_files"))
    pair = NsPair.create("fvuntr")
    try:
        assert fe.hooks["iterator task_file (listeners)"] == "ok" and fe.degraded == []
        lsn = pair.socket_in(pair.b)
        lsn.bind((pair.addr_b, 0))
        lsn.listen(5)
        port = lsn.getsockname()[1]
        mine = [x for x in fe.poll(()).listeners if x.netns == pair.inode(pair.b) and x.lport == port]
        cookie = int.from_bytes(lsn.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8), "little")
        assert [(x.id, x.pid, x.accept_queue_max) for x in mine] == [(cookie, os.getpid(), 5)]
        again = [x for x in fe.poll(()).listeners if x.netns == pair.inode(pair.b) and x.lport == port]
        assert [(x.id, x.pid) for x in again] == [(cookie, os.getpid())]
        lsn.close()
    finally:
        fe.close()
        pair.close()


def test_refused_drop_program_loses_only_drop_reasons():
    """kfree_skb refused: drops by reason are reported lost with the verifier's reason; failed
    connects and resets are still counted exactly."""
    fe = FailureEngine(object_path=variant("failures_refused_drop"))
    pair = NsPair.create("fvdrop")
    try:
        assert fe.hooks["tracepoint kfree_skb"].startswith("unavailable: the verifier refused it (R1 type=untrusted_ptr_")
        assert [d for d in fe.degraded if d.startswith("drops by reason: tracepoint kfree_skb unavailable")]
        others = {h: v for h, v in fe.hooks.items() if h != "tracepoint kfree_skb"}
        assert set(others.values()) == {"ok"}
        for _ in range(2):
            c = pair.socket_in(pair.a)
            with pytest.raises(ConnectionRefusedError):
                c.connect((pair.addr_b, 9))
            c.close()
        for _ in range(OWNER_WAIT_POLLS):  # no flow engine here: they wait for it, then count for pid 0
            report = fe.poll(())
        got = [f for f in report.failures if f.netns == pair.inode(pair.a)]
        assert [(f.pid, f.rport, f.reason, f.count) for f in got] == [(0, 9, "ECONNREFUSED", 2)]
    finally:
        fe.close()
        pair.close()
