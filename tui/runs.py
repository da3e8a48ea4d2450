"""This project's runs on disk, for the leaderboard and the curve overlay. Called from worker threads."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import yaml

from engine import client as engine_client, metrics, protocol as P
from tui.state import Series


def runs_root() -> Path:
    """Where runs live: $LORA_MLX_RUNS or ./runs (the same rule as the engine's CLI)."""
    return engine_client.default_runs_root()


@dataclass(frozen=True)
class RunRow:
    run_dir: Path
    status: str
    best_val_loss: float | None
    step: int | None
    total_steps: int | None
    params: str
    duration_s: float | None

    @property
    def name(self) -> str:
        return self.run_dir.name


def read_rows(root: Path) -> list[RunRow]:
    """Every run under root, best validation loss first (runs without one last, newest first)."""
    rows = [_row(info) for info in engine_client.list_runs(root)]
    with_loss = sorted((r for r in rows if r.best_val_loss is not None), key=lambda r: (r.best_val_loss, r.name))
    return with_loss + [r for r in rows if r.best_val_loss is None]


def _row(info: engine_client.RunInfo) -> RunRow:
    record = engine_client.read_record(info.run_dir)
    return RunRow(
        run_dir=info.run_dir,
        status=info.status,
        best_val_loss=info.best_val_loss,
        step=info.step,
        total_steps=info.total_steps,
        params=_cached_params(info.run_dir / "config.yaml"),
        duration_s=_seconds_between(record.get("created_at"), record.get("updated_at")),
    )


def _cached_params(path: Path) -> str:
    try:
        return _params_at(path, path.stat().st_mtime)
    except OSError:
        return ""


@lru_cache(maxsize=4096)
def _params_at(path: Path, mtime: float) -> str:
    """key_params, parsed again only when the file changes (YAML parsing is the slow part of a refresh)."""
    return key_params(path)


def key_params(config_path: Path) -> str:
    """The few settings that tell runs apart: type, rank, learning rate, batch size."""
    try:
        cfg = yaml.safe_load(config_path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return ""
    lora, train = cfg.get("lora") or {}, cfg.get("train") or {}
    parts = [str(cfg.get("fine_tune_type", ""))]
    if cfg.get("fine_tune_type") != "full" and "rank" in lora:
        parts.append(f"r{lora['rank']}")
    if "learning_rate" in train:
        parts.append(f"lr {float(train['learning_rate']):.0e}")
    if "batch_size" in train:
        parts.append(f"bs {train['batch_size']}")
    return " ".join(p for p in parts if p)


def _seconds_between(start: str | None, end: str | None) -> float | None:
    try:
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def read_curves(run_dir: Path) -> tuple[Series, Series]:
    """A run's train and validation loss against step, as recorded in metrics.jsonl."""
    train, val = Series(), Series()
    for event in metrics.read_history(run_dir):
        if isinstance(event, P.RunStarted):
            train.keep_through(event.start_step)
            val.keep_through(event.start_step)
        elif isinstance(event, P.StepReported):
            train.add(event.step, event.train_loss)
        elif isinstance(event, P.EvalReported):
            val.add(event.step, event.val_loss)
    return train, val


def sample_prompt(run_dir: Path) -> str:
    """The run's train.sample_prompt (what `g` asks first), or '' when it has none or no readable config."""
    try:
        return str(((yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}).get("train") or {}).get("sample_prompt") or "")
    except (OSError, yaml.YAMLError, AttributeError):
        return ""
