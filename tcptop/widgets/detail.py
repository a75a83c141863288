"""The detail pane: all sixteen metrics of the selected flow, their rates, and a minute of history."""

from __future__ import annotations

from rich.console import Group
from rich.text import Text
from textual.widgets import Static

from tcptop.frontends.screen.alerts import (fast_style, retrans_style, rto_style, rwnd_style, sendq_growing,
                                            sendq_style, zero_window)
from tcptop.frontends.screen.columns import state_text
from tcptop.frontends.screen.glossary import TERM
from tcptop.frontends.screen.row import Row
from tcptop.frontends.screen.units import (fmt_age, fmt_bytes, fmt_count_rate, fmt_endpoint, fmt_int, fmt_rate,
                                           fmt_us, printable_text)
from tcptop.widgets.sparkline import sparkline


class DetailPane(Static, can_focus=True):
    """Re-rendered when the selection changes or a snapshot arrives; never reads the engine."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.border_title = "Flow"

    def show_other(self, title: str, renderable) -> None:
        """A listener's, a destination's or a group's detail (tcptop/widgets/view_detail.py)."""
        self.border_title = title
        self.update(renderable, layout=False)

    def show(self, row: Row | None, now: float = 0.0) -> None:
        if row is None:
            self.border_title = "Flow"
            self.update(Text("No flow selected: the list is empty or filtered out.", style="dim"), layout=False)
            return
        self.border_title = f"Flow {row.flow.id}"
        self.update(render_detail(row, now, max(20, self.content_region.width or 80)), layout=False)


def _metric(field: str, value: str, rate: str = "", style: str = "") -> tuple[Text, Text, Text]:
    return (Text(TERM[field].label, style="dim"), Text(value, style=style), Text(rate, style="dim"))


def render_detail(row: Row, now: float, width: int) -> Group:
    f = row.flow
    title = Text()
    title.append(f"{f.comm or '?'}", style="bold")
    title.append(f" pid {f.pid}  " if f.pid else "  ")
    title.append(fmt_endpoint(f.laddr, f.lport, 60))
    title.append(" → ")
    title.append(fmt_endpoint(f.raddr, f.rport, 60))
    title.append(f"  {state_text(f)}", style="dim" if f.closed else "bold")
    title.append(f"  {f.family}  ca {f.ca_state}", style="dim")
    if f.container:
        title.append(f"  container {f.container[:12]}", style="cyan")

    stalled = zero_window(f)
    mean = f"mean {fmt_us(f.rtt_sum_us / f.rtt_samples)}" if f.rtt_samples else ""
    cells = [
        _metric("bytes_sent", fmt_bytes(f.bytes_sent), fmt_rate(row.tx_bps)),
        _metric("bytes_received", fmt_bytes(f.bytes_received), fmt_rate(row.rx_bps)),
        _metric("write_bytes", fmt_bytes(f.write_bytes), fmt_rate(row.write_bps)),
        _metric("read_bytes", fmt_bytes(f.read_bytes), fmt_rate(row.read_bps)),
        _metric("retrans_packets", fmt_int(f.retrans_packets), fmt_count_rate(row.retrans_ps), retrans_style(row)),
        _metric("fast_retrans", fmt_int(f.fast_retrans), fmt_count_rate(row.fast_ps), fast_style(row)),
        _metric("timeouts", fmt_int(f.timeouts), fmt_count_rate(row.rto_ps), rto_style(row)),
        _metric("cwnd", f"{f.cwnd} seg", f"ssthresh {f.ssthresh}" if 0 < f.ssthresh < 2**30 else ""),
        _metric("flight_size", f"{f.flight_size} seg"),
        _metric("rwnd", fmt_bytes(f.rwnd), "zero window" if stalled else "", rwnd_style(row)),
        _metric("mss", f"{f.mss} B"),
        _metric("app_wqueue", fmt_bytes(f.app_wqueue), "growing" if sendq_growing(row) else "", sendq_style(row)),
        _metric("app_wqueue_max", fmt_bytes(f.app_wqueue_max)),
        _metric("rtt_samples", fmt_int(f.rtt_samples), f"srtt {fmt_us(f.srtt_us)}" if f.srtt_us else ""),
        _metric("rtt_sum_us", fmt_us(f.rtt_sum_us), mean),
        _metric("duration_s", fmt_age(f.age_s(now)), "since start" if f.since_start else ""),
    ]
    # Fixed-width lines, not a rich Table: this pane repaints every refresh.
    def cell(c: tuple[Text, Text, Text]) -> Text:
        label, value, rate = c
        out = Text(label.plain.ljust(17)[:17], style="dim")
        out.append(" ")
        out.append(value.plain.rjust(10), style=value.style)
        out.append(" ")
        out.append(rate.plain.ljust(12)[:12], style=rate.style or "dim")
        return out

    lines: list[Text] = []
    half = (len(cells) + 1) // 2
    if width >= 84:
        for i in range(half):
            line = cell(cells[i])
            if half + i < len(cells):
                line.append(" ")
                line.append_text(cell(cells[half + i]))
            lines.append(line)
    else:
        lines = [cell(c) for c in cells]
    grid = Text("\n").join(lines)

    parts = [title, grid]
    trouble = failure_line(f)
    if trouble is not None:
        parts.append(trouble)
    hist = list(row.history or ())
    if len(hist) >= 2:
        spark_w = max(10, min(60, width - 36))
        series = (
            ("TX/s", [h.tx_bps for h in hist], fmt_rate, "green"),
            ("RX/s", [h.rx_bps for h in hist], fmt_rate, "cyan"),
            ("cwnd", [h.cwnd for h in hist], lambda v: f"{v:.0f}", "magenta"),
            ("RTT", [h.rtt_us or None for h in hist], fmt_us, "yellow"),
        )
        secs = hist[-1].ts - hist[0].ts
        parts.append(Text(f"last {secs:.0f} s", style="dim"))
        for name, values, fmt, colour in series:
            known = [v for v in values if v is not None]
            rng = f"{fmt(min(known))} … {fmt(max(known))}" if known else ""
            line = Text(name.ljust(5), style="dim")
            line.append(sparkline(values, spark_w).ljust(spark_w), style=colour)
            line.append(" " + rng, style="dim")
            parts.append(line)
    else:
        parts.append(Text("history: collecting…", style="dim"))
    return Group(*map(printable_text, parts))


def failure_line(f) -> Text | None:
    """Drops by the kernel's reason and resets each way, when the flow had any."""
    if not f.drops and not f.resets_sent and not f.resets_received:
        return None
    line = Text()
    if f.drops:
        line.append("Drops ", style="dim")
        line.append(", ".join(f"{reason} {n:,}" for reason, n in f.drops.items()), style="bold red")
        line.append("  ")
    if f.resets_sent or f.resets_received:
        line.append("Resets ", style="dim")
        line.append(f"sent {f.resets_sent:,} received {f.resets_received:,}", style="yellow")
        if f.last_reset_reason:
            line.append(f" (last: {f.last_reset_reason})", style="dim")
    return line
