"""Records of bpf/flows.bpf.c to Flow objects, fast: a poll can bring 100,000 of them.

A Flow has 45 fields; the dataclass constructor sets each through object.__setattr__
(frozen), about 8 us a flow on our VMs. `new_flow` sets the slots directly from a
straight-line function generated once from the field list, about 4 us, and still
yields an ordinary frozen Flow; `flow_of` costs ~8 us in all. _flow_decode.c does the
same in C (~0.5 us), used when it was built for this interpreter (`DECODER` says which).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from itertools import compress

from tcptop.engines.core.flow_layout import RECORD, R, RTT_BUCKETS
from tcptop.engines.histogram import RTT_UPPER_US
from tcptop import native
from tcptop.model import CA_STATES, NO_COUNTS, TCP_STATES, Flow

FIELDS = tuple(f.name for f in dataclasses.fields(Flow))
INDEX = {name: i for i, name in enumerate(FIELDS)}


def _make_constructor():
    args = ", ".join(f"a{i}" for i in range(len(FIELDS)))
    body = "".join(f"    s{i}(f, a{i})\n" for i in range(len(FIELDS)))
    src = f"def new_flow({args}):\n    f = new(Flow)\n{body}    return f\n"
    env = {"new": object.__new__, "Flow": Flow}
    env.update({f"s{i}": Flow.__dict__[name].__set__ for i, name in enumerate(FIELDS)})
    exec(src, env)  # noqa: S102 - generated from the dataclass's own field list
    return env["new_flow"]


py_new_flow = new_flow = _make_constructor()


def py_with_fields(f: Flow, **changes) -> Flow:
    """dataclasses.replace for the hot paths (no __init__, no field re-validation)."""
    vals = [getattr(f, name) for name in FIELDS]
    for k, v in changes.items():
        vals[INDEX[k]] = v
    return py_new_flow(*vals)


_addr_cache: dict[tuple[int, bytes], str] = {}


def addr(family: int, raw: bytes) -> str:
    """Printable address (IPv4-mapped IPv6 shown as IPv4), cached: a host talks to few peers."""
    key = (family, raw)
    s = _addr_cache.get(key)
    if s is None:
        if family == socket.AF_INET:
            s = socket.inet_ntop(socket.AF_INET, raw[:4])
        else:
            a = ipaddress.IPv6Address(raw)
            s = str(a.ipv4_mapped) if a.ipv4_mapped else str(a)
        if len(_addr_cache) > 65536:
            _addr_cache.clear()
        _addr_cache[key] = s
    return s


STATE_NAMES = tuple(TCP_STATES.get(i, str(i)) for i in range(256))
CA_NAMES = tuple(CA_STATES.get(i, str(i)) for i in range(256))
FAMILY = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}

# positions in a record tuple (RECORD.unpack_from)
I_COOKIE, I_NOW, I_INO = R["cookie"], R["now_ns"], R["sock_ino"]
I_KIND, I_FLAGS, I_NETNS, I_PID, I_REFS = R["kind"], R["flags"], R["netns"], R["pid"], R["file_refs"]
I_HIST = R["rtt_hist"]
I_SADDR, I_DADDR, I_SPORT, I_DPORT, I_FAMILY = R["saddr"], R["daddr"], R["sport"], R["dport"], R["family"]
I_STATE, I_CA, I_COMM, I_TW_LEFT, I_EST = R["state"], R["ca_state"], R["comm"], R["tw_left_ms"], R["established_ns"]
unpack_record = RECORD.unpack_from


def py_unpack_all(fmt, buf, skip: tuple[int, int, set] | None = None) -> list[tuple]:
    """Every record of `buf`; skip=(kind_at, kind, ids) leaves out those whose item kind_at is
    `kind` and whose first item is in `ids` (the C helper does so without unpacking them)."""
    if skip is None:
        return list(fmt.iter_unpack(buf))
    at, kind, ids = skip
    return [t for t in fmt.iter_unpack(buf) if t[at] != kind or t[0] not in ids]


def records(buf) -> list[tuple]:
    """Every record of a buffer, unpacked (by the C helper: as tuples the collector skips)."""
    return unpack_all(RECORD, buf)


_NO_SAMPLES = (0,) * RTT_BUCKETS
_hist_cache: dict[tuple, tuple] = {}


def rtt_hist_of(vals: tuple) -> tuple[tuple[int, int], ...]:
    counts = vals[I_HIST:I_HIST + RTT_BUCKETS]
    if counts == _NO_SAMPLES:
        return ()
    h = _hist_cache.get(counts)
    if h is None:
        if len(_hist_cache) > 65536:
            _hist_cache.clear()
        h = _hist_cache[counts] = tuple(zip(compress(RTT_UPPER_US, counts), filter(None, counts)))
    return h


_comm_cache: dict[bytes, str] = {}


def comm_of(raw: bytes) -> str:
    """A task's comm from its NUL-padded bytes, cached (a host has few names)."""
    s = _comm_cache.get(raw)
    if s is None:
        if len(_comm_cache) > 65536:
            _comm_cache.clear()
        s = _comm_cache[raw] = raw.split(b"\0", 1)[0].decode(errors="replace")
    return s


def py_flow_of(v: tuple, pid: int, comm: str, cgroup: str, container: str, born_ns: int, boot_offset: float,
            since_start: bool, role: str, closed: bool, state: int, tw_expires_ts: float) -> Flow:
    """The Flow of a live or final record tuple; the caller says who owns it and when it began."""
    fam = v[I_FAMILY]
    now_ns = v[I_NOW]
    return py_new_flow(
        v[I_COOKIE], FAMILY.get(fam, str(fam)), addr(fam, v[I_SADDR]), v[I_SPORT], addr(fam, v[I_DADDR]), v[I_DPORT],
        STATE_NAMES[state], pid, comm, v[I_NETNS],
        v[_FLIGHT], v[_SND_WND], v[_CWND], v[_MSS], v[_RETRANS], v[_SENT], v[_RECEIVED], v[_FAST], v[_TIMEOUTS],
        v[_WQ], v[_WQ_MAX], v[_SAMPLES], v[_RTT_SUM], v[_READ], v[_WRITE],
        int(max(0, now_ns - born_ns) / 1e6 + 0.5) / 1e3,  # round(.., 3) costs ~5x as much
        v[_SRTT], v[_MIN_RTT] if v[_MIN_RTT] != 0xFFFFFFFF else 0, v[_RCV_WND], v[_SSTHRESH], CA_NAMES[v[I_CA]],
        closed, since_start, cgroup, container, None,
        int((boot_offset + born_ns / 1e9) * 1e6 + 0.5) / 1e6,
        int((boot_offset + now_ns / 1e9) * 1e6 + 0.5) / 1e6 if closed else 0.0,
        role, rtt_hist_of(v), tw_expires_ts, NO_COUNTS, 0, 0, "",  # failures: the failure engine adds them
    )


_FLIGHT, _SND_WND, _CWND, _MSS = R["flight_size"], R["snd_wnd"], R["snd_cwnd"], R["mss_cache"]
_RETRANS, _SENT, _RECEIVED, _FAST = R["total_retrans"], R["bytes_sent"], R["bytes_received"], R["fast_retrans"]
_TIMEOUTS, _WQ, _WQ_MAX, _SAMPLES = R["timeouts"], R["app_wqueue"], R["app_wqueue_max"], R["rtt_samples"]
_RTT_SUM, _READ, _WRITE, _SRTT = R["rtt_sum_us"], R["read_bytes"], R["write_bytes"], R["srtt_us"]
_MIN_RTT, _RCV_WND, _SSTHRESH = R["min_rtt_us"], R["rcv_wnd"], R["snd_ssthresh"]

assert FIELDS[-5:] == ("tw_expires_ts", "drops", "resets_sent", "resets_received", "last_reset_reason") \
    and len(FIELDS) == 45, "flow_of() follows model.Flow's field order"


def _load_c():
    """The C decoder built for this interpreter, set up for this Flow and record layout."""
    mod, why = native.load("_flow_decode")
    if mod is None:
        return None, f"Python (the C decoder {why})"
    try:
        mod.setup(Flow, FIELDS, R, len(RECORD.unpack(bytes(RECORD.size))), RTT_BUCKETS, STATE_NAMES, CA_NAMES,
                  FAMILY, addr, RTT_UPPER_US, NO_COUNTS)
    except (TypeError, ValueError, KeyError) as e:
        return None, f"Python (the C decoder refused this layout: {e})"
    return mod, "C"


_c, DECODER = _load_c()
if _c is not None:
    new_flow, with_fields, flow_of = _c.new_flow, _c.with_fields, _c.flow_of
else:
    with_fields, flow_of = py_with_fields, py_flow_of
unpack_all = _c.unpack_all if _c is not None else py_unpack_all
join_pass = _c.join_pass if _c is not None else None  # join.py's pass in C (join.py has the Python one)

def py_untrack(obj) -> None:
    """Without the C helper, objects stay in the collector's sight (slower, not wrong)."""


# An object of a plain slotted class that cannot be part of a cycle, out of the collector's
# sight: the flow engine's tracks, the failure engine's per-socket tallies (~100,000 and
# ~40,000 under a churn of connections; tracked, every gen-2 collection paused 100-190 ms).
untrack = _c.untrack if _c is not None else py_untrack
# (a, b) of two numbers, untracked: the (poll, cookie) of each closed flow and (time, cookie) of
# each kept end the engine queues (under a sustained churn most of what a gen-0 pass walked).
pair = _c.pair if _c is not None else lambda a, b: (a, b)
# A record with item i replaced (untracked when it holds numbers and bytes only).
replaced = _c.replaced if _c is not None else lambda v, i, x: v[:i] + (x,) + v[i + 1:]


def live_passes(track_type: type, consts: dict[str, int], notice_positions: dict[str, int],
                want_offsets: dict[str, int], want_size: int):
    """The C apply_live, apply_finals, tw_pass, expire_pass and take_notices, set up for the
    flow engine's track type and the notice and want layouts (None without the C helper)."""
    if _c is None:
        return None
    try:
        _c.setup_tracks(track_type, R, consts, comm_of)
        _c.setup_notices(notice_positions, want_offsets, want_size, consts)
    except (TypeError, ValueError, KeyError):
        return None
    return _c.apply_live, _c.apply_finals, _c.tw_pass, _c.expire_pass, _c.take_notices
