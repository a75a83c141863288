"""Every key of the screen in one place: the App's bindings and the help screen's table.

Each binding has an id so a user keymap can rebind it (Textual's keymap support).
"""

from __future__ import annotations

from textual.binding import Binding

APP_BINDINGS = [
    Binding("question_mark", "help", "Help", key_display="?", id="help"),
    Binding("slash", "filter", "Filter", key_display="/", id="filter"),
    Binding("escape", "clear_filter", "Clear filter", show=False, id="clear_filter"),
    Binding("s", "pick_sort", "Sort", id="sort"),
    Binding("r", "reverse", "Reverse", id="reverse"),
    Binding("R", "sort_retrans", "By retrans", key_display="R", id="sort_retrans"),
    Binding("less_than_sign", "sort_step(-1)", "Sort ←", show=False, key_display="<", id="sort_left"),
    Binding("greater_than_sign", "sort_step(1)", "Sort →", show=False, key_display=">", id="sort_right"),
    Binding("p,space", "toggle_pause", "Pause", key_display="p", id="pause"),
    Binding("n,full_stop", "step(1)", "Step", show=False, key_display="n", id="replay.step"),
    Binding("b,comma", "step(-1)", "Back", show=False, key_display="b", id="replay.back"),
    Binding("plus,equals_sign", "speed(1)", "Faster", show=False, key_display="+", id="replay.faster"),
    Binding("minus", "speed(-1)", "Slower", show=False, key_display="-", id="replay.slower"),
    Binding("enter", "next_pane", "Next pane", show=False, id="next_pane"),
    Binding("q", "quit", "Quit", id="quit"),
    Binding("ctrl+c", "quit", "Quit", show=False, priority=True, id="quit_ctrl_c"),
]

# (keys as shown, what they do) for the help screen, in the order a newcomer needs them.
KEY_HELP: tuple[tuple[str, str], ...] = (
    ("↑ ↓  j k", "move the selection (it follows the same connection across refreshes and re-sorts)"),
    ("PgUp PgDn Home End", "move by a page / to the first or last flow"),
    ("/", "filter: type an expression, applied as you type; Enter keeps it"),
    ("Esc", "clear the filter (or close this screen)"),
    ("s", "choose the sort column"),
    ("< >", "sort by the column to the left / right"),
    ("r", "reverse the sort order"),
    ("R", "sort by retransmissions, most first"),
    ("p  Space", "pause the display (collection goes on; unpausing jumps to now)"),
    ("n  b", "replay: next / previous snapshot"),
    ("+ -", "replay: faster / slower"),
    ("Enter  Tab", "move focus between the flow list, detail and latency panes"),
    ("mouse", "click a column header to sort by it (again: reverse); click a row to select it"),
    ("?", "this help"),
    ("q  Ctrl+C", "quit"),
)

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
