"""The engine's events and commands: small, picklable dataclasses.

Events are past tense and flow from the engine to whoever watches it (the CLI
printer, a UI process, metrics.jsonl). Commands are imperative and flow the
other way. Nothing here imports mlx, so a UI can import this module freely.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    """Base class of everything the engine reports."""

    def to_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, **asdict(self)}


@dataclass(frozen=True)
class RunStarted(Event):
    run_dir: str
    total_steps: int
    start_step: int
    trainable_parameters: int
    total_parameters: int
    train_examples: int
    valid_examples: int
    resumed_from: str | None = None


@dataclass(frozen=True)
class StepReported(Event):
    step: int
    epoch: float
    train_loss: float
    learning_rate: float
    tokens_per_second: float
    trained_tokens: int
    peak_memory_gb: float
    seconds_elapsed: float


@dataclass(frozen=True)
class EvalReported(Event):
    step: int
    val_loss: float
    seconds_taken: float


@dataclass(frozen=True)
class SampleGenerated(Event):
    """The model's answer to train.sample_prompt at an evaluation."""

    step: int
    prompt: str
    text: str


@dataclass(frozen=True)
class CheckpointSaved(Event):
    step: int
    path: str
    reason: str  # "periodic", "requested", "stop", "final", "best"


@dataclass(frozen=True)
class Paused(Event):
    step: int


@dataclass(frozen=True)
class Resumed(Event):
    step: int


@dataclass(frozen=True)
class LogMessage(Event):
    level: str  # "info" or "warning"
    text: str


@dataclass(frozen=True)
class RunFinished(Event):
    step: int
    stopped_early: bool
    best_val_loss: float | None
    adapter_path: str


@dataclass(frozen=True)
class RunFailed(Event):
    step: int
    reason: str
    last_checkpoint: str | None = None
    details: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class MemorySampled(Event):
    """A few times a second while a run is active; every value in GB (limit 0.0 when none is set)."""

    active_gb: float
    peak_gb: float
    cache_gb: float
    rss_gb: float
    system_used_gb: float
    system_available_gb: float
    system_total_gb: float
    swap_used_gb: float
    limit_gb: float


# A study (lora-mlx tune): its trials' own run events pass through between TrialStarted and TrialFinished.
@dataclass(frozen=True)
class StudyStarted(Event):
    study: str
    study_dir: str
    storage: str  # the URL with any password hidden
    trials_target: int
    trials_done: int  # finished trials already in the study (a resumed study has some)
    sampler: str
    pruner: str
    space: dict  # {key: {type, low, high, log, step} or {type, choices}}


@dataclass(frozen=True)
class TrialStarted(Event):
    study: str
    number: int
    params: dict
    run_dir: str
    retry_of: int | None = None  # the trial this one re-runs (its worker died or it was stopped)


@dataclass(frozen=True)
class TrialFinished(Event):
    study: str
    number: int
    state: str  # complete, pruned or failed
    value: float | None  # best validation loss (the objective; for a pruned trial, the best before pruning)
    best_step: int | None
    pruned_at_step: int | None
    duration_s: float
    reason: str | None  # why it failed
    adapter_path: str | None  # its best adapters (a checkpoint directory mlx-lm can load)
    trials_done: int | None = None  # finished trials the study now holds (stopped or lost ones do not count)


@dataclass(frozen=True)
class StudyFinished(Event):
    study: str
    complete: int
    pruned: int
    failed: int
    lost: int  # of the failed: stopped, or their worker died; they do not count toward the target
    best_number: int | None
    best_value: float | None
    best_params: dict
    best_adapter_path: str | None
    reason: str  # done, stopped, timeout, grid exhausted, failing

    @property
    def status(self) -> str:
        """finished when the study reached its end (its trials, or the whole grid); else stopped (t continues it)."""
        return "finished" if self.reason in ("done", "grid exhausted") else "stopped"


@dataclass(frozen=True)
class EngineGone(Event):
    """Said by the client side, never by the engine: the engine process ended without a final event."""

    exit_code: int | None
    log_tail: list[str]
    last_checkpoint: str | None
    diagnosis: str | None = None  # e.g. "this was probably out of memory ... resume with ..."


EVENT_TYPES = {
    cls.__name__: cls
    for cls in (
        RunStarted, StepReported, EvalReported, SampleGenerated, CheckpointSaved, Paused, Resumed,
        LogMessage, RunFinished, RunFailed, MemorySampled, EngineGone,
        StudyStarted, TrialStarted, TrialFinished, StudyFinished,
    )
}


STUDY_EVENTS = (StudyStarted, TrialStarted, TrialFinished, StudyFinished)  # a study's own story, around its trials' events


def event_from_dict(d: dict) -> Event:
    """Rebuild an event from `Event.to_dict()` (the wire format is JSON, never pickle)."""
    fields = dict(d)
    return EVENT_TYPES[fields.pop("type")](**fields)


@dataclass(frozen=True)
class Command:
    """Base class of what a controller may ask of a running engine."""


@dataclass(frozen=True)
class Pause(Command):
    pass


@dataclass(frozen=True)
class Resume(Command):
    pass


@dataclass(frozen=True)
class Stop(Command):
    """Stop at the next step boundary, saving a checkpoint first."""


@dataclass(frozen=True)
class SaveCheckpoint(Command):
    pass


COMMAND_TYPES = {cls.__name__: cls for cls in (Pause, Resume, Stop, SaveCheckpoint)}
