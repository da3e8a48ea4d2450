"""Quitting while a run is active: stop and save, detach (keep training), or cancel."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static


class QuitDialog(ModalScreen[str | None]):
    """Dismissed with "stop", "detach", or None (cancel)."""

    BINDINGS = [
        Binding("s", "choose('stop')", "Stop and save", id="quit-stop"),
        Binding("d", "choose('detach')", "Detach", id="quit-detach"),
        Binding("escape,c", "choose('')", "Cancel", id="quit-cancel"),
    ]

    def __init__(self, run_name: str) -> None:
        super().__init__()
        self.run_name = run_name

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(f"{self.run_name} is still training", classes="dialog-title")
            yield Static(
                "Stop and save: the engine saves a checkpoint and stops (resume it later).\n"
                "Detach: leave it training in the background; come back with lora-mlx attach."
            )
            with Horizontal(classes="dialog-buttons"):
                yield Button("Stop and save (s)", id="stop", variant="error", compact=True)
                yield Button("Detach (d)", id="detach", variant="primary", compact=True)
                yield Button("Cancel (esc)", id="cancel", compact=True)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.action_choose("" if event.button.id == "cancel" else str(event.button.id))

    def action_choose(self, choice: str) -> None:
        self.dismiss(choice or None)
