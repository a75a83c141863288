"""Flows and snapshots for UI tests: every field set, so a test names only what it is about."""

from __future__ import annotations

from tcptop.model import Flow, RunInfo, Snapshot


def make_flow(id: int, **kw) -> Flow:
    base = dict(
        id=id, family="ipv4", laddr="10.0.0.1", lport=40000 + id, raddr="10.0.0.2", rport=80,
        state="ESTABLISHED", pid=1000 + id, comm="curl", netns=4026531840,
        flight_size=0, rwnd=65535, cwnd=10, mss=1448, retrans_packets=0, bytes_sent=0,
        bytes_received=0, fast_retrans=0, timeouts=0, app_wqueue=0, app_wqueue_max=0,
        rtt_samples=0, rtt_sum_us=0, read_bytes=0, write_bytes=0, duration_s=1.0,
    )
    base.update(kw)
    return Flow(**base)


def make_snapshot(flows, ts: float = 1000.0, interval_s: float = 1.0, seq: int = 0, **kw) -> Snapshot:
    kw.setdefault("host", "testhost")
    kw.setdefault("kernel", "6.18.0-test")
    kw.setdefault("run", RunInfo(engine="core"))
    return Snapshot(ts=ts, interval_s=interval_s, flows=tuple(flows), seq=seq, **kw)


def next_poll(base: dict, present, changing, make) -> set[int]:
    """One poll of a flow table as an engine keeps it: ids not `present` go, new ones come and
    those `changing` get a new object (`make(i)`); returns the ids whose flow changed or went."""
    touched = set(base) ^ set(present)
    for i in list(base):
        if i not in present:
            del base[i]
    for i in present:
        if i not in base or i in changing:
            base[i] = make(i)
            touched.add(i)
    return touched
