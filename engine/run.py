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
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import yaml

from engine import checkpoint, config as config_mod, protocol as P
from engine.metrics import MetricsLog
from engine.config import Config, ConfigError

def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
        data = {**self.read(), **fields, "updated_at": _now()}
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.path)


def adapter_config(cfg: Config, num_layers: int, model_dir: Path) -> dict:
    """adapter_config.json in mlx-lm's shape, so `mlx_lm.generate --adapter-path` loads it."""
    lora_parameters = {
        "rank": cfg.lora.rank,
        "scale": cfg.lora.alpha / cfg.lora.rank,
        "dropout": cfg.lora.dropout,
    }
    if cfg.lora.keys:
        lora_parameters["keys"] = list(cfg.lora.keys)
    return {
        "fine_tune_type": cfg.fine_tune_type,
        "num_layers": num_layers,
        "lora_parameters": lora_parameters,
        "model": cfg.model,
        "model_path": str(model_dir),
    }


def build_optimizer(train_cfg):
    """The optimizer with its warmup + schedule; the schedule's position is the optimizer's step."""
    import mlx.optimizers as optim

    peak, warmup = train_cfg.learning_rate, train_cfg.warmup_steps
    decay_steps = max(train_cfg.iters - warmup, 1)
    if train_cfg.lr_schedule == "cosine":
        main = optim.cosine_decay(peak, decay_steps, train_cfg.final_learning_rate)
    elif train_cfg.lr_schedule == "linear":
        main = optim.linear_schedule(peak, train_cfg.final_learning_rate, decay_steps)
    else:
        # A constant written as a schedule of the step: a compiled update needs the value to depend on an input.
        main = optim.linear_schedule(peak, peak, 1)
    schedule = optim.join_schedules([optim.linear_schedule(0.0, peak, warmup), main], [warmup]) if warmup else main
    if train_cfg.optimizer == "adam":
        return optim.Adam(learning_rate=schedule)
    if train_cfg.optimizer == "adamw":
        return optim.AdamW(learning_rate=schedule, weight_decay=train_cfg.weight_decay)
    return optim.SGD(learning_rate=schedule, weight_decay=train_cfg.weight_decay)


def apply_adapters(model, cfg: Config) -> int:
    """Freeze the base and add LoRA/DoRA layers (or unfreeze all for full). Return the layer count adapted."""
    import mlx.core as mx
    from mlx_lm.tuner.utils import linear_to_lora_layers

    num_layers = len(model.layers) if cfg.lora.num_layers == -1 else min(cfg.lora.num_layers, len(model.layers))
    if cfg.fine_tune_type == "full":
        model.unfreeze()
        return num_layers
    model.freeze()
    mx.random.seed(cfg.seed)  # adapter init draws from mlx's RNG
    params = {"rank": cfg.lora.rank, "scale": cfg.lora.alpha / cfg.lora.rank, "dropout": cfg.lora.dropout}
    if cfg.lora.keys:
        params["keys"] = list(cfg.lora.keys)
        _check_lora_keys(model, cfg.lora.keys)
    linear_to_lora_layers(model, num_layers, params, use_dora=cfg.fine_tune_type == "dora")
    return num_layers


def _check_lora_keys(model, keys) -> None:
    present = {name for name, _ in model.layers[0].named_modules()}
    unknown = [k for k in keys if k not in present]
    if unknown:
        import difflib

        linear = sorted(n for n in present if n.count(".") >= 1)
        hints = [f"{k} (did you mean {difflib.get_close_matches(k, linear, n=1)[0]!r}?)" if difflib.get_close_matches(k, linear, n=1) else k for k in unknown]
        raise ConfigError(f"lora.keys: no such module in the model's blocks: {', '.join(hints)}")


def enable_grad_checkpoint(model) -> None:
    """Recompute each block's activations in the backward pass.

    Each block instance gets a one-off subclass whose __call__ is wrapped in
    mx.checkpoint, so parameter names stay the same and no library class is patched.
    """
    import mlx.core as mx

    for block in model.layers:
        base = type(block)

        def checkpointed(self, *args, __call=base.__call__, **kwargs):
            def inner(params, *args, **kwargs):
                self.update(params)
                return __call(self, *args, **kwargs)

            return mx.checkpoint(inner)(self.trainable_parameters(), *args, **kwargs)

        block.__class__ = type(f"Checkpointed{base.__name__}", (base,), {"__call__": checkpointed})


def load_adapter_weights(model, weights: dict, source: Path) -> None:
    """Load weights into exactly the trainable parameters: same names, same shapes, nothing missing."""
    from mlx.utils import tree_flatten

    expected = dict(tree_flatten(model.trainable_parameters()))
    problems = [f"{k}: missing" for k in expected if k not in weights]
    problems += [f"{k}: not a trainable parameter of this model" for k in weights if k not in expected]
    problems += [
        f"{k}: shape {tuple(weights[k].shape)} but the model needs {tuple(expected[k].shape)}"
        for k in weights
        if k in expected and weights[k].shape != expected[k].shape
    ]
    if problems:
        raise checkpoint.CheckpointError(f"{source}: adapters do not fit this model:\n  " + "\n  ".join(problems[:10]))
    model.load_weights(list(weights.items()), strict=False)


def write_adapters(run_dir: Path, model, adapter_cfg: dict) -> Path:
    """Write RUN_DIR/adapters/ atomically (a temp name, then rename)."""
    from mlx.utils import tree_flatten

    folder = run_dir / "adapters"
    folder.mkdir(exist_ok=True)
    tmp = folder / ".adapters.tmp.safetensors"
    checkpoint.save_safetensors(tmp, dict(tree_flatten(model.trainable_parameters())))
    os.replace(tmp, folder / "adapters.safetensors")
    (folder / "adapter_config.json").write_text(json.dumps(adapter_cfg, indent=2) + "\n")
    return folder


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
        num_layers = apply_adapters(model, cfg)
        quant.use_cpu_fast_path(model)  # dequantize + BLAS on the CPU backend; after the adapters, so DoRA gets it too
        if cfg.train.grad_checkpoint:
            enable_grad_checkpoint(model)
        resolve_auto_batch(cfg, model, len(splits["train"].examples), memory_limit, log)
        if not resuming:
            (run_dir / "config.yaml").write_text(config_mod.dump(cfg))  # with auto sizes resolved
        adapter_cfg = adapter_config(cfg, num_layers, model_dir)
        optimizer = build_optimizer(cfg.train)
        optimizer.init(model.trainable_parameters())
        stream = batches.BatchStream(splits["train"], cfg.train.batch_size, cfg.seed, cfg.train.max_seq_length)

        resumed_from = None
        if resuming:
            loaded = checkpoint.load_latest(run_dir / "checkpoints", cfg, log)
            if loaded is None:
                raise checkpoint.CheckpointError(f"{run_dir}: no intact checkpoint to resume from")
            load_adapter_weights(model, loaded.adapters, loaded.path)
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
        adapters_dir = write_adapters(run_dir, model, adapter_cfg)
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
