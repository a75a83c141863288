"""The sort picker (`s`): a list of columns with what each means; Enter sorts by it."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from tcptop.frontends.screen.columns import COLUMNS, Column


class SortPicker(ModalScreen[str | None]):
    BINDINGS = [Binding("escape,q,s", "cancel", "Cancel", id="sort.cancel")]

    def __init__(self, current: str, columns: tuple[Column, ...] = COLUMNS) -> None:
        super().__init__()
        self.current = current
        self.columns = columns

    def compose(self) -> ComposeResult:
        options = [Option(f"{c.title:<8} {c.help}", id=c.id) for c in self.columns]
        yield OptionList(*options, id="sort-list")

    def on_mount(self) -> None:
        lst = self.query_one(OptionList)
        lst.border_title = "Sort by"
        ids = [c.id for c in self.columns]
        if self.current in ids:
            lst.highlighted = ids.index(self.current)
        lst.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)
