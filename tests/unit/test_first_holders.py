"""The first poll's holder records (task_file walk) read as columns: the lowest pid holding each
socket (by inode: the first walk comes before any cookie is made) names it, and each process's
comm is its last record's."""

from tcptop.engines.core.flow_layout import HOLDER
from tcptop.engines.core.flows import _holders_of


def test_lowest_pid_names_a_shared_socket_and_last_record_names_a_process():
    records = [(0, 1 << 63 | 7, 300, 3, b"server"), (0, 8, 300, 4, b"server"), (3, 1 << 63 | 7, 200, 9, b"parent"),
               (0, 9, 200, 5, b"renamed"), (5, 8, 400, 3, b"worker")]
    holders, comms = _holders_of(b"".join(HOLDER.pack(*r) for r in records))
    assert holders == {1 << 63 | 7: 200, 8: 300, 9: 200}
    assert {pid: c.rstrip(b"\0") for pid, c in comms.items()} == {300: b"server", 200: b"renamed", 400: b"worker"}


def test_no_records_and_a_torn_tail():
    assert _holders_of(b"") == ({}, {})
    one = HOLDER.pack(0, 5, 42, 1, b"x")
    assert _holders_of(one + one[:10]) == ({5: 42}, {42: b"x" + bytes(15)})
