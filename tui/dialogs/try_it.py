"""Try it: answer a prompt with the run's adapters, beside the base model's answer.

Generation needs mlx, which the dashboard process never loads, so each answer
comes from `lora-mlx generate` in a child process; a worker thread streams its
output into the screen with post_message.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

from engine import config as C
from tui.widgets.ordered_input import EarlyKeysToField, OrderedInput

SIDES = {"tuned": "with the adapters", "base": "base model"}
MAX_TOKENS = 96


class TryItScreen(EarlyKeysToField, ModalScreen[None]):

    EARLY_KEYS_FIELD = "#try-prompt"
    BINDINGS = [Binding("escape", "dismiss", "Close", id="close-try-it")]

    class Answer(Message):
        """The answer so far on one side; done when the child process has ended."""

        def __init__(self, side: str, text: str, done: bool, error: str = "") -> None:
            super().__init__()
            self.side, self.text, self.done, self.error = side, text, done, error

    def __init__(self, run_dir: Path, prompt: str, which: str = "latest") -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.prompt = prompt
        self.which = which  # latest, or best (a trial's objective is its best checkpoint)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            name = f"{self.run_dir.parent.name}/{self.run_dir.name}" if self.which == "best" else self.run_dir.name
            yield Label(f"Try it: {name}, {self.which} adapters (enter: answer, escape: close)", classes="dialog-title")
            yield OrderedInput(self.prompt, placeholder="a prompt", id="try-prompt")
            with Horizontal(id="try-answers"):
                for side, title in SIDES.items():
                    with Vertical(classes="try-side"):
                        yield Label(title, classes="section")
                        yield Static("", id=f"try-{side}")

    @on(Input.Submitted, "#try-prompt")
    def _ask(self, event: Input.Submitted) -> None:
        prompt = event.value.strip()
        if not prompt:
            return
        for side in SIDES:
            self.query_one(f"#try-{side}", Static).update("…")
            self._generate(side, prompt)

    @work(thread=True, exit_on_error=False)
    def _generate(self, side: str, prompt: str) -> None:
        command = [sys.executable, "-m", "engine.cli", "generate", str(self.run_dir), "--prompt", prompt, "--max-tokens", str(MAX_TOKENS), "--checkpoint", self.which]
        if side == "base":
            command.append("--base")
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=C.REPO_ROOT, stdin=subprocess.DEVNULL)
        text = b""
        while chunk := os.read(proc.stdout.fileno(), 256):
            text += chunk
            self.post_message(self.Answer(side, text.decode(errors="replace"), done=False))
        error = proc.stderr.read().decode(errors="replace").strip()
        code = proc.wait()
        self.post_message(self.Answer(side, text.decode(errors="replace"), done=True, error=error if code else ""))

    @on(Answer)
    def _show(self, message: Answer) -> None:
        shown = message.text.strip() or ("(no answer)" if message.done else "…")
        if message.error:
            shown = message.error.splitlines()[-1]
        self.query_one(f"#try-{message.side}", Static).update(shown)
