"""The key map, generated from the bindings so it cannot go stale."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

ABOUT = (
    "Training runs in its own process: detach (q, d) or lose the connection and it keeps going; "
    "come back with `lora-mlx attach`. In a text field letters type: press escape first."
)


PANE_KEYS = [  # keys of one pane, beside the screen's own
    ("config pane", "ctrl+s", "Save the configuration as a new preset"),
    ("runs", "r", "Refresh the runs"),
    ("runs, trials", "enter", "Overlay the run's or trial's loss curves on the chart (again: remove)"),
    ("trials", "g", "Try the selected trial's best adapters"),
    ("trials", "P", "Promote the best trial to a preset"),
    ("anywhere", "tab / shift+tab", "Move between fields and panes"),
    ("anywhere", "ctrl+p", "Command palette"),
]


class HelpDialog(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close", id="close-help")]

    def __init__(self, keys: list[tuple[str, str, str]]) -> None:
        """keys: (where, key, what it does)."""
        super().__init__()
        self.keys = keys

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=False, expand=True, padding=(0, 1))
        table.add_column("key", no_wrap=True, style="bold", width=max(len(k) for _, k, _ in self.keys))
        table.add_column("what it does", ratio=1)
        table.add_column("where", style="dim", no_wrap=True)
        for where, key, description in self.keys:
            table.add_row(key, description, "" if where == "anywhere" else where)
        with VerticalScroll(classes="dialog"):
            yield Label("Keys (escape, ? or q: close)", classes="dialog-title")
            yield Static(ABOUT, classes="dialog-about")
            yield Static(table)
