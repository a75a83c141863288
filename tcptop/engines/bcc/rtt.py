"""RTT samples in the BCC engine: which hook counts them, best first, and what a poll reads of them.

Pairs with rtt.c (appended to flows.c). rtt_samples, rtt_sum_us and rtt_hist count every
sample the kernel's RTT estimator takes, as the CO-RE engine does, through the first of
these that this kernel offers; each one that cannot be used is reported with its reason:
1. kprobe tcp_rtt_estimator: every sample as it is taken (kernels with kprobes where the
   function is not inlined);
2. tracepoint tcp_probe, with tcp_sock read at this kernel's offsets (its BTF or its own
   headers, tcp_layout.py): every sample, derived segment by segment; plus
   inet_sock_set_state for the last segment before a close and a peek program run at polls
   for the last segment of a live connection;
3. sock_ops RTT callbacks: one sample per round trip (degraded, said so).
"""

from __future__ import annotations

from tcptop.engines.bcc import loader, tcp_layout
from tcptop.engines.histogram import rtt_bucket

KPROBE = "kprobe tcp_rtt_estimator"
TP_PROBE = "tracepoint tcp_probe (reads tcp_sock)"
TP_STATE = "tracepoint inet_sock_set_state"
PEEK = "RTT peek at polls (raw tracepoint program, BPF_PROG_TEST_RUN)"
CALLBACKS = "sock_ops RTT callbacks"
PROBE_FIELDS = {"skaddr", "skbaddr", "sock_cookie", "snd_una", "snd_nxt"}
STATE_FIELDS = {"skaddr", "newstate", "protocol"}
# flows.c: config[CONF_RTT_MODE]
MODE_NONE, MODE_CALLBACKS, MODE_KPROBE, MODE_TCP_PROBE = 0, 1, 2, 3
CONF_RTT_MODE = 0
PEEK_NONE, PEEK_STALE = 0, 0xFFFFFFFF
DEFAULT_MAX_RTT_FLOWS = 65536
METRICS = "rtt_samples, rtt_sum_us, rtt_hist"
NO_COUNTS: tuple = (0, 0, ())


def compile_flags(tracepoint_fields, kernel_dir: str | None, have_destroy: bool,
                  max_rtt_flows: int = DEFAULT_MAX_RTT_FLOWS) -> tuple[list[str], str | None]:
    """(-D flags for rtt.c, why the tcp_probe hook cannot be compiled, or None if it can)."""
    flags = [f"-DMAX_RTT_FLOWS={max_rtt_flows}"]
    probe, state = tracepoint_fields("tcp", "tcp_probe"), tracepoint_fields("sock", "inet_sock_set_state")
    if probe is None or not PROBE_FIELDS <= probe:
        return flags, "no such tracepoint" if probe is None else "its format lacks skaddr, skbaddr or sock_cookie"
    if state is None or not STATE_FIELDS <= state:
        return flags, f"{TP_STATE} is missing or lacks fields this engine reads"
    if not have_destroy:
        return flags, "tracepoint tcp_destroy_sock is missing: entries of closed sockets could not be freed"
    try:
        layout, _ = tcp_layout.cflags(loader.headers_are_this_kernels(kernel_dir))
    except tcp_layout.LayoutUnknown as e:
        return flags, f"this kernel's tcp_sock layout is not known: {e}"
    return flags + layout, None


class RttSamples:
    """Attaches the best RTT hook of a compiled flows.c + rtt.c module and reads its counts."""

    def __init__(self, module, attached: list, hooks: dict[str, str], degraded: list[str]):
        self._module, self._attached, self.hooks, self.degraded = module, attached, hooks, degraded
        self.mode = MODE_NONE
        self._peek = None
        self._live = None

    # -- set-up ---------------------------------------------------------------

    def attach(self, why_no_probe: str | None, sockops_loaded: bool) -> None:
        """Pick and attach the hook (before sock_ops is attached: it reads the mode)."""
        why_kprobe = self._try_kprobe()
        if why_kprobe is None:
            self.mode = MODE_KPROBE
            self.hooks[TP_PROBE] = f"ok: not attached: {KPROBE} is used"
        else:
            why_probe = why_no_probe or self._try_tcp_probe()
            if why_probe is None:
                self.mode = MODE_TCP_PROBE
            else:
                self.hooks[TP_PROBE] = f"unavailable: {why_probe}"
                why = f"{KPROBE} unavailable ({why_kprobe}), {TP_PROBE} unavailable ({why_probe})"
                if sockops_loaded:
                    self.mode = MODE_CALLBACKS
                    self.hooks[CALLBACKS] = "ok"
                    self.degraded.append(f"{METRICS}: one sample per round trip, not every sample ({CALLBACKS}: "
                                         f"{why}); 0 for connections older than tcptop")
                else:
                    self.hooks[CALLBACKS] = "unavailable: cgroup sock_ops is unavailable"
                    self.degraded.append(f"{METRICS}: not counted ({why}, and cgroup sock_ops unavailable)")
        table = self._module[b"config"]
        table[table.Key(CONF_RTT_MODE)] = table.Leaf(self.mode)
        if self.mode in (MODE_KPROBE, MODE_TCP_PROBE):
            self._live = self._module[b"rtt_flows"]

    def _try_kprobe(self) -> str | None:
        """Loaded on every start, so the verifier has checked it even where it is not attached."""
        try:
            fn = loader.load(self._module, "kp_rtt_estimator", loader.PROG_KPROBE)
        except loader.Refused as e:
            why = f"the verifier refused it ({e})"
            self.hooks[KPROBE] = f"unavailable: {why}"
            return why
        try:
            self._attached.append(loader.attach_kprobe(fn, "tcp_rtt_estimator"))
        except OSError as e:
            why = f"loaded (passed the verifier), not attached: {e.strerror or e}"
            self.hooks[KPROBE] = f"unavailable: {why}"
            return why
        self.hooks[KPROBE] = "ok"
        self.degraded.append(f"{METRICS} of connections older than tcptop: counted from its start, but shown only "
                             f"once they close ({KPROBE} names no connection)")
        return None

    def _try_tcp_probe(self) -> str | None:
        """tcp_probe and inet_sock_set_state together (one without the other miscounts); the
        peek on its own (without it, the last segment's sample waits for the next one)."""
        attached = []
        try:
            for name, category, event in (("tracepoint__tcp__tcp_probe", "tcp", "tcp_probe"),
                                          ("tracepoint__sock__inet_sock_set_state", "sock", "inet_sock_set_state")):
                fn = loader.load(self._module, name, loader.PROG_TRACEPOINT)
                attached.append(loader.attach_tracepoint(fn, category, event))
        except (loader.Refused, OSError) as e:
            for a in attached:
                a.close()
            what = f"the verifier refused it ({e})" if isinstance(e, loader.Refused) else (e.strerror or str(e))
            return f"{TP_STATE}: {what}" if attached else what
        self._attached.extend(attached)
        self.hooks[TP_PROBE] = self.hooks[TP_STATE] = "ok"
        self.degraded.append(f"{METRICS} of connections older than tcptop: counted from the first segment "
                             "tcptop sees")
        try:
            self._peek = loader.RawRunner(loader.load(self._module, "tt_bcc_rtt_peek", loader.PROG_RAW_TRACEPOINT), 2)
            self._peek(0, 0)  # an unknown cookie: PEEK_STALE; fails where test runs are not allowed
            self.hooks[PEEK] = "ok"
        except loader.Refused as e:
            self._no_peek(f"the verifier refused it ({e})")
        except OSError as e:
            self._no_peek(e.strerror or str(e))
        return None

    def _no_peek(self, why: str) -> None:
        self._peek = None
        self.hooks[PEEK] = f"unavailable: {why}"
        self.degraded.append(f"{METRICS}: the sample of a connection's last segment is shown only once the next "
                             f"segment or its close comes ({PEEK} unavailable: {why})")

    # -- polling --------------------------------------------------------------

    @property
    def keyed(self) -> bool:
        """Counts are in rtt_flows (and closed_rtt), not in the sockets' storage."""
        return self._live is not None

    def live(self, cookie: int, sk_addr: int, storage) -> tuple[tuple | None, bool]:
        """((samples, sum_us, hist counts) of a live connection, or None if not known yet;
        whether to read it again at the next poll even if its sock_diag record is the same)."""
        if self.mode == MODE_CALLBACKS:
            return (counts_of(storage) if storage is not None else None), False
        if self._live is None:
            return None, False
        if self.mode == MODE_KPROBE:
            e = self._lookup(sk_addr) if sk_addr else None
            return (counts_of(e) if e is not None and e.cookie in (0, cookie) else None), False
        for _ in range(3):  # the entry moved on between the two reads (a segment came): again
            e = self._lookup(cookie)
            if e is None:
                return None, False
            counts = counts_of(e)
            if self._peek is None:
                return counts, False
            got = self._peek(cookie, e.rtt_samples)
            if got == PEEK_NONE:
                return counts, False
            if got != PEEK_STALE:
                return _plus(counts, got - 1), False
        return counts, True  # settled samples only, for now

    def _lookup(self, key: int):
        try:
            return self._live[self._live.Key(key)]
        except KeyError:
            return None


def counts_of(v) -> tuple:
    """(rtt_samples, rtt_sum_us, per-bucket counts) of an rtt_flow or flow_counters value."""
    return (v.rtt_samples, v.rtt_sum_us, tuple(v.rtt_hist))


def _plus(counts: tuple, m: int) -> tuple:
    samples, total, hist = counts
    b = rtt_bucket(m)
    return (samples + 1, total + m, hist[:b] + (hist[b] + 1,) + hist[b + 1:])

