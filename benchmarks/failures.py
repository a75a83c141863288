#!/usr/bin/env python3
"""What the failure engine costs: nothing measurable when nothing fails, and so much per drop or
reset when things do (root, loopback and private namespaces only).

1. Nothing fails: redis-benchmark SET/GET over loopback, kept-alive connections (-c 50) and a new
   connection per request (-k 0, the connection-heavy case: every connect passes the state hook),
   in rounds of one run without and one with the failure engine attached and polled every
   second, the order alternating; median of the paired ratios. bpf stats off.
2. Run counts and ns per run of each of its programs (kernel.bpf_stats_enabled=1, our program
   ids only) during one run of each workload, and during two storms:
   - refused connects: a client loop connecting to a closed port in a private namespace pair
     (each attempt: a SYN dropped with NO_SOCKET, a reset sent from no socket, a failed connect);
   - netfilter drops: a bulk flow in a namespace pair with every 10th segment dropped on input
     (drops counted per socket).
   The sysctl is restored afterwards.
3. The listener walk (--walk 10000,100000): with N loopback sockets open, how long one run of
   the listeners' TCP iterator takes (it walks the whole connection table to reach the
   listeners), beside the flow engine's own walk of the same table and the task_file pass;
   medians of 20 runs each.

    .venv/bin/python benchmarks/failures.py [--rounds 5] [--requests 100000] [--walk 10000,100000] [--only-walk]

Run it alone on the machine (flock -x /tmp/tcptop-machine.lock ...): the VM is noisy, read medians.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tcptop.engines.core.failures import FailureEngine  # noqa: E402
from tcptop.host import netns  # noqa: E402
from bpfstats import bpf_stats  # noqa: E402



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def attached():
    """The failure engine loaded, attached and polled once a second, as tcptop runs it."""
    eng = FailureEngine()
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(1.0):
            eng.poll(())

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    try:
        yield eng
    finally:
        stop.set()
        t.join()
        eng.close()


def redis_rps(port: int, requests: int, keepalive: bool) -> float:
    cmd = ["redis-benchmark", "-p", str(port), "-n", str(requests), "-c", "50", "-t", "set,get", "-q", "--csv"]
    if not keepalive:
        cmd += ["-k", "0"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return statistics.mean(float(line.split(",")[1].strip('"')) for line in out.splitlines()[1:] if "," in line)


def prog_stats(ids: list[int]) -> dict[str, tuple[int, int]]:
    out = {}
    for pid in ids:
        info = json.loads(subprocess.run(["bpftool", "prog", "show", "id", str(pid), "-j"],
                                         capture_output=True, text=True, check=True).stdout)
        out[info["name"]] = (info.get("run_time_ns", 0), info.get("run_cnt", 0))
    return out



def per_program(title: str, work) -> None:
    """Runs and ns per run of each program during `work()`, which returns a line to print."""
    with bpf_stats(), attached() as eng:
        before = prog_stats(eng.program_ids())
        said = work()
        after = prog_stats(eng.program_ids())
        report = eng.poll(())
    print(f"\n{title}: {said}")
    for name in sorted(after):
        ns = after[name][0] - before.get(name, (0, 0))[0]
        cnt = after[name][1] - before.get(name, (0, 0))[1]
        print(f"  {name:22s} {cnt:>9d} runs" + (f"  {ns / cnt:7.1f} ns/run" if cnt else ""))
    drops, resets = dict(report.unmatched["drops"]), dict(report.unmatched["resets_sent"])
    if drops or resets:
        print(f"  unmatched: drops {drops}, resets sent {resets}")


@contextmanager
def ns_pair(tag: str):
    """Two namespaces joined by veth (10.250.x.1 / .2), deleted afterwards whatever happens."""
    uid = f"{os.getpid() % 10000}"
    a, b = f"tt-bench-{tag}-{uid}-a", f"tt-bench-{tag}-{uid}-b"
    net = f"10.250.{os.getpid() % 250}"

    def sh(*cmd: str, ns: str | None = None) -> None:
        subprocess.run((("ip", "netns", "exec", ns) if ns else ()) + cmd, check=True, capture_output=True)
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        sh("ip", "link", "add", "veth0", "netns", a, "type", "veth", "peer", "name", "veth0", "netns", b)
        for ns, addr in ((a, f"{net}.1"), (b, f"{net}.2")):
            sh("ip", "addr", "add", f"{addr}/24", "dev", "veth0", ns=ns)
            sh("ip", "link", "set", "veth0", "up", ns=ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)
        yield a, b, f"{net}.1", f"{net}.2", sh
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def refused_storm(seconds: float) -> str:
    with ns_pair("refuse") as (a, b, addr_a, addr_b, sh):
        n, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < seconds:
            with netns.entered(f"/run/netns/{a}"):
                s = socket.socket()
            try:
                s.connect((addr_b, 9))
            except ConnectionRefusedError:
                n += 1
            s.close()
        return f"{n} refused connects in {seconds:g} s ({n / seconds:.0f}/s)"


def netfilter_storm(seconds: float) -> str:
    with ns_pair("nf") as (a, b, addr_a, addr_b, sh):
        port = 5201
        srv = subprocess.Popen(["ip", "netns", "exec", b, "iperf3", "-s", "-1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.3)
            sh("iptables", "-A", "INPUT", "-p", "tcp", "--dport", str(port), "-m", "statistic", "--mode", "nth",
               "--every", "10", "--packet", "0", "-j", "DROP", ns=b)
            out = subprocess.run(["ip", "netns", "exec", a, "iperf3", "-c", addr_b, "-p", str(port), "-t",
                                  str(seconds), "-J"], capture_output=True, text=True, check=True).stdout
            counted = subprocess.run(["ip", "netns", "exec", b, "iptables", "-L", "INPUT", "-v", "-n", "-x"],
                                     capture_output=True, text=True).stdout.splitlines()[2].split()[0]
        finally:
            srv.wait(timeout=10)
        gbit = json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9
        return f"iperf3 {gbit:.2f} Gbit/s, {counted} segments dropped by the rule ({int(counted) / seconds:.0f}/s)"


_HOLDER = """
import socket, sys, time
n = int(sys.argv[1])
lsn = socket.socket(); lsn.bind(("127.0.0.1", 0)); lsn.listen(4096)
held = [lsn]
while len(held) < n:
    c = socket.create_connection(lsn.getsockname()); s, _ = lsn.accept(); held += [c, s]
print("ready", flush=True)
sys.stdin.read()
for s in held:  # a reset, not a FIN: no TIME_WAIT left behind to weigh on the next measurement
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00")
    s.close()
"""


@contextmanager
def sockets_open(n: int):
    """n loopback sockets (n/2 connections), held by helper processes of at most 16,000 each
    (the file limit here is 20,000 per process)."""
    procs = []
    try:
        left = n
        while left > 0:
            k = min(16000, left)
            p = subprocess.Popen([sys.executable, "-c", _HOLDER, str(k)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
            procs.append(p)
            left -= k
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        yield
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=30)


def walk_cost(n: int) -> None:
    from tcptop.engines.core.flows import FlowEngine
    from tcptop.engines.core.libbpf import iter_read

    with sockets_open(n):
        _walk_cost(n, FlowEngine, iter_read)


def _walk_cost(n, FlowEngine, iter_read) -> None:
    def median_ms(fn, runs: int = 20) -> float:
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
        return statistics.median(times)

    fe, flows = FailureEngine(), FlowEngine()
    try:
        flows.poll()
        listeners = median_ms(lambda: iter_read(fe._iter))
        files = median_ms(lambda: iter_read(fe._files)) if fe._files else float("nan")
        flow_walk = median_ms(lambda: iter_read(flows._iter))
        poll = median_ms(lambda: fe.poll(()))
        table = subprocess.run(["ss", "-s"], capture_output=True, text=True).stdout.splitlines()[1]
        print(f"\n{n:,} sockets open ({table.strip()}): listeners' TCP iterator {listeners:.2f} ms, their task_file pass "
              f"{files:.2f} ms, the failure engine's whole poll {poll:.2f} ms; the flow engine's TCP iterator "
              f"(every socket's record, mostly 16-byte 'unchanged' marks) {flow_walk:.2f} ms (medians of 20)")
    finally:
        fe.close()
        flows.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=100000, help="per redis-benchmark run")
    ap.add_argument("--storm-seconds", type=float, default=3.0)
    ap.add_argument("--walk", default="10000,100000", help="socket counts for the listener walk ('' skips it)")
    ap.add_argument("--only-walk", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("failures: run as root (it loads BPF programs)", file=sys.stderr)
        return 1
    walks = [int(x) for x in args.walk.split(",") if x]
    if args.only_walk:
        for n in walks:
            walk_cost(n)
        return 0
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--maxclients", "10000"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        for keepalive, requests in ((True, args.requests), (False, args.requests // 4)):
            got: dict[bool, list[float]] = {False: [], True: []}
            for r in range(args.rounds):
                for on in ((False, True) if r % 2 == 0 else (True, False)):
                    if on:
                        with attached():
                            got[on].append(redis_rps(port, requests, keepalive))
                    else:
                        got[on].append(redis_rps(port, requests, keepalive))
                print(f"round {r + 1} ({'kept-alive' if keepalive else 'a connection per request'}): "
                      f"without {got[False][-1]:.0f} req/s, with {got[True][-1]:.0f} req/s", flush=True)
            ratios = [w / b for w, b in zip(got[True], got[False])]
            print(f"redis-benchmark -c 50 SET/GET, {'kept-alive' if keepalive else '-k 0'}: without median "
                  f"{statistics.median(got[False]):.0f}, with {statistics.median(got[True]):.0f} req/s; median paired "
                  f"ratio {statistics.median(ratios):.3f} (ratios {' '.join(f'{x:.3f}' for x in ratios)})")
        for keepalive, requests in ((True, args.requests), (False, args.requests // 4)):
            per_program(f"redis-benchmark {'kept-alive' if keepalive else '-k 0'}, bpf stats on",
                        lambda: f"{redis_rps(port, requests, keepalive):.0f} req/s, {requests} requests x 2")
    finally:
        redis.terminate()
        redis.wait()
    per_program("storm of refused connects", lambda: refused_storm(args.storm_seconds))
    per_program("storm of netfilter drops", lambda: netfilter_storm(args.storm_seconds))
    for n in walks:
        walk_cost(n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
