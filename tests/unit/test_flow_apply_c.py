"""The flow engine's passes over records in C leave the engine exactly as the Python ones do.

py_apply_live, py_apply_finals and py_tw_pass are the reference (the kernel tests check the
engine against TCP_INFO and the tests' own counts); _flow_decode's apply_live, apply_finals
and tw_pass must agree with them on every track, flow and set, for any sequence of records:
new and known sockets, final records (closed, reset, timed out, late reads, ends the kernel
may keep), ends the kernel keeps (found by the walk or by the lookups after final records),
sockets gone, owners known, unknown or nameless, files shared, namespaces changing.
"""

from __future__ import annotations

import collections
import gc
import heapq
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from tcptop.engines.core import flow_decode as fd
from tcptop.engines.core import flows as F

from tests.unit.test_flow_decode import _record

OWNERS = {100: ("redis-server", "/system.slice/redis.service", ""), 200: ("", "/user.slice", ""),
          300: ("nginx", "/kubepods/pod1/abc", "abc")}  # 400: exited (lookup gives None)
FLAGS = (F.REC_QUIESCENT, F.REC_SEEN_BIRTH, F.REC_CLIENT, F.REC_SERVER, F.REC_NO_COUNTERS, F.REC_LOOKUP_V4)
SLOTS = F._Track.__slots__
# a kept end's timer: near the last one seen (within 1 s: not a change) or not, or anything
TW_LEFT = st.sampled_from([0, 900, 1500, 2500, 59999]) | st.integers(0, 2**32 - 1)
PASSES = {"C": (fd._c.apply_live, fd._c.apply_finals, fd._c.tw_pass, fd._c.expire_pass, fd._c.take_notices),
          "Python": (F.py_apply_live, F.py_apply_finals, F.py_tw_pass, F.py_expire_pass, F.py_take_notices)}
SWEEPS = {"C": (fd._c.tw_sweep, fd._c.close_kept), "Python": (F.py_tw_sweep, F.py_close_kept)}


class _Owners:
    """Who holds what, as the engine's Owners would find it in /proc (fixed here); the names
    the kernel gave (note, exec, exit, fork), kept as Owners keeps them."""

    def __init__(self):
        self.names: dict[int, str] = {}
        self.calls = 0

    def lookup(self, pid):
        return OWNERS.get(pid)

    def note(self, pid, comm, exec_=False):
        self.calls += 1
        if not pid:
            return False
        got = self.names.get(pid)
        if got is not None and not exec_:
            if comm and got != comm:
                self.names[pid] = comm
                return True
            return False
        self.names[pid] = comm or "?"
        return got is None or got != self.names[pid]

    def exited(self, pid, comm=""):
        self.names.pop(pid, None)

    def born(self, pid):
        self.names.pop(pid, None)

    def last_known(self, pid):
        return (self.names.get(pid, ""), "", "")

    def pid_of_inode(self, ino):
        return 300 if ino % 3 == 0 else 0


def _engine(first, redecode, no_counters):
    e = object.__new__(F.FlowEngine)
    e._tracks, e._flows, e._pinfo, e._by_pid = {}, {}, {}, {}
    e.touched, e._watch, e._verify = set(), set(), set()
    e._redecode, e._no_counters = set(redecode), set(no_counters)
    e._ns_count = collections.Counter()
    e._closing, e._tw_due, e._tw_at, e._tw_keys = collections.deque(), [], {}, {}
    e._tw_due_room = F.TW_DUE_SLACK
    e._boot_offset, e._changed, e._polls, e.closed_keep_polls = 1764600000.25, False, 2, 3
    e.owners, e.hooks, e._first_holders = _Owners(), {}, first
    e._forks = []
    return e


ADDRS = [bytes(range(16)), bytes(10) + b"\xff\xff" + bytes([127, 0, 0, 1])]


def _same_places(draw, v: list) -> None:
    """A record's 4-tuple from a few, so sockets share places (a new socket where a kept end was)."""
    v[fd.I_SPORT], v[fd.I_DPORT] = draw(st.sampled_from([80, 5000])), draw(st.sampled_from([80, 5000]))
    v[fd.I_SADDR], v[fd.I_DADDR] = draw(st.sampled_from(ADDRS)), draw(st.sampled_from(ADDRS))
    v[fd.I_FAMILY] = draw(st.sampled_from([2, 10]))


@st.composite
def batches(draw):
    """Records of a few sockets over a few polls (final records, then live ones, as a poll
    applies them), with fields that steer the passes drawn from their interesting values and
    the rest anywhere in their C range."""
    cookies = draw(st.lists(st.integers(1, 2**64 - 1), min_size=1, max_size=6, unique=True))
    out = []
    for _ in range(draw(st.integers(1, 3))):
        batch = []
        for _ in range(draw(st.integers(0, 12))):
            v = list(_record(draw))
            v[fd.I_COOKIE] = draw(st.sampled_from(cookies))
            v[fd.I_KIND] = draw(st.sampled_from([F.KIND_LIVE] * 6 + [F.KIND_TW, F.KIND_GONE]))
            v[fd.I_FLAGS] = sum(f for f in FLAGS if draw(st.booleans()))
            v[fd.I_PID] = draw(st.sampled_from([0, 100, 200, 300, 400]))
            v[fd.I_REFS] = draw(st.integers(0, 3))
            v[fd.I_NETNS] = draw(st.sampled_from([4026531840, 4026532999]))
            v[fd.I_STATE] = draw(st.sampled_from([1, 4, 5, 6, 7, 11]))
            v[fd.I_EST] = draw(st.sampled_from([0, 10**12]))
            v[fd.I_INO] = draw(st.integers(1, 30))
            v[fd.I_COMM] = draw(st.sampled_from([b"redis-server\0\0\0\0", bytes(16), b"curl" + bytes(12)]))
            v[fd.I_TW_LEFT] = draw(TW_LEFT)
            if draw(st.booleans()):
                _same_places(draw, v)
            batch.append(tuple(v))
        finals = []
        for _ in range(draw(st.integers(0, 6))):
            v = list(draw(st.sampled_from(batch))) if batch and draw(st.booleans()) else list(_record(draw))
            v[fd.I_COOKIE] = draw(st.sampled_from(cookies))
            v[fd.I_KIND] = draw(st.sampled_from([F.KIND_CLOSED] * 4 + [F.KIND_LATE]))
            v[fd.I_FLAGS] = sum(f for f in FLAGS + (F.REC_RESET_RCVD, F.REC_TIMED_OUT) if draw(st.booleans()))
            v[fd.I_PID] = draw(st.sampled_from([0, 100, 200, 300, 400]))
            v[fd.I_STATE] = draw(st.sampled_from([1, 4, 5, 7, 8, 11]))
            v[fd.I_NETNS] = draw(st.sampled_from([4026531840, 4026532999]))
            finals.append(tuple(v))
        kept = []  # what the lookups of ends the kernel may keep found
        for _ in range(draw(st.integers(0, 4))):
            v = list(_record(draw))
            v[fd.I_COOKIE] = draw(st.sampled_from(cookies))
            v[fd.I_KIND] = draw(st.sampled_from([F.KIND_TW, F.KIND_TW, F.KIND_LIVE, F.KIND_GONE]))
            v[fd.I_STATE] = draw(st.sampled_from([5, 6]))
            v[fd.I_TW_LEFT] = draw(TW_LEFT)
            v[fd.I_NETNS] = draw(st.sampled_from([4026531840, 4026532999]))
            if draw(st.booleans()):
                _same_places(draw, v)
            kept.append(tuple(v))
        notices = []
        for _ in range(draw(st.integers(0, 10))):
            n = list(F.NOTICE.unpack(bytes(F.NOTICE.size)))
            n[0] = draw(st.sampled_from(cookies + [v[fd.I_COOKIE] for v in finals]))
            n[F._NK] = draw(st.sampled_from([F.NOTE_DIRTY] * 4 + [F.NOTE_OWNER] * 4 +
                                            [F.NOTE_EXEC, F.NOTE_EXIT, F.NOTE_FORK]))
            n[F._NPID] = draw(st.sampled_from([0, 100, 200, 300]))
            n[F._NNS] = draw(st.sampled_from([4026531840, 4026532999]))
            n[F._NFAM] = draw(st.sampled_from([2, 10]))
            n[F._NV4] = draw(st.integers(0, 1))
            n[F._NSPORT], n[F._NDPORT] = draw(st.integers(0, 65535)), draw(st.integers(0, 65535))
            n[F._NSADDR], n[F._NDADDR] = draw(st.binary(min_size=16, max_size=16)), draw(st.binary(min_size=16, max_size=16))
            n[F._NCOMM] = draw(st.sampled_from([b"redis-server\0\0\0\0", bytes(16), b"curl" + bytes(12)]))
            notices.append(tuple(n))
        out.append((finals, kept, batch, draw(st.booleans()), draw(st.integers(0, 3)), notices))
    # the first walk's holders, by socket inode (records draw theirs from 1..30)
    first = draw(st.none() | st.dictionaries(st.integers(0, 31), st.sampled_from([100, 200, 400])))
    some = st.sets(st.sampled_from(cookies))
    return out, first, draw(some), draw(some)


def _state(e) -> dict:
    return {"tracks": {c: tuple(getattr(tr, s) for s in SLOTS) for c, tr in e._tracks.items()},
            "flows": e._flows, "touched": e.touched, "watch": e._watch, "verify": e._verify,
            "redecode": e._redecode, "no_counters": e._no_counters, "by_pid": e._by_pid,
            "ns_count": dict(e._ns_count), "closing": list(e._closing), "tw_due": sorted(e._tw_due),
            "changed": e._changed, "pinfo": e._pinfo}


def test_the_c_passes_are_used():
    """`make setup` builds them; without them the engine works, ~3x slower a busy poll."""
    assert (F._live_pass, F._finals_pass, F._tw_pass, F._expire_pass, F._notices_pass) == PASSES["C"]


@settings(max_examples=400, deadline=None)
@given(batches())
def test_c_pass_equals_python(case):
    polls, first, redecode, no_counters = case
    with mock.patch("time.time", return_value=1764612345.5):
        engines, checks = [], []
        for impl, (live_pass, finals_pass, tw_pass, expire_pass, notices_pass) in PASSES.items():
            e = _engine(first, redecode, no_counters)
            got = []
            for n, (finals, kept, recs, lookups_ok, later, notices) in enumerate(polls):
                e.touched = set()  # as refresh() starts a poll: what changed, poll by poll
                notices_pass(list(notices), list(finals), e, 10**9 * n)
                got.append((sorted(e._redecode), sorted(e._watch), e.owners.names, list(e._forks)))
                got.append(finals_pass(list(finals), e, lookups_ok))
                got.append(tw_pass(list(kept), e))
                live_pass(list(recs), e, first)
                sweep, close = SWEEPS[impl]
                kills = sweep(e._tracks, set(e.touched), e._tw_at, e._tw_keys)
                got.append((sorted(kills), dict(e._tw_at), dict(e._tw_keys)))
                close(sorted(kills), e)
                e._polls += later  # closed flows stay listed closed_keep_polls polls, then go
                expire_pass(e)
                got.append(sorted(e.touched))
            engines.append(e)
            checks.append(got)
    assert checks[0] == checks[1]
    # tracks, however made, are out of the cyclic collector's sight (they cannot be in a cycle)
    assert not any(gc.is_tracked(tr) for tr in engines[0]._tracks.values())
    # so are the (poll, cookie) of closed flows and the (time, cookie) of kept ends the C passes
    # queue, and the kept ends' records they merge: under a sustained churn these were most of
    # what each gen-0 collection walked (250-500 ms passes)
    e = engines[0]
    assert not any(gc.is_tracked(x) for x in e._closing) and not any(gc.is_tracked(x) for x in e._tw_due)
    assert not any(gc.is_tracked(tr.vals) for tr in e._tracks.values() if tr.kind == F.KIND_TW and tr.vals
                   and tr.vals[fd.I_KIND] != F.KIND_TW)
    c, py = (_state(e) for e in engines)
    assert c.keys() == py.keys()
    for k in c:
        assert c[k] == py[k], k
    # the lookups' wants, by namespace, made from the tracks' records where no notice gave one
    asked = sorted(engines[0]._tracks) + [12345678901]
    assert fd._c.wants_by_ns(engines[0]._tracks, asked) == F.py_wants_by_ns(engines[1]._tracks, asked)
    assert [tr.want for tr in engines[0]._tracks.values()] == [tr.want for tr in engines[1]._tracks.values()]
    for cookie, f in engines[0]._flows.items():  # the very values, types included (1 == 1.0 == True)
        g = engines[1]._flows[cookie]
        assert [type(getattr(f, n)) for n in fd.FIELDS] == [type(getattr(g, n)) for n in fd.FIELDS]


def test_c_passes_refuse_what_is_not_a_record():
    import pytest
    e = _engine(None, (), ())
    with pytest.raises(ValueError, match="whole record"):
        fd._c.apply_live([(1, 2, 3)], e, None)
    with pytest.raises(ValueError, match="whole record"):
        fd._c.apply_finals([(1, 2, 3)], e, True)
    with pytest.raises(ValueError, match="whole record"):
        fd._c.tw_pass([(1, 2, 3)], e)
    assert e._tracks == {} and e._flows == {}


def test_a_kept_end_changes_only_when_its_state_or_timer_moves():
    """Both passes, on one socket kept in TIME_WAIT and seen again (by the walk, then by the
    lookups after final records, in turn): a timer within 1 s of the last one leaves the flow
    as it was; one 1.5 s off, or a new state, makes a new flow."""
    base = list(fd.RECORD.unpack(bytes(fd.RECORD.size)))
    base[fd.I_COOKIE], base[fd.I_KIND], base[fd.I_PID], base[fd.I_FAMILY] = 7, F.KIND_TW, 100, 2
    seen = {}
    for name, (live_pass, _finals, tw_pass, _expire, _notices) in PASSES.items():
        e = _engine(None, (), ())
        flows = []
        with mock.patch("time.time", return_value=1764612345.5):
            for i, (left, state) in enumerate(((60000, 6), (59500, 6), (58500, 6), (58500, 5))):
                v = list(base)
                v[fd.I_TW_LEFT], v[fd.I_STATE] = left, state
                if i % 2:
                    assert tw_pass([tuple(v)], e) == {7}
                else:
                    live_pass([tuple(v)], e, None)
                flows.append(e._flows[7])
        assert flows[1] is flows[0]  # 0.5 s: as it was
        assert flows[2] is not flows[1] and flows[2].tw_expires_ts == round(1764612345.5 + 58.5, 3)
        assert flows[3].state == "FIN_WAIT2" and flows[3].tw_expires_ts == flows[2].tw_expires_ts
        seen[name] = [(f.state, f.tw_expires_ts, f.pid) for f in flows]
    assert seen["C"] == seen["Python"]


def test_untrack_takes_only_objects_of_plain_slotted_classes():
    """The failure engine's tallies and the flow engine's tracks leave the collector's sight;
    anything that could hold a cycle (a dict, a list, an object with a __dict__) is refused."""
    import pytest

    from tcptop.engines.core.failures import _Sock

    assert not gc.is_tracked(_Sock()) and not gc.is_tracked(_engine(None, (), ())._track(5, 0))

    class Open:
        pass

    for obj in ({}, [], Open(), object()):
        with pytest.raises(TypeError, match="plain slotted class"):
            fd.untrack(obj)


def test_a_process_named_again_after_its_exec_is_noted_again():
    """OWNER, EXEC, OWNER of one pid with the same name: the second OWNER is not the repeat
    of the first (the exec renamed the process in between), in both passes."""
    def notice(kind, cookie, comm=b"redis-server\0\0\0\0"):
        n = list(F.NOTICE.unpack(bytes(F.NOTICE.size)))
        n[0], n[F._NK], n[F._NPID], n[F._NNS], n[F._NFAM], n[F._NCOMM] = cookie, kind, 100, 4026531840, 2, comm
        return tuple(n)

    seen = {}
    for name, passes in PASSES.items():
        e = _engine(None, (), ())
        e._by_pid = {100: {41, 42}}
        with mock.patch.object(F, "read_comm", return_value="sleep"):
            passes[4]([notice(F.NOTE_OWNER, 1)], [], e, 0)
            e._redecode.clear()
            passes[4]([notice(F.NOTE_OWNER, 2), notice(F.NOTE_EXEC, 0), notice(F.NOTE_OWNER, 3)], [], e, 0)
        assert e.owners.names[100] == "redis-server"  # not "sleep": the last OWNER named it
        assert e._redecode == {2, 3, 41, 42}
        assert e._tracks[3].owner == 100
        seen[name] = (dict(e.owners.names), sorted(e._redecode))
    assert seen["C"] == seen["Python"]


def test_pair_and_replaced_leave_the_collector_only_what_cannot_be_in_a_cycle():
    import pytest
    p = fd.pair(3, 1.5)
    assert p == (3, 1.5) and not gc.is_tracked(p)
    with pytest.raises(TypeError, match="two ints or floats"):
        fd.pair(3, [])
    v = (1, b"ab", 2.5, True)
    r = fd.replaced(v, 1, 7)
    assert r == (1, 7, 2.5, True) and r is not v and not gc.is_tracked(r)
    held = fd.replaced(v, 0, [])  # a list could lead back to the tuple: it stays in sight
    assert held == ([], b"ab", 2.5, True) and gc.is_tracked(held)
    for bad in ((v, 4, 0), (v, -1, 0), ([1, 2], 0, 0)):
        with pytest.raises(TypeError, match="a tuple, an index"):
            fd.replaced(*bad)


def test_without_the_c_helpers_the_engine_takes_its_python_passes():
    """A host where the C modules did not build still imports and runs the engine (slower)."""
    import subprocess
    import sys
    code = ("import tcptop.native as n; n.load = lambda name: (None, 'not built'); "
            "import tcptop.engines.core.flows as F, tcptop.engines.core.flow_decode as fd; "
            "assert fd.DECODER.startswith('Python') and F._wants_pass is F.py_wants_by_ns; "
            "assert (F._live_pass, F._finals_pass) == (F.py_apply_live, F.py_apply_finals); "
            "assert fd.pair(1, 2.5) == (1, 2.5) and fd.replaced((1, 2), 0, 3) == (3, 2); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def test_a_kept_end_goes_when_a_socket_takes_its_place():
    """A TIME_WAIT end is dropped by the kernel, with no event, when a new socket takes its
    4-tuple (a SYN reusing it, a connect reusing its port): a socket born after it ended closes
    it; one born before does not; of two kept ends of one place the later stays."""
    base = list(fd.RECORD.unpack(bytes(fd.RECORD.size)))
    base[fd.I_FAMILY], base[fd.I_SPORT], base[fd.I_DPORT] = 2, 5000, 41000
    base[fd.I_SADDR] = base[fd.I_DADDR] = bytes([127, 0, 0, 1]) + bytes(12)
    base[fd.I_NETNS], base[fd.I_PID] = 4026531840, 100

    def rec(cookie, kind, now, state=1, est=0, sport=5000):
        v = list(base)
        v[fd.I_COOKIE], v[fd.I_KIND], v[fd.I_NOW], v[fd.I_STATE], v[fd.I_SPORT] = cookie, kind, now, state, sport
        v[fd.I_EST], v[fd.I_FLAGS] = est, F.REC_SEEN_BIRTH if est else 0
        return tuple(v)

    for impl, (live_pass, _finals, _tw, _expire, _notices) in PASSES.items():
        e = _engine(None, (), ())

        def poll(recs, kept=()):  # kept ends as the walk finds them
            e.touched = set()
            live_pass(list(kept) + list(recs), e, None)
            sweep, close = SWEEPS[impl]
            close(sweep(e._tracks, set(e.touched), e._tw_at, e._tw_keys), e)

        with mock.patch("time.time", return_value=1764612345.5):
            poll([], [rec(1, F.KIND_TW, 1000, state=6)])          # kept end, ended at 1000
            poll([rec(2, F.KIND_LIVE, 900, est=900, sport=6000)])  # another place: nothing
            poll([rec(3, F.KIND_LIVE, 950, est=500)])              # born before it ended: stays
            assert e._flows[1].state == "TIME_WAIT" and not e._flows[1].closed, impl
            poll([rec(4, F.KIND_LIVE, 2000, est=1500)])            # born after: the kernel dropped it
            assert e._flows[1].closed and e._flows[4].state == "ESTABLISHED", impl
            assert e._tw_at == {} and e._tw_keys == {}, impl
            poll([], [rec(5, F.KIND_TW, 3000, state=6)])
            poll([], [rec(6, F.KIND_TW, 2500, state=6)])          # ended first, its record late: gone
            assert not e._flows[5].closed and e._flows[6].closed, impl
            poll([], [rec(7, F.KIND_TW, 4000, state=6)])          # a later one there: 5 goes
            assert e._flows[5].closed and not e._flows[7].closed, impl
            assert list(e._tw_keys) == [7] and list(e._tw_at.values()) == [7], impl


def test_the_due_heap_drops_entries_of_ends_no_longer_kept_and_looks_up_the_same():
    """Entries of ends closed or taken over, and repeats of one end, stay in the heap until due
    unless dropped: past its room the heap keeps only entries of ends still kept, and a poll
    after they are due looks up exactly the sockets it would have looked up without that."""
    wanted = {}
    for room in (10**9, 20):
        e = _engine(None, (), ())
        e._watch, e._tw_due_room = set(), room
        for cookie in range(1, 301):
            tr = F._Track()
            tr.kind = F.KIND_TW if cookie % 10 == 0 else F.KIND_CLOSED  # 30 still kept
            e._tracks[cookie] = tr
            for repeat in range(2):  # an end seen again as it was adds an entry
                heapq.heappush(e._tw_due, fd.pair(1000.0 + cookie + repeat, cookie))
        e._tracks.pop(150)  # forgotten since
        with mock.patch("time.time", return_value=900.0):
            assert e._lookup_set([]) == set()
        if room == 20:
            assert len(e._tw_due) == 2 * 29 and e._tw_due_room == 2 * 58 + F.TW_DUE_SLACK
            assert all(e._tracks[c].kind == F.KIND_TW for _, c in e._tw_due)
        with mock.patch("time.time", return_value=2000.0):
            wanted[room] = e._lookup_set([])
    assert wanted[20] == wanted[10**9] == {c for c in range(10, 301, 10) if c != 150}
