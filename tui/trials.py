"""A study on disk, for the trial leaderboard: its trials, their curves, importances. Called from worker threads.

Reads the study's storage through engine.trials (optuna, never mlx). Opening a storage costs
about a tenth of a second, so `TrialsReader` keeps one open per study and only recomputes
importances when the number of complete trials changes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from engine import client as engine_client
from engine.config import ConfigError
from engine.study_plan import StudySettings
from engine.trials import TrialRow, studies_root
from engine.client import folder_name

__all__ = ["Snapshot", "TrialsReader", "study_dir_for", "studies_root"]


@dataclass(frozen=True)
class Snapshot:
    """What the trial leaderboard shows of one study at one moment."""

    study_dir: Path
    rows: list[TrialRow] = field(default_factory=list)  # best first (engine.trials.leaderboard's order)
    importance: dict[str, float] | None = None
    error: str = ""  # why the study could not be read
    alive: bool = False  # a study process on this machine is running it
    updated_s: float = 0.0  # when the study last changed (its database's or story's mtime)

    @property
    def best(self) -> TrialRow | None:
        return next((r for r in self.rows if r.state == "complete"), None)

    def count(self, state: str) -> int:
        return sum(r.state == state for r in self.rows)


def _mtime(study_dir: Path) -> float:
    return max((p.stat().st_mtime for p in (study_dir / "study.db", study_dir / "metrics.jsonl") if p.exists()), default=0.0)


def study_dir_for(preset_name: str) -> Path:
    """Where `t` keeps the study of this preset (StudySettings' rule, as `lora-mlx tune` does)."""
    return StudySettings(name=study_name(preset_name)).study_dir


class TrialsReader:
    """Reads one study at a time; safe to call from successive worker threads (one at a time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._study = None
        self._study_dir: Path | None = None
        self._importance: tuple[int, dict | None] = (-1, None)

    def read(self, study_dir: Path) -> Snapshot:
        from engine import trials

        study_dir = Path(study_dir)
        alive = engine_client.pid_alive(engine_client.read_record(study_dir).get("pid"))
        if not (study_dir / "study.json").exists() and not (study_dir / "study.db").exists():
            return Snapshot(study_dir, alive=alive)  # nothing stored yet (a study that is starting)
        with self._lock:
            try:
                if self._study_dir != study_dir or self._study is None:
                    self._study, self._study_dir, self._importance = trials.open_study(study_dir), study_dir, (-1, None)
                rows = trials.leaderboard(self._study)
                complete = sum(r.state == "complete" for r in rows)
                if complete != self._importance[0]:
                    self._importance = (complete, trials.importances(self._study))
                return Snapshot(study_dir, rows, self._importance[1], alive=alive, updated_s=_mtime(study_dir))
            except ConfigError as e:
                self._study = None
                return Snapshot(study_dir, error=str(e), alive=alive)
            except Exception as e:  # a database that is locked or half-written: say so, try again next time
                self._study = None
                return Snapshot(study_dir, error=f"cannot read the study: {type(e).__name__}: {e}", alive=alive)


def study_name(preset_name: str) -> str:
    """A study's default name: the preset's, as a folder name."""
    return folder_name(preset_name, "study")


def promote_best(study_dir: Path) -> Path:
    """Write the best trial's settings as a preset named STUDY-best (or STUDY-best-2, ...) in the user's preset folder."""
    from engine import config as C, trials

    folder = C.preset_dirs()[1]
    name = next(n for n in (f"{study_dir.name}-best" + (f"-{i}" if i > 1 else "") for i in range(1, 1000)) if not (folder / f"{n}.yaml").exists())
    return trials.promote(study_dir, name)
