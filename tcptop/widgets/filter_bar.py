"""The filter bar: type a filter, see it applied as you type, see where it is wrong.

An expression that does not parse leaves the last good filter in force and shows
the error with a caret under the offending column.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Input, Label, Static

from tcptop.filter import FilterError, compile_filter

PROMPT = "/ "


class FilterBar(Vertical):
    class Changed(Message):
        """A filter that parses (possibly empty) was typed."""

        def __init__(self, expr: str) -> None:
            super().__init__()
            self.expr = expr

    class Done(Message):
        """The user left the bar: `cleared` when Esc emptied it."""

        def __init__(self, cleared: bool) -> None:
            super().__init__()
            self.cleared = cleared

    def compose(self) -> ComposeResult:
        with Horizontal(id="filter-line"):
            yield Label(PROMPT, id="filter-prompt")
            yield Input(placeholder="port 443 and not host 10.0.0.1   (Enter: keep, Esc: clear)",
                        id="filter-input", select_on_focus=False)
        yield Static("", id="filter-error")

    @property
    def input(self) -> Input:
        return self.query_one("#filter-input", Input)

    @property
    def error(self) -> str:
        return str(self.query_one("#filter-error", Static).render())

    def open(self, expr: str) -> None:
        self.add_class("-open")
        self.input.value = expr
        self.input.cursor_position = len(expr)
        self.input.focus()

    def close(self) -> None:
        self.remove_class("-open")
        self._show_error(None)

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        try:
            compile_filter(event.value)
        except FilterError as e:
            self._show_error(e)
            return
        self._show_error(None)
        self.post_message(self.Changed(event.value.strip()))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.post_message(self.Done(cleared=False))

    def _show_error(self, err: FilterError | None) -> None:
        box = self.query_one("#filter-error", Static)
        if err is None:
            box.update("")
            box.remove_class("-error")
            return
        box.add_class("-error")
        box.update(" " * (len(PROMPT) + err.pos) + "^ " + str(err))
