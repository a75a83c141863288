"""The BCC engine as a whole: what it reports about this kernel, older connections, choosing it,
and nothing left attached after any exit. Skipped, with the reason, where BCC cannot compile."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from kit import find_flow, loopback_pair, netstat, poll_until, recv_exactly, sh, tcp_info, wait_idle
from tcptop.engines import EngineError, EngineOptions

TCPTOP = [sys.executable, "-m", "tcptop"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module", autouse=True)
def bcc_compiles():
    from tcptop.engines.bcc import loader
    why = loader.why_cannot_compile()
    if why:
        pytest.skip(f"BCC cannot compile on this machine, BCC engine tests skipped: {why}")


def open_bcc(**kw):
    from tcptop.engines.bcc.engine import BccEngine
    return BccEngine(EngineOptions(interval_s=0.2, latency="off"), **kw)


def loaded_progs() -> dict[int, dict]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True).stdout
    return {p["id"]: p for p in json.loads(out or "[]")}


def gone(ids: set[int], timeout: float = 10) -> bool:
    """Programs are freed after an RCU grace period once nothing holds them."""
    deadline = time.monotonic() + timeout
    while ids & loaded_progs().keys() and time.monotonic() < deadline:
        time.sleep(0.1)
    return not ids & loaded_progs().keys()


def test_kprobe_fallback_passes_the_verifier_and_its_absence_is_reported():
    """A kernel without tcp_cong_state_set: fast_retrans falls back to a kprobe on tcp_enter_recovery.
    Here kprobes are not compiled in: the kprobe program must still load (the verifier accepts
    it), and fast_retrans be reported degraded with that reason; the rest keeps working."""
    from tcptop.engines.bcc import loader

    def without_cong(category, event):
        return None if event == "tcp_cong_state_set" else loader.tracepoint_fields(category, event)

    e = open_bcc(tracepoint_fields=without_cong)
    try:
        snap = e.poll()
        hooks = snap.run.hooks
        assert hooks["tracepoint tcp_cong_state_set"] == "unavailable: no such tracepoint"
        kprobe = hooks["kprobe tcp_enter_recovery"]
        types = {p["id"]: p["type"] for p in loaded_progs().values()}
        assert "kprobe" in {types.get(i) for i in e.program_ids()}  # loaded: the verifier passed it
        if loader.kprobes_available():
            assert kprobe == "ok"
        else:
            assert kprobe.startswith("unavailable: loaded (passed the verifier), not attached: kprobes not available")
            assert [d for d in snap.run.degraded if d.startswith("fast_retrans:") and "kprobes not available" in d]
        c, s = loopback_pair()
        c.sendall(b"k" * 2000)
        recv_exactly(s, 2000)
        wait_idle(c)
        f = poll_until(e, lambda snap: find_flow(snap, c))
        assert f.write_bytes == 2000 and f.bytes_sent == tcp_info(c)["bytes_sent"]
        c.close()
        s.close()
    finally:
        e.close()


def test_default_hooks_and_the_kprobe_checked_by_the_verifier():
    e = open_bcc()
    try:
        run = e.poll().run
        assert run.engine == "bcc"
        for hook in ("cgroup sock_ops", "socket addresses from sock_ops", "tracepoint tcp_cong_state_set",
                     "tracepoint tcp_destroy_sock",
                     "sock_diag (INET_DIAG) with tcp_info", "socket storage through sock_diag"):
            assert run.hooks[hook] == "ok", (hook, run.hooks[hook])
        assert run.hooks["kprobe tcp_enter_recovery"].startswith("ok: loaded (passed the verifier), not attached")
        assert run.hooks["tracefs"] == "ok" or run.hooks["tracefs"].startswith("mounted by tcptop")
        assert run.hooks["kernel headers"].startswith("ok: ")
        # RTT samples: the kprobe where kprobes exist (and tcp_rtt_estimator is not inlined), else
        # tcp_probe; the kprobe program is loaded either way, so the verifier has checked it.
        from tcptop.engines.bcc import loader
        kprobe = run.hooks["kprobe tcp_rtt_estimator"]
        if kprobe == "ok":
            assert run.hooks["tracepoint tcp_probe (reads tcp_sock)"] == "ok: not attached: kprobe tcp_rtt_estimator is used"
        else:
            assert kprobe.startswith("unavailable: loaded (passed the verifier), not attached: ")
            if not loader.kprobes_available():
                assert kprobe.endswith("kprobes not available (no kprobe PMU: CONFIG_KPROBES off)")
            for hook in ("tracepoint tcp_probe (reads tcp_sock)", "tracepoint inet_sock_set_state",
                         "RTT peek at polls (raw tracepoint program, BPF_PROG_TEST_RUN)"):
                assert run.hooks[hook] == "ok", (hook, run.hooks[hook])
        assert "sock_ops RTT callbacks" not in run.hooks
        assert not [d for d in run.degraded if "one sample per round trip" in d]
        ids = set(e.program_ids())
        assert len(ids) == (5 if kprobe == "ok" else 8) and ids <= loaded_progs().keys()
    finally:
        e.close()
    assert gone(ids)


def bulk(c, s, nbytes):
    got = []
    t = threading.Thread(target=lambda: got.append(recv_exactly(s, nbytes)))
    t.start()
    c.sendall(b"b" * nbytes)
    t.join(60)
    return got[0]


def test_connections_older_than_tcptop(nspair):
    """Opened before the engine: kernel-kept numbers and the bytes read and written cover the
    whole life (derived from tcp_info, with each end's role read off its counters), fast-recovery
    entries count from the start and reach the flow through its 4-tuple; RTT samples count from
    the first segment the engine sees (said so), the same as the CO-RE engine's, started with it."""
    from tcptop.engines.bcc import rtt
    from tcptop.engines.core.engine import CoreEngine
    c, s = nspair.connected()
    c.sendall(b"a" * 5000)
    recv_exactly(s, 5000)
    s.sendall(b"r" * 300)
    recv_exactly(c, 300)
    wait_idle(c)
    wait_idle(s)
    e = open_bcc()
    core = CoreEngine(EngineOptions(interval_s=0.2, latency="off"))
    try:
        f = poll_until(e, lambda snap: find_flow(snap, c))
        g = poll_until(e, lambda snap: find_flow(snap, s))
        assert f.since_start and g.since_start and f.role == g.role == ""
        assert (f.write_bytes, f.read_bytes) == (5000, 300)
        assert (g.write_bytes, g.read_bytes) == (300, 5000)
        assert f.bytes_sent == tcp_info(c)["bytes_sent"] == 5000
        assert f.rtt_samples == 0  # idle since before the engine started
        assert [d for d in e.poll().run.degraded if d.startswith("rtt_samples, rtt_sum_us, rtt_hist of connections "
                                                                  "older than tcptop: counted from")]
        before = netstat(nspair.a)
        sh("iptables", "-A", "INPUT", "-p", "tcp", "-m", "statistic", "--mode", "nth",
           "--every", "20", "--packet", "0", "-j", "DROP", ns=nspair.b)
        n = 2 << 20
        assert bulk(c, s, n) == n
        sh("iptables", "-F", "INPUT", ns=nspair.b)
        wait_idle(c, timeout=30)
        after = netstat(nspair.a)
        recoveries = sum(after[k] - before[k] for k in ("TcpExt.TCPSackRecovery", "TcpExt.TCPRenoRecovery"))
        assert recoveries > 0, "no fast recovery happened; the test proves nothing"
        f = poll_until(e, lambda snap: find_flow(snap, c), lambda f: f.write_bytes == 5000 + n)
        assert f.fast_retrans == recoveries
        assert f.retrans_packets == tcp_info(c)["total_retrans"] > 0
        g = poll_until(e, lambda snap: find_flow(snap, s), lambda g: g.read_bytes == 5000 + n)
        assert g.write_bytes == 300
        if e.flows.rtt.mode == rtt.MODE_TCP_PROBE:  # the kprobe's show once they close (said so)
            fc = find_flow(core.poll(), c)
            assert f.rtt_samples == fc.rtt_samples > 0
            assert (f.rtt_sum_us, f.rtt_hist) == (fc.rtt_sum_us, fc.rtt_hist)
    finally:
        e.close()
        core.close()
        c.close()
        s.close()


def test_auto_chooses_core_with_btf_and_bcc_without(monkeypatch):
    import tcptop.engines.core as core
    from tcptop.engines import open_engine

    def no_btf():
        raise EngineError("this kernel has no BTF (pretend)")

    monkeypatch.setattr(core, "preflight", no_btf)
    e = open_engine("auto", EngineOptions(interval_s=0.2, latency="off"))
    try:
        assert e.poll().run.engine == "bcc"
    finally:
        e.close()


def test_bcc_headers_that_are_not_there_give_one_line(monkeypatch):
    from tcptop.engines.bcc.engine import preflight
    monkeypatch.setenv("BCC_KERNEL_SOURCE", "/nonexistent")
    with pytest.raises(EngineError) as e:
        preflight()
    assert "BCC_KERNEL_SOURCE=/nonexistent holds no kernel headers" in str(e.value)
    assert "\n" not in str(e.value)


def held_prog_ids(pid):
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                ids |= {int(line.split()[1]) for line in f if line.startswith("prog_id:")}
        except OSError:
            pass
    return ids


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["interrupted", "killed"])
def test_nothing_stays_attached_after_any_exit(how):
    """Every attachment is a file descriptor (perf events, BPF links), so even SIGKILL leaves nothing."""
    p = subprocess.Popen(TCPTOP + ["--engine", "bcc", "--json", "--interval", "0.2", "--latency", "off"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = p.stdout.readline()
        assert json.loads(line)["run"]["engine"] == "bcc", p.stderr.read()
        held = held_prog_ids(p.pid)
        assert len(held) in (5, 8) and held <= loaded_progs().keys()  # 5: the RTT kprobe replaces three
    finally:
        p.send_signal(how)
        rc = p.wait(10)
    if how == signal.SIGINT:
        assert rc == 0
        assert p.stderr.read() == ""
    assert gone(held)
    cgroup = subprocess.run(["bpftool", "-j", "cgroup", "show", _cgroup_root()], capture_output=True, text=True).stdout
    assert not held & {a["id"] for a in json.loads(cgroup.strip() or "[]")}


def _cgroup_root():
    from tcptop.engines.core.libbpf import cgroup2_root
    return cgroup2_root()


def test_refused_socket_addresses_cost_only_their_tie(nspair):
    """A verifier that refuses storing socket addresses (forced here on every kernel): the sock_ops
    program loads again without them, with the verifier's reason reported; RTT samples still
    count, and fast-recovery entries still reach their connection through its 4-tuple."""
    from tcptop.engines.bcc import loader
    from tcptop.engines.bcc.flows import FlowEngine
    refuse = "-DSK_ADDR(sk)=(*(volatile u64 *)(long)0)"  # a load from address 0: always refused
    e = FlowEngine(loader.kernel_source()[0], extra_cflags=(refuse,))
    try:
        assert e.hooks["socket addresses from sock_ops"].startswith("unavailable: the verifier refused storing them (")
        assert e.hooks["cgroup sock_ops"] == "ok"
        assert [d for d in e.degraded if d.startswith("fast_retrans of connections whose 4-tuple")]
        c, s = nspair.connected()
        before = netstat(nspair.a)
        sh("iptables", "-A", "INPUT", "-p", "tcp", "-m", "statistic", "--mode", "nth",
           "--every", "20", "--packet", "0", "-j", "DROP", ns=nspair.b)
        n = 2 << 20
        assert bulk(c, s, n) == n
        sh("iptables", "-F", "INPUT", ns=nspair.b)
        wait_idle(c, timeout=30)
        after = netstat(nspair.a)
        recoveries = sum(after[k] - before[k] for k in ("TcpExt.TCPSackRecovery", "TcpExt.TCPRenoRecovery"))
        assert recoveries > 0, "no fast recovery happened; the test proves nothing"

        def flow():
            return next((f for f in e.poll() if f.lport == c.getsockname()[1] and not f.closed), None)

        deadline = time.monotonic() + 5
        while (f := flow()) is None or f.write_bytes != n:
            assert time.monotonic() < deadline, f
            time.sleep(0.05)
        assert f.fast_retrans == recoveries
        assert f.rtt_samples >= 1 and not f.since_start
        c.close()
        s.close()
    finally:
        e.close()


def run_without_btf(hide: str, *args: str) -> subprocess.CompletedProcess:
    """tcptop in a private mount namespace where the kernel's BTF (and `hide`) are covered."""
    script = f"mount -t tmpfs none /sys/kernel/btf && {hide} && exec {sys.executable} -m tcptop {' '.join(args)}"
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_without_btf_auto_runs_the_bcc_engine():
    r = run_without_btf("true", "--json", "--count", "1", "--latency", "off")
    assert r.returncode == 0, r.stderr
    run = json.loads(r.stdout)["run"]
    assert run["engine"] == "bcc"
    assert run["hooks"]["cgroup sock_ops"] == "ok"
    # No BTF and headers of another kernel: tcp_sock's layout is unknown, so RTT samples fall back
    # to the sock_ops callbacks (where kprobes exist, the kprobe counts them instead).
    if run["hooks"]["kprobe tcp_rtt_estimator"] != "ok":
        from tcptop.engines.bcc import loader
        if not loader.headers_are_this_kernels(loader.kernel_source()[0]):
            assert run["hooks"]["tracepoint tcp_probe (reads tcp_sock)"] == (
                "unavailable: this kernel's tcp_sock layout is not known: this kernel has no BTF, "
                "and the kernel headers are not this kernel's")
            assert run["hooks"]["sock_ops RTT callbacks"] == "ok"
            assert [d for d in run["degraded"] if d.startswith("rtt_samples, rtt_sum_us, rtt_hist: one sample per "
                                                                "round trip, not every sample (sock_ops RTT callbacks")]


def test_without_btf_nor_bcc_one_line_names_both():
    bcc_dir = os.path.realpath(os.path.join(os.path.dirname(loaded_bcc_file()), ""))
    r = run_without_btf(f"mount -t tmpfs none {bcc_dir}", "--json", "--count", "1")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1
    assert "no engine can run on this machine (core: this kernel has no BTF" in r.stderr
    assert "bcc: BCC's Python bindings are missing" in r.stderr


def loaded_bcc_file() -> str:
    import bcc
    return bcc.__file__
