"""metrics.jsonl: every event of a run, one JSON object a line, and back again.

Train and eval lines have the documented shape
  {"event": "train", "step", "train_loss", "learning_rate", "tokens_per_second",
   "trained_tokens", "peak_memory_gb", ...}
  {"event": "eval", "step", "val_loss", ...}
and every other event is written with its fields, so a UI attaching later can
replay a run's whole history. No mlx here: the UI reads these files too.
"""

from __future__ import annotations

import json
import time
from dataclasses import fields
from pathlib import Path

from engine import protocol as P

EVENT_NAMES = {
    P.RunStarted: "started",
    P.StepReported: "train",
    P.EvalReported: "eval",
    P.SampleGenerated: "sample",
    P.CheckpointSaved: "checkpoint",
    P.Paused: "paused",
    P.Resumed: "resumed",
    P.LogMessage: "log",
    P.RunFinished: "finished",
    P.RunFailed: "failed",
    P.StudyStarted: "study_started",  # a study directory's metrics.jsonl holds the study's own events
    P.TrialStarted: "trial_started",
    P.TrialFinished: "trial_finished",
    P.StudyFinished: "study_finished",
}
EVENT_CLASSES = {name: cls for cls, name in EVENT_NAMES.items()}


def to_line(event: P.Event) -> dict:
    body = event.to_dict()
    body.pop("type")
    return {"event": EVENT_NAMES[type(event)], **body, "time": time.time()}


def from_line(line: dict) -> P.Event | None:
    """The event a metrics line records, or None for lines of an unknown kind."""
    cls = EVENT_CLASSES.get(line.get("event"))
    if cls is None:
        return None
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in line.items() if k in names})


def read_history(run_dir: Path) -> list[P.Event]:
    """Every event recorded for a run; a torn last line (a crash mid-write) is ignored."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    events = []
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            event = from_line(json.loads(raw))
        except (json.JSONDecodeError, TypeError):
            continue
        if event is not None:
            events.append(event)
    return events


class MetricsLog:
    """Appends events to RUN_DIR/metrics.jsonl, a line at a time (memory samples are not kept)."""

    def __init__(self, run_dir: Path):
        self.file = open(Path(run_dir) / "metrics.jsonl", "a", buffering=1, encoding="utf-8")

    def write(self, event: P.Event) -> None:
        if type(event) in EVENT_NAMES:
            self.file.write(json.dumps(to_line(event)) + "\n")

    def close(self) -> None:
        self.file.close()
