"""Hyperparameter studies with Optuna: every trial is a normal run; a study survives kills.

`run_study()` loads the base model once, then runs trials until the study holds `trials`
finished ones (complete, pruned, or failed on their own; a trial whose worker died or was
stopped does not count). Each trial is a run in STUDY_DIR/trial-NNNN/ with fresh adapters and
optimizer on the shared base. Its objective is its best validation loss (the checkpoint kept as
best holds exactly those adapters); every evaluation is reported, so a pruner can stop it early.

Storage is a SQLite file, STUDY_DIR/study.db, unless `--storage URL` names another database
(several workers, on several machines, then share one study). Heartbeats mark a trial whose
worker vanished (kill -9, crash, power cut) as failed, and a rerun of the same command
continues the study. Reading a study (leaderboard, importances, promote) is engine/trials.py,
which needs no mlx; its settings, checks and plan are engine/study_plan.py; the `lora-mlx tune`
and `lora-mlx trials` command line is engine/tune_cli.py.
"""

from __future__ import annotations

import gc
import json
import math
import os
import socket
import time
import warnings
import zlib
from pathlib import Path
from typing import Callable

from engine import config as config_mod, protocol as P, search
from engine.protocol import StudyFinished, StudyStarted, TrialFinished, TrialStarted
from engine.trials import counts_as_done, hide_password, leaderboard, open_storage, row_of
from engine.config import Config, ConfigError
from engine.study_plan import (  # noqa: F401  (the study's settings and plan: re-exported)
    PLAN_FILE, PRUNERS, SAMPLERS, TPE_STARTUP_TRIALS, StudySettings, check_plan, read_plan, write_plan,
)

WAIT_POLL_S = 2.0


class StudyControl:
    """Stop a study from another thread or a signal handler: the running trial stops at its
    next step boundary with a checkpoint, and no new trial starts."""

    def __init__(self) -> None:
        self.stopping = False
        self.trial_control = None

    def stop(self) -> None:
        self.stopping = True
        if self.trial_control is not None:
            self.trial_control.submit(P.Stop())

    def submit(self, command: P.Command) -> None:
        """A UI's command: Stop ends the study; pause, resume and checkpoint go to the running trial."""
        if isinstance(command, P.Stop):
            self.stop()
        elif self.trial_control is not None:
            self.trial_control.submit(command)


def _machine_id() -> str:
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        boot = "noboot"
    return f"{socket.gethostname()}/{boot}"


def _worker_id() -> str:
    import psutil

    return f"{_machine_id()}:{os.getpid()}:{psutil.Process().create_time():.2f}"


def _sampler(s: StudySettings, space: search.SearchSpace, seed: int):
    import optuna

    if s.sampler == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=TPE_STARTUP_TRIALS)


def _pruner(s: StudySettings, cfg: Config):
    import optuna

    if s.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=s.pruner_startup, n_warmup_steps=s.pruner_warmup_steps)
    if s.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=cfg.train.steps_per_eval, max_resource=cfg.train.iters, reduction_factor=3)
    return optuna.pruners.NopPruner()


# Keys a worker may set differently from the study's first: where things are, memory and bookkeeping.
_LOCAL_KEYS = set(config_mod.RESUME_CHANGEABLE) - {"train.iters", "train.steps_per_eval", "train.val_batches"}


def _comparable(cfg_dict: dict) -> dict:
    flat = {f"{k}.{kk}" if isinstance(v, dict) else k: vv for k, v in cfg_dict.items() for kk, vv in (v.items() if isinstance(v, dict) else [(None, v)])}
    out = {k: v for k, v in flat.items() if k not in _LOCAL_KEYS}
    for key in ("data.path", "model"):  # paths differ across machines: compare the folder name
        out[key] = Path(str(out[key])).name if "/" in str(out[key]) else out[key]
    return json.loads(json.dumps(out))


def _open_study(storage, s: StudySettings, cfg: Config, space: search.SearchSpace, preset: dict):
    """Create the study or load it; refuse to continue one begun with other settings."""
    import optuna

    try:
        existing = len(storage.get_all_trials(storage.get_study_id_from_name(s.name), deepcopy=False))
    except KeyError:
        existing = 0
    # The preset's seed, moved on by the trials already run (a resume must not repeat their samples);
    # workers sharing a storage also mix in who they are, or two would start with the same samples.
    seed = (cfg.seed + 1_000_003 * existing) % 2**32
    if s.storage is not None:
        seed = zlib.crc32(f"{seed}:{_worker_id()}".encode())
    study = optuna.create_study(
        storage=storage, study_name=s.name, direction="minimize", load_if_exists=True,
        sampler=_sampler(s, space, seed), pruner=_pruner(s, cfg),
    )
    mine = {"config": _comparable(cfg.to_dict()), "space": json.loads(json.dumps(space.to_dict()))}
    attrs = study.user_attrs
    if "config" not in attrs:
        for key, value in {**mine, "full_config": cfg.to_dict(), "preset": preset}.items():
            study.set_user_attr(key, value)
        return study
    differ = [k for k in sorted(set(attrs["config"]) | set(mine["config"])) if attrs["config"].get(k) != mine["config"].get(k)]
    if differ:
        k = differ[0]
        raise ConfigError(
            f"study '{s.name}' was started with {k}={attrs['config'].get(k)!r}, this preset has {mine['config'].get(k)!r}; "
            f"its trials would not be comparable: use --study NEW_NAME, or the study's settings"
        )
    if attrs["space"] != mine["space"]:
        raise ConfigError(
            f"study '{s.name}' searches {attrs['space']}, this preset searches {mine['space']}; use --study NEW_NAME"
        )
    return study


class _Trial:
    """The objective: one trial as a run on the shared base; reports evals, stops when pruned."""

    def __init__(self, cfg, space, s: StudySettings, base, storage, study_id, emit, control: StudyControl):
        self.cfg, self.space, self.s, self.base = cfg, space, s, base
        self.storage, self.study_id, self.emit, self.control = storage, study_id, emit, control
        self.worker = _worker_id()
        self.last_number: int | None = None

    def __call__(self, trial) -> float:
        import optuna

        from engine import run
        from engine.control import Control

        self.last_number = trial.number
        run_dir = self.s.study_dir / f"trial-{trial.number:04d}"
        frozen = self.storage.get_trial(self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number))
        retry_of = frozen.system_attrs.get("failed_trial")
        attrs = {"run_dir": str(run_dir), "host": socket.gethostname(), "worker": self.worker}
        if retry_of is not None:  # a retry carries its original's attributes: start clean
            attrs.update(fail_reason=None, interrupted=False, pruned_at_step=None, best_val_loss=None, best_step=None, adapter_path=None)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        params = self.space.suggest(trial)
        self.emit(TrialStarted(self.s.name, trial.number, params, str(run_dir), retry_of))
        control = Control()
        self.control.trial_control = control
        watch = _Watch(trial, control, self.cfg.train.iters, self.emit)
        try:
            finished = run.start(search.apply(self.cfg, params), run_dir, watch, control, base=self.base)
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", f"aborted at step {watch.step} (second Ctrl-C)")
            trial.set_user_attr("interrupted", True)
            raise
        except Exception as e:
            trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
            raise
        finally:
            self.control.trial_control = None
            watch.record_best(trial, run_dir)
            _release_memory()
        if watch.pruned_at is not None and not finished:
            trial.set_user_attr("pruned_at_step", watch.pruned_at)
            raise optuna.TrialPruned(f"pruned at step {watch.pruned_at}")
        if not finished:
            trial.set_user_attr("interrupted", True)
            trial.set_user_attr("fail_reason", f"stopped at step {watch.step}; its checkpoint is in {run_dir}")
            raise _Stopped()
        if watch.best_value is None:
            raise RuntimeError("no finite validation loss at any evaluation")
        return watch.best_value


class _Stopped(Exception):
    pass


class _Watch:
    """Sees a trial's run events: reports each eval to Optuna, asks the pruner, remembers the best."""

    def __init__(self, trial, control, iters: int, emit):
        self.trial, self.control, self.iters, self.emit = trial, control, iters, emit
        self.step = 0
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.pruned_at: int | None = None
        self.best_checkpoints: dict[int, str] = {}

    def __call__(self, event: P.Event) -> None:
        self.emit(event)
        if isinstance(event, (P.StepReported, P.CheckpointSaved)):
            self.step = max(self.step, event.step)
        if isinstance(event, P.CheckpointSaved) and event.reason == "best":
            self.best_checkpoints[event.step] = event.path
        if not isinstance(event, P.EvalReported) or event.step == 0 or not math.isfinite(event.val_loss):
            return  # step 0 is the untrained base: the same for every trial
        if self.best_value is None or event.val_loss < self.best_value:
            self.best_value, self.best_step = event.val_loss, event.step
        self.trial.report(event.val_loss, event.step)
        if self.pruned_at is None and event.step < self.iters and self.trial.should_prune():
            self.pruned_at = event.step
            self.control.submit(P.Stop())

    def record_best(self, trial, run_dir: Path) -> None:
        if self.best_value is None:
            return
        path = self.best_checkpoints.get(self.best_step) or str(run_dir / "adapters")
        for key, value in (("best_val_loss", self.best_value), ("best_step", self.best_step), ("adapter_path", path)):
            trial.set_user_attr(key, value)


def _release_memory() -> None:
    import mlx.core as mx

    gc.collect()
    mx.clear_cache()


def _fail_dead_local_trials(study, storage, study_id, retry: int, emit) -> None:
    """A RUNNING trial whose worker was a process on this machine that is gone: fail it now
    (heartbeats would, after the grace period) and queue its retry if asked."""
    import psutil
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        machine, _, rest = str(t.user_attrs.get("worker", "")).partition(":")
        if machine != _machine_id():
            continue
        pid, _, created = rest.partition(":")
        try:
            alive = abs(psutil.Process(int(pid)).create_time() - float(created)) < 0.05
            alive = alive and psutil.Process(int(pid)).status() != psutil.STATUS_ZOMBIE
        except (psutil.NoSuchProcess, ValueError):
            alive = False
        if alive:
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        try:  # attributes first: a finished trial cannot take them
            storage.set_trial_user_attr(trial_id, "fail_reason", f"its worker (pid {pid}) died while it ran")
            storage.set_trial_user_attr(trial_id, "interrupted", True)
            if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:  # another worker failed it first
            continue
        emit(P.LogMessage("warning", f"trial {t.number} was left running by a worker that died (pid {pid}); marked failed"))
        if retry:
            _retry(study, storage.get_trial(trial_id), retry)


def _retry(study, trial, max_retry: int) -> None:
    """Queue a WAITING copy of a lost trial (same values), as heartbeats do, up to max_retry re-runs."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retry=max_retry)(study, trial)


def _retry_lost(study, retry: int) -> None:
    """Queue a re-run of each trial that was lost (its worker died, or it was stopped) and has none yet."""
    from optuna.trial import TrialState

    all_trials = study.get_trials(deepcopy=False)
    retried = {n for t in all_trials for n in t.system_attrs.get("retry_history", [])}
    for t in all_trials:
        if t.state == TrialState.FAIL and not counts_as_done(t) and t.number not in retried:
            _retry(study, t, retry)


def run_study(cfg: Config, space: search.SearchSpace, s: StudySettings, emit: Callable[[P.Event], None],
              control: StudyControl | None = None, preset: dict | None = None) -> StudyFinished:
    """Run trials until the study holds s.trials finished ones, it is stopped, times out, or keeps failing.

    `preset` ({"path", "keys"}: the preset and the keys it and --set gave) lets `promote` write a
    preset like it. Several processes may run this on one study (a shared --storage).
    """
    from engine import metrics

    deadline = time.monotonic() + s.timeout_min * 60 if s.timeout_min else None  # counts the loading too
    control = control or StudyControl()
    for note in check_plan(cfg, space, s):
        emit(P.LogMessage("warning", note))
    s.study_dir.mkdir(parents=True, exist_ok=True)
    story = metrics.MetricsLog(s.study_dir)  # the study's own events, for a dashboard attaching later
    try:
        return _run_study(cfg, space, s, _logging(emit, story), control, preset, deadline)
    finally:
        story.close()


def _logging(emit, log):
    def both(event: P.Event) -> None:
        if isinstance(event, P.STUDY_EVENTS):
            log.write(event)
        emit(event)

    return both


def _run_study(cfg, space, s: StudySettings, emit, control: StudyControl, preset: dict | None, deadline: float | None) -> StudyFinished:
    import optuna
    from optuna.trial import TrialState

    from engine import models, run

    url = s.storage or f"sqlite:///{(s.study_dir / 'study.db').resolve()}"
    storage = open_storage(url, s.heartbeat_s, s.grace_s, s.retry_failed)
    study = _open_study(storage, s, cfg, space, preset or {})
    study_id = storage.get_study_id_from_name(s.name)
    (s.study_dir / "study.json").write_text(json.dumps({"study": s.name, "storage": hide_password(url)}, indent=2) + "\n")
    target = min(s.trials, space.grid_size()) if s.sampler == "grid" else s.trials
    done = sum(counts_as_done(t) for t in study.get_trials(deepcopy=False))
    emit(StudyStarted(s.name, str(s.study_dir), hide_password(url), target, done, s.sampler, s.pruner, space.to_dict()))
    model_dir = run.prepare_model_dir(cfg, lambda level, text: emit(P.LogMessage(level, text)))  # quantized for QLoRA
    base = models.Base(str(model_dir))  # once per study; every trial starts from it untouched
    objective = _Trial(cfg, space, s, base, storage, study_id, emit, control)
    reason, failures, first = "done", [], True
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # another machine's worker went silent
        _fail_dead_local_trials(study, storage, study_id, s.retry_failed, emit)
        if first and s.retry_failed:  # trials stopped or lost before this run
            _retry_lost(study, s.retry_failed)
        first = False
        trials = study.get_trials(deepcopy=False)
        done = sum(counts_as_done(t) for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if done >= target:
            break
        if control.stopping or (deadline and time.monotonic() > deadline):
            reason = "stopped" if control.stopping else "timeout"
            break
        if s.sampler == "grid" and not waiting and study.sampler.is_exhausted(study) and not running:
            reason = "grid exhausted"
            break
        if done + running >= target:  # other workers run the last trials; take over if one of them dies
            time.sleep(WAIT_POLL_S)
            continue
        objective.last_number = None
        study.optimize(objective, n_trials=1, catch=(Exception,))
        if objective.last_number is None:
            continue
        trials = study.get_trials(deepcopy=False)
        frozen = trials[objective.last_number]
        row = row_of(frozen)
        emit(TrialFinished(s.name, row.number, row.state, row.value, row.best_step, row.pruned_at_step,
                           row.duration_s or 0.0, row.reason, row.adapter_path, sum(counts_as_done(t) for t in trials)))
        failures = failures + [row.reason] if row.state == "failed" and not frozen.user_attrs.get("interrupted") else []
        if len(failures) >= 3 and len(set(failures[-3:])) == 1:
            emit(P.LogMessage("warning", f"3 trials in a row failed the same way; stopping the study: {failures[-1]}"))
            reason = "failing"
            break
    return _summary(s.name, study, reason, emit)


def _summary(name: str, study, reason: str, emit) -> StudyFinished:
    rows = leaderboard(study)
    count = {state: sum(r.state == state for r in rows) for state in ("complete", "pruned", "failed")}
    lost = sum(t.state.name == "FAIL" and not counts_as_done(t) for t in study.get_trials(deepcopy=False))
    best = next((r for r in rows if r.state == "complete"), None)
    finished = StudyFinished(
        name, count["complete"], count["pruned"], count["failed"], lost, best and best.number, best and best.value,
        best.params if best else {}, best and best.adapter_path, reason,
    )
    emit(finished)
    return finished
