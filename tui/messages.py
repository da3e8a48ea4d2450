"""Messages the bridge worker posts to the screen (the only thing it does with the UI)."""

from __future__ import annotations

from pathlib import Path

from textual.message import Message

from engine import protocol as P


class EngineEvents(Message):
    """Events that change the run's story (eval, checkpoint, pause, end), in order; never dropped."""

    def __init__(self, events: list[P.Event]) -> None:
        super().__init__()
        self.events = events


class Telemetry(Message):
    """Step reports and memory samples: the high-rate part.

    When the UI falls behind, a queued Telemetry folds into the next one
    (steps appended, newest memory sample kept), so a burst costs one redraw
    and no curve point is lost.
    """

    def __init__(self, steps: list[P.StepReported], memory: P.MemorySampled | None) -> None:
        super().__init__()
        self.steps = steps
        self.memory = memory

    def can_replace(self, message: Message) -> bool:
        # Called on the older message with the next one queued after it.
        if not isinstance(message, Telemetry):
            return False
        message.steps[:0] = self.steps
        message.memory = message.memory or self.memory
        return True

    @property
    def events(self) -> list[P.Event]:
        return [*self.steps, *([self.memory] if self.memory else [])]


class RunLaunched(Message):
    """An engine process was started for run_dir (its socket may not be up yet)."""

    def __init__(self, run_dir: Path, pid: int) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.pid = pid


class CommandSent(Message):
    """A queued command reached the engine (delivered) or could not (the engine is gone)."""

    def __init__(self, command: P.Command, delivered: bool) -> None:
        super().__init__()
        self.command = command
        self.delivered = delivered


class BridgeEnded(Message):
    """The bridge stopped: the engine closed its connection, or the UI detached."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.run_dir = run_dir
