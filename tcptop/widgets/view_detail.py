"""What the detail pane says about a listener, a failing destination or a group (the flow detail
is tcptop/widgets/detail.py): every number of the selected row, and the reasons behind them."""

from __future__ import annotations

from typing import Mapping

from rich.console import Group
from rich.text import Text

from tcptop.frontends.screen.failure_rows import FailureRow
from tcptop.frontends.screen.groups import GroupRow
from tcptop.frontends.screen.listener_rows import ListenerRow
from tcptop.frontends.screen.units import fmt_count_rate, fmt_endpoint, fmt_int, fmt_rate, printable_text


def reasons_line(title: str, counts: Mapping[str, int], style: str = "yellow") -> Text:
    line = Text(f"{title:<17} ", style="dim")
    if not counts:
        line.append("none", style="dim")
        return line
    line.append(", ".join(f"{reason} {n:,}" for reason, n in counts.items()), style=style)
    return line


def _pair(label: str, value: str, extra: str = "", style: str = "") -> Text:
    t = Text(f"{label:<17} ", style="dim")
    t.append(f"{value:>10}", style=style)
    t.append(f" {extra}", style="dim")
    return t


def render_listener(r: ListenerRow) -> Group:
    x = r.listener
    title = Text()
    title.append(f"{x.comm or '?'}", style="bold")
    title.append(f" pid {x.pid}  " if x.pid else "  ")
    title.append(f"listening on {fmt_endpoint(x.laddr, x.lport, 60)}  {x.family}  netns {x.netns}")
    if x.container:
        title.append(f"  container {x.container[:12]}", style="cyan")
    full = x.accept_queue > x.accept_queue_max
    lines = [
        title,
        _pair("Accept queue", f"{x.accept_queue}/{x.accept_queue_max}",
              "full: new handshakes are dropped" if full else "waiting for accept() / backlog",
              "bold red" if full else ""),
        _pair("SYN queue", fmt_int(x.syn_queue), "handshakes waiting for their last ACK"),
        _pair("Drops", fmt_int(x.drops), f"{fmt_count_rate(r.drops_ps)}  (the socket's own counter, ss -tlm d)",
              "bold red" if r.drops_ps else ""),
        _pair("SYN-ACK retrans", fmt_int(x.synack_retrans), fmt_count_rate(r.synack_ps)),
        reasons_line("Dropped packets", x.drop_reasons),
    ]
    return Group(*map(printable_text, lines))  # names and reasons come from data (a replay file)


def render_failure(r: FailureRow) -> Group:
    title = Text()
    title.append("connects to ", style="dim")
    title.append(fmt_endpoint(r.raddr, r.rport, 60), style="bold")
    title.append(" that never established", style="dim")
    lines = [
        title,
        _pair("Failed connects", fmt_int(r.count), fmt_count_rate(r.per_s), "bold red" if r.per_s else ""),
        reasons_line("Why (errno)", r.reasons, "bold yellow"),
        reasons_line("Who", {f"{comm or '?'}({pid})" if pid else (comm or "?"): n
                             for (pid, comm), n in r.processes.items()}, ""),
        Text("Connects the application gave up on itself (its own timeout) are not here: the kernel reports no "
             "error for them.", style="dim"),
    ]
    return Group(*map(printable_text, lines))  # names and reasons come from data (a replay file)


def render_group(g: GroupRow) -> Group:
    title = Text()
    title.append(g.label, style="bold")
    title.append(f"  {g.flows:,} flows listed, {g.conns:,} open", style="dim")
    fails = "" if g.fails is None else fmt_int(g.fails)
    lines = [
        title,
        _pair("Sent", fmt_rate(g.tx_bps)),
        _pair("Received", fmt_rate(g.rx_bps)),
        _pair("Retransmitted", fmt_int(g.retrans), fmt_count_rate(g.retrans_ps)),
        _pair("RTO timeouts", fmt_int(g.rto), fmt_count_rate(g.rto_ps)),
        _pair("Drops", fmt_int(g.drops), fmt_count_rate(g.drops_ps)),
        _pair("Resets", fmt_int(g.resets), fmt_count_rate(g.resets_ps)),
        _pair("Failed connects", fails or "-", fmt_count_rate(g.fails_ps) if fails else ""),
        _pair("Opened / closed", f"{fmt_count_rate(g.opens_ps)}", f"/ {fmt_count_rate(g.closes_ps)}"),
        Text("e or → lists its flows; sums and rates are of the flows the filter lets through.", style="dim"),
    ]
    return Group(*map(printable_text, lines))  # names and reasons come from data (a replay file)
