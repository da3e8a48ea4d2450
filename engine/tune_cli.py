"""`lora-mlx tune` and `lora-mlx trials` on the command line: flags, exit codes, the printed story.

The study itself is engine/tune.py; reading one (leaderboard, promote) is engine/trials.py.
"""

from __future__ import annotations

import shlex
import signal
import sys
from pathlib import Path

from engine import config as config_mod, protocol as P, search
from engine.config import ConfigError
from engine.host import serving_study
from engine.protocol import StudyFinished, StudyStarted, TrialFinished, TrialStarted
from engine.tune import PRUNERS, SAMPLERS, StudyControl, StudySettings, check_plan, run_study

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_ABORTED = 0, 1, 2, 130


def add_parsers(sub) -> None:
    """`tune` and `trials` on the lora-mlx command line."""
    tune = sub.add_parser("tune", help="search hyperparameters: a study of trials (Optuna)")
    tune.add_argument("preset", help="preset name (e.g. demo) or path to a YAML file; its search: section is the space")
    tune.add_argument("--trials", type=int, default=20, help="finished trials the study should hold; a rerun continues up to it (default 20)")
    tune.add_argument("--timeout", type=float, metavar="MIN", help="start no new trial after this many minutes")
    tune.add_argument("--storage", metavar="URL", help="a SQLAlchemy URL, e.g. postgresql://user@host/db, shared by workers (default: studies/STUDY/study.db)")
    tune.add_argument("--study", metavar="NAME", help="study name (default: the preset's name)")
    tune.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key for every trial")
    tune.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="how trials pick values (default tpe, seeded by the preset's seed)")
    tune.add_argument("--pruner", choices=PRUNERS, default="median", help="how unpromising trials are stopped early (default median)")
    tune.add_argument("--pruner-startup", type=int, default=5, metavar="N", help="median: complete trials before any is pruned (default 5)")
    tune.add_argument("--pruner-warmup", type=int, default=0, metavar="STEPS", help="median: never prune before this training step (default 0)")
    tune.add_argument("--retry-failed", type=int, default=0, metavar="N", help="re-run a trial whose worker died or that was stopped, up to N times")
    tune.add_argument("--heartbeat", type=int, default=10, metavar="SECONDS", help="how often a worker says it is alive (default 10)")
    tune.add_argument("--grace", type=int, default=60, metavar="SECONDS", help="a trial silent this long is marked failed (default 60)")
    tune.add_argument("--root", type=Path, help="folder holding studies (default: $LORA_MLX_STUDIES or ./studies)")

    trials = sub.add_parser("trials", help="a study's leaderboard and its best adapters; --promote writes a preset")
    trials.add_argument("study", help="study name or directory")
    trials.add_argument("--storage", metavar="URL", help="the study's storage, when not its directory's study.db")
    trials.add_argument("--root", type=Path, help="folder holding studies (default: $LORA_MLX_STUDIES or ./studies)")
    trials.add_argument("--promote", metavar="NAME", help="write a preset with the best trial's values (a name or a .yaml path)")


def main(args) -> int:
    """Run `lora-mlx tune` or `lora-mlx trials`; exit 2 for bad config, data, model or storage."""
    from engine import checkpoint, models
    from engine.data import DataError

    try:
        if args.command == "trials":
            from engine import trials

            return trials.show(args.study, args.storage, args.root, args.promote)
        return _tune(args)
    except (ConfigError, DataError, models.ModelError, checkpoint.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("aborted; the trial that was running is marked failed, and a rerun continues the study", file=sys.stderr)
        return EXIT_ABORTED


def _tune(args) -> int:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the printer says what happened, once
    path = config_mod.resolve_preset(args.preset)
    values = config_mod.read_yaml(path)
    cfg = config_mod.load(args.preset, args.overrides)
    space = search.parse(values.get("search"), str(path), cfg)
    s = StudySettings(
        name=args.study or path.stem, trials=args.trials, timeout_min=args.timeout, storage=args.storage,
        sampler=args.sampler, pruner=args.pruner, pruner_startup=args.pruner_startup, pruner_warmup_steps=args.pruner_warmup,
        retry_failed=args.retry_failed, heartbeat_s=args.heartbeat, grace_s=args.grace, root=args.root,
    )
    keys = [k for k in values if k not in config_mod.OWN_SECTIONS] + [config_mod.parse_override(o)[0] for o in args.overrides]
    check_plan(cfg, space, s)  # refusals before any signal handler or model
    control = StudyControl()
    _install_stop_handlers(control)
    options = (f" --root {shlex.quote(str(args.root))}" if args.root else "") + (f" --storage {shlex.quote(_without_password(args.storage))}" if args.storage else "")
    s.study_dir.mkdir(parents=True, exist_ok=True)
    with serving_study(s.study_dir, control, StudyPrinter(options), required=False) as emit:  # lora-mlx attach follows it
        result = run_study(cfg, space, s, emit, control, preset={"path": str(path), "keys": keys})
    nothing_learned = result.reason == "done" and not (result.complete or result.pruned)
    return EXIT_FAILED if result.reason == "failing" or nothing_learned else EXIT_OK


def _without_password(url: str) -> str:
    """A storage URL to print in a command: its password left out (it belongs in ~/.pgpass or PGPASSWORD)."""
    from sqlalchemy.engine import URL, make_url

    from engine.trials import hide_password

    try:
        u = make_url(url)
        return URL.create(u.drivername, u.username, None, u.host, u.port, u.database, u.query).render_as_string(hide_password=False)
    except Exception:
        return hide_password(url)


def _install_stop_handlers(control: StudyControl) -> None:
    """First Ctrl-C (or SIGTERM) stops the running trial with a checkpoint and ends the study; a second aborts."""

    def on_signal(signum, frame):
        if control.stopping:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        print("\nstopping the study after this step (Ctrl-C again to abort now)", file=sys.stderr, flush=True)
        control.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


class StudyPrinter:
    """A study's events as lines on stdout: trials, their evaluations, warnings, the summary."""

    def __init__(self, trials_options: str = ""):
        self.trials_options = trials_options  # what `lora-mlx trials` needs to find this study (--root, --storage)

    def __call__(self, e: P.Event) -> None:
        line = self.format(e)
        if line:
            print(line, flush=True)

    def format(self, e: P.Event) -> str | None:
        from engine.trials import format_params

        if isinstance(e, StudyStarted):
            space = "; ".join(f"{k} {search.Param(k, **v).describe()}" for k, v in e.space.items())
            return (f"study {e.study}: {e.trials_done} of {e.trials_target} trials done; sampler {e.sampler}, pruner {e.pruner}\n"
                    f"storage: {e.storage}\nsearching: {space}")
        if isinstance(e, TrialStarted):
            again = f" (retry of trial {e.retry_of})" if e.retry_of is not None else ""
            return f"trial {e.number}{again}: {format_params(e.params)}\n  run dir: {e.run_dir}"
        if isinstance(e, P.EvalReported) and e.step > 0:
            return f"  step {e.step}: val_loss {e.val_loss:.4f}"
        if isinstance(e, P.LogMessage) and e.level == "warning":
            return f"warning: {e.text}"
        if isinstance(e, TrialFinished):
            if e.state == "complete":
                return f"trial {e.number} complete: val_loss {e.value:.4f} (best at step {e.best_step}) in {e.duration_s:.0f} s"
            if e.state == "pruned":
                return f"trial {e.number} pruned at step {e.pruned_at_step} in {e.duration_s:.0f} s"
            return f"trial {e.number} failed: {e.reason}"
        if isinstance(e, StudyFinished):
            why = {"done": "finished", "stopped": "stopped", "timeout": "timed out", "grid exhausted": "finished (grid exhausted)",
                   "failing": "stopped (trials keep failing)"}[e.reason]
            text = f"study {e.study} {why}: {e.complete} complete, {e.pruned} pruned, {e.failed} failed"
            if e.lost:
                text += f" ({e.lost} stopped or lost with their worker: they do not count; --retry-failed N re-runs them)"
            if e.reason in ("stopped", "timeout"):
                text += "\ncontinue it with the same command"
            if e.best_number is not None:
                text += f"\nbest: trial {e.best_number}, val_loss {e.best_value:.4f}: {format_params(e.best_params)}\nadapters: {e.best_adapter_path}"
            return text + f"\nleaderboard: lora-mlx trials {e.study}{self.trials_options}"
        return None


if __name__ == "__main__":  # python -m engine.tune_cli tune|trials ... (as lora-mlx tune|trials)
    import argparse

    parser = argparse.ArgumentParser(prog="lora-mlx")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    parsed = parser.parse_args()
    if parsed.command == "tune":
        from engine import blas

        blas.setup()
    sys.exit(main(parsed))
