"""The dashboard app: `run_app()` is what `lora-mlx` (no arguments), `lora-mlx tui` and `lora-mlx attach` open."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from typing import Iterable

from textual import events
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from engine import client as engine_client, config as C
from tui import runs
from tui.screens.main import MainScreen
from tui.widgets.ordered_input import EarlyKeysToField


class LoraApp(App[int]):
    """Open on a preset (ready to start) or attached to a run."""

    CSS_PATH = Path(__file__).parent / "app.tcss"  # absolute, so subclasses elsewhere find it
    TITLE = "lora-mlx"
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", id="app-quit", show=False, priority=True)]

    def __init__(
        self,
        preset_path: Path | None = None,
        attach: Path | None = None,
        engine_command: tuple[str, ...] = engine_client.ENGINE_COMMAND,
        runs_root: Path | None = None,
    ) -> None:
        super().__init__()
        self.main = MainScreen(preset_path, attach, engine_command, runs_root or runs.runs_root())

    def get_default_screen(self) -> Screen:
        return self.main

    async def action_quit(self) -> None:
        """ctrl+q asks the same question as q when a run is active."""
        self.main.action_quit()

    def on_key(self, event: events.Key) -> None:
        """A key typed right after the one that opened a dialog, handled by nothing: it was meant for
        the dialog's field (see EarlyKeysToField)."""
        if isinstance(self.screen, EarlyKeysToField) and self.screen.is_early(event) and self.screen.take_early(event):
            event.prevent_default()  # not also run as a binding

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for binding in MainScreen.BINDINGS:
            if isinstance(binding, Binding) and binding.id not in ("leave-field", "quit"):
                yield SystemCommand(binding.description, binding.tooltip or binding.description, partial(self.main.run_action, binding.action))


def run_app(preset: str | None = "demo", attach: Path | None = None) -> int:
    """Run the dashboard in this terminal; returns the exit code for the CLI (2: bad preset or run dir)."""
    preset_path = None
    try:
        if attach is not None:
            if not (Path(attach) / "config.yaml").exists() and not engine_client.is_study(Path(attach)):
                raise C.ConfigError(f"{attach}: not a run or study directory (no config.yaml, no study.json)")
        elif preset:
            preset_path = C.resolve_preset(preset)
            if not preset_path.exists():
                raise C.ConfigError(f"{preset_path}: preset file not found")
    except C.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    app = LoraApp(preset_path=preset_path, attach=Path(attach) if attach is not None else None)
    app.run()
    return app.return_code or 0
