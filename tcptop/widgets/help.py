"""The help overlay: every key, the filter language, and the glossary of the sixteen metrics."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from tcptop.frontends.screen.glossary import GLOSSARY
from tcptop.frontends.screen.keys import FILTER_HELP, key_help


def help_renderable() -> Group:
    keys = Table(box=None, show_header=False, padding=(0, 2))
    keys.add_column(style="bold cyan", no_wrap=True)
    keys.add_column()
    for k, what in key_help():
        keys.add_row(k, what)

    filt = Table(box=None, show_header=False, padding=(0, 2))
    filt.add_column(style="bold cyan", no_wrap=True)
    filt.add_column()
    for k, what in FILTER_HELP:
        filt.add_row(k, what)

    gloss = Table(box=None, padding=(0, 2), header_style="bold")
    gloss.add_column("Shown as", no_wrap=True, style="bold")
    gloss.add_column("Seed name", no_wrap=True, style="magenta")
    gloss.add_column("Field", no_wrap=True, style="dim")
    gloss.add_column("Meaning")
    for term in GLOSSARY:
        gloss.add_row(term.label, term.seed, term.field, term.meaning)

    return Group(
        Text("Keys", style="bold underline"), keys, Text(""),
        Text("Filter language", style="bold underline"),
        Text("  e.g.  port 443 and not host 10.0.0.1    (comm nginx or pid 812) and state established",
             style="dim"),
        filt, Text(""),
        Text("The sixteen flow metrics", style="bold underline"), gloss, Text(""),
        Text("Colours: red = retransmitting now / zero window; yellow = retransmitted before, "
             "send queue growing; dim = connection closed.", style="dim"),
    )


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,q,question_mark", "dismiss", "Close", id="help.close"),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Static(help_renderable(), id="help-text")

    def on_mount(self) -> None:
        box = self.query_one("#help-box")
        box.border_title = "tcptop help"
        box.border_subtitle = "Esc / q / ? closes"
        box.focus()

    def action_dismiss(self, result=None) -> None:  # type: ignore[override]
        self.dismiss(None)
