"""Flow engine, user side: loads bpf/flows.bpf.o, attaches what this kernel offers, polls.

Pairs with bpf/flows.bpf.c (kernel side) and bpf/flows.h (the shared layouts, mirrored in
flow_layout.py and checked against the object's BTF at load). A poll reads only what can
have changed since the last one:

1. notices (a ring the hooks write once per socket per poll generation: an incoming
   segment, a state change; owners from accept(); exec and exit of processes) and the
   final records of closed sockets (a second ring);
2. those sockets, and the ones that were not quiescent at their last read, by lookup of
   their 4-tuple (the `tcptop_lookup` program run once per namespace with
   BPF_PROG_TEST_RUN), which sends only records that differ from the last one sent;
3. a bounded slice of the TCP iterator's walk over every socket, a safety net for changes
   no event announces (the whole walk costs ~0.6 us a socket here: at 200,000 sockets a
   poll cannot afford it; where it can, the slice is the whole table).

The first poll walks every socket of every namespace. Nothing is read per packet.
"""

from __future__ import annotations

import collections
import ctypes
import gc
import heapq
import operator
import os
import queue
import threading
import time

from tcptop.engines.core import flow_decode as fd
from tcptop.engines.core.flow_decode import (I_COMM, I_EST, I_FLAGS, I_INO, I_KIND, I_NETNS, I_NOW,
                                              I_PID, I_REFS, I_STATE, comm_of, flow_of, records)
from tcptop.engines.core.flow_layout import (ENUM_MIRRORS, HOLDER, HOLDER_SIZE, MIRRORS, N, NOTICE,
                                             REC_SIZE, WANT, FlowCtl, FlowHolder, FlowRecord, FlowWant,
                                             NoticeKind, RecordFlag, RecordKind, Stat)
from tcptop.engines.core.libbpf import (BpfError, BpfObject, CgroupRoot, IterReader, KernelBtf, Link, RingBuffer,
                                        iter_each, iter_read, object_path, refused_program)
from tcptop.host import netns
from tcptop.host.procs import Owners, read_comm

KIND_LIVE, KIND_CLOSED, KIND_LATE, KIND_TW, KIND_GONE = map(int, RecordKind)
REC_QUIESCENT, REC_SEEN_BIRTH = int(RecordFlag.REC_QUIESCENT), int(RecordFlag.REC_SEEN_BIRTH)
REC_CLIENT, REC_SERVER, REC_NO_COUNTERS = int(RecordFlag.REC_CLIENT), int(RecordFlag.REC_SERVER), int(
    RecordFlag.REC_NO_COUNTERS)
REC_RESET_RCVD, REC_TIMED_OUT, REC_LOOKUP_V4 = int(RecordFlag.REC_RESET_RCVD), int(RecordFlag.REC_TIMED_OUT), int(
    RecordFlag.REC_LOOKUP_V4)
NOTE_DIRTY, NOTE_OWNER, NOTE_EXEC, NOTE_EXIT, NOTE_FORK = map(int, NoticeKind)
_NK, _NPID, _NNS, _NCOMM = N["kind"], N["pid"], N["netns"], N["comm"]
ST_FIN_WAIT1, ST_FIN_WAIT2, ST_TIME_WAIT, ST_CLOSED, ST_CLOSING = 4, 5, 6, 7, 11  # kernel TCP states (model.TCP_STATES)
GOT_MAX = 8192  # GOT_MAX in bpf/flows.bpf.c: lookups per test run
# wants and got are read and written in place: entry i at i * size (array entries are 8-aligned)
assert WANT.size % 8 == 0 and REC_SIZE % 8 == 0, "struct flow_want and flow_record keep 8-byte sizes"
DUMMY_PACKET = bytes(64)  # the lookup program ignores its packet; test runs need one

# Programs, the hook they need (a BTF tracepoint name, "syscall:<event>" for a perf
# tracepoint, None for sock_ops), and what is lost without them.
HOOKS = {
    "tcptop_probe": ("tracepoint tcp_probe", "tcp_probe",
                     "rtt_samples, rtt_sum_us, rtt_hist and app_wqueue_max between polls; busy sockets are then "
                     "read by the table walk alone"),
    "tcptop_cong": ("tracepoint tcp_cong_state_set", "tcp_cong_state_set", "fast_retrans"),
    "tcptop_state": ("tracepoint inet_sock_set_state", "inet_sock_set_state",
                     "role, duration_s from establishment, and final values of closed flows (the last read values "
                     "are shown instead)"),
    "tcptop_reset": ("tracepoint tcp_receive_reset", "tcp_receive_reset",
                     "flight_size in final records of connections the peer reset"),
    "tcptop_destroy": ("tracepoint tcp_destroy_sock", "tcp_destroy_sock",
                       "read_bytes of data read after a connection closed"),
    "tcptop_sockops": ("cgroup sock_ops", None,
                       "flight_size in final records of connections that timed out; timeouts where tcp_sock has no "
                       "total_rto"),
    "tcptop_accept4": ("tracepoint syscalls/sys_exit_accept4", "syscall:sys_exit_accept4",
                       "owners of accepted sockets at once (found in file tables instead)"),
    "tcptop_accept": ("tracepoint syscalls/sys_exit_accept", "syscall:sys_exit_accept",
                      "owners of accepted sockets at once (found in file tables instead)"),
    "tcptop_exec": ("tracepoint sched_process_exec", "sched_process_exec", "comm after exec() (read from /proc "
                    "when a flow changes instead)"),
    "tcptop_exit": ("tracepoint sched_process_exit", "sched_process_exit",
                    "owner changes when a process exits (checked when a flow changes instead)"),
    "tcptop_fork": ("tracepoint sched_process_fork", "sched_process_fork",
                    "owner changes between a process and its children (checked when the socket moves data instead)"),
}
# Programs the engine can run without; only the TCP iterator is indispensable.
OPTIONAL = frozenset(HOOKS) | {"tcptop_files", "tcptop_lookup"}
TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


def default_object_path() -> str:
    return object_path("flows.bpf.o")


def _tracefs_event(name: str) -> bool:
    return any(os.path.isdir(os.path.join(t, "events", "syscalls", name)) for t in TRACEFS)


class _Track:
    """What user space keeps about one connection between polls."""

    __slots__ = ("vals", "flow", "want", "netns", "born_ns", "kind", "owner", "refs", "tw_expires_ts", "since_start")

    def __init__(self) -> None:
        self.vals: tuple | None = None  # last live or final record, unpacked
        self.flow = None
        self.want = b""                 # struct flow_want from a notice; else built from vals when needed
        self.netns = 0
        self.born_ns = 0                # establishment, or first sight (monotonic ns)
        self.kind = KIND_LIVE           # KIND_LIVE, KIND_TW or KIND_CLOSED
        self.owner = 0                  # holder found by accept() or the file tables (0: use the connect caller)
        self.refs = -1                  # file references when the owner was last established
        self.tw_expires_ts = 0.0
        self.since_start = False


class FlowEngine:
    """Owns the loaded flows.bpf.o. `poll()` returns the flows now; `close()` detaches all.

    The table walk (the safety net) passes every socket once per `walk_period_s`, spending at
    most `walk_ms` per poll (then a pass takes longer); its cost per socket is measured as it goes. After a poll, `read_ts` is the unix time the kernel was
    read and `timing` the milliseconds each part of the poll took.
    """

    def __init__(self, max_closed: int = 65536, closed_keep_polls: int = 3, object_path: str | None = None,
                 walk_ms: float = 10.0, walk_period_s: float = 10.0, notice_ring_bytes: int = 1 << 24):
        self.max_closed = max_closed
        self._notices_lost = 0  # STAT_NOTICES_LOST + recursion_misses at the last walk
        self.last_stats: list[int] = []  # stats() as read by the last poll
        self.recursion_misses = 0  # runs of our programs the kernel skipped, as read by the last poll
        self.notice_ring_bytes = notice_ring_bytes
        self.closed_keep_polls = closed_keep_polls
        self.walk_ms = walk_ms
        self.walk_period_s = walk_period_s
        self.hooks: dict[str, str] = {}
        self.degraded: list[str] = []
        self.owners = Owners()
        self.flows_without_counters = 0
        self.read_ts = 0.0
        self.timing: dict[str, float] = {}
        self._tracks: dict[int, _Track] = {}
        self._flows: dict[int, object] = {}  # cookie -> Flow, what the snapshot lists
        self.touched: set[int] = set()  # cookies whose Flow changed or went in the last poll
        self._watch: set[int] = set()  # looked up at every poll until quiescent
        self._closing: collections.deque = collections.deque()  # (poll number it goes, cookie)
        self._tw_due: list = []  # heap of (time to look again, cookie) of kernel-held ends
        self._tw_due_room = TW_DUE_SLACK  # its length past which entries of ends gone are dropped
        self._tw_at: dict[tuple, int] = {}  # (netns, 4-tuple as a want) -> the kept end there
        self._tw_keys: dict[int, tuple] = {}  # and back
        self._verify: set[int] = set()  # cookies whose holders the file tables should name
        self._redecode: set[int] = set()  # flows whose owner or comm changed without a new record
        self._first_holders: dict[int, int] | None = None  # cookie -> holder, during the first poll
        self._forks: list[tuple[int, int]] = []  # (parent, child) since the last poll, parent owning flows
        self._pinfo: dict[int, tuple | None] = {}  # pid -> owners.lookup(pid), this poll
        self._by_pid: dict[int, set[int]] = {}  # owner pid -> its flows
        self._no_counters: set[int] = set()
        self._listing: tuple | None = None  # the last tuple of flows, reused while nothing changed
        self._changed = False
        self._ns_count: collections.Counter = collections.Counter()  # namespace -> flows tracked in it
        self._ns_paths: dict[int, str] = {}
        self._links: list[Link] = []
        self._iter: Link | None = None
        self._files: Link | None = None
        self._walk: tuple[int, IterReader] | None = None  # the rolling walk: (namespace, reader)
        self._walk_queue: list[int] = []  # namespaces left in this pass of the walk
        self._walk_cost_ns = 700.0  # per socket, measured as the walk goes
        self._table_size = 0        # sockets the last complete pass saw
        self._pass_seen = 0         # sockets the current pass has seen
        self._last_walk = time.monotonic()
        self._obj: BpfObject | None = None
        self._rings: list[RingBuffer] = []
        # Final records and notices taken out of their rings between polls (see _keep_rings).
        self._keeper_lock = threading.Lock()
        self._early_finals: list[tuple] = []
        self._early_notices: list[bytes] = []  # as they lay in the ring (see _notices_now)
        self._keeper: threading.Thread | None = None
        self._keeper_stop = threading.Event()
        self._ctl_map = None
        self._wants_mem = self._got_mem = None
        self._cgroup = CgroupRoot()
        self._boot_offset = time.time() - time.monotonic()  # monotonic clock -> unix time
        self._host_netns = netns.current_inode()
        self._polls = 0
        path = object_path or default_object_path()
        try:
            self._load(path)
            self._attach()
        except BaseException:
            self.close()
            raise
        self._keeper = threading.Thread(target=self._keep_rings, name="tcptop-rings", daemon=True)
        self._keeper.start()

    def _keep_rings(self) -> None:
        """Between polls, take a ring's records out once it is a quarter full: the closed
        ring's final records, and the notices (which socket to look up, who owns it). A poll
        that comes late (a churn of connections on a busy host can stretch one to several
        seconds) then loses neither: the closed ring holds ~100,000 records by default, five
        seconds of 10,000 connections a second, and the notice ring about as many seconds
        (101,252 notices were lost in 8 s gaps of a sustained churn, and each loss costs a walk
        of the whole table). A rescue ring is emptied whenever it holds anything. Otherwise this
        only reads eight positions four times a second."""
        closed, notices = self._closed_ring, self._notice_ring
        while not self._keeper_stop.wait(KEEPER_PERIOD_S):
            take_finals = closed.pending_bytes() >= closed.size // 4 or self._closed_rescue.pending_bytes()
            take_notices = notices.pending_bytes() >= notices.size // 4 or self._notice_rescue.pending_bytes()
            if take_finals or take_notices:
                with self._keeper_lock:
                    if self._keeper_stop.is_set():
                        break
                    if take_finals:
                        self._early_finals += self._finals_now()
                    if take_notices:
                        self._early_notices += self._notices_now()

    def _finals_now(self) -> list[tuple]:
        """The final records both closed rings hold (under _keeper_lock), in the order the kernel
        wrote them: a rescued one is put back in its place by its capture time."""
        out = self._closed_ring.drain_unpacked(fd.RECORD, fd.unpack_all)
        rescued = self._closed_rescue.drain_unpacked(fd.RECORD, fd.unpack_all)
        if rescued:
            out = sorted(out + rescued, key=_capture_ns)
        return out

    def _notices_now(self) -> list[bytes]:
        """The notices both notice rings hold (under _keeper_lock), as they lay there; a rescued
        one after the others (notices carry no time: a dirty mark's place does not matter, and
        a process notice out of place only moves its process's sockets' owner to the next
        poll). They are unpacked once the poll's final records are in (_take_notices)."""
        return [b for b in (self._notice_ring.drain_bytes(NOTICE), self._notice_rescue.drain_bytes(NOTICE)) if b]

    def _take_finals(self) -> list[tuple]:
        """Final records in the order the kernel wrote them: those the keeper took, then the ring's."""
        with self._keeper_lock:
            out, self._early_finals = self._early_finals, []
            out += self._finals_now()
        return out

    # -- set-up -------------------------------------------------------------

    def _load(self, path: str) -> None:
        """Load every program this kernel takes. A program the verifier refuses is left out on
        its own, with the verifier's reason; kernel builds of one version differ in what they
        accept, so nothing is assumed from the version."""
        btf = KernelBtf()
        try:
            missing = {}
            for prog, (_, hook, _) in HOOKS.items():
                if hook and hook.startswith("syscall:"):
                    if not _tracefs_event(hook[8:]):
                        missing[prog] = f"no tracepoint syscalls/{hook[8:]} (tracefs not mounted, or no syscall events)"
                elif hook and not btf.has_tracepoint(hook):
                    missing[prog] = f"no tracepoint {hook} on this kernel"
        finally:
            btf.close()
        for prog, why in missing.items():
            self._degrade(prog, why)
        refused: dict[str, str] = {}
        hook_existing, setsockopt_refused = True, ""
        while True:
            obj = BpfObject(path)
            try:
                for cname, mirror in MIRRORS.items():
                    obj.check_mirror(cname, mirror)
                for cname, py_enum in ENUM_MIRRORS.items():
                    obj.check_enum_mirror(cname, py_enum)
                for prog in set(missing) | set(refused):
                    obj.programs[prog].set_autoload(False)
                ring = _ring_size(self.max_closed * _RING_REC)
                rescue = _ring_size(max(RESCUE_MIN, self.max_closed // RESCUE_SHARE) * _RING_REC)
                obj.maps["closed"].set_max_entries(ring)
                obj.maps["closed_rescue"].set_max_entries(rescue)
                obj.maps["notices"].set_max_entries(_ring_size(self.notice_ring_bytes))
                obj.maps["notices_rescue"].set_max_entries(_ring_size(self.notice_ring_bytes // RESCUE_SHARE))
                # Final records the rings hold between two looks: at least max_closed (each ring
                # is a power of two), and what the rescue ring takes when the main one refuses.
                self.closed_room = (ring - 1) // _RING_REC + (rescue - 1) // _RING_REC
                obj.set_rodata("hook_existing_rto", int(hook_existing))
                obj.load()
            except BpfError as e:
                obj.close()
                who = refused_program(e.log)
                if who is None:
                    raise
                prog, why = who
                if prog == "tcptop_iter" and hook_existing:
                    # The one optional part of the iterator: RTO callbacks for older sockets.
                    hook_existing, setsockopt_refused = False, why
                    continue
                if prog in OPTIONAL and prog not in refused:
                    refused[prog] = why
                    continue
                raise
            break
        self._obj = obj
        self._ctl_map = obj.bss().mmap()
        self._ctl = FlowCtl.from_buffer(self._ctl_map, _ctl_offset(obj))
        self._wants_mem = obj.maps["wants"].mmap()  # written and read in place by _lookup_here
        self._got_mem = obj.maps["got"].mmap()
        self._ctl.hz = _config_hz()
        self._ctl.gen = 1  # storage starts at generation 0: a socket's first event always sends its notice
        self._closed_ring = RingBuffer(obj.maps["closed"])
        self._notice_ring = RingBuffer(obj.maps["notices"])
        self._notice_fmt = self._notice_ring.framed(NOTICE)
        self._closed_rescue = RingBuffer(obj.maps["closed_rescue"])
        self._notice_rescue = RingBuffer(obj.maps["notices_rescue"])
        self._rings = [self._closed_ring, self._notice_ring, self._closed_rescue, self._notice_rescue]
        self._report_refused(refused)
        if hook_existing:
            self.hooks["sock_ops callbacks for older sockets"] = "ok"
        else:
            why = f"the verifier refused bpf_setsockopt in the TCP iterator ({setsockopt_refused})"
            self.hooks["sock_ops callbacks for older sockets"] = f"unavailable: {why}"
            self.degraded.append(f"flight_size in final records of connections older than tcptop that time out: {why}")

    def _report_refused(self, refused: dict[str, str]) -> None:
        for prog, why in refused.items():
            if prog == "tcptop_files":
                self.hooks["iterator task_file"] = (f"unavailable: the verifier refused it ({why}); "
                                                    "owners are found in /proc instead")
            elif prog == "tcptop_lookup":
                self.hooks["socket lookup"] = (f"unavailable: the verifier refused it ({why}); "
                                               "every poll walks the whole table instead")
            else:
                self._degrade(prog, f"the verifier refused it ({why})")

    def _degrade(self, prog: str, why: str) -> None:
        what, _, lost = HOOKS[prog]
        self.hooks[what] = f"unavailable: {why}"
        self.degraded.append(f"{lost}: {what} unavailable ({why})")

    def _attach(self) -> None:
        assert self._obj is not None
        progs = self._obj.programs
        for prog, (what, hook, _) in HOOKS.items():
            if what in self.hooks:  # already known missing
                continue
            try:
                if hook is None:
                    self._links.append(self._cgroup.attach(progs[prog]))
                else:
                    self._links.append(progs[prog].attach())
                self.hooks[what] = "ok"
            except (BpfError, OSError) as e:
                self._degrade(prog, str(e).split(": ", 1)[-1])
        self._iter = progs["tcptop_iter"].attach_iter()
        self.hooks["iterator tcp"] = "ok"
        if progs["tcptop_lookup"].fd >= 0:
            self.hooks["socket lookup"] = "ok"
        if progs["tcptop_files"].fd >= 0:
            try:
                self._files = progs["tcptop_files"].attach_iter()
                self.hooks["iterator task_file"] = "ok"
            except BpfError as e:
                self.hooks["iterator task_file"] = f"unavailable: {e} (owners are found in /proc instead)"

    def program_ids(self) -> list[int]:
        return self._obj.program_ids() if self._obj else []

    def stop_keeper(self) -> None:
        """No more records taken out between polls (close; tests of what a full ring does)."""
        self._keeper_stop.set()
        if self._keeper is not None:
            self._keeper.join()
            self._keeper = None

    def close(self) -> None:
        self.stop_keeper()
        for link in self._links:
            link.destroy()
        self._links.clear()
        if self._walk:
            self._walk[1].close()
            self._walk = None
        for it in (self._iter, self._files):
            if it:
                it.destroy()
        self._iter = self._files = None
        for ring in self._rings:
            ring.close()
        self._rings.clear()
        if self._ctl_map is not None:
            self._ctl = None
            self._ctl_map.close()
            self._ctl_map = None
        for mem in (self._wants_mem, self._got_mem):
            if mem is not None:
                mem.close()
        self._wants_mem = self._got_mem = None
        if self._obj:
            self._obj.close()
            self._obj = None
        self._cgroup.close()

    # -- polling ------------------------------------------------------------

    def stats(self) -> list[int]:
        """Run-level counters summed over CPUs, indexed by Stat."""
        assert self._obj is not None
        return self._obj.maps["stats"].percpu_sums(int(Stat.STAT_MAX))

    def poll(self) -> tuple:
        """Every connection now, ends the kernel still keeps, and recently closed ones
        (closed=True) for a few polls."""
        self.refresh()
        return self.listing()

    def listing(self) -> tuple:
        """The flows listed after the last refresh, as one tuple (rebuilt only after a change)."""
        if self._changed or self._listing is None:
            self._listing = tuple(self._flows.values())
            self._changed = False
        return self._listing

    def refresh(self) -> None:
        """A poll without the listing: `by_id` and `touched` say what it is and what changed
        (building a tuple of 200,000 flows costs ~4 ms a poll, and the engine's join builds its own)."""
        t0 = time.perf_counter()
        self._polls += 1
        self._pinfo = {}
        self.touched = set()
        records: list[bytes] = []
        walked = 0
        if self._polls == 1:
            walked = self._first_walk()
        notices, finals = self._drain()
        t1 = time.perf_counter()
        self._take_notices(notices, finals)
        lookups = self._lookup_set(finals)
        t2 = time.perf_counter()
        looked = self._lookup(lookups)
        records += looked
        t3 = time.perf_counter()
        self.last_stats = self.stats()  # once a poll: the walk and the run info both read it
        self.recursion_misses = self._obj.recursion_misses()
        if self._polls > 1:
            records += self._walk_slice()
        # final records that came in meanwhile: a kept end the walk saw needs its connection's
        finals += self._take_finals()
        self.read_ts = time.time()
        t4 = time.perf_counter()
        # tens of thousands of new objects (a first walk; a churn's final records): the cyclic
        # collector would walk them again and again, and a pass grows with the batch
        big = sum(len(b) for b in records) + len(finals) * REC_SIZE > 2000 * REC_SIZE
        if big:
            gc.disable()
        try:
            self._apply(records, finals)
        finally:
            if big:
                gc.enable()
        if self._polls == 1:
            # The first poll's flows (100,000 on a big host) live long and hold no cycles: out
            # of the collector's sight, a full collection no longer costs ~40 ms a poll here.
            # They are still freed by reference counting when replaced.
            gc.freeze()
        self._watch_unchanged(lookups, looked)
        self._sweep_kept()
        t5 = time.perf_counter()
        self._resolve_owners()
        self._redecode_now()
        t6 = time.perf_counter()
        self._expire()
        t7 = time.perf_counter()
        self.timing = {"drain_ms": (t1 - t0) * 1e3, "lookup_ms": (t3 - t2) * 1e3, "walk_ms": (t4 - t3) * 1e3,
                       "decode_ms": (t5 - t4 + t2 - t1) * 1e3, "owners_ms": (t6 - t5) * 1e3,
                       "list_ms": (t7 - t6) * 1e3, "looked_up": float(len(lookups)),
                       "records": float(walked + sum(len(b) for b in records) // REC_SIZE)}

    # The first poll: every namespace, every socket.

    def _first_walk(self) -> int:
        """Every socket of every namespace, applied as the kernel walks: a thread reads the
        iterator (read() releases the GIL) while this one takes the holders of every socket,
        then decodes each chunk as it comes, so the kernel's walk (~0.9 s at 200,000 sockets
        here), the file-table walk (~0.2 s) and the decoding (~0.4 s) overlap. Returns how many
        records it applied."""
        it = self._iter
        self._ctl.emit_all = 1
        self._ctl.walk_budget = 0xFFFFFFFF
        seen0 = self._ctl.walk_seen
        chunks: queue.SimpleQueue = queue.SimpleQueue()
        denied: set[int] = set()

        def walk() -> None:
            try:
                for _ in netns.in_each(lambda: iter_each(it, chunks.put), denied):
                    pass
            except BaseException as e:  # noqa: BLE001 - raised again by the decoding thread
                chunks.put(e)
            finally:
                chunks.put(None)

        walker = threading.Thread(target=walk, name="tcptop-first-walk", daemon=True)
        applied, rest = 0, b""
        # 200,000 new objects that hold no cycles: the collector would walk them again and again
        gc.disable()
        walker.start()
        try:
            self._first_owners()  # meanwhile: the records are decoded with their owners
            while (chunk := chunks.get()) is not None:
                if isinstance(chunk, BaseException):
                    raise chunk
                if rest or len(chunk) % REC_SIZE:  # a record split between reads (one run wrote over a buffer)
                    chunk = rest + chunk
                    cut = len(chunk) - len(chunk) % REC_SIZE
                    chunk, rest = chunk[:cut], chunk[cut:]
                if chunk:
                    _live_pass(records(chunk), self, self._first_holders)
                    applied += len(chunk) // REC_SIZE
        finally:
            walker.join()
            gc.enable()
            self._ctl.emit_all = 0
        if denied:
            self.degraded.append(netns.denied_sentence(denied, "connections"))
        seen = self._ctl.walk_seen - seen0
        self._table_size = max(seen, 256)
        # Not a measure of the rolling walk: this one sends every socket's record (~8 us each at
        # 200,000 sockets here), the rolling walk mostly passes unchanged ones (~0.4 us). The
        # default stands until the rolling walk has measured itself.
        return applied

    def _first_owners(self) -> None:
        """Holders of every socket, in one file-table walk, before the first records are
        decoded (so each is decoded once, with its owner). By socket inode: this walk comes
        before the TCP walk, which makes the cookies (the file walk reads them, cannot make them)."""
        if self._files is None:
            return
        self._ctl.files_all = 1
        try:
            buf = iter_read(self._files)
        finally:
            self._ctl.files_all = 0
        self.owners.scans += 1
        holders, comms = _holders_of(buf)
        for pid, comm in comms.items():  # once per process, not per socket
            self.owners.note(pid, _comm(comm))
        self._first_holders = holders

    # Rings.

    def _drain(self) -> tuple[list[bytes], list[tuple]]:
        """Notices, then a new generation, then notices again (an event between the first
        drain and the new generation sent its notice under the old one), then final records."""
        with self._keeper_lock:  # the keeper waits: what it takes later is the next generation's
            notices, self._early_notices = self._early_notices, []
            notices += self._notices_now()
            self._ctl.gen += 1
            notices += self._notices_now()
        finals = self._take_finals()
        return notices, finals

    def _track(self, cookie: int, born_ns: int) -> _Track:
        tr = self._tracks.get(cookie)
        if tr is None:
            tr = self._tracks[cookie] = _Track()
            _untrack(tr)
            tr.born_ns = born_ns
        return tr

    def _set_place(self, tr: _Track, want: bytes, ns: int) -> None:
        """Where a socket is: its namespace, and a lookup entry (b"": build it from its record)."""
        tr.want = want
        if tr.netns != ns:
            if tr.netns:
                self._ns_count[tr.netns] -= 1
            self._ns_count[ns] += 1
            tr.netns = ns

    def _take_notices(self, chunks: list[bytes], finals: list[tuple]) -> None:
        """The notices, less the dirty marks of sockets whose final record is in: under a churn
        of connections most sockets end before the poll that would look them up (193,369 of
        300,005 notices in 10 s of 10,000 connections a second), and such a mark is left in
        its bytes rather than unpacked and passed over."""
        skip = (_NK, NOTE_DIRTY, set(map(_first, finals))) if finals else None
        notices: list[tuple] = []
        for b in chunks:
            notices += fd.unpack_all(self._notice_fmt, b, skip)
        _notices_pass(notices, finals, self, time.monotonic_ns())

    def _notice_other(self, v: tuple) -> None:
        """A notice that is neither DIRTY nor OWNER (rare: exec, exit, fork), in its order."""
        kind, cookie, pid = v[_NK], v[0], v[_NPID]
        if kind == NOTE_EXEC:
            # the name now, not the one at exec (a later prctl or exec may have changed it)
            self.owners.note(pid, read_comm(pid) or _comm(v[N["comm"]]), exec_=True)
            self._redecode.update(self._by_pid.get(pid, ()))
        elif kind == NOTE_FORK:
            self.owners.born(cookie)  # the child's pid (a pid that exited may be given again)
            self._forks.append((pid, cookie))  # looked at once this poll's records are in
        elif kind == NOTE_EXIT:
            self.owners.exited(pid, _comm(v[N["comm"]]))
            for cookie in self._by_pid.get(pid, ()):
                tr = self._tracks.get(cookie)
                if tr is not None and tr.kind == KIND_LIVE:
                    # it stays the owner unless the file tables name a process that still holds it
                    tr.refs = -2  # verify again, whatever its file references say
                    self._redecode.add(cookie)

    def _lookup_set(self, finals: list[tuple]) -> set[int]:
        """Sockets to look up now: noticed or not quiescent, minus those whose final record came
        in; plus kernel-held ends whose timer is due."""
        want = self._watch
        self._watch = set()
        if want and finals:  # one C-level pass (a churn poll has ~20,000 final records)
            want.difference_update(map(_first, finals))
        if len(self._tw_due) > self._tw_due_room:
            self._tw_due[:] = _due_kept(self._tw_due, self._tracks)  # in place: the C passes hold it
            self._tw_due_room = 2 * max(len(self._tw_due), len(self._tw_keys)) + TW_DUE_SLACK
        if self._tw_due and self._tw_due[0][0] <= time.time():
            now = time.time()
            while self._tw_due and self._tw_due[0][0] <= now:
                _, cookie = heapq.heappop(self._tw_due)
                tr = self._tracks.get(cookie)
                if tr is not None and tr.kind == KIND_TW:
                    want.add(cookie)
        return want

    def _watch_unchanged(self, lookups: set[int], looked: list[bytes]) -> None:
        """Sockets a lookup found unchanged send no record, and their last one stands: if it
        was not quiescent, they are looked up again next poll. What moves such a socket may
        send no notice (the application reading or writing, segments outside ESTABLISHED),
        so only a record that says quiescent ends the watch, not a lookup that saw no change
        yet."""
        if not lookups:
            return
        sent = set()
        for buf in looked:
            sent.update(memoryview(buf).cast("Q")[_COOKIE_Q::REC_SIZE // 8].tolist())
        tracks, watch = self._tracks, self._watch
        for cookie in lookups - sent:
            tr = tracks.get(cookie)
            if tr is not None and tr.kind == KIND_LIVE and tr.vals is not None and \
                    not tr.vals[I_FLAGS] & REC_QUIESCENT:
                watch.add(cookie)

    def _lookups_ok(self) -> bool:
        return self.hooks.get("socket lookup") == "ok"

    def _lookup(self, cookies) -> list[bytes]:
        """Read these sockets by 4-tuple, grouped by namespace; only changed ones come back
        (and KIND_GONE for those that are no more). Without the lookup program the walk
        reads the whole table every poll instead."""
        if not cookies or not self._lookups_ok():
            return []
        by_ns = _wants_pass(self._tracks, cookies)
        out: list[bytes] = []
        for ns, wants in by_ns.items():
            if ns == self._host_netns or ns == 0:
                out += self._lookup_here(wants)
                continue
            path = self._ns_path(ns)
            if path is None:
                continue
            try:
                with netns.entered(path):
                    out += self._lookup_here(wants)
            except OSError:
                self._ns_paths.pop(ns, None)
        return out

    def _lookup_here(self, wants: list[bytes]) -> list[bytes]:
        assert self._obj is not None
        prog, wmem, gmem = self._obj.programs["tcptop_lookup"], self._wants_mem, self._got_mem
        out: list[bytes] = []
        for i in range(0, len(wants), GOT_MAX):
            part = b"".join(wants[i:i + GOT_MAX])
            wmem[:len(part)] = part
            self._ctl.n_wants = len(part) // WANT.size
            prog.test_run(DUMMY_PACKET)
            n = self._ctl.n_got
            if n:
                out.append(gmem[:n * REC_SIZE])
        return out

    def _ns_path(self, ino: int) -> str | None:
        path = self._ns_paths.get(ino)
        if path is None:
            self._ns_paths = netns.namespace_paths()
            path = self._ns_paths.get(ino)
        return path

    # The rolling walk: a slice per poll, namespace after namespace.

    def _walk_slice(self) -> list[bytes]:
        """Walk on for about walk_ms (the whole table when lookups are unavailable): the
        iterator stops itself after a budget of sockets and resumes there next poll."""
        ctl, out = self._ctl, []
        deadline = time.perf_counter() + self.walk_ms / 1e3
        # Without lookups, or when notices were lost (the ring filled between two polls, or the
        # kernel skipped a hook's run: recursion_misses), only a whole pass finds every socket
        # that changed.
        lost = self.last_stats[Stat.STAT_NOTICES_LOST] + self.recursion_misses
        unbounded = not self._lookups_ok() or lost != self._notices_lost
        self._notices_lost = lost
        now = time.monotonic()
        share = max(256, int(self._table_size * (now - self._last_walk) / self.walk_period_s))
        self._last_walk = now
        new_cycle = False
        while True:
            if self._walk is None:
                if not self._walk_queue:
                    if new_cycle:
                        break  # at most one pass over the namespaces per poll
                    new_cycle = True
                    self._table_size, self._pass_seen = max(self._pass_seen, 256), 0
                    # namespaces made since the last pass too: one whose every notice was lost
                    # would otherwise never be walked
                    self._ns_paths = netns.namespace_paths()
                    known = {ns for ns, n in self._ns_count.items() if n > 0} | set(self._ns_paths)
                    self._walk_queue = [self._host_netns] + sorted(known - {self._host_netns})
                ns = self._walk_queue.pop(0)
                reader = self._new_reader(ns)
                if reader is None:
                    continue
                self._walk = (ns, reader)
            left_ns = (deadline - time.perf_counter()) * 1e9
            if left_ns <= 0 and not unbounded:
                break
            ctl.walk_seen = 0
            ctl.walk_budget = 0xFFFFFFFF if unbounded else max(64, min(share, int(left_ns / self._walk_cost_ns)))
            reader = self._walk[1]
            t0 = time.perf_counter()
            out.append(reader.read())
            self._pass_seen += ctl.walk_seen
            share -= ctl.walk_seen
            if ctl.walk_seen >= 1000:  # what a socket costs to pass over now (most are unchanged)
                cost = (time.perf_counter() - t0) * 1e9 / ctl.walk_seen
                self._walk_cost_ns = min(max(0.5 * self._walk_cost_ns + 0.5 * cost, 100.0), 20000.0)
            if reader.done:
                reader.close()
                self._walk = None
            if not reader.done or (share <= 0 and not unbounded):
                break  # the budget stopped it
        return out

    def _new_reader(self, ns: int) -> IterReader | None:
        assert self._iter is not None
        if ns == self._host_netns:
            return IterReader(self._iter)
        path = self._ns_path(ns)
        if path is None:
            return None
        try:
            with netns.entered(path):
                return IterReader(self._iter)
        except OSError:
            return None

    # Records to flows.

    def _apply(self, bufs: list[bytes], finals: list[tuple]) -> None:
        """Records the readers sent (each a change, a kernel-held end, or a socket gone)."""
        # before the readers' records: a kept end a lookup saw comes after its final record (the
        # first walk's records come before them, applied as they were read: to a kept end the walk
        # saw, its final record gives its final values and it stays kept; see _final_other)
        self._apply_finals(finals)
        for buf in bufs:
            _live_pass(records(buf), self, self._first_holders)
        self._redecode_now()
        self._first_holders = None

    def _apply_other(self, cookie: int, kind: int, tr: _Track | None, v: tuple) -> None:
        if kind == KIND_GONE:
            if tr is not None and tr.kind != KIND_CLOSED:
                self._gone(cookie, tr)
            return
        if tr is None:
            tr = self._track(cookie, v[fd.I_NOW])
        elif tr.kind == KIND_CLOSED:
            return
        if kind == KIND_TW:
            self._to_tw(cookie, tr, v)
            return
        if tr.kind == KIND_TW and tr.vals is not None and v[fd.I_NOW] < tr.vals[fd.I_NOW]:
            # read before the end the kernel keeps now: a poll applies the final records it
            # took last before what its readers read earlier (the first walk, lookups)
            return
        tr.vals = v  # live again: a tw check that found the socket still there
        tr.kind = KIND_LIVE
        self._set_place(tr, b"", v[fd.I_NETNS])
        self._decode(cookie, tr)

    def _redecode_now(self) -> None:
        self._pinfo.clear()
        tracks, pending = self._tracks, self._redecode
        self._redecode = set()
        for cookie in pending:
            tr = tracks.get(cookie)
            if tr is not None:
                self._decode(cookie, tr)

    def _apply_finals(self, finals: list[tuple]) -> None:
        """Final records close their flows, except where the kernel may keep a TIME_WAIT or
        FIN_WAIT2 end: those are looked up at once, and listed with its state and timer."""
        tracks = self._tracks
        tw_checks = _finals_pass(finals, self, self._lookups_ok())
        if not tw_checks:
            return
        found = set()
        for buf in self._lookup(tw_checks):
            found |= _tw_pass(fd.records(buf), self)
        for cookie in tw_checks:
            if cookie not in found:
                self._close(cookie, tracks[cookie])

    def _final_other(self, cookie: int, tr: _Track, v: tuple) -> None:
        """A final record that does not simply close its flow: a late read after the end, or
        the final values of an end the walk saw the kernel keep before this record came in."""
        if v[fd.I_KIND] == KIND_LATE:  # the application read more after the end
            if tr.vals is not None:
                i = fd.R["read_bytes"]
                tr.vals = fd.replaced(tr.vals, i, v[i])
                self._decode(cookie, tr)
            return
        tr.vals = fd.replaced(v, fd.I_STATE, tr.vals[fd.I_STATE])
        self._decode(cookie, tr)

    def _decode(self, cookie: int, tr: _Track) -> None:
        v = tr.vals
        if v is None:  # known from a notice only, so far
            return
        flags = v[I_FLAGS]
        if flags & REC_SEEN_BIRTH:
            est = v[I_EST]
            if est:
                tr.born_ns = est
            since_start = tr.since_start = False
        else:
            since_start = tr.since_start = True
        kind = tr.kind
        old = tr.flow
        if kind != KIND_LIVE and old is not None and old.pid:
            pid, info = old.pid, (old.comm, old.cgroup, old.container)  # who had it when it ended
        else:
            pid = tr.owner or v[I_PID]
            info = self._pid_info(pid) if pid else None
            if info is None:
                pid, info = self._owner_gone(pid, v[I_INO])
        refs = v[I_REFS]
        if kind == KIND_LIVE:
            if tr.refs == -1 and pid:
                tr.refs = refs  # the process that connected holds it: moves show as changed references
            elif tr.refs == -2 or (tr.refs != refs and (not pid or tr.refs >= 0)):
                self._verify.add(cookie)  # unknown, gone, or its file was shared or unshared since it was known
        comm = info[0] or (comm_of(v[I_COMM]) if pid and pid == v[I_PID] else "")
        closed = kind == KIND_CLOSED
        f = tr.flow = flow_of(v, pid, comm, info[1], info[2], tr.born_ns, self._boot_offset, since_start,
                                 "client" if flags & REC_CLIENT else "server" if flags & REC_SERVER else "",
                                 closed, ST_CLOSED if closed else v[I_STATE], tr.tw_expires_ts)
        self._flows[cookie] = f
        self.touched.add(cookie)
        self._changed = True
        if self._redecode:
            self._redecode.discard(cookie)  # decoded now: whatever asked for it is in
        if old is None or old.pid != pid:
            self._repoint(cookie, old.pid if old is not None else 0, pid)
        if flags & REC_NO_COUNTERS and not closed:
            self._no_counters.add(cookie)
        elif self._no_counters:
            self._no_counters.discard(cookie)

    def _owner_gone(self, pid: int, ino: int) -> tuple[int, tuple[str, str, str]]:
        """The owner known (the process that connected or accepted, or a holder the file
        tables named) is gone, or none is known: a holder /proc names, else the process
        that held it last stays its owner, named as last known (the record's comm, the
        kernel's at connect(), when nothing else was). A process's exit is what lets go of
        a short-lived client's socket, often before any poll reads it: the ends the kernel
        keeps and the closed flows still say whose they were. If another process still
        holds the file, the file tables name it (the exit marked the flow to be verified)."""
        holder = self.owners.pid_of_inode(ino)
        info = self._pid_info(holder) if holder else None
        if info is not None:
            return holder, info
        if pid:
            return pid, self.owners.last_known(pid)
        return 0, ("", "", "")

    def _pid_info(self, pid: int) -> tuple[str, str, str] | None:
        """owners.lookup, remembered for the rest of this poll (a process owns many flows)."""
        try:
            return self._pinfo[pid]
        except KeyError:
            info = self._pinfo[pid] = self.owners.lookup(pid)
            return info

    def _repoint(self, cookie: int, old_pid: int, pid: int) -> None:
        if old_pid:
            pids = self._by_pid.get(old_pid)
            if pids is not None:
                pids.discard(cookie)
                if not pids:
                    del self._by_pid[old_pid]
        if pid:
            self._by_pid.setdefault(pid, set()).add(cookie)

    def _to_tw(self, cookie: int, tr: _Track, v: tuple) -> None:
        """A TIME_WAIT or FIN_WAIT2 end: the final values (if we had them) with the kernel's
        state and timer; looked up again when the timer is due."""
        now = time.time()
        expires = round(now + v[fd.I_TW_LEFT] / 1000, 3)
        # A FIN_WAIT2 end becomes TIME_WAIT when the peer's FIN comes: looked at every poll.
        heapq.heappush(self._tw_due, fd.pair(now if v[fd.I_STATE] == ST_FIN_WAIT2 else expires + 0.05, cookie))
        if tr.kind == KIND_TW and tr.vals[fd.I_STATE] == v[fd.I_STATE] and abs(expires - tr.tw_expires_ts) < 1.0:
            return  # as it was
        tr.tw_expires_ts = expires
        self._watch.discard(cookie)
        self._verify.discard(cookie)
        base = tr.vals
        if base is None or base[fd.I_KIND] == KIND_TW:  # older than tcptop: only the kernel's end is known
            tr.vals = v
            tr.since_start = True
        else:
            tr.vals = fd.replaced(base, fd.I_STATE, v[fd.I_STATE])
        tr.kind = KIND_TW
        self._set_place(tr, b"", v[fd.I_NETNS])
        self._decode(cookie, tr)

    def _sweep_kept(self) -> None:
        """Close the kept ends the kernel dropped for a new socket of their 4-tuple. A SYN that
        reuses a TIME_WAIT end's 4-tuple (a client cycling its ports) or a connect that reuses
        its port ends it early and sends no event; found only when its timer was due, such ends
        were listed up to a minute too long (108,812 listed against the kernel's 28,046 under a
        churn of 10,000 connections/s)."""
        if not self.touched:
            return
        kills = _sweep_pass(self._tracks, self.touched, self._tw_at, self._tw_keys)
        if kills:
            _close_kept(kills, self)

    def _gone(self, cookie: int, tr: _Track) -> None:
        """A lookup found nothing: closed without a final record (its ring was full), or the
        end the kernel kept expired; the last values are its final ones."""
        if tr.vals is None:
            self._forget(cookie)
            return
        self._close(cookie, tr)

    def _close(self, cookie: int, tr: _Track) -> None:
        tr.kind = KIND_CLOSED
        tr.tw_expires_ts = 0.0
        self._watch.discard(cookie)
        self._verify.discard(cookie)
        self._closing.append(fd.pair(self._polls + self.closed_keep_polls, cookie))
        self._decode(cookie, tr)

    def _forget(self, cookie: int) -> None:
        tr = self._tracks.pop(cookie, None)
        self._flows.pop(cookie, None)
        self.touched.add(cookie)
        self._no_counters.discard(cookie)
        if tr is None:
            return
        if tr.netns:
            self._ns_count[tr.netns] -= 1
        if tr.flow is not None and tr.flow.pid:
            self._repoint(cookie, tr.flow.pid, 0)
        self._changed = True

    @property
    def by_id(self) -> dict:
        """The listed flows by cookie (read only)."""
        return self._flows

    def _expire(self) -> None:
        _expire_pass(self)
        self.flows_without_counters = len(self._no_counters)

    # Owners.

    def _resolve_owners(self) -> None:
        """Ask the file tables who holds the sockets whose owner is unknown, gone, or may have
        moved (their file was shared or unshared); a recorded owner stays while it holds it."""
        self._pinfo.clear()  # the file tables may name processes anew
        if self._forks:
            self._check_forks()
        verify = {c for c in self._verify if c in self._tracks and self._tracks[c].kind == KIND_LIVE}
        if not verify or not self.owners.may_scan():
            self._verify = verify
            return
        self._verify = set()
        holders = self._holders(verify)
        for cookie in verify:
            tr = self._tracks[cookie]
            if tr.vals is not None:
                tr.refs = tr.vals[fd.I_REFS]
            pids = holders.get(cookie)
            if pids:
                current = tr.owner or (tr.vals[fd.I_PID] if tr.vals is not None else 0)
                tr.owner = current if current in pids else min(pids)
            self._decode(cookie, tr)
            if pids or tr.refs >= 0:
                self._verify.discard(cookie)

    def _check_forks(self) -> None:
        """A process that owns sockets forked: which of the two holds each now (the walk is
        limited to the two processes' file tables)."""
        forks, self._forks = self._forks, []
        for parent, child in forks:
            if parent not in self._by_pid:
                continue
            cookies = {c for c in self._by_pid.get(parent, ()) if self._tracks[c].kind == KIND_LIVE}
            if not cookies or self._files is None:
                self._verify |= cookies
                continue
            holders: dict[int, set[int]] = {}
            for pid in (parent, child):
                for cookie, pids in self._holders(cookies, pid).items():
                    holders.setdefault(cookie, set()).update(pids)
            for cookie in cookies:
                tr = self._tracks[cookie]
                pids = holders.get(cookie)
                if pids and (tr.owner or tr.flow.pid) not in pids:
                    tr.owner = min(pids)
                if tr.vals is not None:
                    tr.refs = tr.vals[fd.I_REFS]
                self._decode(cookie, tr)

    def _holders(self, cookies: set[int], pid: int = 0) -> dict[int, set[int]]:
        out: dict[int, set[int]] = {}
        if self._files is None:  # no task_file iterator here: /proc/PID/fd, as ss -p does
            inodes = {self._tracks[c].vals[fd.I_INO]: c for c in cookies if self._tracks[c].vals is not None}
            for ino, pids in self.owners.scan_inodes(set(inodes)).items():
                out[inodes[ino]] = pids
            return out
        assert self._obj is not None
        wanted = self._obj.maps["owner_wanted"]
        keys = list(cookies)[:65536]
        wanted.update_keys(keys, ctypes.c_uint64, ctypes.c_uint8)
        try:
            if pid:
                try:
                    link = self._obj.programs["tcptop_files"].attach_iter(pid=pid)
                except BpfError:
                    return out  # the process is gone already
                try:
                    buf = iter_read(link)
                finally:
                    link.destroy()
            else:
                buf = iter_read(self._files)
                self.owners.scans += 1
        finally:
            wanted.delete_keys(keys, ctypes.c_uint64)
        for i in range(0, len(buf) - HOLDER_SIZE + 1, HOLDER_SIZE):
            cookie, _ino, pid, _fd, comm = HOLDER.unpack_from(buf, i)
            out.setdefault(cookie, set()).add(pid)
            if self.owners.note(pid, _comm(comm)):
                self._redecode.update(self._by_pid.get(pid, ()))
        return out


def py_apply_live(recs: list[tuple], eng: FlowEngine, first: dict[int, int] | None) -> None:
    """FlowEngine._apply's pass over records, in order: a live record of a live connection is
    applied here, anything else by the engine's _apply_other. _flow_decode.apply_live does the
    same in C (tests/unit/test_flow_apply_c.py compares both)."""
    tracks, get, watch, decode = eng._tracks, eng._tracks.get, eng._watch, eng._decode
    for v in recs:
        cookie, kind = v[0], v[I_KIND]
        tr = get(cookie)
        if kind != KIND_LIVE or (tr is not None and tr.kind != KIND_LIVE):
            eng._apply_other(cookie, kind, tr, v)
            continue
        if tr is None:
            tr = tracks[cookie] = _Track()
            tr.born_ns = v[I_NOW]
            if first is not None:
                tr.owner = first.get(v[I_INO], 0)  # the first walk's holders, by socket inode
                tr.refs = v[I_REFS]
        tr.vals = v
        tr.want = b""
        ns = v[I_NETNS]
        if tr.netns != ns:
            eng._set_place(tr, b"", ns)
        if not v[I_FLAGS] & REC_QUIESCENT:
            watch.add(cookie)
        decode(cookie, tr)


def py_tw_pass(recs: list[tuple], eng: FlowEngine) -> set[int]:
    """The lookups of ends the kernel may keep: each TIME_WAIT or FIN_WAIT2 end found is
    applied (the cookies found are returned; the others closed by the caller).
    _flow_decode.tw_pass does the same in C."""
    found = set()
    for v in recs:
        tr = eng._tracks.get(v[fd.I_COOKIE])
        if tr is not None and v[fd.I_KIND] == KIND_TW:
            eng._to_tw(v[fd.I_COOKIE], tr, v)
            found.add(v[fd.I_COOKIE])
    return found


def py_expire_pass(eng: FlowEngine) -> None:
    """Closed flows whose polls to stay listed are over are forgotten.
    _flow_decode.expire_pass does the same in C."""
    closing, tracks = eng._closing, eng._tracks
    while closing and closing[0][0] < eng._polls:
        _, cookie = closing.popleft()
        tr = tracks.get(cookie)
        if tr is not None and tr.kind == KIND_CLOSED:
            eng._forget(cookie)


def py_apply_finals(finals: list[tuple], eng: FlowEngine, lookups_ok: bool) -> list[int]:
    """FlowEngine._apply_finals' pass over final records: each closes its flow, except a
    FIN_WAIT or CLOSING end the kernel may still keep (returned, to be looked up); a late read
    and the final values of an end already seen kept go to _final_other.
    _flow_decode.apply_finals does the same in C (tests/unit/test_flow_apply_c.py)."""
    tw_checks = []
    for v in finals:
        cookie = v[fd.I_COOKIE]
        tr = eng._track(cookie, v[fd.I_NOW])
        if v[fd.I_KIND] == KIND_LATE or tr.kind == KIND_TW:
            eng._final_other(cookie, tr, v)
            continue
        tr.vals = v
        eng._set_place(tr, b"", v[fd.I_NETNS])
        if v[fd.I_STATE] in (ST_FIN_WAIT1, ST_FIN_WAIT2, ST_CLOSING) and lookups_ok and \
                not v[fd.I_FLAGS] & (REC_RESET_RCVD | REC_TIMED_OUT):
            tw_checks.append(cookie)
        else:
            eng._close(cookie, tr)
    return tw_checks


def py_take_notices(notices: list[tuple], finals: list[tuple], eng: "FlowEngine", now_ns: int) -> None:
    """FlowEngine._take_notices' pass (the reference for _flow_decode.take_notices): a socket
    to look up (DIRTY; not one whose final record is in) and who accepted or connected it
    (OWNER); anything else to the engine's _notice_other, in order."""
    ended = {v[0] for v in finals}  # its final record is in: no need to look it up
    for v in notices:
        kind, cookie, pid = v[_NK], v[0], v[_NPID]
        if kind == NOTE_DIRTY:
            if cookie in ended:
                continue
            tr = eng._track(cookie, now_ns)
            if tr.kind != KIND_CLOSED:
                eng._set_place(tr, _want_of_notice(v), v[_NNS])
                eng._watch.add(cookie)
        elif kind == NOTE_OWNER:
            if eng.owners.note(pid, _comm(v[_NCOMM])):
                eng._redecode.update(eng._by_pid.get(pid, ()))
            tr = eng._track(cookie, now_ns)
            tr.owner = pid
            eng._redecode.add(cookie)
        else:
            eng._notice_other(v)


_C_PASSES = fd.live_passes(_Track, {
    "KIND_LIVE": KIND_LIVE, "KIND_CLOSED": KIND_CLOSED, "KIND_LATE": KIND_LATE, "KIND_TW": KIND_TW,
    "REC_QUIESCENT": REC_QUIESCENT, "REC_SEEN_BIRTH": REC_SEEN_BIRTH, "REC_CLIENT": REC_CLIENT,
    "REC_SERVER": REC_SERVER, "REC_NO_COUNTERS": REC_NO_COUNTERS, "REC_RESET_RCVD": REC_RESET_RCVD,
    "REC_TIMED_OUT": REC_TIMED_OUT, "ST_FIN_WAIT1": ST_FIN_WAIT1, "ST_FIN_WAIT2": ST_FIN_WAIT2,
    "ST_CLOSING": ST_CLOSING, "ST_CLOSED": ST_CLOSED, "NOTE_DIRTY": NOTE_DIRTY, "NOTE_OWNER": NOTE_OWNER,
    "REC_LOOKUP_V4": REC_LOOKUP_V4},
    N, {name: getattr(FlowWant, name).offset for name, _ in FlowWant._fields_}, WANT.size)
_live_pass, _finals_pass, _tw_pass, _expire_pass, _notices_pass = _C_PASSES or (
    py_apply_live, py_apply_finals, py_tw_pass, py_expire_pass, py_take_notices)
# A track can never be part of a cycle (it holds a record, a Flow, bytes and numbers): out of
# the collector's sight, as the C passes make theirs.
_untrack = fd.untrack


_comm = fd.comm_of


def _holders_of(buf: bytes) -> tuple[dict[int, int], dict[int, bytes]]:
    """From task_file records: socket inode -> the lowest pid holding it, and pid -> its comm
    (from its last record). Read as columns: at 100,000 connections the walk sends 200,000
    records. By inode, not cookie: this walk comes before the TCP walk that makes cookies."""
    n = len(buf) // HOLDER_SIZE
    if not n:
        return {}, {}
    mv = memoryview(buf)[:n * HOLDER_SIZE]
    inodes = mv.cast("Q")[FlowHolder.ino.offset // 8::HOLDER_SIZE // 8].tolist()
    pids = mv.cast("I")[FlowHolder.pid.offset // 4::HOLDER_SIZE // 4].tolist()
    holders = dict(zip(inodes, pids))
    if len(holders) < n:  # some socket has several holders (shared after fork, dup)
        for ino, pid in zip(inodes, pids):
            if pid < holders[ino]:
                holders[ino] = pid
    at, width = FlowHolder.comm.offset, FlowHolder.comm.size
    last = dict(zip(pids, range(n)))  # pid -> index of its last record
    comms = {pid: buf[i * HOLDER_SIZE + at:i * HOLDER_SIZE + at + width] for pid, i in last.items()}
    return holders, comms


def py_wants_by_ns(tracks: dict[int, _Track], cookies) -> dict[int, list[bytes]]:
    """FlowEngine._lookup's wants by namespace; a track without a want gets its record's.
    _flow_decode.wants_by_ns does the same in C."""
    by_ns: dict[int, list[bytes]] = {}
    for c in cookies:
        tr = tracks.get(c)
        if tr is None:
            continue
        if not tr.want and tr.vals is not None:
            tr.want = _want_of_record(tr.vals)
        if tr.want:
            by_ns.setdefault(tr.netns, []).append(tr.want)
    return by_ns


_wants_pass = fd._c.wants_by_ns if _C_PASSES else py_wants_by_ns


def _place(tr: _Track) -> tuple | None:
    """(netns, the want without its cookie): one socket at a time in the kernel."""
    if not tr.want:
        if tr.vals is None:
            return None
        tr.want = _want_of_record(tr.vals)
    return (tr.netns, tr.want[8:])


def _ended_ns(tr: _Track) -> int:
    return tr.vals[fd.I_NOW] if tr.vals is not None else -1


def py_tw_sweep(tracks: dict[int, _Track], touched, at: dict[tuple, int], keys: dict[int, tuple]) -> list[int]:
    """FlowEngine._sweep_kept's pass over the sockets touched this poll: `at` holds each kept
    end's place, `keys` the cookie back. A socket born after a kept end of its place ended, or a
    later kept end there, means the kernel dropped the older end: those are returned. The kept
    ends are indexed first, so a socket and the end it replaced may come in one poll.
    _flow_decode.tw_sweep does the same in C."""
    kills = []
    for c in touched:
        tr = tracks.get(c)
        if tr is not None and tr.kind == KIND_TW:
            if c in keys:
                continue
            k = _place(tr)
            if k is None:
                continue
            old = at.get(k)
            if old is not None:  # two kept ends of one place: the one that ended first is gone
                otr = tracks.get(old)
                if _ended_ns(tr) < (_ended_ns(otr) if otr is not None else -1):
                    kills.append(c)  # this one (its record came late)
                    continue
                del keys[old]
                if otr is not None:
                    kills.append(old)
            at[k] = c
            keys[c] = k
            continue
        k = keys.pop(c, None)  # no longer kept: out of the index
        if k is not None and at.get(k) == c:
            del at[k]
    for c in touched:
        tr = tracks.get(c)
        if tr is None or tr.kind == KIND_TW or not at:
            continue
        k = _place(tr)
        old = at.get(k) if k is not None else None
        if old is None:
            continue
        otr = tracks.get(old)
        if tr.born_ns > (_ended_ns(otr) if otr is not None else -1):  # born after it ended
            kills.append(old)
            del keys[old], at[k]
    return kills


def py_close_kept(kills: list[int], eng: FlowEngine) -> None:
    """FlowEngine._sweep_kept's closing of the ends py_tw_sweep found dropped, as _gone closes
    them. _flow_decode.close_kept does the same in C."""
    for cookie in kills:
        tr = eng._tracks.get(cookie)
        if tr is not None and tr.kind == KIND_TW:
            eng._gone(cookie, tr)


_sweep_pass, _close_kept = (fd._c.tw_sweep, fd._c.close_kept) if _C_PASSES else (py_tw_sweep, py_close_kept)


def _want_of_record(v: tuple) -> bytes:
    v4 = v[fd.I_FLAGS] & REC_LOOKUP_V4
    return _want(v[fd.I_COOKIE], v[fd.I_SPORT], v[fd.I_DPORT], v[fd.I_FAMILY], v4, v[fd.I_SADDR], v[fd.I_DADDR])


def _want_of_notice(v: tuple) -> bytes:
    return _want(v[0], v[_NSPORT], v[_NDPORT], v[_NFAM], v[_NV4], v[_NSADDR], v[_NDADDR])


def _want(cookie: int, sport: int, dport: int, family: int, mapped: int, saddr: bytes, daddr: bytes) -> bytes:
    """A struct flow_want, packed in one call (a notice's socket is looked up once per poll)."""
    if family == 2:
        return _pack_want(cookie, sport, dport, 1, 0, saddr, daddr)
    return _pack_want(cookie, sport, dport, 1 if mapped else 0, 0, _lookup_addr(family, mapped, saddr),
                      _lookup_addr(family, mapped, daddr))


_pack_want = WANT.pack
_first = operator.itemgetter(0)  # a record's cookie
_COOKIE_Q = FlowRecord.cookie.offset // 8  # a record's cookie, in 8-byte words
_NSPORT, _NDPORT, _NFAM, _NV4 = N["sport"], N["dport"], N["family"], N["lookup_v4"]
_NSADDR, _NDADDR = N["saddr"], N["daddr"]


def _due_kept(heap: list, tracks: dict) -> list:
    """The entries of ends still kept, as a heap. An end that closes or that a new socket takes
    over leaves its entry until it is due (a minute for TIME_WAIT), and an end seen again as it
    was adds one: under a churn of 10,000 connections/s the heap held 226,000 entries for
    28,000 kept ends after 30 s, and kept growing."""
    kept = [e for e in heap if (tr := tracks.get(e[1])) is not None and tr.kind == KIND_TW]
    heapq.heapify(kept)
    return kept


TW_DUE_SLACK = 4096  # entries past twice the kept ends before _due_kept runs (amortised: rarely)


def _lookup_addr(family: int, mapped: int, raw: bytes) -> bytes:
    """The address as the lookup program reads it: IPv4 in the first four bytes."""
    if family == 2:
        return raw
    if mapped:
        return raw[12:16] + bytes(12)
    return raw


KEEPER_PERIOD_S = 0.25  # how often _keep_rings looks at the closed and notice rings
# A rescue ring (see reserve() in bpf/flows.bpf.c) is this fraction of its main ring, and
# holds at least RESCUE_MIN final records: refusals came one every ~15 s in a churn of
# 10,000 connections a second, and the keeper empties a rescue ring within 0.25 s.
RESCUE_SHARE = 64
RESCUE_MIN = 64
_RING_REC = (REC_SIZE + 8 + 7) // 8 * 8  # a record in a ring buffer: 8-byte header, 8-byte aligned


_capture_ns = operator.itemgetter(I_NOW)


def _ring_size(nbytes: int) -> int:
    """A ring buffer's size: a power of two, at least a page."""
    size = 4096
    while size < nbytes:
        size <<= 1
    return size


def _ctl_offset(obj: BpfObject) -> int:
    """Where the `ctl` global lies in .bss (from the object's BTF)."""
    from tcptop.engines.core.libbpf import _Btf
    for name, off, _size in _Btf(obj._obj_btf()).datasec(".bss"):
        if name == "ctl":
            return off
    raise BpfError("flows.bpf.o has no ctl in .bss", 0)


def _config_hz() -> int:
    """CONFIG_HZ, for kernels where the object cannot read it itself (0 if unknown)."""
    import gzip
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            for line in f:
                if line.startswith("CONFIG_HZ="):
                    return int(line.split("=")[1])
    except (OSError, ValueError):
        pass
    return 0
