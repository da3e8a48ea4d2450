"""`lora-mlx`: the command line.

  lora-mlx                      the dashboard on the demo preset (lora-mlx tui PRESET for another)
  lora-mlx attach [RUN_DIR]     the dashboard on a running run
  lora-mlx train PRESET_OR_PATH [--set KEY=VALUE ...] [--run-dir DIR] [--stop-at STEP]
  lora-mlx resume RUN_DIR [--set KEY=VALUE ...] [--stop-at STEP]
  lora-mlx generate | eval | fuse RUN_DIR ...
  lora-mlx estimate PRESET_OR_PATH [--set KEY=VALUE ...]
  lora-mlx tune PRESET_OR_PATH [--trials N] [--timeout MIN] [--storage URL] [--study NAME] ...
  lora-mlx trials STUDY_OR_DIR [--storage URL] [--promote NAME]
  lora-mlx runs [--root DIR]
  lora-mlx doctor

Exit codes: 0 done (or stopped on request), 1 training failed, 2 bad config,
data, model or checkpoint, 130 aborted with a second Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from engine import protocol as P
from engine.config import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_ABORTED = 0, 1, 2, 130


class Printer:
    """Turns engine events into one readable line each on stdout."""

    def __init__(self, stream=sys.stdout):
        self.stream = stream
        self.total = 0
        self.start_step = 0
        self.started = time.monotonic()
        self.failure_shown = False

    def __call__(self, event: P.Event) -> None:
        line = self.format(event)
        if line:
            print(line, file=self.stream, flush=True)

    def format(self, e: P.Event) -> str | None:
        if isinstance(e, P.RunStarted):
            self.total, self.start_step, self.started = e.total_steps, e.start_step, time.monotonic()
            what = f"resuming at step {e.start_step}" if e.resumed_from else "starting"
            return (
                f"{what}: {e.total_steps} steps, {e.train_examples} train / {e.valid_examples} valid examples, "
                f"{e.trainable_parameters / 1e6:.3f}M of {e.total_parameters / 1e6:.3f}M parameters trainable\n"
                f"run dir: {e.run_dir}"
            )
        if isinstance(e, P.StepReported):
            done = e.step - self.start_step
            elapsed = time.monotonic() - self.started
            eta = elapsed / done * (self.total - e.step) if done else 0
            width = len(str(self.total))
            return (
                f"step {e.step:>{width}}/{self.total}  loss {e.train_loss:7.4f}  lr {e.learning_rate:.2e}  "
                f"{e.tokens_per_second:8.0f} tok/s  peak {e.peak_memory_gb:.2f} GB  epoch {e.epoch:.2f}  "
                f"ETA {_clock(eta)}"
            )
        if isinstance(e, P.EvalReported):
            return f"eval at step {e.step}: val_loss {e.val_loss:.4f} ({e.seconds_taken:.1f} s)"
        if isinstance(e, P.SampleGenerated):
            return f"sample at step {e.step}: {e.prompt!r} -> {e.text!r}"
        if isinstance(e, P.CheckpointSaved):
            return f"checkpoint ({e.reason}) at step {e.step}: {e.path}"
        if isinstance(e, P.Paused):
            return f"paused at step {e.step}"
        if isinstance(e, P.Resumed):
            return f"resumed at step {e.step}"
        if isinstance(e, P.LogMessage):
            return f"warning: {e.text}" if e.level == "warning" else e.text
        if isinstance(e, P.RunFinished):
            best = f", best val_loss {e.best_val_loss:.4f}" if e.best_val_loss is not None else ""
            verb = "stopped" if e.stopped_early else "finished"
            return f"{verb} at step {e.step}{best}; adapters: {e.adapter_path}"
        if isinstance(e, P.RunFailed):
            self.failure_shown = True
            tail = f"\nlast checkpoint: {e.last_checkpoint}" if e.last_checkpoint else ""
            return f"run failed at step {e.step}: {e.reason}{tail}"
        return None


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60:02d}:{rem % 60:02d}"


def _install_stop_handlers(control) -> None:
    """First Ctrl-C (or SIGTERM) stops at the next step with a checkpoint; a second Ctrl-C aborts."""

    def on_signal(signum, frame):
        if control.stop_requested:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        print("\nstopping after this step and saving a checkpoint (Ctrl-C again to abort now)", file=sys.stderr, flush=True)
        control.submit(P.Stop())

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-mlx", description="LoRA, DoRA and full fine-tuning on MLX.")
    sub = parser.add_subparsers(dest="command")

    tui = sub.add_parser("tui", help="open the dashboard on a preset (the default command, on the demo)")
    tui.add_argument("preset", nargs="?", default="demo")

    attach = sub.add_parser("attach", help="reopen the dashboard on a running run, with its whole history")
    attach.add_argument("run_dir", type=Path, nargs="?", help="a run or study folder; default: the newest run or study still going (else the newest run)")

    train = sub.add_parser("train", help="train a preset (a name in presets/ or a YAML path)")
    train.add_argument("preset", help="preset name (e.g. demo) or path to a YAML file")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. train.iters=200")
    train.add_argument("--run-dir", type=Path, help="where to write the run (default: runs/PRESET-TIMESTAMP)")
    train.add_argument("--stop-at", type=int, metavar="STEP", help="save a checkpoint at STEP and exit 0")

    resume = sub.add_parser("resume", help="continue a run from its newest checkpoint")
    resume.add_argument("run_dir", type=Path)
    resume.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="change e.g. train.iters (only keys that keep the trajectory)")
    resume.add_argument("--stop-at", type=int, metavar="STEP")

    sub.add_parser("doctor", help="check the machine: backend, BLAS speed, memory")

    plan = sub.add_parser("estimate", help="the memory a preset needs, and whether it fits, without training")
    plan.add_argument("preset")
    plan.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    which = {"choices": ("latest", "best"), "default": "latest", "help": "which adapters: the latest (default) or the best by validation loss"}
    gen = sub.add_parser("generate", help="answer a prompt with a run's adapters (streams)")
    gen.add_argument("run_dir", type=Path)
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--base", action="store_true", help="answer with the base model alone, for comparison")
    gen.add_argument("--checkpoint", **which)

    ev = sub.add_parser("eval", help="test-set loss and perplexity of a run's adapters")
    ev.add_argument("run_dir", type=Path)
    ev.add_argument("--split", default="test", choices=("test", "valid", "train"))
    ev.add_argument("--checkpoint", **which)

    fuse = sub.add_parser("fuse", help="fold a run's adapters into the base model and save it")
    fuse.add_argument("run_dir", type=Path)
    fuse.add_argument("--out", type=Path, required=True)
    fuse.add_argument("--dequantize", action="store_true", help="save a full-precision model from a quantized base")
    fuse.add_argument("--gguf", action="store_true", help="also write model.gguf (llama, mistral, mixtral)")
    fuse.add_argument("--checkpoint", **which)

    runs = sub.add_parser("runs", help="list runs and their state")
    runs.add_argument("--root", type=Path, help="folder holding runs (default: $LORA_MLX_RUNS or ./runs)")

    from engine import tune_cli

    tune_cli.add_parsers(sub)
    return parser


def _prepare_engine_process(show_warnings: bool) -> None:
    """Fast BLAS before mlx loads; keep library chatter off the terminal."""
    from engine import blas

    info = blas.setup()
    for warning in info.warnings if show_warnings else ():
        print(f"warning: {warning}", file=sys.stderr)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def list_runs(root: Path | None) -> int:
    from engine import client

    root = root or client.default_runs_root()
    runs = client.list_runs(root)
    if not runs:
        print(f"no runs under {root}")
        return EXIT_OK
    print(f"{'RUN':<40} {'STATUS':<9} {'STEP':>11} {'BEST VAL':>9}  UPDATED")
    for r in runs:
        step = f"{r.step or 0}/{r.total_steps or '?'}"
        best = f"{r.best_val_loss:.4f}" if r.best_val_loss is not None else "-"
        print(f"{str(r.run_dir):<40} {r.status:<9} {step:>11} {best:>9}  {r.updated_at or '-'}")
        if r.diagnosis:
            print(f"{'':<40} {r.diagnosis}")
        if r.status == "failed" and r.error:
            print(f"{'':<40} {r.error.splitlines()[0]}")
        if r.status in client.ACTIVE:
            print(f"{'':<40} follow it with: lora-mlx attach {r.run_dir}")
        if r.status in ("died", "stopped", "failed"):
            if r.last_checkpoint:
                print(f"{'':<40} continue with: lora-mlx resume {r.run_dir}")
            else:  # it failed before its first checkpoint: resume would refuse
                print(f"{'':<40} no checkpoint, nothing to resume: start a new run with lora-mlx train")
    return EXIT_OK


def open_dashboard(args) -> int:
    """The dashboard runs in this process and never imports mlx; its engine is a detached process."""
    from tui.app import run_app

    if args.command == "attach":
        run_dir = args.run_dir
        if run_dir is None:
            from engine import client
            from engine.trials import studies_root

            run_dir = client.newest_to_attach(client.default_runs_root(), studies_root())
            if run_dir is None:
                print(f"error: no runs under {client.default_runs_root()} and no study going under {studies_root()}; "
                      "name one: lora-mlx attach RUN_DIR", file=sys.stderr)
                return EXIT_BAD_INPUT
        return run_app(preset=None, attach=run_dir)
    return run_app(preset=getattr(args, "preset", "demo"))


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # `lora-mlx runs | head`: the reader left; not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command in (None, "tui", "attach"):
        return open_dashboard(args)
    if args.command == "runs":
        return list_runs(args.root)
    if args.command == "trials":  # reads a study: no mlx needed
        from engine import tune_cli

        return tune_cli.main(args)
    _prepare_engine_process(show_warnings=args.command != "doctor")  # the doctor lists them itself
    if args.command == "tune":
        from engine import tune_cli

        return tune_cli.main(args)
    if args.command == "doctor":
        from engine.doctor import run_doctor

        return run_doctor()

    from engine import checkpoint, config, models, run
    from engine.data import DataError
    from engine.client import new_run_dir
    from engine.host import serving
    from engine.trainer import Control

    printer = Printer()
    control = Control()
    from engine.use import UseError

    try:
        if args.command == "estimate":
            return print_estimate(config.load(args.preset, args.overrides))
        if args.command in ("generate", "eval", "fuse"):
            return use_run(args)
        if args.command == "train":
            cfg = config.load(args.preset, args.overrides)
            name = Path(config.resolve_preset(args.preset)).stem
            _check_stop_at(args.stop_at, cfg.train.iters)
            if args.run_dir:
                run.check_new(args.run_dir)
                args.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            run_dir = args.run_dir or new_run_dir(name)
            _install_stop_handlers(control)
            with serving(run_dir.resolve(), control, printer, required=False) as emit:  # `lora-mlx attach RUN_DIR` follows it
                run.start(cfg, run_dir, emit, control, stop_at=args.stop_at)
        else:
            run.load_run_config(args.run_dir, args.overrides)
            run.check_not_running(args.run_dir)
            _install_stop_handlers(control)
            with serving(args.run_dir.resolve(), control, printer, required=False) as emit:
                run.resume(args.run_dir, emit, control, args.overrides, stop_at=args.stop_at)
        return EXIT_OK
    except (ConfigError, DataError, models.ModelError, checkpoint.CheckpointError, UseError) as e:
        if not printer.failure_shown:
            print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("aborted; the last checkpoint is intact", file=sys.stderr)
        return EXIT_ABORTED
    except Exception:
        if not printer.failure_shown:
            traceback.print_exc()
        return EXIT_FAILED


def use_run(args) -> int:
    """generate, eval and fuse: what a run trained, put to use."""
    from engine import use

    if not (args.run_dir / "config.yaml").exists():
        raise ConfigError(f"{args.run_dir}: not a run directory (no config.yaml)")
    if args.command == "generate":
        model, tokenizer, _ = use.load(args.run_dir, args.checkpoint, with_adapters=not args.base)
        for piece in use.generate(model, tokenizer, args.prompt, args.max_tokens, args.temperature):
            print(piece, end="", flush=True)
        print()
    elif args.command == "eval":
        result = use.evaluate(args.run_dir, args.split, args.checkpoint)
        print(f"{result['split']}: loss {result['loss']:.4f}, perplexity {result['perplexity']:.3f} "
              f"({result['examples']} examples, {result['tokens']} target tokens)")
    else:
        out = use.fuse(args.run_dir, args.out, args.dequantize, args.gguf, args.checkpoint)
        print(f"fused model saved to {out}" + (f" (GGUF: {out / 'model.gguf'})" if args.gguf else ""))
    return EXIT_OK


def print_estimate(cfg) -> int:
    """`lora-mlx estimate`: exit 0 if it fits, 1 if tight or not."""
    from engine import estimate, memory, models

    budget, source = memory.backend_memory()
    if cfg.memory.limit_gb:
        budget, source = int(cfg.memory.limit_gb * 1e9), "memory.limit_gb"
    else:  # the limit a run gets (engine.memory.apply_limits), so the verdict is the one `train` and the dashboard give
        budget, source = int(budget * memory.DEFAULT_LIMIT_FRACTION), f"{memory.DEFAULT_LIMIT_FRACTION:.0%} of {source}"
    guess = estimate.preflight(cfg, *models.describe(cfg.model), budget, source)
    print("\n".join(guess.lines()))
    return EXIT_OK if guess.verdict == "fits" else EXIT_FAILED


def _check_stop_at(stop_at: int | None, iters: int) -> None:
    if stop_at is not None and not 1 <= stop_at <= iters:
        raise ConfigError(f"--stop-at {stop_at}: must be between 1 and train.iters ({iters})")


if __name__ == "__main__":
    sys.exit(main())
