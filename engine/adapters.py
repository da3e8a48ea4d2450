"""What a run trains: LoRA/DoRA layers on a frozen base (or the whole model), the optimizer
and its schedule, and the adapters on disk in mlx-lm's layout (`mlx_lm.generate --adapter-path`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from engine import checkpoint
from engine.config import Config, ConfigError


def lora_parameters(cfg: Config) -> dict:
    """mlx-lm's lora_parameters: what `linear_to_lora_layers` builds and adapter_config.json records."""
    params = {"rank": cfg.lora.rank, "scale": cfg.lora.alpha / cfg.lora.rank, "dropout": cfg.lora.dropout}
    if cfg.lora.keys:
        params["keys"] = list(cfg.lora.keys)
    return params


def adapter_config(cfg: Config, num_layers: int, model_dir: Path) -> dict:
    """adapter_config.json in mlx-lm's shape, so `mlx_lm.generate --adapter-path` loads it."""
    return {
        "fine_tune_type": cfg.fine_tune_type,
        "num_layers": num_layers,
        "lora_parameters": lora_parameters(cfg),
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
    if cfg.lora.keys:
        _check_lora_keys(model, cfg.lora.keys)
    linear_to_lora_layers(model, num_layers, lora_parameters(cfg), use_dora=cfg.fine_tune_type == "dora")
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
