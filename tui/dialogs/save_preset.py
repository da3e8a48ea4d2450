"""Ask for a new preset's name; dismissed with the name, or None when cancelled."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

from tui import presets
from tui.widgets.ordered_input import EarlyKeysToField, OrderedInput


class SavePresetDialog(EarlyKeysToField, ModalScreen[str | None]):
    EARLY_KEYS_FIELD = "#preset-name"
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="cancel-save")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Save as a new preset", classes="dialog-title")
            yield Static("It goes to your preset folder, with only the keys that differ from the defaults.")
            yield OrderedInput(placeholder="name, e.g. demo-rank16", id="preset-name")
            yield Static("", id="name-error", classes="field-error")
            yield Static("enter: save   escape: cancel", classes="dialog-keys")

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        name = event.value.strip()
        problem = presets.check_preset_name(name)
        if problem:
            self.query_one("#name-error", Static).update(problem)
            return
        self.dismiss(name)

    def action_cancel(self) -> None:
        self.dismiss(None)
