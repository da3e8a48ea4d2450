"""t: start or continue a study (an Optuna search) for the preset in the form."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from engine import config as C, search
from engine.study_plan import PLAN_FILE, PRUNERS, SAMPLERS, StudySettings, check_plan
from tui.trials import Snapshot, TrialsReader
from tui.widgets.ordered_input import EarlyKeysToField, OrderedInput

DEFAULT_TRIALS = 20
UI_RETRY = 1  # a trial stopped by quitting (or lost with its process) runs again when the study continues


def dialog_name(setting: str) -> str:
    """A study setting as this dialog shows it: its own fields by label, the rest as `lora-mlx tune` takes them."""
    return setting if setting in ("trials", "sampler", "pruner") else f"lora-mlx tune --{setting}"


class StudyDialog(EarlyKeysToField, ModalScreen[StudySettings | None]):
    """Dismissed with the study's settings, or None (cancel)."""

    EARLY_KEYS_FIELD = "#study-trials"

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="study-cancel")]

    class _Existing(Message):
        def __init__(self, snapshot: Snapshot) -> None:
            super().__init__()
            self.snapshot = snapshot

    def __init__(self, settings: StudySettings, cfg: C.Config, space: search.SearchSpace, source: str) -> None:
        super().__init__()
        self.settings, self.cfg, self.space, self.source = settings, cfg, space, source

    def compose(self) -> ComposeResult:
        s = self.settings
        with Vertical(classes="dialog", id="study-dialog"):
            yield Label(f"Search hyperparameters: study '{s.name}'", classes="dialog-title")
            yield Static("looking for an earlier study of this name…", id="study-existing")
            yield Static(self._space_text(), classes="dialog-about")
            with Horizontal(classes="field-line"):
                yield Label("trials", classes="field-label")
                yield OrderedInput(str(s.trials), id="study-trials", type="integer", compact=True)
            with Horizontal(classes="field-line"):
                yield Label("sampler", classes="field-label")
                yield Select([(v, v) for v in SAMPLERS], value=s.sampler, allow_blank=False, compact=True, id="study-sampler")
            with Horizontal(classes="field-line"):
                yield Label("pruner", classes="field-label")
                yield Select([(v, v) for v in PRUNERS], value=s.pruner, allow_blank=False, compact=True, id="study-pruner")
            yield Static("", id="study-notes")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Start (enter)", id="study-start", variant="primary", compact=True)
                yield Button("Cancel (esc)", id="study-cancel-button", compact=True)

    def on_mount(self) -> None:
        self._check()
        self.query_one("#study-trials", Input).focus()
        self._look_for_existing()

    def _space_text(self) -> str:
        where = "the default space (no search: section in the preset)" if self.space.is_default else f"the search: section of {self.source}"
        params = "\n".join(f"  {p.key}: {p.describe()}" for p in self.space.params)
        return f"Searches {where}:\n{params}\nEach trial trains {self.cfg.train.iters} steps; the objective is its best validation loss."

    @work(thread=True, exclusive=True)
    def _look_for_existing(self) -> None:
        self.post_message(self._Existing(TrialsReader().read(self.settings.study_dir)))

    @on(_Existing)
    def _existing(self, message: _Existing) -> None:
        snap, shown = message.snapshot, self.query_one("#study-existing", Static)
        if snap.error:
            shown.update(Text(f"{self.settings.study_dir}: {snap.error}", style="red"))
        elif not snap.rows:
            shown.update(Text(f"A new study in {self.settings.study_dir}", style="dim"))
        else:
            counts = ", ".join(f"{snap.count(s)} {s}" for s in ("complete", "pruned", "failed") if snap.count(s))
            best = f"; best val loss {snap.best.value:.4f} (trial {snap.best.number})" if snap.best else ""
            shown.update(Text(f"Continues the study in {self.settings.study_dir}: {counts}{best}. "
                              "Stopped trials run again first.", style="green"))

    @on(Input.Changed)
    @on(Select.Changed)
    def _changed(self) -> None:
        self._check()

    def _chosen(self) -> StudySettings:
        """The settings as typed; ConfigError for a trial count that is not a number."""
        text = self.query_one("#study-trials", Input).value.strip()
        try:
            trials = int(text)
        except ValueError:
            raise C.ConfigError(f"trials: {text!r} is not a whole number") from None
        sampler = str(self.query_one("#study-sampler", Select).value)
        pruner = str(self.query_one("#study-pruner", Select).value)
        return replace(self.settings, trials=trials, sampler=sampler, pruner=pruner)

    def _check(self) -> StudySettings | None:
        """Show what is wrong (and what works poorly) with the settings; the settings if they can run."""
        notes = self.query_one("#study-notes", Static)
        try:
            chosen = self._chosen()
            warnings = check_plan(self.cfg, self.space, chosen, dialog_name)
            if chosen.sampler == "grid":
                self.space.grid()  # a continuous range cannot be a grid
        except C.ConfigError as e:
            notes.update(Text(str(e), style="bold red"))
            self.query_one("#study-start", Button).disabled = True
            return None
        notes.update(Text("\n".join(f"note: {w}" for w in warnings), style="yellow"))
        self.query_one("#study-start", Button).disabled = False
        return chosen

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self.action_start()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "study-start":
            self.action_start()
        else:
            self.action_cancel()

    def action_start(self) -> None:
        chosen = self._check()
        if chosen is not None:
            self.dismiss(chosen)

    def action_cancel(self) -> None:
        self.dismiss(None)


def settings_for(name: str, root: Path) -> StudySettings:
    """A dashboard study's settings before the dialog: those it ran with last time (trials, sampler,
    pruner), else the CLI's defaults; stopped trials are re-run."""
    settings = StudySettings(name=name, trials=DEFAULT_TRIALS, retry_failed=UI_RETRY, root=root)
    try:
        before = json.loads((settings.study_dir / PLAN_FILE).read_text())["settings"]
        return replace(settings, trials=int(before["trials"]), sampler=before["sampler"], pruner=before["pruner"])
    except (OSError, ValueError, KeyError, TypeError):
        return settings
