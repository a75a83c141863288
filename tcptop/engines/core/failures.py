"""Failure engine, user side: loads bpf/failures.bpf.o and reads why connections fail.

Pairs with bpf/failures.bpf.c (kernel side) and bpf/failures.h (the shared layouts,
mirrored below with ctypes and checked against the object's BTF at load). One poll = the
listener iterators and — only when something failed since the last poll — a drain of one
generation of the event maps: per-socket counts, packet-keyed events and failed connects.
User space keeps each socket's totals, so a poll's cost follows the sockets something
happened to since the one before (and the flows that went), not what has accumulated.
Nothing is read per packet.

What it gives the engine (`poll(flows)`): per flow, its drops by reason and its resets;
every listener with its queues and drops; failed connects by process (the owner the flow
engine names for the failed socket), destination and errno; and what no flow or listener
could be named for, host-wide by reason.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import gc
import ipaddress
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Iterable, Iterator, Mapping, NamedTuple

from tcptop import native
from tcptop.engines.core.flow_decode import untrack
from tcptop.engines.core.libbpf import (BpfError, BpfObject, IterReader, KernelBtf, Link, iter_read, object_path,
                                        refused_program)
from tcptop.host import netns
from tcptop.host.procs import Owners
from tcptop.model import NO_COUNTS, Failure, Flow, Listener

COMM_LEN = 16


# Mirrors of the enums in bpf/failures.h, checked against the object's BTF at load.
class TupleKind(enum.IntEnum):
    TK_DROP = 1
    TK_RESET_SENT = 2


class ResetDir(enum.IntEnum):
    RD_NONE = 0
    RD_SENT = 1
    RD_RECEIVED = 2


class FailStat(enum.IntEnum):
    FS_SOCK_FULL = 0
    FS_TUPLE_FULL = 1
    FS_CONNECT_FULL = 2
    FS_DROPS = 3
    FS_RESETS_SENT = 4
    FS_LISTENERS = 5
    FS_ENTERED = 6
    FS_MAX = 7


TK_DROP, TK_RESET_SENT = map(int, TupleKind)
RD_NONE, RD_SENT, RD_RECEIVED = map(int, ResetDir)
OVERFLOW_SLOTS = 512  # OVERFLOW_SLOTS in failures.bpf.c: drop reasons, then 256 + reset reasons


class SockDropKey(ctypes.Structure):
    _fields_ = [("cookie", ctypes.c_uint64), ("reason", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class SockEvents(ctypes.Structure):
    _fields_ = [
        ("resets_sent", ctypes.c_uint64),
        ("resets_received", ctypes.c_uint64),
        ("synack_retrans", ctypes.c_uint64),
        ("last_reset_ns", ctypes.c_uint64),
        ("last_reset_reason", ctypes.c_uint32),
        ("last_reset_dir", ctypes.c_uint32),
    ]


class TupleKey(ctypes.Structure):
    _fields_ = [
        ("kind", ctypes.c_uint32),
        ("netns", ctypes.c_uint32),
        ("reason", ctypes.c_uint32),
        ("family", ctypes.c_uint16),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
        ("saddr", ctypes.c_uint8 * 16),
        ("daddr", ctypes.c_uint8 * 16),
    ]


class ConnectFail(ctypes.Structure):
    _fields_ = [
        ("netns", ctypes.c_uint32),
        ("err", ctypes.c_int32),
        ("family", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("daddr", ctypes.c_uint8 * 16),
    ]


class ListenerRecord(ctypes.Structure):
    _fields_ = [
        ("cookie", ctypes.c_uint64),
        ("sock_ino", ctypes.c_uint64),
        ("netns", ctypes.c_uint32),
        ("accept_queue", ctypes.c_uint32),
        ("accept_queue_max", ctypes.c_uint32),
        ("syn_queue", ctypes.c_uint32),
        ("drops", ctypes.c_uint32),
        ("tgid", ctypes.c_uint32),
        ("saddr", ctypes.c_uint8 * 16),
        ("sport", ctypes.c_uint16),
        ("family", ctypes.c_uint16),
        ("comm", ctypes.c_char * COMM_LEN),
    ]


# The drained maps' entries unpacked straight from the batch buffers (a ctypes object per entry
# costs microseconds); checked against the mirrors' sizes, which the BTF check covers.
_EVENTS = struct.Struct("<QQQQII")   # struct sock_events
_DROP_KEY = struct.Struct("<QII")    # struct sock_drop_key
_COOKIE = _COUNT = struct.Struct("<Q")
assert _EVENTS.size == ctypes.sizeof(SockEvents) and _DROP_KEY.size == ctypes.sizeof(SockDropKey)

MIRRORS = {"sock_drop_key": SockDropKey, "sock_events": SockEvents, "tuple_key": TupleKey,
           "connect_fail": ConnectFail, "listener_record": ListenerRecord}
ENUM_MIRRORS = {"tuple_kind": TupleKind, "reset_dir": ResetDir, "fail_stat": FailStat}
LISTENER_SIZE = ctypes.sizeof(ListenerRecord)

# Programs, the tracepoint each needs, and what is lost without it.
HOOKS = {
    "fail_drop": ("tracepoint kfree_skb", "kfree_skb", "drops by reason"),
    "fail_reset_sent": ("tracepoint tcp_send_reset", "tcp_send_reset", "resets_sent and their reasons"),
    "fail_reset_received": ("tracepoint tcp_receive_reset", "tcp_receive_reset", "resets_received"),
    "fail_synack": ("tracepoint tcp_retransmit_synack", "tcp_retransmit_synack", "listeners' synack_retrans"),
    "fail_error": ("tracepoint inet_sk_error_report", "inet_sk_error_report",
                   "failures (connects that never established)"),
}
ITERATORS = {
    "fail_listeners": "iterator tcp (listeners)",
    "fail_listener_files": "iterator task_file (listeners)",
}
OPTIONAL = frozenset(HOOKS) | frozenset(ITERATORS)

KEEPER_PERIOD_S = 0.25  # how often _keep_generations looks at FS_ENTERED
# A socket whose cookie is unknown to the flows and listeners this many polls in a row is gone
# (or never shown): its totals are forgotten, and counted host-wide. One poll is not enough: a
# socket born after the flow engine's walk and before this engine's read is unknown once.
GONE_AFTER_POLLS = 2
# Distinct FlowFailures values kept for reuse (emptied when full).
FF_CACHE_SIZE = 4096
# Most of one CPU the walk over every open file (other namespaces' listeners) may take.
FILE_WALK_SHARE = 0.02
# A failed connect waits this many polls for the flow engine to show its socket (whose record
# names the process); after that it is counted for an unknown process (pid 0).
OWNER_WAIT_POLLS = 3

_MEMBARRIER_CMD_GLOBAL = 1
_SYS_MEMBARRIER = {"x86_64": 324, "aarch64": 283, "riscv64": 283, "ppc64le": 365, "s390x": 356}
_libc = ctypes.CDLL(None, use_errno=True)


def default_object_path() -> str:
    return object_path("failures.bpf.o")


def rcu_grace_period() -> None:
    """Wait until every BPF program that started before now has finished. Tracepoint programs
    run under rcu_read_lock(); membarrier(MEMBARRIER_CMD_GLOBAL) returns after synchronize_rcu()."""
    nr = _SYS_MEMBARRIER.get(os.uname().machine)
    if nr is None or _libc.syscall(nr, _MEMBARRIER_CMD_GLOBAL, 0, 0) != 0:
        time.sleep(0.05)  # no membarrier: programs run for microseconds, this is thousands of them


def _addr(family: int, raw) -> str:
    b = bytes(raw)
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, b[:4])
    a = ipaddress.IPv6Address(b)
    return str(a.ipv4_mapped) if a.ipv4_mapped else str(a)


def _counts(d: Mapping[str, int]) -> Mapping[str, int]:
    """An immutable reason table, ordered by count (largest first) then name."""
    if not d:
        return NO_COUNTS
    return MappingProxyType(dict(sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))))


@dataclass(frozen=True, slots=True)
class FlowFailures:
    """What the failure engine adds to one flow (the Flow fields of the same names)."""

    drops: Mapping[str, int]
    resets_sent: int
    resets_received: int
    last_reset_reason: str


@dataclass(frozen=True, slots=True)
class FailureReport:
    # Flows whose failures changed since the last poll, or that were first listed since their
    # sockets' first failure: a flow keeps its last FlowFailures while it is listed.
    per_flow: dict[int, FlowFailures]
    listeners: tuple[Listener, ...]
    failures: tuple[Failure, ...]
    unmatched: Mapping[str, Mapping[str, int]]
    lost: Mapping[str, int]  # events that could not be counted where they belong (maps full), by map


@dataclass(slots=True)
class _Sock:
    """User space's totals of one socket's failures: the kernel's per-socket counts, drained at
    every poll, and the packet-keyed events matched to it. It holds numbers and dicts of
    numbers only, so it is kept out of the cyclic collector's sight (40,000 of them under a
    churn of connections made every gen-2 collection slower)."""

    drops: dict[int, int] | None = None  # reason -> count
    resets_sent: int = 0
    resets_received: int = 0
    synack_retrans: int = 0
    sent_reasons: dict[int, int] | None = None  # resets sent by reason, for host-wide counts
    last_reset: tuple[int, int, int] = (0, RD_NONE, 0)  # (monotonic ns, reset_dir, reason) of the last reset
    shown: bool = False  # matched to a flow or listener at least once
    version: int = 0  # the poll that last changed it: what the listener cache compares

    def __post_init__(self) -> None:
        untrack(self)


class FailureEngine:
    """Owns the loaded failures.bpf.o. `poll(flows)` -> FailureReport; `close()` detaches all."""

    def __init__(self, object_path: str | None = None, max_sockets: int = 32768, max_tuples: int = 16384,
                 max_connects: int = 16384):
        """Map sizes, each per poll: sockets with drops or resets, packet-keyed and failed-connect entries."""
        self.hooks: dict[str, str] = {}
        self.degraded: list[str] = []
        self._denied_said = False
        self._files_next = 0.0   # monotonic time the next walk over the file tables may run
        self._files_last = b""   # what it returned
        self._sought: set[int] = set()  # our namespace's listeners when that walk ran
        self.owners = Owners()
        self._max = {"sock_drops_0": max_sockets, "sock_drops_1": max_sockets, "sock_events_0": max_sockets,
                     "sock_events_1": max_sockets, "tuples_0": max_tuples,
                     "tuples_1": max_tuples, "connect_fails_0": max_connects, "connect_fails_1": max_connects}
        self._obj: BpfObject | None = None
        self._links: list[Link] = []
        self._iter: Link | None = None
        self._files: Link | None = None
        self._host_netns = netns.current_inode()
        self._socks: dict[int, _Sock] = {}        # cookie -> totals, sockets something failed for
        self._unknown: dict[int, int] = {}        # cookie -> polls in a row not found
        self._shown_flows: set[int] = set()       # cookies in _socks listed as flows
        self._shown_listeners: set[int] = set()   # cookies in _socks listed as listeners
        self._listener_missing: dict[int, int] = {}  # shown listeners' cookies -> polls in a row not found
        self._ff_cache: dict[tuple, FlowFailures] = {}  # distinct values -> the one object
        self._polls = 0
        self._unmatched: dict[str, dict[int, int]] = {"drops": {}, "resets_sent": {}}
        self._listener_cache: dict[int, tuple[tuple, Listener]] = {}
        self._fail_counts: dict[tuple, int] = {}   # (pid, comm, netns, raddr, rport, reason) -> count
        self._fail_waiting: dict[int, tuple[ConnectFail, int]] = {}  # cookie -> (failure, polls waited)
        self._failures: tuple[Failure, ...] = ()
        self._overflow: tuple[int, list[int]] = (0, [0] * OVERFLOW_SLOTS)  # (FS_TUPLE_FULL when read, slots)
        btf = KernelBtf()
        try:
            self.drop_reasons = _names(btf.enum("skb_drop_reason"), "SKB_DROP_REASON_")
            self.reset_reasons = _names(btf.enum("sk_rst_reason"), "SK_RST_REASON_")
            missing = {prog: tp for prog, (_, tp, _) in HOOKS.items() if not btf.has_tracepoint(tp)}
        finally:
            btf.close()
        # Generations the keeper drained between polls, for the next poll (see _keep_generations).
        self._drain_lock = threading.Lock()
        self._early: list[_Drained] = []
        self._entered = 0  # FS_ENTERED at the last drain
        self._keeper: threading.Thread | None = None
        self._keeper_stop = threading.Event()
        try:
            self._load(object_path or default_object_path(), missing)
            self._attach()
        except BaseException:
            self.close()
            raise
        self._keeper = threading.Thread(target=self._keep_generations, name="tcptop-failure-maps", daemon=True)
        self._keeper.start()

    # -- set-up -------------------------------------------------------------

    def _load(self, path: str, missing: dict[str, str]) -> None:
        """Load every program this kernel takes; one the verifier refuses is left out on its own."""
        for prog, tp in missing.items():
            self._degrade(prog, f"no tracepoint {tp} on this kernel")
        refused: dict[str, str] = {}
        while True:
            obj = BpfObject(path)
            try:
                for cname, mirror in MIRRORS.items():
                    obj.check_mirror(cname, mirror)
                for cname, py_enum in ENUM_MIRRORS.items():
                    obj.check_enum_mirror(cname, py_enum)
                for prog in set(missing) | set(refused):
                    obj.programs[prog].set_autoload(False)
                for name, n in self._max.items():
                    obj.maps[name].set_max_entries(n)
                obj.load()
            except KeyError as e:  # a struct or enum of the contract is not in the object
                obj.close()
                raise BpfError(f"{os.path.basename(path)} does not carry the contract of bpf/failures.h ({e}); "
                               "rebuild with `make setup`", 0) from None
            except BpfError as e:
                obj.close()
                who = refused_program(e.log)
                if who is None or who[0] not in OPTIONAL or who[0] in refused:
                    raise
                refused[who[0]] = who[1]
                continue
            break
        self._obj = obj
        self._gen = 0  # mirrors the kernel's tuple_gen
        for prog, why in refused.items():
            if prog in ITERATORS:
                self.hooks[ITERATORS[prog]] = f"unavailable: the verifier refused it ({why})"
            else:
                self._degrade(prog, f"the verifier refused it ({why})")

    def _degrade(self, prog: str, why: str) -> None:
        what, _, lost = HOOKS[prog]
        self.hooks[what] = f"unavailable: {why}"
        self.degraded.append(f"{lost}: {what} unavailable ({why})")

    def _attach(self) -> None:
        assert self._obj is not None
        progs = self._obj.programs
        for prog, (what, _, _) in HOOKS.items():
            if what in self.hooks:
                continue
            try:
                self._links.append(progs[prog].attach())
                self.hooks[what] = "ok"
            except (BpfError, OSError) as e:
                self._degrade(prog, str(e).split(": ", 1)[-1])
        for prog, what in ITERATORS.items():
            if what in self.hooks:
                continue
            try:
                link = progs[prog].attach_iter()
            except BpfError as e:
                self.hooks[what] = f"unavailable: {e}"
                continue
            self.hooks[what] = "ok"
            if prog == "fail_listeners":
                self._iter = link
            else:
                self._files = link
        if self._iter is None:
            self.degraded.append("listeners: the TCP iterator is unavailable ("
                                 f"{self.hooks[ITERATORS['fail_listeners']].removeprefix('unavailable: ')})")
        elif self._files is None:
            self.hooks[ITERATORS["fail_listener_files"]] += "; every namespace is walked instead"

    def program_ids(self) -> list[int]:
        return self._obj.program_ids() if self._obj else []

    def stop_keeper(self) -> None:
        """No more drains between polls (close, and tests of what full maps do)."""
        self._keeper_stop.set()
        if self._keeper is not None:
            self._keeper.join()
            self._keeper = None

    def close(self) -> None:
        self.stop_keeper()
        for link in self._links:
            link.destroy()
        self._links.clear()
        for it in (self._iter, self._files):
            if it:
                it.destroy()
        self._iter = self._files = None
        if self._obj:
            self._obj.close()
            self._obj = None

    def stats(self) -> list[int]:
        """Run-level counters summed over CPUs, indexed by FailStat."""
        assert self._obj is not None
        return self._obj.maps["stats"].percpu_sums(int(FailStat.FS_MAX))

    # -- polling ------------------------------------------------------------

    def poll(self, flows: Iterable[Flow], by_id: Mapping[int, Flow] | None = None,
             touched: Iterable[int] | None = None) -> FailureReport:
        """`flows`: the flows listed now; `by_id`: the same by id, and `touched`: ids whose flow
        changed or went since the last poll, when the caller keeps them (the flow engine does),
        so that a poll costs what changed rather than every flow."""
        flows = tuple(flows) if by_id is None else flows
        self._polls += 1
        records = self._read_listeners()
        index = _Index(flows, records, by_id)
        self._forget_gone(index, records, touched)
        events, drops, tuples, fails = self._take_generations()
        big = sum(len(vb) for _, vb in events) // _EVENTS.size + sum(len(vb) for _, vb in drops) // 8 > 2000
        if big:  # thousands of new objects, none in a cycle: the cyclic collector would walk them for nothing
            gc.disable()
        try:
            changed = self._take_counts(events, drops)
            self._match_tuples(tuples, index, changed)
            self._count_failures(fails, index)
            per_flow = self._settle(changed, index)
        finally:
            if big:
                gc.enable()
        listeners = tuple(self._listener(r) for r in records.values())
        if len(self._listener_cache) > len(records):
            self._listener_cache = {c: v for c, v in self._listener_cache.items() if c in records}
        stats = self.stats()
        lost = {"failure_sockets": stats[FailStat.FS_SOCK_FULL], "failed_connects": stats[FailStat.FS_CONNECT_FULL]}
        return FailureReport(per_flow, listeners, self._failures, self._unmatched_now(stats[FailStat.FS_TUPLE_FULL]),
                             lost)

    # listeners

    def _read_listeners(self) -> dict[int, ListenerRecord]:
        """Every listener by cookie: our namespace's through the TCP iterator, read now; the
        others' through the processes' file tables (or, without that iterator, one TCP walk per
        namespace). The file tables also name who holds ours, so no listener's owner is looked
        for in /proc unless the kernel refuses that iterator."""
        if self._iter is None:
            return {}
        here = {r.cookie: r for r in _records(_listeners_here(self._iter))}
        walked = _records(self._walked(here.keys()))
        owners: dict[int, ListenerRecord] = {}
        others: dict[int, ListenerRecord] = {}
        for r in walked:
            # A listener several processes hold (a pre-forking server) is named after the lowest pid.
            into = owners if r.netns == self._host_netns else others
            have = into.get(r.cookie)
            if have is None or (r.tgid and (not have.tgid or r.tgid < have.tgid)):
                into[r.cookie] = r
        for cookie, r in here.items():
            held = owners.get(cookie)
            if held is not None:  # the values stay this poll's; the walk may be older
                r.tgid, r.comm = held.tgid, held.comm
        out = here | others
        if self._files is None:
            unowned = {r.sock_ino for r in out.values() if not r.tgid}
            if unowned:
                self.owners.resolve(unowned)
                self.owners.trim(len(out))
        return out

    def _walked(self, here: Iterable[int]) -> bytes:
        """Every listener with a process holding it, from a walk over every open file on the
        host. Its cost grows with the files (~100 ms at 100,000 connections here; a walk of
        each namespace where that iterator is refused, ~130 ms), so it runs at most as often as
        keeps it under FILE_WALK_SHARE of one CPU; in between, the last walk's records stand
        (other namespaces' listeners' queues and counters are then up to that old). A listener
        of ours that no walk has looked for yet (born since the last) brings the walk forward,
        at most once per owners.min_scan_interval_s, so its owner is named as soon as a /proc
        scan would have named it."""
        now = time.monotonic()
        due = now >= self._files_next
        if not due and self._files is not None and not self._sought.issuperset(here):
            due = self.owners.may_scan()
        if due:
            t0 = time.thread_time()
            self._files_last = self._walk_now()
            self._files_next = now + (time.thread_time() - t0) / FILE_WALK_SHARE
            self._sought = set(here)  # read before the walk: it saw the files of those still held
        return self._files_last

    def _walk_now(self) -> bytes:
        if self._files is not None:
            return self._with_cookies(iter_read(self._files))
        # Without the file-table iterator: the TCP iterator in each namespace, which passes
        # over the whole connection hash (shared by all namespaces) before its first socket.
        it, home, denied = self._iter, netns.current_inode(), set()
        buf = b"".join(chunk for ino, chunk in netns.in_each(lambda: _listeners_here(it), denied) if ino != home)
        if denied and not self._denied_said:
            self._denied_said = True
            self.degraded.append(netns.denied_sentence(denied, "listeners"))
        return buf

    def _with_cookies(self, buf: bytes) -> bytes:
        """The file walk reads a listener's cookie as the socket holds it (some kernel builds
        let no helper take a socket reached from a file), and that is 0 until something asks
        for one: a TCP walk of each namespace holding such listeners gives them theirs
        (bpf_get_socket_cookie keeps the one it makes), so this happens once per listener."""
        recs = _records(buf)
        unset = {r.netns for r in recs if not r.cookie}
        if not unset:
            return buf
        paths, cookies = None, {}
        for ns in unset:
            try:
                if ns == self._host_netns:
                    chunk = _listeners_here(self._iter)
                else:
                    paths = netns.namespace_paths() if paths is None else paths
                    if ns not in paths:
                        continue
                    with netns.entered(paths[ns]):
                        chunk = _listeners_here(self._iter)
            except OSError:  # gone meanwhile, or not ours to enter: its listeners wait for the next walk
                continue
            cookies.update(((r.netns, r.sock_ino), r.cookie) for r in _records(chunk))
        for r in recs:
            if not r.cookie:
                r.cookie = cookies.get((r.netns, r.sock_ino), 0)
        return b"".join(bytes(r) for r in recs if r.cookie)

    def _listener(self, r: ListenerRecord) -> Listener:
        tally = self._socks.get(r.cookie)
        if tally is not None:
            tally.shown = True
            self._shown_listeners.add(r.cookie)
        pid = r.tgid or self.owners.pid_of_inode(r.sock_ino)  # /proc's answer may come polls after the record
        key = (bytes(r), pid, tally and tally.version)
        hit = self._listener_cache.get(r.cookie)
        if hit is not None and hit[0] == key:
            return hit[1]
        comm, _, container = self.owners.info(pid)
        if r.tgid and r.comm:
            comm = r.comm.decode(errors="replace")
        reasons = self._reason_table(tally)
        lst = Listener(
            id=r.cookie, family="ipv4" if r.family == socket.AF_INET else "ipv6", laddr=_addr(r.family, r.saddr),
            lport=r.sport, pid=pid, comm=comm, netns=r.netns, container=container,
            accept_queue=r.accept_queue, accept_queue_max=r.accept_queue_max, syn_queue=r.syn_queue,
            drops=r.drops, synack_retrans=tally.synack_retrans if tally else 0, drop_reasons=reasons)
        self._listener_cache[r.cookie] = (key, lst)
        return lst

    # per-socket totals

    def _take_counts(self, events: list[tuple[bytes, bytes]], drops: list[tuple[bytes, bytes]]) -> set[int]:
        """Add one drained generation of the kernel's per-socket counts (raw batches of keys and
        values) to the totals; returns the sockets whose totals changed."""
        return take_counts(events, drops, self._socks, self._polls)

    def _forget_gone(self, index: "_Index", records: dict[int, ListenerRecord], touched: Iterable[int] | None) -> None:
        """Forget the totals of flows and listeners that were shown and are no longer listed
        (what comes for them later starts afresh, and counts host-wide). Flows are looked for
        among `touched` when given, else among every flow shown with failures; a flow leaves
        the flow engine's listing for good, a listener may be missed by one walk, so it is
        forgotten only after GONE_AFTER_POLLS polls without it."""
        socks, shown = self._socks, self._shown_flows
        maybe = shown if touched is None else shown.intersection(touched)
        for cookie in maybe.difference(index.ids()) if maybe else ():  # one C-level pass (churn: ~20,000 a poll)
            shown.discard(cookie)
            socks.pop(cookie, None)
        missing = {}
        for cookie in self._shown_listeners:
            if cookie in records:
                continue
            polls = self._listener_missing.get(cookie, 0) + 1
            if polls < GONE_AFTER_POLLS:
                missing[cookie] = polls
                continue
            socks.pop(cookie, None)
            self._listener_cache.pop(cookie, None)
        self._shown_listeners.difference_update([c for c in self._shown_listeners if c not in records
                                                 and c not in missing])
        self._listener_missing = missing

    def _settle(self, changed: set[int], index: "_Index") -> dict[int, FlowFailures]:
        """Match the sockets whose totals changed, and those not found yet, to flows and
        listeners: FlowFailures of each such flow. One unknown GONE_AFTER_POLLS polls in a row
        is forgotten, its counts host-wide unless it was ever shown."""
        socks, unknown = self._socks, self._unknown
        per_flow, rest = settle_flows(changed.union(unknown) if unknown else changed, socks, index.ids(),
                                      self._shown_flows, unknown, self._ff_cache, self._flow_failures)
        for cookie in rest:
            t = socks[cookie]
            if index.is_listener(cookie):
                t.shown = True
                self._shown_listeners.add(cookie)
                unknown.pop(cookie, None)
            else:
                polls = unknown.get(cookie, 0) + 1
                if polls < GONE_AFTER_POLLS:
                    unknown[cookie] = polls
                    continue
                del unknown[cookie], socks[cookie]
                self._shown_flows.discard(cookie)
                if not t.shown:
                    for reason, n in (t.drops or {}).items():
                        _add(self._unmatched["drops"], reason, n)
                    for reason, n in (t.sent_reasons or {}).items():
                        _add(self._unmatched["resets_sent"], reason, n)
        return per_flow

    def _flow_failures(self, t: _Sock) -> FlowFailures:
        """One FlowFailures per distinct value, shared (it is immutable): under churn thousands
        of flows a poll carry the same one (one reset sent, or one received)."""
        key = _ff_key(t)
        ff = self._ff_cache.get(key)
        if ff is None:
            _, direction, reason = t.last_reset
            last = self._reset_text(direction, reason) if direction != RD_NONE else ""
            ff = FlowFailures(self._reason_table(t), t.resets_sent, t.resets_received, last)
            if len(self._ff_cache) >= FF_CACHE_SIZE:
                self._ff_cache.clear()
            self._ff_cache[key] = ff
        return ff

    def _reason_table(self, tally: _Sock | None) -> Mapping[str, int]:
        if tally is None or not tally.drops:
            return NO_COUNTS
        merged: dict[str, int] = {}
        for reason, n in tally.drops.items():
            _add(merged, self.drop_name(reason), n)
        return _counts(merged)

    def _reset_text(self, direction: int, reason: int) -> str:
        if direction == RD_RECEIVED:
            return f"received {errno.errorcode.get(reason, 'ERRNO_' + str(reason)) if reason else 'while closed'}"
        return f"sent {self.reset_name(reason)}"

    def drop_name(self, reason: int) -> str:
        return self.drop_reasons.get(reason, f"REASON_{reason}")

    def reset_name(self, reason: int) -> str:
        return self.reset_reasons.get(reason, f"REASON_{reason}")

    # packet-keyed events

    def _keep_generations(self) -> None:
        """Between polls, drain the event maps once a quarter of the smallest could be taken
        since the last drain (FS_ENTERED counts the entries the programs made). A poll that
        comes late — a churn of connections reset by the thousand a second can stretch one to
        seconds — then no longer finds the maps full: 32,768 sockets a generation are three
        seconds of 10,000 resets a second. Otherwise this reads one counter four times a second."""
        assert self._obj is not None
        stats, limit = self._obj.maps["stats"], min(self._max.values()) // 4
        while not self._keeper_stop.wait(KEEPER_PERIOD_S):
            if stats.percpu_sum(FailStat.FS_ENTERED) - self._entered >= limit:
                with self._drain_lock:
                    if not self._keeper_stop.is_set():
                        self._early.append(self._drain_generation())

    def _take_generations(self) -> "_Drained":
        """What every generation since the last poll holds, oldest first: those the keeper
        drained, then the current one."""
        with self._drain_lock:
            parts, self._early = self._early, []
            parts.append(self._drain_generation())
        if len(parts) == 1:
            return parts[0]
        return _Drained(*([x for part in parts for x in part[i]] for i in range(4)))

    def _drain_generation(self) -> "_Drained":
        """Per-socket counts (events, drops: batches of raw keys and values), packet-keyed events and failed connects since the
        last drain. The kernel is switched to the other maps first and a grace period passes,
        so nothing is written into what is being deleted. A poll after which nothing failed
        reads nothing but four empty maps' first keys."""
        assert self._obj is not None
        maps = self._obj.maps
        self._entered = maps["stats"].percpu_sum(FailStat.FS_ENTERED)
        cur = self._gen & 1
        names = {f"sock_events_{cur}": 8, f"sock_drops_{cur}": ctypes.sizeof(SockDropKey),
                 f"tuples_{cur}": ctypes.sizeof(TupleKey), f"connect_fails_{cur}": 8}
        if all(maps[name].is_empty(size) for name, size in names.items()):
            return _Drained([], [], [], [])
        self._gen += 1
        maps["tuple_gen"].update(ctypes.c_uint32(0), ctypes.c_uint32(self._gen))
        rcu_grace_period()
        events = list(_drained(maps[f"sock_events_{cur}"], ctypes.c_uint64, SockEvents))
        drops = list(_drained(maps[f"sock_drops_{cur}"], SockDropKey, ctypes.c_uint64))
        out_t: list[tuple[TupleKey, int]] = []
        for keys, values, n in maps[f"tuples_{cur}"].batches(TupleKey, ctypes.c_uint64, delete=True, batch=1024):
            out_t.extend((TupleKey.from_buffer_copy(keys[i]), values[i]) for i in range(n))
        out_f: list[tuple[int, ConnectFail]] = []
        for keys, values, n in maps[f"connect_fails_{cur}"].batches(ctypes.c_uint64, ConnectFail, delete=True,
                                                                    batch=1024):
            out_f.extend((keys[i], ConnectFail.from_buffer_copy(values[i])) for i in range(n))
        return _Drained(events, drops, out_t, out_f)

    def _match_tuples(self, tuples: list[tuple[TupleKey, int]], index: "_Index", changed: set[int]) -> None:
        now = time.monotonic_ns()
        for k, n in tuples:
            src, dst = _addr(k.family, k.saddr), _addr(k.family, k.daddr)
            cookie = index.flow_for(k.netns, src, k.sport, dst, k.dport)
            if cookie is None and k.kind == TK_DROP:
                cookie = index.listener_for(k.netns, dst, k.dport)
            kind = "drops" if k.kind == TK_DROP else "resets_sent"
            if cookie is None:
                _add(self._unmatched[kind], k.reason, n)
                continue
            tally = self._socks.get(cookie)
            if tally is None:
                tally = self._socks[cookie] = _Sock()
            if k.kind == TK_DROP:
                tally.drops = _added(tally.drops, k.reason, n)
            else:
                tally.resets_sent += n
                tally.sent_reasons = _added(tally.sent_reasons, k.reason, n)
                tally.last_reset = (now, RD_SENT, k.reason)
            tally.version = self._polls
            changed.add(cookie)

    def _unmatched_now(self, overflowed: int) -> Mapping[str, Mapping[str, int]]:
        """Host-wide counts by reason; the per-CPU overflow slots are read only when the kernel
        says something went there since they were last read (512 lookups otherwise each poll)."""
        assert self._obj is not None
        if overflowed != self._overflow[0]:
            self._overflow = (overflowed, self._obj.maps["tuple_overflow"].percpu_sums(OVERFLOW_SLOTS))
        slots = self._overflow[1]
        drops = {self.drop_name(r): n for r, n in self._unmatched["drops"].items()}
        resets = {self.reset_name(r): n for r, n in self._unmatched["resets_sent"].items()}
        for slot, n in enumerate(slots):
            if n:
                if slot < 256:
                    _add(drops, self.drop_name(slot), n)
                else:
                    _add(resets, self.reset_name(slot - 256), n)
        return MappingProxyType({"drops": _counts(drops), "resets_sent": _counts(resets)})

    # failed connects

    def _count_failures(self, fresh: list[tuple[int, ConnectFail]], index: "_Index") -> None:
        """Add failed connects to the counts, each under the process the flow engine names for
        its socket; one whose socket is not shown yet waits a few polls for it."""
        waiting = self._fail_waiting
        for cookie, cf in fresh:
            waiting[cookie] = (cf, 0)
        if not waiting:
            return
        still: dict[int, tuple[ConnectFail, int]] = {}
        changed = False
        for cookie, (cf, polls) in waiting.items():
            flow = index.flow(cookie)
            if flow is None and polls + 1 < OWNER_WAIT_POLLS:
                still[cookie] = (cf, polls + 1)
                continue
            pid, comm = (flow.pid, flow.comm) if flow is not None else (0, "")
            reason = errno.errorcode.get(cf.err, f"ERRNO_{cf.err}")
            _add(self._fail_counts, (pid, comm, cf.netns, _addr(cf.family, cf.daddr), cf.dport, reason), 1)
            changed = True
        self._fail_waiting = still
        if changed:
            out = [Failure(pid=k[0], comm=k[1], netns=k[2], raddr=k[3], rport=k[4], reason=k[5], count=n)
                   for k, n in self._fail_counts.items()]
            out.sort(key=lambda f: (-f.count, f.raddr, f.rport, f.pid, f.reason))
            self._failures = tuple(out)


def py_take_counts(events: list[tuple[bytes, bytes]], drops: list[tuple[bytes, bytes]], socks: dict[int, _Sock],
                   now: int) -> set[int]:
    """FailureEngine._take_counts' loop (what _failure_tally.take_counts does in C): one drained
    generation of sock_events and sock_drops added to the tallies by cookie (made on first use);
    the cookies whose tallies changed."""
    changed = set()
    for kb, vb in events:
        for (cookie,), (sent, received, synack, ns, reason, direction) in zip(_COOKIE.iter_unpack(kb),
                                                                               _EVENTS.iter_unpack(vb)):
            t = socks.get(cookie)
            if t is None:
                t = socks[cookie] = _Sock()
            t.resets_sent += sent
            t.resets_received += received
            t.synack_retrans += synack
            if sent:  # one reason per socket and generation: its resets are counted under the last
                t.sent_reasons = _added(t.sent_reasons, reason if direction == RD_SENT else 0, sent)
            if direction != RD_NONE and ns >= t.last_reset[0]:
                t.last_reset = (ns, direction, reason)
            t.version = now
            changed.add(cookie)
    for kb, vb in drops:
        for (cookie, reason, _), (n,) in zip(_DROP_KEY.iter_unpack(kb), _COUNT.iter_unpack(vb)):
            t = socks.get(cookie)
            if t is None:
                t = socks[cookie] = _Sock()
            t.drops = _added(t.drops, reason, n)
            t.version = now
            changed.add(cookie)
    return changed


def py_settle_flows(cookies: Iterable[int], socks: dict[int, _Sock], flows: Mapping[int, Flow], shown: set[int],
                    unknown: dict[int, int], ff_cache: dict[tuple, FlowFailures],
                    flow_failures: Callable[[_Sock], FlowFailures]) -> tuple[dict[int, FlowFailures], list[int]]:
    """FailureEngine._settle's common case (_failure_tally.settle_flows in C): each cookie with a
    tally that `flows` lists is shown and no longer unknown, with its FlowFailures (the cached
    one for the same values, else flow_failures(t)); one without a tally is no longer unknown;
    the rest (listeners, sockets not known yet) are returned in order for _settle."""
    per_flow: dict[int, FlowFailures] = {}
    rest = []
    for cookie in cookies:
        t = socks.get(cookie)
        if t is None:
            unknown.pop(cookie, None)
        elif cookie in flows:
            t.shown = True
            shown.add(cookie)
            unknown.pop(cookie, None)
            ff = ff_cache.get(_ff_key(t))
            per_flow[cookie] = ff if ff is not None else flow_failures(t)
        else:
            rest.append(cookie)
    return per_flow, rest


def _ff_key(t: _Sock) -> tuple:
    """What a FlowFailures is made of (the cache's key): drops by reason, resets, the last one."""
    _, direction, reason = t.last_reset
    return t.drops and tuple(t.drops.items()), t.resets_sent, t.resets_received, direction, reason


def _load_c() -> tuple[Callable, Callable]:
    """The C tallies built for this interpreter and set up for _Sock, or the Python twins."""
    mod, _ = native.load("_failure_tally")
    if mod is None:
        return py_take_counts, py_settle_flows
    mod.setup(_Sock, RD_NONE, RD_SENT)
    return mod.take_counts, mod.settle_flows


take_counts, settle_flows = _load_c()


class _Drained(NamedTuple):
    """One or more generations of the event maps, as _drain_generation reads them."""

    events: list[tuple[bytes, bytes]]        # per-socket events: batches of raw keys and values
    drops: list[tuple[bytes, bytes]]         # per-socket drops by reason: the same
    tuples: list[tuple[TupleKey, int]]       # packet-keyed events and their counts
    fails: list[tuple[int, ConnectFail]]     # failed connects by cookie


class _Index:
    """Flows and listeners of one poll, found by cookie or by addresses. Built on first use (the
    caller's flows by id when it has them): a poll with nothing to match (the usual case)
    never walks 100,000 flows."""

    def __init__(self, flows: Iterable[Flow], listeners: dict[int, ListenerRecord],
                 by_id: Mapping[int, Flow] | None = None):
        self._flows = flows if by_id is None else by_id.values()
        self._listener_records = listeners
        self._ids: Mapping[int, Flow] | None = by_id
        self._by_tuple: dict[tuple, int] | None = None
        self._by_port: dict[tuple, list[tuple[str, int]]] | None = None

    def ids(self) -> Mapping[int, Flow]:
        if self._ids is None:
            self._ids = {f.id: f for f in self._flows}
        return self._ids

    def flow(self, cookie: int) -> Flow | None:
        return self.ids().get(cookie)

    def is_flow(self, cookie: int) -> bool:
        return self.flow(cookie) is not None

    def is_listener(self, cookie: int) -> bool:
        return cookie in self._listener_records

    def flow_for(self, ns: int, src: str, sport: int, dst: str, dport: int) -> int | None:
        """The flow a packet belongs to: one it was sent to (local = destination) first, then one
        that sent it. A live flow wins over a closed one with the same addresses."""
        if self._by_tuple is None:
            self._by_tuple = {}
            for f in sorted(self._flows, key=lambda f: not f.closed):  # live flows overwrite closed ones
                self._by_tuple[(f.netns, f.laddr, f.lport, f.raddr, f.rport)] = f.id
                self._by_tuple[(0, f.laddr, f.lport, f.raddr, f.rport)] = f.id
        t = self._by_tuple
        return t.get((ns, dst, dport, src, sport)) or t.get((ns, src, sport, dst, dport))

    def listener_for(self, ns: int, dst: str, dport: int) -> int | None:
        """The listener a packet was addressed to: bound to its address, or to the wildcard."""
        if self._by_port is None:
            self._by_port = {}
            for cookie, r in self._listener_records.items():
                self._by_port.setdefault((r.netns, r.sport), []).append((_addr(r.family, r.saddr), cookie))
        for key in ((ns, dport),) if ns else [k for k in self._by_port if k[1] == dport]:
            for laddr, cookie in self._by_port.get(key, ()):
                if laddr in (dst, "0.0.0.0", "::"):
                    return cookie
        return None


def _drained(m, key_type, value_type) -> Iterator[tuple[bytes, bytes]]:
    """A map's entries as (keys, values) byte strings, a batch at a time, deleting what was read."""
    ksize, vsize = ctypes.sizeof(key_type), ctypes.sizeof(value_type)
    for keys, values, n in m.batches(key_type, value_type, delete=True, batch=4096):
        yield ctypes.string_at(keys, n * ksize), ctypes.string_at(values, n * vsize)


def _add(d: dict, key, n: int) -> None:
    d[key] = d.get(key, 0) + n


def _added(d: dict | None, key, n: int) -> dict:
    """`d` (made on first use) with n added under key."""
    if d is None:
        return {key: n}
    d[key] = d.get(key, 0) + n
    return d


def _names(values: dict[str, int], prefix: str) -> dict[int, str]:
    """Enumerator value -> its name without the enum's prefix (SKB_DROP_REASON_NETFILTER_DROP ->
    NETFILTER_DROP), the way the kernel's own tracepoint output spells them."""
    out = {}
    for name, value in values.items():
        out.setdefault(value & 0xFFFFFFFF, name.removeprefix(prefix))
    return out


__all__ = ["FailureEngine", "FailureReport", "FlowFailures"]


def _records(buf: bytes) -> list[ListenerRecord]:
    return [ListenerRecord.from_buffer_copy(buf, off) for off in range(0, len(buf) - LISTENER_SIZE + 1, LISTENER_SIZE)]


def _listeners_here(it: Link) -> bytes:
    """This namespace's listeners: the program stops the walk at the first connection."""
    reader = IterReader(it)
    try:
        return reader.read()
    finally:
        reader.close()
