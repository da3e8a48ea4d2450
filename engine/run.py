"""A run: its directory, its model and data, its checkpoints, and the loop that trains it.

`start()` begins a new run in a run directory; `resume()` continues one from
its newest intact checkpoint. Both report through `emit`, which also feeds
`metrics.jsonl`, and both obey a `Control` (pause, stop, checkpoint now).

Run directory layout:
  config.yaml        the resolved config, every key
  run.json           status, pid, times, last checkpoint, machine facts
  metrics.jsonl      one event a line (train, eval, checkpoint, ...)
  adapters/          the latest adapters (mlx-lm's layout; written at the end or on stop)
  checkpoints/       step-NNNNNNN/ directories (see checkpoint.py)
"""

from __future__ import annotations

import json
import os
import threading
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import yaml

from engine import adapters, checkpoint, config as config_mod, protocol as P
from engine.metrics import MetricsLog
from engine.config import Config, ConfigError

def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


_RECORD_LOCK = threading.Lock()


class RunRecord:
    """run.json: what `lora-mlx runs` and a UI read to know a run's state."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "run.json"

    def read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def update(self, **fields) -> None:
        """Merge fields into run.json. The memory sampler's thread updates it beside the training
        loop: the lock keeps one from writing back what the other just changed."""
        with _RECORD_LOCK:
            data = {**self.read(), **fields, "updated_at": _now()}
            tmp = self.path.with_suffix(f".json.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=2) + "\n")
            os.replace(tmp, self.path)


AUTO_BATCH_CEILING = 64  # batch_size auto looks no further: bigger batches mean few, coarse steps


def resolve_auto_batch(cfg: Config, model, train_examples: int, memory_limit: int, log) -> None:
    """Replace `auto` batch and micro-batch sizes with what a probe finds fits in memory."""
    from engine import trainer

    t = cfg.train
    if "auto" not in (t.batch_size, t.micro_batch_size):
        return
    ceiling = min(train_examples, AUTO_BATCH_CEILING) if t.batch_size == "auto" else t.batch_size
    found, peak_gb = trainer.probe_batch_size(model, t.max_seq_length, ceiling, memory_limit)
    if found == 0:
        raise trainer.RunAborted(
            f"not even one sequence of {t.max_seq_length} tokens fits in the {memory_limit / 1e9:.1f} GB limit; "
            "set train.grad_checkpoint=true, lower train.max_seq_length, or quantize the model"
        )
    if t.batch_size == "auto":
        t.batch_size = found
        if t.micro_batch_size == "auto":
            t.micro_batch_size = 0
        log("info", f"train.batch_size auto: {found} ({peak_gb:.2f} GB peak at {t.max_seq_length} tokens, limit {memory_limit / 1e9:.1f} GB)")
    else:
        t.micro_batch_size = 0 if found >= t.batch_size else found
        log("info", f"train.micro_batch_size auto: {t.micro_batch_size or t.batch_size} of batch {t.batch_size} "
            f"({peak_gb:.2f} GB peak at {t.max_seq_length} tokens, limit {memory_limit / 1e9:.1f} GB)")


def prepare_model_dir(cfg: Config, log) -> Path:
    """The model directory to train on: the base as it is, or its quantized copy for QLoRA."""
    from engine import models, quant

    model_dir = models.resolve(cfg.model)
    try:
        model_dir, report = quant.prepare_base(model_dir, cfg.quantize.bits, cfg.quantize.group_size, cfg.quantize.mode, log=log)
    except quant.QuantizeError as e:
        raise ConfigError(str(e)) from None
    if report:
        log("info", report.summary())
    if quant.read_quantization(model_dir) and cfg.fine_tune_type == "full":
        raise ConfigError("fine_tune_type=full needs full-precision weights; use lora or dora with a quantized model")
    return model_dir


def _sampler(model, tokenizer, train_cfg):
    from engine import use

    def sample() -> tuple[str, str]:
        prompt = train_cfg.sample_prompt
        return prompt, "".join(use.generate(model, tokenizer, prompt, train_cfg.sample_max_tokens)).strip()

    return sample


def start(cfg: Config, run_dir: Path, emit: Callable[[P.Event], None], control, stop_at: int | None = None, base=None) -> bool:
    """Begin a new run in run_dir (created 0700). Return True if it trained to the end.

    `base` (an engine.models.Base) reuses a base model already in memory, as a study's trials do.
    """
    check_new(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(run_dir, 0o700)
    (run_dir / "config.yaml").write_text(config_mod.dump(cfg))
    RunRecord(run_dir).update(status="starting", created_at=_now(), pid=os.getpid())
    return _execute(cfg, run_dir, emit, control, stop_at, resuming=False, base=base)


def check_new(run_dir: Path) -> None:
    """A new run needs a folder that holds no run yet."""
    if (run_dir / "checkpoints").exists() or (run_dir / "metrics.jsonl").exists():
        raise ConfigError(f"{run_dir} already holds a run; continue it with: lora-mlx resume {run_dir}")


def check_not_running(run_dir: Path) -> None:
    """Two processes training one run would overwrite each other's checkpoints."""
    from engine.client import ACTIVE, pid_alive

    record = RunRecord(run_dir).read()
    pid = record.get("pid")
    if record.get("status") in ACTIVE and pid != os.getpid() and pid_alive(pid):
        raise ConfigError(f"{run_dir} is still being trained (pid {pid}); follow it with: lora-mlx attach {run_dir}")


def load_run_config(run_dir: Path, overrides: list[str] = ()) -> Config:
    """The config a run was started with, plus the overrides a resume may change."""
    path = run_dir / "config.yaml"
    if not path.exists():
        raise ConfigError(f"{run_dir}: not a run directory (no config.yaml)")
    cfg = config_mod.from_dict(yaml.safe_load(path.read_text()) or {}, str(path))
    for text in overrides:
        key, value = config_mod.parse_override(text)
        if key not in config_mod.RESUME_CHANGEABLE:
            raise ConfigError(
                f"--set {text}: {key} cannot change on resume (it changes the training trajectory); "
                f"changeable: {', '.join(config_mod.RESUME_CHANGEABLE)}"
            )
        section, _, leaf = key.rpartition(".")
        setattr(cfg.get(section), leaf, config_mod.coerce(key, value, f"--set {text}: "))
    return cfg


def resume(run_dir: Path, emit: Callable[[P.Event], None], control, overrides: list[str] = (), stop_at: int | None = None) -> bool:
    """Continue a run from its newest intact checkpoint to train.iters."""
    cfg = load_run_config(run_dir, overrides)
    check_not_running(run_dir)
    if overrides:
        (run_dir / "config.yaml").write_text(config_mod.dump(cfg))
    RunRecord(run_dir).update(pid=os.getpid())
    return _execute(cfg, run_dir, emit, control, stop_at, resuming=True)


def _execute(cfg: Config, run_dir: Path, emit, control, stop_at, resuming: bool, base=None) -> bool:
    from engine import batches, data, models, quant, trainer

    record = RunRecord(run_dir)
    metrics = MetricsLog(run_dir)
    last_checkpoint: list[str | None] = [record.read().get("last_checkpoint")]

    def report(event: P.Event) -> None:
        metrics.write(event)
        emit(event)

    def log(level: str, text: str) -> None:
        report(P.LogMessage(level, text))

    state = trainer.TrainState()
    try:
        import mlx.core as mx
        from mlx.utils import tree_flatten, tree_unflatten
        from mlx_lm.utils import load_tokenizer

        from engine.doctor import environment_report

        record.update(status="loading", environment=environment_report(measure=True))
        model_dir = base.model_dir if base else prepare_model_dir(cfg, log)
        tokenizer = base.tokenizer if base else load_tokenizer(model_dir)
        splits = data.load_splits(
            Path(cfg.data.path),
            tokenizer,
            mask_prompt=cfg.train.mask_prompt,
            max_seq_length=cfg.train.max_seq_length,
            skip_invalid=cfg.data.skip_invalid,
            batch_size=cfg.train.batch_size if cfg.train.batch_size != "auto" else 1,
            log=log,
        )
        from engine import estimate, memory

        memory_limit = memory.apply_limits(cfg.memory)
        guess = estimate.preflight(cfg, *models.describe(str(model_dir)), memory_limit, "the memory limit")
        log("warning" if guess.verdict != "fits" else "info", "\n".join(guess.lines()))
        model = base.fresh() if base else models.load(str(model_dir))[0]
        num_layers = adapters.apply_adapters(model, cfg)
        quant.use_cpu_fast_path(model)  # dequantize + BLAS on the CPU backend; after the adapters, so DoRA gets it too
        if cfg.train.grad_checkpoint:
            adapters.enable_grad_checkpoint(model)
        resolve_auto_batch(cfg, model, len(splits["train"].examples), memory_limit, log)
        if not resuming:
            (run_dir / "config.yaml").write_text(config_mod.dump(cfg))  # with auto sizes resolved
        adapter_cfg = adapters.adapter_config(cfg, num_layers, model_dir)
        optimizer = adapters.build_optimizer(cfg.train)
        optimizer.init(model.trainable_parameters())
        stream = batches.BatchStream(splits["train"], cfg.train.batch_size, cfg.seed, cfg.train.max_seq_length)

        resumed_from = None
        if resuming:
            loaded = checkpoint.load_latest(run_dir / "checkpoints", cfg, log)
            if loaded is None:
                raise checkpoint.CheckpointError(f"{run_dir}: no intact checkpoint to resume from")
            adapters.load_adapter_weights(model, loaded.adapters, loaded.path)
            optimizer.state = tree_unflatten(list(loaded.optimizer.items()))
            optimizer.init(model.trainable_parameters())
            state = trainer.TrainState(**loaded.state["train_state"])
            stream.seek(state.stream)
            resumed_from = str(loaded.path)
            log("info", f"resumed from {loaded.path} at step {state.step}")
        if cfg.train.micro_batch_size:
            state.micro_splits = max(state.micro_splits, -(-cfg.train.batch_size // cfg.train.micro_batch_size))
        mx.reset_peak_memory()

        def save(train_state: trainer.TrainState, reason: str) -> str:
            if not trainer.check_weights_finite(model):
                raise trainer.RunAborted(f"weights became non-finite at step {train_state.step}; not saving them over a good checkpoint")
            body = {"fingerprint": checkpoint.fingerprint(cfg), "train_state": train_state.to_dict(), "reason": reason, "saved_at": _now()}
            path = checkpoint.save(
                run_dir / "checkpoints",
                train_state.step,
                dict(tree_flatten(model.trainable_parameters())),
                dict(tree_flatten(optimizer.state)),
                body,
                adapter_cfg,
            )
            keep = {Path(train_state.best_checkpoint)} if train_state.best_checkpoint else set()
            checkpoint.prune(run_dir / "checkpoints", cfg.train.keep_checkpoints, keep | {path})
            last_checkpoint[0] = str(path)
            record.update(last_checkpoint=str(path), step=train_state.step, best_val_loss=train_state.best_val_loss)
            report(P.CheckpointSaved(step=train_state.step, path=str(path), reason=reason))
            return str(path)

        valid = splits.get("valid")
        eval_batches = None
        if valid is not None:
            eval_batches = lambda: batches.eval_batches(  # noqa: E731
                valid, cfg.train.batch_size, cfg.train.max_seq_length, cfg.train.val_batches
            )
        total_params = sum(v.size for _, v in tree_flatten(model.parameters()))
        trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
        record.update(status="running", pid=os.getpid(), total_steps=cfg.train.iters)
        report(
            P.RunStarted(
                run_dir=str(run_dir),
                total_steps=cfg.train.iters,
                start_step=state.step,
                trainable_parameters=trainable,
                total_parameters=total_params,
                train_examples=len(splits["train"].examples),
                valid_examples=len(valid.examples) if valid is not None else 0,
                resumed_from=resumed_from,
            )
        )
        finished = trainer.train(
            model=model,
            optimizer=optimizer,
            stream=stream,
            eval_batches=eval_batches,
            args=cfg.train,
            seed=cfg.seed,
            state=state,
            emit=report,
            save=save,
            control=control,
            stop_at=stop_at,
            memory_limit_bytes=memory_limit,
            clear_cache_every=cfg.memory.clear_cache_every,
            sample=_sampler(model, tokenizer, cfg.train) if cfg.train.sample_prompt else None,
        )
        adapters_dir = adapters.write_adapters(run_dir, model, adapter_cfg)
        record.update(status="finished" if finished else "stopped", step=state.step, best_val_loss=state.best_val_loss)
        report(
            P.RunFinished(
                step=state.step,
                stopped_early=not finished,
                best_val_loss=state.best_val_loss,
                adapter_path=str(adapters_dir),
            )
        )
        return finished
    except (ConfigError, checkpoint.CheckpointError, models.ModelError, data.DataError) as e:
        record.update(status="failed", error=str(e))
        report(P.RunFailed(step=state.step, reason=str(e), last_checkpoint=last_checkpoint[0]))
        raise
    except BaseException as e:
        reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        record.update(status="failed", error=reason)
        details = traceback.format_exc().splitlines()[-12:]
        report(P.RunFailed(step=state.step, reason=reason, last_checkpoint=last_checkpoint[0], details=details))
        raise
    finally:
        metrics.close()
