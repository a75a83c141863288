"""Packet-level stages on BCC, user side: the device layer's stages, host-wide, from latency.c.

Only the stages both of whose ends are tracepoints naming the same skb can be timed
without reading kernel structs: rx driver, tx qdisc, tx driver (see latency.c). Those
tracepoints carry no socket, so the stages are host-wide and cover every packet (not only
TCP). The stages that need a packet's socket or sequence number (rx ip, tcp, app; tx
tcp(+ip)) are reported unavailable, with the reason. 1 packet in 8 is timed by default.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from tcptop.engines.bcc import loader
from tcptop.engines.histogram import BUCKETS, stage_summary

RX_DRIVER, TX_QDISC, TX_DRIVER, STAGES = 0, 1, 2, 3
STAT_NAMES = ("rx_started", "rx_matched", "tx_queued", "tx_matched", "stale", "drv_unmatched")
RX_ENTRIES = ("netif_rx", "napi_gro_receive_entry", "napi_gro_frags_entry", "netif_receive_skb_entry",
              "netif_receive_skb_list_entry")
ENDS = {"netif_receive_skb": "rx driver stage", "net_dev_queue": "tx qdisc stage",
        "net_dev_start_xmit": "tx qdisc and driver stages", "net_dev_xmit": "tx driver stage"}
ALL_PACKETS = "packets of the host, any protocol: the device tracepoints name no socket"
# Like the CO-RE engine: 1 packet in 8 (every 8th per CPU at a stage's first hook).
DEFAULT_SAMPLE = 8
NOT_HERE = ("latency per flow and the rx ip/tcp/app and tx tcp+ip stages: not measured by the BCC engine "
            "(they need a packet's socket or sequence number, which below TCP only kernel structs give)")


def source() -> str:
    return resources.files("tcptop.engines.bcc").joinpath("latency.c").read_text()


class LatencyEngine:
    """Owns the compiled latency.c. `poll()` -> (host-wide latency, {}): no per-flow stages."""

    def __init__(self, kernel_dir: str | None, max_skb_age_s: float = 5.0, sample: int = DEFAULT_SAMPLE,
                 tracepoint_fields=loader.tracepoint_fields):
        if sample < 1 or sample > 1 << 16 or sample & (sample - 1):
            raise ValueError("sample is a power of two from 1 to 65536")
        self.sample = sample
        self.hooks: dict[str, str] = {}
        self.degraded: list[str] = [NOT_HERE]
        self._attached: list[loader.Attachment] = []
        self._module = None
        present = {tp for tp in (*RX_ENTRIES, *ENDS) if (f := tracepoint_fields("net", tp)) and "skbaddr" in f}
        cflags = [f"-DMAX_SKB_AGE_NS={int(max_skb_age_s * 1e9)}ULL", f"-DSAMPLE={sample}"]
        cflags += [f"-DHAVE_TP_{tp}=1" for tp in sorted(present)]
        try:
            self._module = loader.compile_module(source(), cflags, kernel_dir)
            self._attach(present)
        except BaseException:
            self.close()
            raise

    def _attach(self, present: set[str]) -> None:
        self.attached: set[str] = set()
        for tp in (*RX_ENTRIES, *ENDS):
            hook = f"tracepoint {tp}"
            if tp not in present:
                self.hooks[hook] = "unavailable: no such tracepoint"
                continue
            try:
                fn = loader.load(self._module, f"tracepoint__net__{tp}", loader.PROG_TRACEPOINT)
                self._attached.append(loader.attach_tracepoint(fn, "net", tp))
                self.hooks[hook] = "ok"
                self.attached.add(tp)
            except loader.Refused as e:
                self.hooks[hook] = f"unavailable: the verifier refused it ({e})"
            except OSError as e:
                self.hooks[hook] = f"unavailable: {e.strerror or e}"
        for tp, lost in ENDS.items():
            if tp not in self.attached:
                self.degraded.append(f"latency: {lost} unavailable ({self.hooks[f'tracepoint {tp}']})")
        if not self.attached & set(RX_ENTRIES):
            self.degraded.append("latency: rx driver stage unavailable (no driver hand-over tracepoint attached)")

    def stage_keys(self) -> dict[str, list[tuple[str, int]]]:
        a = self.attached
        rx = [("driver", RX_DRIVER)] if a & set(RX_ENTRIES) and "netif_receive_skb" in a else []
        tx = []
        if {"net_dev_queue", "net_dev_start_xmit"} <= a:
            tx.append(("qdisc", TX_QDISC))
        if {"net_dev_start_xmit", "net_dev_xmit"} <= a:
            tx.append(("driver", TX_DRIVER))
        return {"rx": rx, "tx": tx}

    def stage_notes(self) -> dict[str, str]:
        entries = "/".join(tp for tp in RX_ENTRIES if tp in self.attached)
        notes = {
            "rx.driver": f"tracepoints {entries} -> tracepoint netif_receive_skb (by skb address; {ALL_PACKETS})",
            "tx.qdisc": f"tracepoint net_dev_queue -> tracepoint net_dev_start_xmit (by skb address; {ALL_PACKETS})",
            "tx.driver": f"tracepoint net_dev_start_xmit -> tracepoint net_dev_xmit (same CPU; {ALL_PACKETS})",
        }
        shown = {f"{d}.{k}" for d, ks in self.stage_keys().items() for k, _ in ks}
        out = {k: v for k, v in notes.items() if k in shown}
        out["resolution"] = ("log-linear buckets, 8 per power of two (each at most 9.7 % wide; [0, 128 ns) "
                             "below): a percentile is within 9.7 % of the true one; means are exact")
        out["engine"] = "bcc: device-layer stages only, host-wide"
        if self.sample > 1:
            out["sampled"] = (f"1/{self.sample}: every {self.sample}th packet on each CPU at a stage's first hook "
                              "is timed through the stage; counts are samples, not packets")
        return out

    def stats(self) -> dict[str, int]:
        table = self._module[b"stats"]
        return {name: int(sum(table[table.Key(i)])) for i, name in enumerate(STAT_NAMES)}

    def histogram(self, stage: int) -> tuple[list[int], int, int]:
        """(samples per bucket, sum ns, max ns) of a stage, host-wide, since the start."""
        table = self._module[b"host"]
        slots, total, mx = [0] * BUCKETS, 0, 0
        for h in table[table.Key(stage)]:
            for b in range(BUCKETS):
                slots[b] += h.slots[b]
            total += h.sum_ns
            mx = max(mx, h.max_ns)
        return slots, total, mx

    def poll(self) -> tuple[dict[str, Any], dict[int, dict]]:
        keys = self.stage_keys()
        host: dict[str, Any] = {d: {k: stage_summary(*self.histogram(st)) for k, st in ks} for d, ks in keys.items()}
        host["stages"] = self.stage_notes()
        host["sampled"] = f"1/{self.sample}"
        host["matching"] = self.stats()
        host["window"] = "total"
        return host, {}

    def program_ids(self) -> list[int]:
        if not self._module:
            return []
        return [loader.program_id(fn.fd) for fn in self._module.funcs.values()]

    def close(self) -> None:
        for a in self._attached:
            a.close()
        self._attached.clear()
        if self._module is not None:
            self._module.cleanup()
            self._module = None
