"""The header: where we are (host, kernel, engine), how much we show, totals, and what is wrong.

Run-level trouble (hooks missing on this kernel, flows evicted from full maps, events
lost, unreadable replay lines) is always on screen, so a partial number is never
mistaken for a whole one.
"""

from __future__ import annotations

from collections.abc import Mapping

from rich.text import Text
from textual.widgets import Static

from tcptop.frontends.screen.columns import COLUMN_BY_ID
from tcptop.frontends.screen.poller import PlaybackStatus
from tcptop.model import Snapshot
from tcptop.frontends.screen.store import FlowStore
from tcptop.frontends.screen.units import fmt_count_rate, fmt_pct, fmt_rate, printable


def run_warnings(snap: Snapshot | None) -> list[str]:
    if snap is None:
        return []
    run = snap.run
    # Engines report a missing hook twice: "unavailable: why" under hooks, and a
    # sentence naming the metric it costs under degraded. The sentence is what
    # matters on a busy screen; its reason in parentheses is in --json.
    out = [f"{hook}: {state}" for hook, state in sorted(run.hooks.items())
           if not state.startswith(("ok", "unavailable"))]
    out.extend(d.split(" (", 1)[0] for d in run.degraded)
    if run.flows_evicted:
        out.append(f"{run.flows_evicted:,} flows evicted (maps full)")
    if run.events_lost:
        causes = ", ".join(f"{cause.replace('_', ' ')} {n:,}" for cause, n in run.events_lost_by.items() if n)
        out.append(f"{run.events_lost:,} events lost" + (f" ({causes})" if causes else ""))
    return out


def packet_timing_note(snap: Snapshot | None) -> str:
    """Continuous packet timing is something the user asked for (--latency full/light), at a
    cost that is theirs, unlike the budget's windows: the header says so, with the cost."""
    cov = snap.latency.get("coverage") if snap is not None and isinstance(snap.latency, Mapping) else None
    if not isinstance(cov, Mapping) or cov.get("mode") != "continuous":
        return ""
    cost = cov.get("cost_pct")
    price = f"about {fmt_pct(cost)} of busy CPU" if isinstance(cost, (int, float)) else "cost not yet measured"
    return f"every packet timed continuously (asked for): {price}, yours to pay"


class HeaderBar(Static):
    def render_header(self, store: FlowStore, paused: bool, replay: PlaybackStatus | None,
                      waiting_for: str = "", view: str = "") -> None:
        text = header_text(store, paused, replay, waiting_for, view)
        lines = text.plain.count("\n") + 1
        # Relayout the screen only when the header grows or shrinks by a line.
        self.update(text, layout=lines != self._lines)
        self._lines = lines

    _lines = 0


def header_text(store: FlowStore, paused: bool, replay: PlaybackStatus | None, waiting_for: str = "",
                view: str = "") -> Text:
    """`view`: what the table beside the flow list shows, said instead of the flow count and sort."""
    snap = store.snapshot
    t = Text(no_wrap=False, overflow="fold")
    t.append(" tcptop ", style="bold reverse")
    if snap is None:
        t.append(f"  {waiting_for or 'waiting for the first snapshot…'}", style="dim")
        return t
    t.append(f" {printable(snap.host) or '?'}", style="bold")
    t.append(f"  {printable(snap.kernel)}" if snap.kernel else "", style="dim")
    t.append(f"  engine {printable(snap.run.engine)}", style="dim")
    if view:
        t.append(f"   {printable(view)}", style="bold")
    else:
        t.append(f"   {len(store):,}/{store.total:,} flows", style="bold")
    tot = store.totals
    t.append("   TX ")
    t.append(fmt_rate(tot.tx_bps), style="green")
    t.append("  RX ")
    t.append(fmt_rate(tot.rx_bps), style="cyan")
    t.append("  retrans ")
    t.append(fmt_count_rate(tot.retrans_ps), style="bold red" if tot.retrans_ps else "")
    if not view:
        col = COLUMN_BY_ID.get(store.sort_column)
        title = col.title if col else store.sort_column
        t.append(f"   sort {title}{'▼' if store.descending else '▲'}", style="dim")
    if paused:
        t.append("   ")
        t.append(" PAUSED ", style="bold black on yellow")
    line2 = Text()
    if replay is not None:
        where = "end" if replay.ended else f"line {replay.shown_line}/{replay.lines}"
        line2.append(f" replay {printable(replay.name)} {where} ×{replay.speed:g}", style="magenta")
    if store.filter_expr:
        line2.append(f"  filter: {store.filter_expr}", style="bold cyan")
    timing = packet_timing_note(snap)
    if timing:
        line2.append(f"  {timing}", style="dim yellow")
    warnings = run_warnings(snap)
    if replay is not None and replay.errors:
        n = len(replay.errors)
        warnings.append(f"{n} unreadable replay line{'s' if n > 1 else ''} skipped (last {replay.errors[-1]})")
    if warnings:
        line2.append("  ⚠ " + printable(" · ".join(warnings)), style="yellow")
    if line2:
        t.append("\n")
        t.append_text(line2)
    return t
