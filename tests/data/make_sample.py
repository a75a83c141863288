"""Writes the fixed replay files the UI tests and snapshots use (run it to regenerate them).

Eight one-second snapshots of a small, recognisable host: a bulk sender, a lossy
client, a receiver that stopped reading (zero window, growing send queue), a
rate-limited flow, an IPv6 ssh session, a flow that closes, one that opens late.
`sample_latency.jsonl` is the same with packet-level latency stages filled in;
`sample_failures.jsonl` the same with why connections fail: listeners (one whose accept queue
overflows), failed connects, drops and resets on some flows, and unmatched drops.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tcptop.model import Failure, Flow, Listener, RunInfo, Snapshot  # noqa: E402

T0 = 1_700_000_000.0
N = 8
RUN = RunInfo(engine="core", hooks={"tp/tcp_probe": "ok", "sockops": "ok", "iter/tcp": "ok",
                                    "fentry/tcp_sendmsg": "not available: EPERM"})


def flow(id, t, **kw) -> Flow:
    base = dict(id=id, family="ipv4", laddr="10.0.0.1", lport=0, raddr="", rport=0, state="ESTABLISHED",
                pid=0, comm="", netns=4026531840, flight_size=0, rwnd=65535, cwnd=10, mss=1448,
                retrans_packets=0, bytes_sent=0, bytes_received=0, fast_retrans=0, timeouts=0,
                app_wqueue=0, app_wqueue_max=0, rtt_samples=0, rtt_sum_us=0, read_bytes=0,
                write_bytes=0, duration_s=100.0 + t)
    base.update(kw)
    if base["rtt_samples"] and not base.get("srtt_us"):
        base["srtt_us"] = base["rtt_sum_us"] // base["rtt_samples"]
    return Flow(**base)


def flows_at(t: int, latency: bool):
    MiB = 1 << 20
    out = [
        flow(101, t, lport=443, raddr="192.168.1.50", rport=51234, pid=812, comm="nginx",
             bytes_sent=(40 + 12 * t) * MiB, bytes_received=2 * MiB + 9000 * t, cwnd=80 + t, flight_size=60,
             rtt_samples=5000 + 900 * t, rtt_sum_us=(5000 + 900 * t) * 850, app_wqueue=256 * 1024,
             app_wqueue_max=512 * 1024, write_bytes=(40 + 12 * t) * MiB, read_bytes=2 * MiB + 9000 * t,
             rwnd=3 * MiB, duration_s=3600.0 + t),
        flow(102, t, lport=443, raddr="192.168.1.51", rport=51300, pid=812, comm="nginx",
             bytes_sent=900_000 + 20_000 * t, bytes_received=40_000 + 700 * t, cwnd=10, flight_size=1,
             rtt_samples=300 + 10 * t, rtt_sum_us=(300 + 10 * t) * 1200, write_bytes=900_000 + 20_000 * t,
             read_bytes=40_000 + 700 * t, duration_s=620.0 + t),
        flow(103, t, lport=41000, raddr="203.0.113.7", rport=443, pid=4242, comm="curl",
             bytes_sent=5 * MiB + 300_000 * t, bytes_received=80_000, retrans_packets=12 + 9 * t,
             fast_retrans=2 + t // 2, timeouts=1 + t // 4, cwnd=4, flight_size=4, ssthresh=7,
             ca_state="recovery", rtt_samples=800 + 40 * t, rtt_sum_us=(800 + 40 * t) * 45_000,
             app_wqueue=900_000, app_wqueue_max=1_200_000, write_bytes=6 * MiB + 300_000 * t,
             read_bytes=80_000, duration_s=95.0 + t),
        flow(104, t, lport=5432, raddr="10.0.0.9", rport=40100, pid=990, comm="postgres",
             bytes_sent=7_000_000 + 4_000 * t, bytes_received=3_000_000 + 2_500 * t, cwnd=10,
             rtt_samples=20_000 + 30 * t, rtt_sum_us=(20_000 + 30 * t) * 140, write_bytes=7_000_000 + 4_000 * t,
             read_bytes=3_000_000 + 2_500 * t, duration_s=86_400.0 * 3 + t),
        flow(105, t, laddr="127.0.0.1", lport=6379, raddr="127.0.0.1", rport=42000, pid=77,
             comm="redis-server", bytes_sent=1_000_000 + 50_000 * t, bytes_received=400_000 + 20_000 * t,
             cwnd=10, rtt_samples=9000 + 400 * t, rtt_sum_us=(9000 + 400 * t) * 35,
             write_bytes=1_000_000 + 50_000 * t, read_bytes=400_000 + 20_000 * t, duration_s=7200.0 + t),
        # The receiver stopped reading: zero window, our send queue grows to the buffer limit.
        flow(106, t, lport=50010, raddr="10.0.0.20", rport=873, pid=3100, comm="rsync",
             bytes_sent=20 * MiB, bytes_received=1000, rwnd=0, cwnd=10, flight_size=0,
             app_wqueue=min(1_000_000 + 250_000 * t, 2_500_000), app_wqueue_max=2_500_000,
             write_bytes=20 * MiB + min(1_000_000 + 250_000 * t, 2_500_000), read_bytes=1000,
             rtt_samples=2000, rtt_sum_us=2000 * 300, timeouts=0, duration_s=300.0 + t),
        flow(107, t, family="ipv6", laddr="2001:db8::1", lport=22, raddr="2001:db8::99", rport=50022,
             pid=1, comm="sshd", bytes_sent=300_000 + 1_200 * t, bytes_received=90_000 + 400 * t, cwnd=10,
             rtt_samples=4000 + 3 * t, rtt_sum_us=(4000 + 3 * t) * 2_100, write_bytes=300_000 + 1_200 * t,
             read_bytes=90_000 + 400 * t, duration_s=9_000.0 + t),
        # Rate-limited to about 1 MiB/s by a token bucket on the path.
        flow(108, t, lport=45000, raddr="10.0.0.30", rport=9000, pid=5000, comm="python3",
             bytes_sent=30 * MiB + MiB * t, bytes_received=5000, cwnd=22, flight_size=20,
             rtt_samples=6000 + 700 * t, rtt_sum_us=(6000 + 700 * t) * 19_000, app_wqueue=1_500_000,
             app_wqueue_max=1_600_000, write_bytes=32 * MiB + MiB * t, read_bytes=5000, duration_s=40.0 + t),
        flow(110, t, lport=38000, raddr="10.0.0.40", rport=80, pid=6100, comm="wget", state="TIME_WAIT",
             bytes_sent=300, bytes_received=12_000, cwnd=10, rtt_samples=4, rtt_sum_us=4 * 500,
             write_bytes=300, read_bytes=12_000, duration_s=12.0 + t),
    ]
    if t < 5:  # a short transfer that ends at t=3 and is kept, closed, two more snapshots
        out.append(flow(109, t, lport=39000, raddr="10.0.0.50", rport=8080, pid=6200, comm="http-client",
                        bytes_sent=2000 * min(t, 3), bytes_received=400_000 * min(t, 3), cwnd=10,
                        closed=t >= 3, state="CLOSE" if t >= 3 else "ESTABLISHED", rtt_samples=10 + t,
                        rtt_sum_us=(10 + t) * 600, duration_s=1.0 + min(t, 3)))
    if t >= 2:  # opened between the second and third snapshot
        out.append(flow(111, t, lport=46000, raddr="10.0.0.60", rport=443, pid=812, comm="nginx",
                        bytes_sent=150_000 * (t - 1), bytes_received=8_000 * (t - 1), cwnd=14,
                        rtt_samples=20 * (t - 1), rtt_sum_us=20 * (t - 1) * 700, duration_s=0.5 + (t - 2)))
    if latency:
        out = [_with_latency(f, t) for f in out]
    return out


def _stage(count, p50, p99):
    return {"count": count, "p50_us": p50, "p99_us": p99}


def host_latency(t: int) -> dict:
    return {
        "rx": {"driver": _stage(9000 + t, 4, 18), "ip": _stage(9000 + t, 2, 9),
               "tcp": _stage(9000 + t, 6, 40), "app": _stage(8000 + t, 120, 2400)},
        "tx": {"tcp": _stage(12000 + t, 5, 30), "ip": _stage(12000 + t, 2, 8),
               "qdisc": _stage(12000 + t, 3, 900), "driver": _stage(12000 + t, 7, 25)},
    }


def _with_latency(f: Flow, t: int) -> Flow:
    import dataclasses
    if f.id == 106:  # the stalled receiver: data waits in our queue, nothing leaves
        lat = {"rx": {"driver": _stage(40, 5, 9), "ip+tcp": _stage(40, 9, 30), "app": _stage(40, 50, 90)},
               "tx": {"tcp": _stage(3, 8, 15), "ip": _stage(3, 2, 4), "qdisc": _stage(3, 4, 6),
                      "driver": _stage(3, 9, 12)}}
    elif f.id == 103:  # the lossy client: qdisc and app waits dominate
        lat = {"rx": {"driver": _stage(500, 5, 25), "ip": _stage(500, 2, 8), "tcp": _stage(500, 9, 1800),
                      "app": _stage(480, 300, 48_000)},
               "tx": {"tcp": _stage(700, 6, 35), "ip": _stage(700, 2, 9), "qdisc": _stage(700, 12, 4000),
                      "driver": _stage(700, 8, 30)}}
    else:
        return f
    return dataclasses.replace(f, latency=lat)


def listeners_at(t: int) -> tuple[Listener, ...]:
    def lst(id, laddr, lport, pid, comm, **kw):
        base = dict(id=id, family="ipv6" if ":" in laddr else "ipv4", laddr=laddr, lport=lport, pid=pid, comm=comm,
                    netns=4026531840, container="", accept_queue=0, accept_queue_max=511, syn_queue=0, drops=0,
                    synack_retrans=0)
        base.update(kw)
        return Listener(**base)
    # The api server stopped calling accept() at t=1: its queue fills, then every handshake is dropped.
    queue = min(129, 20 + 40 * t)
    overflow = max(0, 20 + 40 * t - 129) * 2
    return (
        lst(201, "0.0.0.0", 443, 812, "nginx", accept_queue=0 if t % 3 else 1),
        lst(202, "0.0.0.0", 8080, 7000, "api-server", accept_queue=queue, accept_queue_max=128,
            syn_queue=min(30, 4 * t), drops=overflow, synack_retrans=3 * t,
            drop_reasons={"TCP_LISTEN_OVERFLOW": overflow // 2} if overflow else {}),
        lst(203, "127.0.0.1", 6379, 77, "redis-server", accept_queue_max=511),
        lst(204, "::", 22, 1, "sshd", accept_queue_max=128),
        lst(205, "0.0.0.0", 5432, 990, "postgres", accept_queue_max=244, synack_retrans=1),
    )


def failures_at(t: int) -> tuple[Failure, ...]:
    out = [
        Failure(5000, "python3", 4026531840, "10.0.0.31", 9000, "ECONNREFUSED", 10 * t),
        Failure(4242, "curl", 4026531840, "203.0.113.9", 443, "ETIMEDOUT", 1 + t // 3),
        Failure(812, "nginx", 4026531840, "10.0.0.70", 8081, "EHOSTUNREACH", 2),
        Failure(6100, "wget", 4026531840, "10.0.0.40", 80, "ENETUNREACH", 1),
        Failure(4242, "curl", 4026531840, "10.0.0.31", 9000, "ECONNREFUSED", 3),
    ]
    return tuple(f for f in out if f.count)


def _with_failures(f: Flow, t: int) -> Flow:
    import dataclasses
    if f.id == 103:  # the lossy client: its qdisc overflows, late segments are pruned
        drops = {"QDISC_DROP": 2 * t, "TCP_OFO_DROP": t // 2}
        return dataclasses.replace(f, drops={k: v for k, v in drops.items() if v})
    if f.id == 109 and t >= 3:  # the short transfer ended with the server's reset
        return dataclasses.replace(f, resets_received=1, last_reset_reason="received ECONNRESET")
    if f.id == 102 and t >= 6:
        return dataclasses.replace(f, resets_sent=1, last_reset_reason="sent TCP_ABORT_ON_CLOSE",
                                   drops={"TCP_ZEROWINDOW": 4})
    return f


def write(path: Path, latency: bool, failures: bool = False) -> None:
    lines = []
    for t in range(N):
        flows = flows_at(t, latency)
        extra = {}
        if failures:
            flows = [_with_failures(f, t) for f in flows]
            extra = dict(listeners=listeners_at(t), failures=failures_at(t),
                         unmatched={"drops": {"NO_SOCKET": 5 * t}, "resets_sent": {"NO_SOCKET": 5 * t}})
        snap = Snapshot(ts=T0 + t, interval_s=1.0, flows=tuple(flows), seq=t + 1,
                        host="demo-host", kernel="6.18.44-fc", run=RUN,
                        latency=host_latency(t) if latency else None, **extra)
        lines.append(snap.to_json())
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    write(here / "sample.jsonl", latency=False)
    write(here / "sample_latency.jsonl", latency=True)
    write(here / "sample_failures.jsonl", latency=False, failures=True)
    print("wrote", here / "sample.jsonl", here / "sample_latency.jsonl", here / "sample_failures.jsonl")
