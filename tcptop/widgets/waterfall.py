"""The latency waterfall: per direction, one bar per layer a packet crosses, with p50 and p99.

Receive runs driver → IP → TCP → application; transmit runs TCP → IP → qdisc → driver.
The packet-level engine reports stages as {"rx": {"driver": {"count", "p50_us", "p99_us"},
...}, "tx": {...}, "window": {...}}; when it merges layers it cannot tell apart, the key names
them all ("ip+tcp") and the bar stands where its first layer would. Without that data the
pane says so: it never draws a number the kernel did not give. A line under the title says
which window the figures come from, how old they are and how much of the time windows
cover; a stage whose packets the engine saw but could not time says so and why.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from rich.console import Group
from rich.text import Text
from textual.widgets import Static

from tcptop.frontends.screen.units import fmt_pct, fmt_us, printable_text

PATHS = {
    "rx": ("Receive", ("driver", "ip", "tcp", "app")),
    "tx": ("Transmit", ("tcp", "ip", "qdisc", "driver")),
}
LAYER_NAMES = {"driver": "driver", "ip": "IP", "tcp": "TCP", "app": "app", "qdisc": "qdisc"}

NO_DATA = ("No packet-level latency from the engine yet. Bars appear when it reports per-layer "
           "timings; nothing here is estimated.")


def ordered_stages(direction: str, stages: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """Stages in the order a packet meets them; merged ones ('ip+tcp') where their first layer is."""
    order = PATHS[direction][1]

    def rank(key: str) -> tuple[int, str]:
        first = key.split("+")[0]
        return (order.index(first) if first in order else len(order), key)

    return [(k, stages[k]) for k in sorted(stages, key=rank) if isinstance(stages[k], Mapping)]


# What a packet is doing while it sits in a stage, for the one-line hint.
DOING = {
    ("rx", "driver"): "in the driver, before IP takes it",
    ("rx", "ip"): "in the IP layer",
    ("rx", "tcp"): "in TCP, before the data is queued on the socket",
    ("rx", "app"): "waiting for the application to read",
    ("tx", "tcp"): "in TCP, before IP takes the segment",
    ("tx", "ip"): "in the IP layer",
    ("tx", "qdisc"): "queued in traffic control (qdisc)",
    ("tx", "driver"): "in the driver's transmit",
}
DIRECTION_NOUN = {"rx": "receive", "tx": "transmit"}


def dominant_hint(direction: str, stages: Mapping[str, Any]) -> str | None:
    """Which stage a packet's time goes to, as a sentence; None without samples.

    Shares are of the sum of per-stage means (p50 where the engine gave no mean):
    the time an average packet spends in each layer.
    """
    times = {}
    if any(not _stage_numbers(st)[0] for st in stages.values()):
        # A stage without samples (e.g. a sender's receive side sees only ACKs, which
        # never reach the application): shares of a partial path would mislead.
        return None
    for key, st in stages.items():
        count, p50, _ = _stage_numbers(st)
        mean = _num(st, "mean_us") if isinstance(st, Mapping) else None
        t = mean if mean is not None else p50
        if count and t is not None:
            times[key] = t
    total = sum(times.values())
    if not times or total <= 0:
        return None
    key = max(times, key=times.__getitem__)
    share = times[key] / total
    parts = key.split("+")
    doing = " and ".join(DOING.get((direction, p), p) for p in parts) if len(parts) == 1 else \
        f"in {' and '.join(LAYER_NAMES.get(p, p) for p in parts)} (not separable on this kernel)"
    return f"{share:.0%} of {DIRECTION_NOUN.get(direction, direction)} time is {doing}"


def _label(key: str) -> str:
    return "+".join(LAYER_NAMES.get(p, p) for p in key.split("+"))


def _num(stage: Mapping[str, Any], name: str) -> float | None:
    v = stage.get(name)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0:
        return float(v)
    return None


def _stage_numbers(stage: Mapping[str, Any] | None) -> tuple[int, float | None, float | None]:
    if not isinstance(stage, Mapping):
        return 0, None, None
    count = stage.get("count")
    count = count if isinstance(count, int) and not isinstance(count, bool) else 0
    return count, _num(stage, "p50_us"), _num(stage, "p99_us")


def _window_age_s(lat: Mapping[str, Any] | None, host_lat: Mapping[str, Any] | None) -> float | None:
    """How old a latency dict's figures are: the host's window age (taken at the poll) plus how
    much earlier this one's window ended. None without window information (older replays)."""
    w = lat.get("window") if lat else None
    hw = host_lat.get("window") if host_lat else None
    if not isinstance(w, Mapping) or not isinstance(hw, Mapping):
        return None
    end, host_end, host_age = _num(w, "end_ts"), _num(hw, "end_ts"), _num(hw, "age_s")
    if end is None or host_end is None or host_age is None:
        return None
    return host_age + max(0.0, host_end - end)


def timing_line(lat: Mapping[str, Any] | None, host_lat: Mapping[str, Any] | None) -> Text | None:
    """How the packets behind the bars were timed: the window their figures come from (length,
    age) and what share of the time windows covered, within what budget."""
    cov = host_lat.get("coverage") if host_lat else None
    w = lat.get("window") if lat else None
    if not isinstance(cov, Mapping):
        return None
    parts = []
    if isinstance(w, Mapping) and _num(w, "s") is not None:
        age = _window_age_s(lat, host_lat)
        parts.append(f"a {_num(w, 's'):.2g} s window" + (f", {age:.0f} s ago" if age is not None else ""))
    frac, budget = _num(cov, "timed_fraction"), _num(cov, "budget_pct")
    if cov.get("mode") == "continuous":
        parts.append("every packet timed, continuously")
    elif frac is not None:
        parts.append(f"{fmt_pct(100 * frac)} of the time timed" + (f", within {budget:g} % CPU" if budget else ""))
    return Text("  " + "; ".join(parts), style="dim") if parts else None


def _unobserved(stage: Mapping[str, Any] | None) -> tuple[int, str] | None:
    """(packets the stage could not time, why in a few words), when the engine says so."""
    u = stage.get("unobserved") if isinstance(stage, Mapping) else None
    if not isinstance(u, Mapping):
        return None
    n = u.get("skbs")
    return (n if isinstance(n, int) and not isinstance(n, bool) else 0), str(u.get("short") or u.get("why") or "")


def render_waterfall(flow_lat: Mapping[str, Any] | None, host_lat: Mapping[str, Any] | None,
                     width: int, flow_label: str = "selected flow") -> Group | Text:
    """Bars for the selected flow (or all flows when it has none), all flows' numbers beside them.

    The axis is logarithmic from 1 µs to the largest p99: layers differ by 1000x, and a
    linear axis would hide the fast ones.
    """
    if not flow_lat and not host_lat:
        return Text(NO_DATA, style="dim italic")
    primary = flow_lat or host_lat
    assert primary is not None
    compare = host_lat if (flow_lat and host_lat) else None
    p99s = [
        _stage_numbers(s)[2] or 0.0
        for lat in (primary, compare) if lat
        for d in PATHS if isinstance(lat.get(d), Mapping)
        for s in lat[d].values()
    ]
    top = 10 ** math.ceil(math.log10(max([1000.0] + p99s)))
    side = 19 if compare is not None else 0
    bar_w = max(6, width - 28 - side)

    def pos(us: float) -> int:
        if us <= 1:
            return 1 if us > 0 else 0
        return max(1, min(bar_w, round(math.log10(us) / math.log10(top) * bar_w)))

    who = flow_label if flow_lat else "all flows"
    head = Text.assemble(("bars: ", "dim"), (who, "bold"))
    if compare is not None:
        head.append("   right: all flows", style="dim")
    elif host_lat is None and flow_lat:
        head.append("   (no host-wide numbers)", style="dim")
    else:
        head.append("   (none for the selected flow)" if flow_label != "all flows" else "", style="dim")
    parts: list[Any] = [head]
    timing = timing_line(primary, host_lat)
    if timing is not None:
        parts.append(timing)
    for direction, (title, order) in PATHS.items():
        stages = primary.get(direction)
        others = compare.get(direction) if compare is not None else None
        stages = stages if isinstance(stages, Mapping) else {}
        others = others if isinstance(others, Mapping) else {}
        keys = dict.fromkeys(k for k, _ in ordered_stages(direction, {**others, **stages}))
        path = " → ".join(LAYER_NAMES[x] for x in order)
        parts.append(Text.assemble((title, "bold"), ("  " + path, "dim")))
        if not keys:
            parts.append(Text("  no samples in this direction", style="dim"))
            continue
        # Fixed-width lines, not a rich Table: this pane repaints every refresh.
        head = " " * (8 + bar_w) + f"{'p50':>8} {'p99':>8}"
        if compare is not None:
            head += f" {'all p50':>8} {'all p99':>8}"
        parts.append(Text(head, style="dim"))
        for key in keys:
            count, p50, p99 = _stage_numbers(stages.get(key))
            unobserved = _unobserved(stages.get(key))
            line = Text(_label(key)[:7].ljust(7) + " ")
            if (not count or p50 is None) and unobserved:
                # Not an empty bar: the engine saw the packets and could not time them.
                line.append(f"not observable: {unobserved[1]}"[:bar_w].ljust(bar_w), style="yellow")
                line.append(" " * 18)
            elif not count or p50 is None:
                line.append("no samples".ljust(bar_w), style="dim")
                line.append(" " * 18)
            else:
                a = pos(p50)
                b = max(a, pos(p99 if p99 is not None else p50))
                worst = p99 or p50
                colour = "red" if worst >= 10_000 else ("yellow" if worst >= 1_000 else "green")
                line.append("█" * a, style=colour)
                line.append("░" * (b - a), style=colour)
                line.append(" " * (bar_w - b))
                line.append(f" {fmt_us(p50):>8} {fmt_us(p99):>8}")
            if compare is not None:
                hc, h50, h99 = _stage_numbers(others.get(key))
                line.append(f" {fmt_us(h50) if hc else '–':>8} {fmt_us(h99) if hc else '–':>8}", style="dim")
            parts.append(line)
            if count and unobserved and unobserved[0]:
                parts.append(Text(f"        only part timed: {unobserved[0]} more not ({unobserved[1]})", style="yellow"))
        hint = dominant_hint(direction, stages)
        if hint:
            parts.append(Text("  " + hint, style="italic"))
    parts.append(Text(f"█ p50  ░ up to p99, log scale 1 µs … {fmt_us(top)}", style="dim"))
    return Group(*(printable_text(p) if isinstance(p, Text) else p for p in parts))


class WaterfallPane(Static, can_focus=True):
    """Latency per layer for the selected flow, with all flows' figures beside it."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.border_title = "Latency by layer"

    def show(self, flow_latency: Mapping[str, Any] | None, host_latency: Mapping[str, Any] | None,
             flow_label: str) -> None:
        width = max(30, self.content_region.width or 60)
        self.update(render_waterfall(flow_latency, host_latency, width, flow_label), layout=False)
