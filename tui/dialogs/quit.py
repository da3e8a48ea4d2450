"""Quitting while a run or study is active: stop and save, detach (keep training), or cancel."""

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

    RUN_TEXT = (
        "Stop and save: the engine saves a checkpoint and stops (resume it later).\n"
        "Detach: leave it training in the background; come back with lora-mlx attach."
    )

    STUDY_TEXT = (
        "Stop and save: the trial saves a checkpoint, the study stops; t continues it\n"
        "later (the stopped trial runs again first).\n"
        "Detach: it keeps running; lora-mlx attach shows it again."
    )

    def __init__(self, title: str, text: str = RUN_TEXT) -> None:
        super().__init__()
        self.title_text, self.text = title, text

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            yield Static(self.text)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Stop and save (s)", id="stop", variant="error", compact=True)
                yield Button("Detach (d)", id="detach", variant="primary", compact=True)
                yield Button("Cancel (esc)", id="cancel", compact=True)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.action_choose("" if event.button.id == "cancel" else str(event.button.id))

    def action_choose(self, choice: str) -> None:
        self.dismiss(choice or None)
