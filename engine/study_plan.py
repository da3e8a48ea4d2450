"""What a study is to run: its settings, the checks before it starts, and the plan a detached study runs.

No mlx and no optuna here: the dashboard checks a study's settings with `check_plan` as they are
typed, and writes the plan (`write_plan`) that `python -m engine.host tune STUDY_DIR` reads.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engine import config as config_mod, search
from engine.config import Config, ConfigError
from engine.trials import studies_root

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
TPE_STARTUP_TRIALS = 10  # Optuna's default: TPE samples at random until this many trials exist

@dataclass
class StudySettings:
    name: str
    trials: int = 20
    timeout_min: float | None = None
    storage: str | None = None  # None: sqlite in the study directory
    sampler: str = "tpe"
    pruner: str = "median"
    pruner_startup: int = 5  # median: complete trials before any is pruned
    pruner_warmup_steps: int = 0  # median: no pruning before this training step
    retry_failed: int = 0  # re-runs of a trial whose worker died or that was stopped
    heartbeat_s: int = 10
    grace_s: int = 60
    root: Path | None = None  # folder of studies

    @property
    def study_dir(self) -> Path:
        return ((self.root or studies_root()) / self.name).resolve()


PLAN_FILE = "study-plan.json"


def write_plan(cfg: Config, space: search.SearchSpace, s: StudySettings, preset: dict) -> Path:
    """STUDY_DIR/study-plan.json (and config.yaml, for attach and the config pane): what a detached
    study process (`python -m engine.host tune STUDY_DIR`) runs."""
    study_dir = s.study_dir
    study_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(study_dir, 0o700)
    settings = {k: v for k, v in dataclasses.asdict(s).items() if k != "root"}
    plan = {"config": cfg.to_dict(), "space": space.to_dict(), "default_space": space.is_default, "settings": settings, "preset": preset}
    (study_dir / "config.yaml").write_text(config_mod.dump(cfg))
    tmp = study_dir / (PLAN_FILE + ".tmp")
    tmp.write_text(json.dumps(plan, indent=2) + "\n")
    os.replace(tmp, study_dir / PLAN_FILE)
    return study_dir


def read_plan(study_dir: Path) -> tuple[Config, search.SearchSpace, StudySettings, dict]:
    """What write_plan wrote: (config, space, settings, preset)."""
    path = Path(study_dir) / PLAN_FILE
    try:
        plan = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the study plan: {e}") from None
    cfg = config_mod.from_dict(plan["config"], str(path))
    space = search.SearchSpace(tuple(search.Param(k, **{**v, "choices": tuple(v.get("choices", ()))}) for k, v in plan["space"].items()), plan.get("default_space", False))
    return cfg, space, StudySettings(**plan["settings"], root=Path(study_dir).resolve().parent), plan.get("preset", {})


def cli_option(name: str) -> str:
    """How `lora-mlx tune` spells a setting: trials -> --trials."""
    return f"--{name}"


def check_plan(cfg: Config, space: search.SearchSpace, s: StudySettings, named: Callable[[str], str] = cli_option) -> list[str]:
    """Refuse settings that cannot work (ConfigError); return warnings for ones that work poorly.

    named(setting) is how the caller's user knows a setting: `--trials` on the command line,
    the trials field in the dashboard's dialog."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", s.name):
        raise ConfigError(f"{named('study')} {s.name!r}: use letters, digits, '.', '_' and '-' (it names a folder)")
    for option, value, low in (("trials", s.trials, 1), ("retry-failed", s.retry_failed, 0), ("heartbeat", s.heartbeat_s, 1),
                               ("pruner-startup", s.pruner_startup, 0), ("pruner-warmup", s.pruner_warmup_steps, 0)):
        if value < low:
            raise ConfigError(f"{named(option)} {value}: must be at least {low}")
    if s.grace_s <= s.heartbeat_s:
        raise ConfigError(f"{named('grace')} {s.grace_s}: must be longer than {named('heartbeat')} ({s.heartbeat_s} s)")
    if s.timeout_min is not None and s.timeout_min <= 0:
        raise ConfigError(f"{named('timeout')} {s.timeout_min:g}: must be a positive number of minutes")
    if not (Path(cfg.data.path) / "valid.jsonl").exists():
        raise ConfigError(f"data: {cfg.data.path}/valid.jsonl is missing; a study scores each trial by its validation loss")
    notes = []
    prunable = (cfg.train.iters - 1) // cfg.train.steps_per_eval  # evaluations before the last step
    evals = prunable + 1
    if s.sampler == "grid":
        size = space.grid_size() if space.grid() else 0
        if size > s.trials:
            notes.append(f"the grid has {size} points and {named('trials')} is {s.trials}: only {s.trials} of them will run")
    elif s.sampler == "tpe" and s.trials <= TPE_STARTUP_TRIALS:
        notes.append(
            f"TPE picks its first {TPE_STARTUP_TRIALS} trials at random, so with {named('trials')} {s.trials} this is a random "
            f"search; run more than {TPE_STARTUP_TRIALS} trials for TPE to help"
        )
    if s.pruner != "none" and not prunable:
        notes.append(
            f"no trial can be pruned: each trial evaluates only at its end (train.steps_per_eval {cfg.train.steps_per_eval} "
            f"vs train.iters {cfg.train.iters}); lower train.steps_per_eval to evaluate along the way"
        )
    elif s.pruner == "median" and s.trials <= s.pruner_startup:
        notes.append(f"no trial can be pruned: the median pruner starts after {s.pruner_startup} complete trials ({named('pruner-startup')})")
    elif s.pruner == "hyperband" and evals < 9:
        brackets = int(math.log(max(evals, 1), 3)) + 1
        notes.append(
            f"hyperband with {evals} evaluations per trial has only {brackets} bracket(s) and prunes little; "
            f"lower train.steps_per_eval to at least {max(cfg.train.iters // 9, 1)} or use {named('pruner')} median"
        )
    return notes
