"""Reading a study: where it is, its leaderboard, parameter importances, promoting the best trial.

No mlx here (a UI polls these); optuna is imported only inside the functions that need it.
A study lives in STUDIES/NAME/: study.json (its name and storage URL, password hidden),
study.db (the default SQLite storage) and one run directory per trial, trial-NNNN/.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from engine import config as config_mod, search
from engine.config import ConfigError

MIN_COMPLETE_FOR_IMPORTANCE = 5  # fewer complete trials say nothing about importance


@dataclass(frozen=True)
class TrialRow:
    """One line of the leaderboard."""

    number: int
    state: str  # running, complete, pruned, failed, waiting
    value: float | None  # best validation loss so far
    params: dict
    duration_s: float | None
    best_step: int | None
    pruned_at_step: int | None
    run_dir: str | None
    adapter_path: str | None
    host: str | None
    reason: str | None
    retry_of: int | None
    intermediate: dict = field(default_factory=dict)  # {step: val_loss}
    done: bool = False  # counts toward the study's target (counts_as_done)


def studies_root() -> Path:
    """Where studies go: $LORA_MLX_STUDIES, else ./studies."""
    return Path(os.environ.get("LORA_MLX_STUDIES", "studies")).expanduser()


def hide_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def open_storage(url: str, heartbeat_s: int | None = None, grace_s: int | None = None, max_retry: int = 0, attempts: int = 3):
    """An RDBStorage; with heartbeat_s, a trial whose worker is silent for grace_s is failed (and re-queued
    up to max_retry times). SQLite waits up to a minute for a lock instead of failing. Opening is
    tried `attempts` times: workers starting together on a new database race to create its tables."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    from sqlalchemy.exc import ArgumentError

    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.x
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                beats = {}
                if heartbeat_s:
                    beats = dict(
                        heartbeat_interval=heartbeat_s,
                        grace_period=grace_s,
                        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
                    )
                return RDBStorage(url, engine_kwargs=engine_kwargs, **beats)
        except ImportError as e:  # Optuna wraps the driver's ModuleNotFoundError
            missing = getattr(e.__cause__, "name", None) or getattr(e, "name", None) or "?"
            raise ConfigError(
                f"--storage {hide_password(url)}: its database driver is not installed (no module {missing!r}); "
                "for postgresql:// URLs: pip install 'lora-finetuning-mlx[postgres]' (psycopg 3)"
            ) from None
        except Exception as e:  # a bad URL, a refused connection, wrong credentials, a lost race
            if attempt + 1 < attempts and not isinstance(e, ArgumentError):
                time.sleep(1.0)
                continue
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"--storage {hide_password(url)}: cannot open it: {first}") from None


_STATE_NAMES = {"RUNNING": "running", "COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "WAITING": "waiting"}
_ORDER = {"complete": 0, "running": 1, "pruned": 2, "failed": 3, "waiting": 4}


def counts_as_done(t) -> bool:
    """A finished trial that counts toward a study's target: complete, pruned, or failed on its own.
    One stopped, or lost with its worker, does not count (it may be run again)."""
    state = t.state.name
    if state in ("COMPLETE", "PRUNED"):
        return True
    return state == "FAIL" and t.user_attrs.get("fail_reason") is not None and not t.user_attrs.get("interrupted")


def row_of(t) -> TrialRow:
    from datetime import datetime

    a = t.user_attrs
    state = _STATE_NAMES[t.state.name]
    values = dict(t.intermediate_values)
    value = t.value if state == "complete" else a.get("best_val_loss")
    if value is None and values:
        value = min(values.values())
    end = t.datetime_complete or (datetime.now() if state == "running" else None)
    duration = (end - t.datetime_start).total_seconds() if end and t.datetime_start else None
    pruned_at = a.get("pruned_at_step") if a.get("pruned_at_step") is not None else (max(values) if state == "pruned" and values else None)
    reason = None
    if state == "failed":
        reason = a.get("fail_reason") or "its worker stopped sending heartbeats (killed, crashed or cut off)"
    return TrialRow(
        t.number, state, value, dict(t.params), duration, a.get("best_step"), pruned_at, a.get("run_dir"),
        a.get("adapter_path"), a.get("host"), reason, t.system_attrs.get("failed_trial"), values, counts_as_done(t),
    )


def locate(source: str | Path, storage: str | None = None, root: Path | None = None) -> tuple[str, str]:
    """(storage URL, study name) for a study directory, a study name, or a name in --storage."""
    path = Path(source).expanduser()
    if not path.is_dir() and "/" not in str(source):
        path = (root or studies_root()) / str(source)
    info_file = path / "study.json"
    info = json.loads(info_file.read_text()) if info_file.exists() else None
    if storage:
        return storage, info["study"] if info else path.name
    if info:
        if "***" in info["storage"]:
            raise ConfigError(f"{info_file}: the storage URL's password is not kept; give it with --storage URL")
        return info["storage"], info["study"]
    if (path / "study.db").exists():
        return f"sqlite:///{(path / 'study.db').resolve()}", path.name
    folder = root or studies_root()
    known = sorted(p.parent.name for p in folder.glob("*/study.json")) if folder.is_dir() else []
    raise ConfigError(f"no study at {path}; studies under {folder}: {', '.join(known) or 'none'}")


def open_study(source, study_name: str | None = None, root: Path | None = None):
    """A study to read (no heartbeats, no sampler): an optuna Study as is; a study directory or a
    name under the studies folder; or a storage URL with `study_name` (optional if it holds one)."""
    import optuna

    if hasattr(source, "get_trials"):
        return source
    if "://" in str(source):
        url, name = str(source), study_name
    else:
        url, name = locate(source, root=root)
        name = study_name or name
    opened = open_storage(url)
    names = optuna.get_all_study_names(storage=opened)
    if name is None and len(names) == 1:
        name = names[0]
    if name not in names:
        raise ConfigError(f"no study '{name}' in {hide_password(url)}; it holds: {', '.join(names) or 'none'}")
    return optuna.load_study(study_name=name, storage=opened)


def leaderboard(source, study_name: str | None = None) -> list[TrialRow]:
    """Every trial of a study, best first: complete by objective, then running, pruned, failed, waiting.

    `source` is what open_study takes; pass an open Study when polling (opening costs ~0.1 s).
    Imports optuna, never mlx.
    """
    rows = [row_of(t) for t in open_study(source, study_name).get_trials(deepcopy=False)]
    return sorted(rows, key=lambda r: (_ORDER[r.state], r.value if r.value is not None else math.inf, r.number))


def importances(source, study_name: str | None = None) -> dict[str, float] | None:
    """Optuna's parameter importances (PED-ANOVA), once MIN_COMPLETE_FOR_IMPORTANCE trials are complete; else None."""
    import optuna

    study = open_study(source, study_name)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < MIN_COMPLETE_FOR_IMPORTANCE:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(optuna.importance.get_param_importances(study))
    except (ValueError, RuntimeError, ZeroDivisionError):  # e.g. every complete trial has the same params
        return None


def promote(source, out: str, study_name: str | None = None) -> Path:
    """Write a preset with the best complete trial's values: the study's preset keys plus the searched ones.

    `out` is a path (ending .yaml, or with a folder) or a name for the user's preset folder. Returns the path.
    """
    study = open_study(source, study_name)
    rows = [r for r in leaderboard(study) if r.state == "complete"]
    if not rows:
        raise ConfigError(f"study '{study.study_name}' has no complete trial yet; nothing to promote")
    best, attrs = rows[0], study.user_attrs
    path = Path(out).expanduser() if out.endswith((".yaml", ".yml")) or os.sep in out else config_mod.preset_dirs()[1] / f"{out}.yaml"
    if path.exists():
        raise ConfigError(f"--promote {out}: {path} already exists; pick another name or remove it")
    cfg = search.apply(config_mod.from_dict(attrs["full_config"], f"study {study.study_name}"), best.params)
    space = {key: search.Param(key, **spec) for key, spec in attrs["space"].items()}
    keys = set(attrs.get("preset", {}).get("keys", [])) | set(best.params) | {"model", "data.path"}
    lines = [
        f"# Promoted from study '{study.study_name}', trial {best.number}: validation loss {best.value:.4f} at step {best.best_step}.",
        f"# That trial's adapters: {best.adapter_path}",
        "# Keys marked 'tuned' were searched; the others are the study's preset and --set values.",
    ]
    section = None
    for key, f in config_mod.LEAF_FIELDS.items():
        if key not in keys:
            continue
        head, _, leaf = key.rpartition(".")
        if key == "data.path" and "data.skip_invalid" not in keys:
            head, leaf, section = "", "data", ""
        elif head != section and head:
            lines.append(f"{head}:")
        section = head
        note = f"tuned: {space[key].describe()}" if key in best.params else re.split(r"; | \(|\. ", f.metadata["doc"])[0].rstrip(".")
        text = f"{'  ' if head else ''}{leaf}: {yaml_scalar(cfg.get(key))}"
        lines.append(f"{text:<26} # {note}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    config_mod.load(str(path))  # what it wrote must load
    return path


def yaml_scalar(value) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def format_params(params: dict) -> str:
    return " ".join(f"{k}={_short(v)}" for k, v in params.items())


def format_leaderboard(rows: list[TrialRow], importance: dict | None) -> list[str]:
    """The `lora-mlx trials` table: one line a trial, best first, with where its best adapters are."""
    lines = [f"{'#':>4}  {'STATE':<8} {'VAL LOSS':>8} {'AT STEP':>7} {'PRUNED@':>7} {'TIME':>7}  PARAMS / BEST ADAPTERS"]
    indent = " " * (len(lines[0]) - len("PARAMS / BEST ADAPTERS"))
    here = socket.gethostname()
    for r in rows:
        value = f"{r.value:.4f}" if r.value is not None else "-"
        took = f"{r.duration_s:.0f} s" if r.duration_s is not None else "-"
        pruned = str(r.pruned_at_step) if r.pruned_at_step is not None else "-"
        step = str(r.best_step) if r.best_step is not None else "-"
        lines.append(f"{r.number:>4}  {r.state:<8} {value:>8} {step:>7} {pruned:>7} {took:>7}  {format_params(r.params)}")
        if r.state == "failed":
            lines.append(indent + str(r.reason))
        elif r.adapter_path:  # a trial run by a worker on another machine has its files there
            lines.append(indent + r.adapter_path + (f"  (on {r.host})" if r.host and r.host != here else ""))
    if importance:
        lines.append("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in importance.items()))
    return lines


def show(source: str, storage: str | None = None, root: Path | None = None, promote_to: str | None = None) -> int:
    """`lora-mlx trials`: print the leaderboard and the best adapters, or promote the best trial."""
    url, name = locate(source, storage, root)
    study = open_study(url, name)
    if promote_to:
        written = promote(study, promote_to)
        print(f"wrote {written}; train it with: lora-mlx train {written}")
        return 0
    rows = leaderboard(study)
    print(f"study {name} ({hide_password(url)}): {len(rows)} trials")
    print("\n".join(format_leaderboard(rows, importances(study))))
    best = next((r for r in rows if r.state == "complete"), None)
    if best:
        print(f"best: trial {best.number}, validation loss {best.value:.4f}; adapters: {best.adapter_path}")
    return 0
