"""Flow engine on BCC, user side: sock_diag for what the kernel keeps, flows.c for events, polls.

Pairs with flows.c (compiled by BCC at start-up). One poll = one sock_diag dump per
address family in every network namespace (tcp_info of every connection, with its
socket-storage counters riding along), one drain of the closed-flow records and one read
of the small map of sockets that entered fast recovery. Nothing is read per packet.

Every number is what the kernel keeps or counts, read through interfaces that do not
depend on kernel struct layouts (see flows.c and README "Engines"):
- exact from tcp_info: flight_size, rwnd, cwnd, mss, retrans_packets, bytes_sent,
  bytes_received, timeouts (tcpi_total_rto), srtt, min_rtt, rcv_wnd, ssthresh, ca_state;
  app_wqueue is sock_diag's wqueue (write_seq - snd_una, as SIOCOUTQ);
- derived from them: read_bytes = bytes_received - rqueue (mind the FIN), write_bytes =
  bytes_acked + wqueue (mind SYN and FIN);
- counted in the kernel: rtt_samples/rtt_sum_us/rtt_hist (rtt.py: the best hook this kernel
  offers), establishment time and role (sock_ops), fast_retrans (tracepoint tcp_cong_state_set).
"""

from __future__ import annotations

import ctypes
import os
import socket
import time
from dataclasses import dataclass
from importlib import resources

from tcptop.engines import EngineError
from tcptop.engines.bcc import diag, loader, rtt
from tcptop.engines.histogram import rtt_hist
from tcptop.host import netns
from tcptop.host.procs import Owners
from tcptop.model import CA_STATES, TCP_STATES, Flow, Listener

# flows.c constants
FLOW_SEEN_BIRTH, FLOW_CLIENT, FLOW_SERVER = 1, 2, 4
STAT_NO_STORAGE, STAT_CLOSED_FULL, STAT_ADDR_FULL, STAT_RTT_FULL, STAT_MAX = 0, 1, 2, 3, 4
DEFAULT_MAX_ADDR_FLOWS = 16384

# Kernel TCP states (model.TCP_STATES).
ST_SYN_SENT, ST_SYN_RECV, ST_FIN_WAIT1, ST_FIN_WAIT2 = 2, 3, 4, 5
ST_CLOSE_WAIT, ST_LAST_ACK, ST_CLOSING = 8, 9, 11
OUR_FIN_QUEUED = frozenset((ST_FIN_WAIT1, ST_FIN_WAIT2, ST_CLOSING, ST_LAST_ACK))
PEER_FIN_RECEIVED = frozenset((ST_CLOSE_WAIT, ST_LAST_ACK, ST_CLOSING))

T = diag.TCPI
I_CA, I_MSS, I_UNACKED, I_SACKED, I_LOST, I_RETRANS = (
    T["ca_state"], T["snd_mss"], T["unacked"], T["sacked"], T["lost"], T["retrans"])
I_RTT, I_SSTHRESH, I_CWND, I_TOTAL_RETRANS = T["rtt"], T["snd_ssthresh"], T["snd_cwnd"], T["total_retrans"]
I_ACKED, I_RECEIVED, I_MIN_RTT, I_SENT = T["bytes_acked"], T["bytes_received"], T["min_rtt"], T["bytes_sent"]
I_SND_WND, I_RCV_WND, I_TOTAL_RTO = T["snd_wnd"], T["rcv_wnd"], T["total_rto"]

# Hooks: what each one gives, and what is lost without it.
SOCKOPS = "cgroup sock_ops"
TP_CONG = "tracepoint tcp_cong_state_set"
KP_RECOVERY = "kprobe tcp_enter_recovery"
TP_DESTROY = "tracepoint tcp_destroy_sock"
DIAG = "sock_diag (INET_DIAG) with tcp_info"
DIAG_STORAGE = "socket storage through sock_diag"
SK_ADDR = "socket addresses from sock_ops"
CONG_FIELDS = {"skaddr", "cong_state", "family", "sport", "dport", "saddr", "daddr", "saddr_v6", "daddr_v6"}
DESTROY_FIELDS = {"skaddr", "sock_cookie"}
# What the CO-RE engine's failure engine reads from kernel structs, which this engine does not.
NOT_MEASURED = ("drops by reason, resets, failed connects, and listeners' SYN queues and SYN-ACK retransmits: "
                "not measured by the BCC engine (listeners' accept queues and drop counters are, from sock_diag)")


def source() -> str:
    """flows.c with rtt.c appended: one module (rtt.c says why)."""
    files = resources.files("tcptop.engines.bcc")
    return files.joinpath("flows.c").read_text() + files.joinpath("rtt.c").read_text()


@dataclass
class _Track:
    """What user space remembers about one flow between polls."""

    key: bytes             # the record's bytes that matter; equal bytes -> reuse `flow`
    flow: Flow
    first_seen_ns: int
    wqueue_max: int = 0
    fast: int = 0          # fast-recovery entries
    server: bool | None = None  # this end was accepted (None: not known yet)
    role_exact: bool = False    # `server` is known, not inferred from listeners
    sk_addr: int = 0            # the socket's kernel address, from its counters (0: not known)
    final: bool = False         # closed, with the sock_ops final record applied
    tuple: tuple = ()           # (family, src, dst, sport, dport), to tie older sockets' events to it
    closed_polls: int = 0
    inode: int = 0         # socket inode, to find the owning process in /proc
    rtt: tuple = rtt.NO_COUNTS  # (rtt_samples, rtt_sum_us, per-bucket counts), as last read


class FlowEngine:
    """Owns the compiled flows.c module and its attachments. `poll()` returns the flows now."""

    def __init__(self, kernel_dir: str | None, max_closed: int = 16384, closed_keep_polls: int = 3,
                 max_addr_flows: int = DEFAULT_MAX_ADDR_FLOWS, tracepoint_fields=loader.tracepoint_fields,
                 extra_cflags: tuple[str, ...] = ()):
        self.max_closed = max_closed
        self.closed_keep_polls = closed_keep_polls
        self.hooks: dict[str, str] = {}
        self.degraded: list[str] = []
        self.owners = Owners()
        self._tracks: dict[int, _Track] = {}
        self._ownerless: set[int] = set()
        self._alive_pids: dict[int, bool] = {}
        self._attached: list[loader.Attachment] = []
        self._cgroup = loader.CgroupLinks()
        self._module = None
        self._boot_offset = time.time() - time.monotonic()
        self._home = netns.current_inode()
        self._diag: diag.DiagSocket | None = None
        self._storage_fd = -1
        self._counters_type = None
        self._listeners: dict[int, set[tuple[int, bytes, int]]] = {}
        self._info_checked = False
        # Closed flows that had counters but whose final record never came: another program
        # switched their sock_ops callbacks off (see keep_callbacks in flows.c). Counted as lost.
        self.finals_missing = 0
        self._pending_closed: dict[int, object] = {}
        self._listening_now: list[tuple[int, diag.Record]] = []
        self._listener_cache: dict[int, tuple] = {}
        self._kernel_dir = kernel_dir
        self.rtt: rtt.RttSamples | None = None
        try:
            self._start(kernel_dir, max_addr_flows, tracepoint_fields, extra_cflags)
        except BaseException:
            self.close()
            raise

    # -- set-up -------------------------------------------------------------

    def _start(self, kernel_dir: str | None, max_addr_flows: int, tracepoint_fields, extra_cflags) -> None:
        cong = tracepoint_fields("tcp", "tcp_cong_state_set")
        destroy = tracepoint_fields("tcp", "tcp_destroy_sock")
        have_cong = cong is not None and CONG_FIELDS <= cong
        have_destroy = destroy is not None and DESTROY_FIELDS <= destroy
        cflags = [f"-DMAX_CLOSED={self.max_closed}", f"-DMAX_ADDR_FLOWS={max_addr_flows}"]
        if have_cong:
            cflags.append("-DHAVE_TP_CONG_STATE_SET=1")
        if have_destroy:
            cflags.append("-DHAVE_TP_DESTROY_SOCK=1")
        rtt_flags, why_no_probe = rtt.compile_flags(tracepoint_fields, kernel_dir, have_destroy)
        self._cflags = cflags + rtt_flags + list(extra_cflags)
        self._module = loader.compile_module(source(), self._cflags, kernel_dir)
        self._diag = diag.DiagSocket()
        self._attach_sockops(why_no_probe)
        self._attach_recovery(have_cong, cong)
        self._attach_destroy(have_destroy, destroy)
        self._check_diag()

    def _degrade(self, hook: str, why: str, lost: str) -> None:
        self.hooks[hook] = f"unavailable: {why}"
        self.degraded.append(f"{lost}: {hook} unavailable ({why})")

    def _attach_sockops(self, why_no_probe: str | None) -> None:
        """sock_ops, with the RTT sample hook chosen between its load and its attach: the
        program reads which one it is (and a refused load compiles the module again)."""
        lost = ("duration_s from establishment (first seen instead), role, final values of closed flows (last "
                "polled instead), the handshake's RTT sample (with tcp_probe)")
        fn = None
        try:
            fn = self._load_sockops()
        except loader.Refused as e:
            self._degrade(SOCKOPS, f"the verifier refused it ({e})", lost)
        self.rtt = rtt.RttSamples(self._module, self._attached, self.hooks, self.degraded)
        self.rtt.attach(why_no_probe, fn is not None)
        if fn is None:
            return
        try:
            self._attached.append(self._cgroup.attach(fn, loader.ATTACH_CGROUP_SOCK_OPS))
        except OSError as e:
            self._degrade(SOCKOPS, e.strerror or str(e), lost)
            return
        self.hooks[SOCKOPS] = "ok"

    def _load_sockops(self):
        """The sock_ops program; if the verifier refuses it, once more without storing socket
        addresses (the one thing in it a kernel may not allow), which costs only the tie of
        fast-recovery entries to sockets by address (the 4-tuple remains)."""
        try:
            fn = loader.load(self._module, "tt_bcc_sockops", loader.PROG_SOCK_OPS)
            self.hooks[SK_ADDR] = "ok"
            return fn
        except loader.Refused as e:
            why = str(e)
        self._module.cleanup()
        self._cflags.append("-DNO_SK_ADDR=1")
        self._module = loader.compile_module(source(), self._cflags, self._kernel_dir)
        fn = loader.load(self._module, "tt_bcc_sockops", loader.PROG_SOCK_OPS)
        self.hooks[SK_ADDR] = f"unavailable: the verifier refused storing them ({why})"
        self.degraded.append(f"fast_retrans of connections whose 4-tuple another namespace also has: not "
                             f"attributed ({SK_ADDR} unavailable: the verifier refused storing them ({why}))")
        return fn

    def _attach_recovery(self, have_cong: bool, cong_fields) -> None:
        """fast_retrans: the tracepoint, else a kprobe on tcp_enter_recovery. The kprobe program is
        always loaded, so the verifier has checked it even where the tracepoint is used."""
        kp_fn = None
        try:
            kp_fn = loader.load(self._module, "kp_enter_recovery", loader.PROG_KPROBE)
            kp_state = "loaded (passed the verifier)"
        except loader.Refused as e:
            kp_state = f"the verifier refused it ({e})"
        tp_why = "no such tracepoint" if cong_fields is None else "its format lacks fields this engine reads"
        if have_cong:
            try:
                fn = loader.load(self._module, "tracepoint__tcp__tcp_cong_state_set", loader.PROG_TRACEPOINT)
                self._attached.append(loader.attach_tracepoint(fn, "tcp", "tcp_cong_state_set"))
                self.hooks[TP_CONG] = "ok"
                self.hooks[KP_RECOVERY] = f"ok: {kp_state}, not attached: {TP_CONG} is used"
                return
            except loader.Refused as e:
                tp_why = f"the verifier refused it ({e})"
            except OSError as e:
                tp_why = e.strerror or str(e)
        self.hooks[TP_CONG] = f"unavailable: {tp_why}"
        if kp_fn is not None:
            try:
                self._attached.append(loader.attach_kprobe(kp_fn, "tcp_enter_recovery"))
                self.hooks[KP_RECOVERY] = "ok"
                self.degraded.append("fast_retrans of connections older than tcptop: counted, but shown only once "
                                     f"they close ({KP_RECOVERY} gives no 4-tuple)")
                return
            except OSError as e:
                kp_state = f"{kp_state}, not attached: {e.strerror or e}"
        self.hooks[KP_RECOVERY] = kp_state if kp_fn is None else f"unavailable: {kp_state}"
        self.degraded.append(f"fast_retrans: {TP_CONG} unavailable ({tp_why}) and {KP_RECOVERY} "
                             f"unavailable ({kp_state})")

    def _attach_destroy(self, have: bool, fields) -> None:
        lost = "fast_retrans of connections closed between two polls (their last polled value is kept)"
        if not have:
            self._degrade(TP_DESTROY, "no such tracepoint" if fields is None else "no sock_cookie in its format", lost)
            return
        try:
            fn = loader.load(self._module, "tracepoint__tcp__tcp_destroy_sock", loader.PROG_TRACEPOINT)
            self._attached.append(loader.attach_tracepoint(fn, "tcp", "tcp_destroy_sock"))
            self.hooks[TP_DESTROY] = "ok"
        except loader.Refused as e:
            self._degrade(TP_DESTROY, f"the verifier refused it ({e})", lost)
        except OSError as e:
            self._degrade(TP_DESTROY, e.strerror or str(e), lost)

    def _check_diag(self) -> None:
        """sock_diag is indispensable; the storage it carries only for the sock_ops counters."""
        assert self._diag is not None
        try:
            self._diag.dump(socket.AF_INET)
        except OSError as e:
            raise EngineError(f"sock_diag (INET_DIAG) does not answer: {e}; "
                              "the BCC engine reads every connection through it (modprobe tcp_diag?)") from None
        self.hooks[DIAG] = "ok"
        self.degraded.append(NOT_MEASURED)
        if self.hooks.get(SOCKOPS) != "ok":
            return
        fd = loader.table_fd(self._module, "counters")
        try:
            self._diag.dump(socket.AF_INET, storage_fd=fd)
        except OSError as e:
            why = f"sock_diag refused the socket-storage request ({e.strerror or e}; kernels before 5.2)"
            self._degrade(DIAG_STORAGE, why, "rtt_samples, rtt_sum_us, duration_s from establishment, role")
            return
        self._storage_fd = fd
        self._counters_type = loader.table_leaf_type(self._module, "counters")
        self.hooks[DIAG_STORAGE] = "ok"

    def program_ids(self) -> list[int]:
        if not self._module:
            return []
        return [loader.program_id(fn.fd) for fn in self._module.funcs.values()]

    def close(self) -> None:
        for a in self._attached:
            a.close()
        self._attached.clear()
        self._cgroup.close()
        if self._diag:
            self._diag.close()
            self._diag = None
        if self._module is not None:
            self._module.cleanup()
            self._module = None

    # -- kernel maps ----------------------------------------------------------

    def stats(self) -> list[int]:
        """Run-level counters summed over CPUs (STAT_* in flows.c)."""
        table = self._module[b"stats"]
        return [int(sum(table[table.Key(i)])) for i in range(STAT_MAX)]

    def _drain(self, name: str) -> dict[int, object]:
        """Take every entry out of a cookie-keyed map: one batch syscall where the kernel has it
        (5.6+), else key by key."""
        table = self._module[name.encode()]
        try:
            items = list(table.items_lookup_and_delete_batch())
        except Exception:  # BCC raises plain Exception (before deleting anything) without batch ops
            items = None
        if items is not None:
            return {getattr(k, "value", k): v for k, v in items}
        out = {k.value: v for k, v in table.items()}
        for k in out:
            try:
                del table[table.Key(k)]
            except KeyError:
                pass
        return out

    # -- polling --------------------------------------------------------------

    def _dump_all(self) -> list[tuple[int, diag.Record]]:
        """(namespace inode, record) of every connection in every namespace; the listening
        sockets, with their drop counters, land in self._listening_now."""
        out: list[tuple[int, diag.Record]] = []
        listening: list[tuple[int, diag.Record]] = []
        for ino, path in netns.namespace_paths().items():
            if ino == self._home:
                sock = self._diag
            else:
                try:
                    with netns.entered(path):
                        sock = diag.DiagSocket()
                except OSError:
                    continue  # the namespace went away meanwhile
            try:
                for family in (socket.AF_INET, socket.AF_INET6):
                    out.extend((ino, r) for r in sock.dump(family, storage_fd=self._storage_fd))
                    listening.extend((ino, r) for r in sock.dump(family, states=1 << diag.TCP_LISTEN, skmem=True))
            except OSError:
                if sock is self._diag:
                    raise
            finally:
                if sock is not self._diag:
                    sock.close()
        self._listening_now = listening
        return out

    def listeners(self) -> tuple[Listener, ...]:
        """Every listening socket at the last poll: its accept queue, backlog and drop counter
        (sk_drops), as sock_diag reports them (what ss -tlm shows). The SYN queue and SYN-ACK
        retransmits are not measured here (README: Engines)."""
        out, cache = [], {}
        for ino, r in self._listening_now:
            (family, _, _, _, sport, _, src, _, _, cookie, _, rqueue, wqueue, _, inode) = diag.MSG.unpack(r.msg)
            drops = int.from_bytes(r.skmem[4 * diag.SK_MEMINFO_DROPS:4 * diag.SK_MEMINFO_DROPS + 4], "little")
            key = (r.msg[:2] + r.msg[4:52] + r.msg[56:], drops)
            hit = self._listener_cache.get(cookie)
            if hit is None or hit[0] != key or not hit[1].pid:
                pid = self._owner(inode)
                comm, _, container = self.owners.info(pid)
                hit = (key, Listener(id=cookie, family="ipv4" if family == socket.AF_INET else "ipv6",
                                     laddr=_addr(family, src), lport=socket.ntohs(sport), pid=pid, comm=comm,
                                     netns=ino, container=container, accept_queue=rqueue, accept_queue_max=wqueue,
                                     syn_queue=0, drops=drops, synack_retrans=0))
            cache[cookie] = hit
            out.append(hit[1])
        self._listener_cache = cache
        return tuple(out)

    def _check_info_length(self, records) -> None:
        """tcp_info only grows: fields past the end of this kernel's are reported missing once,
        not shown as zeros that look measured."""
        info = next((r.info for _, r in records if r.info), None)
        if info is None:
            return
        self._info_checked = True
        missing = {
            "bytes_sent": "bytes_sent",
            "snd_wnd": "rwnd",
            "rcv_wnd": "rcv_wnd (extra field)",
        }
        for field, metric in missing.items():
            if len(info) < diag.TCPI_END[field]:
                self.degraded.append(f"{metric}: this kernel's tcp_info has no tcpi_{field} (0 is shown)")
        if len(info) < diag.TCPI_END["total_rto"]:
            self.degraded.append("timeouts: this kernel's tcp_info has no tcpi_total_rto (before 6.7); counted by "
                                 "sock_ops RTO callbacks for connections seen opening, 0 for older ones")

    def poll(self) -> tuple[Flow, ...]:
        """Every connection now, plus recently closed ones (closed=True) for a few polls.

        A connection whose record is byte for byte the same as at the last poll (but for the
        clocks that move while it idles) keeps its Flow object: only changes are decoded."""
        self._alive_pids = {}
        records = self._dump_all()
        if not self._info_checked:
            self._check_info_length(records)
        # A final record can arrive for a connection this very dump still showed (it closed
        # meanwhile): it waits in _pending_closed for the poll where the connection is gone.
        closed = self._pending_closed
        if self.hooks.get(SOCKOPS) == "ok":
            closed.update(self._drain("closed"))
        closed_addr = self._drain("closed_addr") if self.hooks.get(TP_DESTROY) == "ok" else {}
        closed_rtt = ({k: rtt.counts_of(v) for k, v in self._drain("closed_rtt").items()}
                      if self.rtt is not None and self.rtt.keyed else {})
        tracks, seen, changed = self._tracks, set(), []
        lo, hi = diag.IDLE_CLOCKS
        for ino, rec in records:
            msg, info = rec.msg, rec.info
            cookie = int.from_bytes(msg[44:52], "little")
            seen.add(cookie)
            key = msg[:2] + msg[4:52] + msg[56:] + info[:lo] + info[hi:] + rec.storage + bytes((rec.shutdown,))
            tr = tracks.get(cookie)
            if tr is not None and tr.key == key and not tr.flow.closed:
                continue
            if tr is None:
                tr = tracks[cookie] = _Track(key, None, time.monotonic_ns())  # type: ignore[arg-type]
            tr.key, tr.inode = key, int.from_bytes(msg[68:72], "little")
            c = self._counters(rec.storage)
            self._read_rtt(tr, cookie, c)
            changed.append((ino, rec, tr, c))
        self._listeners = {ino: self._listening(ino) for ino in self._roles_to_infer(changed)}
        for ino, rec, tr, c in changed:
            tr.flow = self._decode(tr, ino, rec, c)
            self._note_owner(tr.flow.id, tr)
        self._apply_recoveries(seen)
        self._close_gone(seen, closed, closed_addr, closed_rtt)
        self._pending_closed = {c: r for c, r in closed.items() if c in seen or
                                (c in self._tracks and not self._tracks[c].final)}
        return self._collect()

    def _read_rtt(self, tr: _Track, cookie: int, c) -> None:
        if self.rtt is None:
            return
        counts, again = self.rtt.live(cookie, c.sk_addr if c is not None else tr.sk_addr, c)
        if counts is not None:
            tr.rtt = counts
        if again:
            tr.key = b""

    def _counters(self, storage: bytes):
        if not storage or self._counters_type is None:
            return None
        return self._counters_type.from_buffer_copy(storage.ljust(ctypes.sizeof(self._counters_type), b"\0"))

    def _apply_recoveries(self, live: set[int]) -> None:
        """fast_retrans from the address-keyed map: an address is tied to its socket through the
        socket's counters (sk_addr), or, for sockets older than tcptop, through the 4-tuple the
        tracepoint recorded, when exactly one live connection in any namespace has it."""
        if TP_CONG not in self.hooks or not self._module:
            return
        entries = {k.value: v for k, v in self._module[b"addr_flows"].items()}
        if not entries:
            return
        tracks = self._tracks
        by_addr = {tr.sk_addr: cookie for cookie, tr in tracks.items() if tr.sk_addr and cookie in live}
        by_tuple: dict | None = None
        for addr, e in entries.items():
            cookie = by_addr.get(addr)
            if cookie is None and e.family:
                if by_tuple is None:
                    by_tuple = {}
                    for ck, tr in tracks.items():
                        if ck in live:
                            by_tuple.setdefault(tr.tuple, []).append(ck)
                match = by_tuple.get((e.family, bytes(e.saddr), bytes(e.daddr), e.sport, e.dport), [])
                cookie = match[0] if len(match) == 1 else None
            tr = tracks.get(cookie) if cookie is not None else None
            if tr is not None and tr.fast != e.recoveries:
                tr.fast = e.recoveries
                tr.flow = _replace(tr.flow, fast_retrans=tr.fast)

    def _roles_to_infer(self, changed) -> set[int]:
        """Namespaces whose listening sockets are needed: where a connection of unknown role
        (older than tcptop) is not idle enough to read its role off tcp_info (see _decide_role)."""
        out = set()
        for ino, rec, tr, c in changed:
            if tr.server is not None or (c is not None and c.flags & (FLOW_CLIENT | FLOW_SERVER)):
                continue
            if rec.msg[60:64] == bytes(4) and rec.info[100:104] == bytes(4):
                continue  # nothing queued, never retransmitted
            out.add(ino)
        return out

    def _listening(self, ino: int) -> set[tuple[int, bytes, int]]:
        paths = netns.namespace_paths() if ino != self._home else {}
        out = set()
        try:
            if ino == self._home:
                sock = self._diag
            else:
                with netns.entered(paths[ino]):
                    sock = diag.DiagSocket()
        except (OSError, KeyError):
            return out
        try:
            for family in (socket.AF_INET, socket.AF_INET6):
                for r in sock.dump(family, states=1 << diag.TCP_LISTEN):
                    fam, _, _, _, sport, _, src, *_ = diag.MSG.unpack(r.msg)
                    out.add((fam, src, socket.ntohs(sport)))
        except OSError:
            pass
        finally:
            if sock is not self._diag:
                sock.close()
        return out

    def _decode(self, tr: _Track, netns_ino: int, rec: diag.Record, c) -> Flow:
        (family, state, _, _, sport, dport, src, dst, _, cookie, _, rqueue, wqueue, _, inode) = \
            diag.MSG.unpack(rec.msg)
        ti = diag.tcp_info(rec.info)
        sport, dport = socket.ntohs(sport), socket.ntohs(dport)
        flags = c.flags if c is not None else 0
        if c is not None:
            tr.sk_addr = c.sk_addr
        tr.tuple = (family, src, dst, sport, dport)
        self._decide_role(tr, flags, netns_ino, family, src, sport, state, wqueue, ti, len(rec.info))
        app_wqueue = 0 if state in (ST_SYN_SENT, ST_SYN_RECV) else wqueue
        tr.wqueue_max = max(tr.wqueue_max, app_wqueue)
        # The active side's bytes_acked counts its SYN; a FIN counts once queued (write_seq).
        written = ti[I_ACKED] + wqueue - (0 if tr.server else 1) - (1 if state in OUR_FIN_QUEUED else 0)
        # bytes_received counts the peer's FIN, and copied_seq passes it once the reader saw EOF.
        read = ti[I_RECEIVED] - (max(rqueue, 1) if state in PEER_FIN_RECEIVED else rqueue)
        from_birth = bool(flags & FLOW_SEEN_BIRTH) and c.established_ns
        born_ns = c.established_ns if from_birth else tr.first_seen_ns
        pid = self._owner(inode)
        comm, cgroup, container = self.owners.info(pid)
        has_rto = len(rec.info) >= diag.TCPI_END["total_rto"]
        return Flow(
            id=cookie,
            family="ipv4" if family == socket.AF_INET else "ipv6",
            laddr=_addr(family, src), lport=sport, raddr=_addr(family, dst), rport=dport,
            state=TCP_STATES.get(state, str(state)),
            pid=pid, comm=comm, netns=netns_ino,
            flight_size=max(0, ti[I_UNACKED] - (ti[I_SACKED] + ti[I_LOST]) + ti[I_RETRANS]),
            rwnd=ti[I_SND_WND], cwnd=ti[I_CWND], mss=ti[I_MSS],
            retrans_packets=ti[I_TOTAL_RETRANS],
            bytes_sent=ti[I_SENT], bytes_received=ti[I_RECEIVED],
            fast_retrans=tr.fast,
            timeouts=ti[I_TOTAL_RTO] if has_rto else (c.rto_events if c is not None else 0),
            app_wqueue=app_wqueue, app_wqueue_max=tr.wqueue_max,
            rtt_samples=tr.rtt[0], rtt_sum_us=tr.rtt[1], rtt_hist=rtt_hist(tr.rtt[2]),
            read_bytes=max(0, read), write_bytes=max(0, written),
            duration_s=round(max(0, time.monotonic_ns() - born_ns) / 1e9, 3),
            established_ts=round(self._boot_offset + born_ns / 1e9, 6),
            srtt_us=ti[I_RTT], min_rtt_us=ti[I_MIN_RTT] if ti[I_MIN_RTT] != 0xFFFFFFFF else 0,
            rcv_wnd=ti[I_RCV_WND], ssthresh=ti[I_SSTHRESH],
            ca_state=CA_STATES.get(ti[I_CA], str(ti[I_CA])),
            since_start=not from_birth,
            cgroup=cgroup, container=container,
            role=("server" if flags & FLOW_SERVER else "client") if flags & (FLOW_CLIENT | FLOW_SERVER) else "",
        )

    def _decide_role(self, tr: _Track, flags: int, netns_ino: int, family: int, src: bytes, sport: int,
                     state: int, wqueue: int, ti: tuple, info_len: int) -> None:
        """Whether this end was accepted: its bytes_acked then never counted a SYN (the active
        side's counts its own). Known from sock_ops for connections seen opening. For older ones
        it is read off the first poll where nothing is queued and nothing was ever retransmitted:
        every byte written was then sent once and acknowledged, so bytes_acked - bytes_sent is
        exactly the SYN (plus an acknowledged FIN in FIN_WAIT2). Until then it is inferred from
        a listening socket on the local port (README: the one inferred number)."""
        if flags & (FLOW_CLIENT | FLOW_SERVER):
            tr.server, tr.role_exact = bool(flags & FLOW_SERVER), True
            return
        if tr.role_exact:
            return
        if wqueue == 0 and ti[I_TOTAL_RETRANS] == 0 and info_len >= diag.TCPI_END["bytes_sent"] \
                and state not in (ST_SYN_SENT, ST_SYN_RECV):
            syn = ti[I_ACKED] - ti[I_SENT] - (1 if state == ST_FIN_WAIT2 else 0)
            if syn in (0, 1):
                tr.server, tr.role_exact = syn == 0, True
                return
        if tr.server is None:
            lsn = self._listeners.get(netns_ino, set())
            tr.server = (family, src, sport) in lsn or (family, bytes(16), sport) in lsn

    # -- owners ---------------------------------------------------------------

    def _owner(self, inode: int) -> int:
        """The process holding the socket, found in /proc file tables (0: not found yet, or the
        process found earlier has exited)."""
        pid = self.owners.pid_of_inode(inode)
        if pid:
            alive = self._alive_pids.get(pid)
            if alive is None:
                alive = self._alive_pids[pid] = os.path.exists(f"/proc/{pid}")
            if not alive:
                return 0
        return pid

    def _note_owner(self, cookie: int, tr: _Track) -> None:
        if tr.flow.pid or tr.flow.closed:
            self._ownerless.discard(cookie)
        else:
            self._ownerless.add(cookie)

    # -- closing --------------------------------------------------------------

    def _close_gone(self, seen: set[int], closed: dict, closed_addr: dict, closed_rtt: dict) -> None:
        """Flows no longer in sock_diag are closed: with the final numbers the sock_ops state
        callback took where it ran, else with their last polled values. A connection leaves
        the hash table an instant before that callback runs (TIME_WAIT takes its place first),
        so a poll in between closes it with its last values, and the final record, when it
        comes, replaces them while the closed flow is still listed."""
        for cookie, tr in self._tracks.items():
            if cookie in seen:
                continue
            if cookie in closed_addr:
                tr.fast = closed_addr[cookie].recoveries
            r = closed.get(cookie)
            counts = tr.rtt
            self._final_rtt(tr, cookie, r, closed_rtt)
            if not tr.flow.closed:
                tr.flow = self._final(tr, r)
                tr.closed_polls = self.closed_keep_polls
                tr.final = r is not None
            elif (r is not None and not tr.final) or cookie in closed_addr or tr.rtt != counts:
                tr.flow = self._final(tr, r, closed_ts=tr.flow.closed_ts)
                tr.final = tr.final or r is not None

    def _final_rtt(self, tr: _Track, cookie: int, r, closed_rtt: dict) -> None:
        """A closed connection's RTT counts: moved under its cookie when it was destroyed, else
        still in the live entry (the application holds the socket), or in the final record."""
        if cookie in closed_rtt:
            tr.rtt = closed_rtt[cookie]
        elif self.rtt is not None and self.rtt.mode == rtt.MODE_CALLBACKS:
            if r is not None:
                tr.rtt = rtt.counts_of(r.c)
        elif self.rtt is not None:
            counts, _ = self.rtt.live(cookie, tr.sk_addr, None)
            if counts is not None:
                tr.rtt = counts

    def _final(self, tr: _Track, r, closed_ts: float = 0.0) -> Flow:
        f = tr.flow
        counts = {"rtt_samples": tr.rtt[0], "rtt_sum_us": tr.rtt[1], "rtt_hist": rtt_hist(tr.rtt[2])}
        if r is None:
            return _replace(f, closed=True, state="CLOSE", closed_ts=closed_ts or round(time.time(), 6),
                            fast_retrans=tr.fast, **counts)
        c = r.c
        return _replace(
            f, closed=True, state="CLOSE", closed_ts=round(self._boot_offset + r.now_ns / 1e9, 6),
            fast_retrans=tr.fast,
            cwnd=r.snd_cwnd, ssthresh=r.snd_ssthresh, srtt_us=r.srtt_us, min_rtt_us=r.rtt_min,
            mss=r.mss_cache, retrans_packets=r.total_retrans, bytes_received=r.bytes_received,
            flight_size=max(0, r.packets_out - (r.sacked_out + r.lost_out) + r.retrans_out), **counts,
            duration_s=round(max(0, r.now_ns - (c.established_ns or tr.first_seen_ns)) / 1e9, 3),
        )

    def _collect(self) -> tuple[Flow, ...]:
        tracks = self._tracks
        # One look in /proc for every unknown owner, listeners' too: scans are rate-limited, so
        # separate requests would starve each other.
        listening = {int.from_bytes(r.msg[68:72], "little") for _, r in self._listening_now}
        wanted = {i for i in listening if not self.owners.pid_of_inode(i)}
        if self._ownerless or wanted:
            self.owners.resolve(wanted | {_inode(tracks[c]) for c in self._ownerless if c in tracks})
            for cookie in list(self._ownerless):
                tr = tracks.get(cookie)
                if tr is None:
                    self._ownerless.discard(cookie)
                    continue
                pid = self.owners.pid_of_inode(_inode(tr))
                if pid:
                    comm, cgroup, container = self.owners.info(pid)
                    tr.flow = _replace(tr.flow, pid=pid, comm=comm, cgroup=cgroup, container=container)
                    self._ownerless.discard(cookie)
        flows = []
        for cookie, tr in list(tracks.items()):
            if tr.flow.closed:
                self._ownerless.discard(cookie)
                if tr.closed_polls <= 0:
                    if tr.sk_addr and not tr.final:
                        self.finals_missing += 1
                    del tracks[cookie]
                    continue
                tr.closed_polls -= 1
            flows.append(tr.flow)
        self.owners.trim(len(tracks))
        return tuple(flows)


def _replace(f: Flow, **kw) -> Flow:
    from dataclasses import replace
    return replace(f, **kw)


def _inode(tr: _Track) -> int:
    return tr.inode


def _addr(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    import ipaddress
    a = ipaddress.IPv6Address(raw)
    return str(a.ipv4_mapped) if a.ipv4_mapped else str(a)
