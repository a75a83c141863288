"""Every key of the screen in one place; the help screen's table is made from these bindings.

Each binding has an id so a user keymap can rebind it (Textual's keymap support), and a
tooltip that the help screen shows, so no key can be documented without existing, or
exist without being documented.
"""

from __future__ import annotations

from textual.binding import Binding

_MOVE = "move the selection (it follows the same connection across refreshes and re-sorts)"
_JUMP = "move by a page / to the first or last flow"

# The flow list's own keys (tcptop/widgets/flow_table.py takes them from here).
TABLE_BINDINGS = [
    Binding("up,k", "cursor(-1)", "Up", show=False, id="table.up", tooltip=_MOVE),
    Binding("down,j", "cursor(1)", "Down", show=False, id="table.down", tooltip=_MOVE),
    Binding("pageup", "page(-1)", "Page up", show=False, id="table.page_up", tooltip=_JUMP),
    Binding("pagedown", "page(1)", "Page down", show=False, id="table.page_down", tooltip=_JUMP),
    Binding("home", "edge(0)", "First", show=False, id="table.home", tooltip=_JUMP),
    Binding("end", "edge(1)", "Last", show=False, id="table.end", tooltip=_JUMP),
]

_GROUP = "groups: open / close the selected group's list of flows"

# Keys of the listener, failure and group tables (tcptop/widgets/rows_table.py) beyond moving.
GROUP_BINDINGS = [
    Binding("e", "toggle('flip')", "Open group", show=False, id="group.toggle", tooltip=_GROUP),
    Binding("right", "toggle('open')", "Open", show=False, id="group.open", tooltip=_GROUP),
    Binding("left", "toggle('close')", "Close", show=False, id="group.close", tooltip=_GROUP),
]

APP_BINDINGS = [
    Binding("question_mark", "help", "Help", key_display="?", id="help", tooltip="this help"),
    Binding("slash", "filter", "Filter", key_display="/", id="filter",
            tooltip="filter: type an expression, applied as you type; Enter keeps it"),
    Binding("escape", "clear_filter", "Clear filter", show=False, id="clear_filter",
            tooltip="clear the filter (or close this screen)"),
    Binding("s", "pick_sort", "Sort", id="sort", tooltip="choose the sort column"),
    Binding("less_than_sign", "sort_step(-1)", "Sort ←", show=False, key_display="<", id="sort_left",
            tooltip="sort by the column to the left / right"),
    Binding("greater_than_sign", "sort_step(1)", "Sort →", show=False, key_display=">", id="sort_right",
            tooltip="sort by the column to the left / right"),
    Binding("r", "reverse", "Reverse", id="reverse", tooltip="reverse the sort order"),
    Binding("R", "sort_retrans", "By retrans", key_display="R", id="sort_retrans",
            tooltip="sort by retransmissions, most first (listeners: by drops/s; failures: by failed connects/s)"),
    Binding("D", "sort_drops", "By drops", show=False, key_display="D", id="sort_drops",
            tooltip="sort by packets the kernel dropped, most first"),
    Binding("l", "show_view('listeners')", "Listeners", id="view.listeners",
            tooltip="listeners: every listening socket, its queues and drops (again: back to the flows)"),
    Binding("f", "show_view('failures')", "Failures", id="view.failures",
            tooltip="failed connects by destination, with the kernel's errno (again: back to the flows)"),
    Binding("g", "group", "Group", id="group",
            tooltip="group the flows: none → process → remote service → local port"),
    Binding("p,space", "toggle_pause", "Pause", key_display="p", id="pause",
            tooltip="pause the display (collection goes on; unpausing jumps to now)"),
    Binding("n,full_stop", "step(1)", "Step", show=False, key_display="n", id="replay.step",
            tooltip="replay: next / previous snapshot"),
    Binding("b,comma", "step(-1)", "Back", show=False, key_display="b", id="replay.back",
            tooltip="replay: next / previous snapshot"),
    Binding("plus,equals_sign", "speed(1)", "Faster", show=False, key_display="+", id="replay.faster",
            tooltip="replay: faster / slower"),
    Binding("minus", "speed(-1)", "Slower", show=False, key_display="-", id="replay.slower",
            tooltip="replay: faster / slower"),
    Binding("enter,tab", "next_pane", "Next pane", show=False, id="next_pane",
            tooltip="move focus between the flow list, detail and latency panes"),
    Binding("q", "quit", "Quit", id="quit", tooltip="quit"),
    Binding("ctrl+c", "quit", "Quit", show=False, priority=True, id="quit_ctrl_c", tooltip="quit"),
]

# What no binding says: the mouse.
MOUSE_HELP = ("mouse", "click a column header to sort by it (again: reverse); click a row to select it")

_KEY_NAMES = {
    "up": "↑", "down": "↓", "pageup": "PgUp", "pagedown": "PgDn", "home": "Home", "end": "End",
    "question_mark": "?", "slash": "/", "escape": "Esc", "less_than_sign": "<", "greater_than_sign": ">",
    "space": "Space", "full_stop": ".", "comma": ",", "plus": "+", "equals_sign": "=", "minus": "-",
    "enter": "Enter", "tab": "Tab", "ctrl+c": "Ctrl+C", "right": "→", "left": "←",
}


def key_names(b: Binding) -> list[str]:
    """How a binding's keys are written for a person."""
    return [_KEY_NAMES.get(k.strip(), k.strip()) for k in b.key.split(",")]


def key_help(bindings: list[Binding] | None = None) -> list[tuple[str, str]]:
    """(keys, what they do) for the help screen, made from the live bindings: bindings that
    share a description share a line, in binding order, with the mouse and then help and quit
    last (where a newcomer looks for them)."""
    rows: dict[str, list[str]] = {}
    last: list[str] = []
    for b in bindings if bindings is not None else TABLE_BINDINGS + GROUP_BINDINGS + APP_BINDINGS:
        what = b.tooltip or b.description
        keys = rows.setdefault(what, [])
        keys.extend(k for k in key_names(b) if k not in keys)
        if b.action in ("help", "quit") and what not in last:
            last.append(what)
    out = [("  ".join(keys), what) for what, keys in rows.items() if what not in last]
    return out + [MOUSE_HELP] + [("  ".join(rows[what]), what) for what in last]


FILTER_HELP: tuple[tuple[str, str], ...] = (
    ("port N", "local or remote port N (a bare number means the same)"),
    ("lport N / rport N", "local / remote port"),
    ("pid N", "owning process id"),
    ("comm NAME", "process name; * and ? glob, quote names with spaces"),
    ("host ADDR", "local or remote address (IPv4-mapped IPv6 matches IPv4)"),
    ("net CIDR", "address inside a network, e.g. 10.0.0.0/8"),
    ("state NAME", "TCP state: established, syn-sent, time-wait, close-wait, closed…"),
    ("ip / ip6", "address family"),
    ("and or not ( )", "combine; also && || !; not > and > or, as in tcpdump"),
)
