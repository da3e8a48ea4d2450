"""Using what a run trained: generate with its adapters, measure it on the test set, fuse it.

  lora-mlx generate RUN_DIR --prompt "..." [--base] [--checkpoint best|latest] [--max-tokens N]
  lora-mlx eval RUN_DIR [--split test|valid] [--checkpoint best|latest]
  lora-mlx fuse RUN_DIR --out DIR [--dequantize] [--gguf] [--checkpoint best|latest]

Loading, generation, fusing and GGUF export are mlx-lm's; this module finds
the right adapters in a run directory and puts the base together as the run
saw it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator

from engine import checkpoint, run


class UseError(ValueError):
    """A run cannot be used as asked (no adapters yet, unknown split, ...); exit code 2."""


def adapter_dir(run_dir: Path, which: str = "latest") -> Path:
    """The adapters of a run: `latest` (the newest of RUN_DIR/adapters and the checkpoints) or `best`."""
    run_dir = Path(run_dir)
    found = checkpoint.list_checkpoints(run_dir / "checkpoints")
    if which == "best":
        for path in found:  # the newest intact checkpoint knows which one is the best
            try:
                best = checkpoint.verify(path)["train_state"].get("best_checkpoint")
            except checkpoint.CheckpointError:
                continue
            if best and Path(best).exists():
                return Path(best)
            break
        raise UseError(f"{run_dir}: no best checkpoint yet (no evaluation has improved on the first)")
    final = run_dir / "adapters" / "adapters.safetensors"
    if final.exists() and (not found or final.stat().st_mtime >= (found[0] / "adapters.safetensors").stat().st_mtime):
        return final.parent
    if found:
        return found[0]
    raise UseError(f"{run_dir}: no adapters yet (no checkpoint has been written)")


def load(run_dir: Path, which: str = "latest", with_adapters: bool = True):
    """(model, tokenizer, cfg) for a run: its base model, with its adapters unless with_adapters is False."""
    from mlx_lm.tuner.utils import load_adapters

    from engine import models

    cfg = run.load_run_config(Path(run_dir))
    adapters = adapter_dir(run_dir, which)
    # The base the adapters were trained on (for QLoRA, the quantized copy).
    model_path = json.loads((adapters / "adapter_config.json").read_text()).get("model_path", cfg.model)
    model, tokenizer, _ = models.load(model_path if Path(model_path).is_dir() else cfg.model)
    if with_adapters:
        load_adapters(model, str(adapters))
    model.eval()
    return model, tokenizer, cfg


def chat_prompt(tokenizer, prompt: str) -> str | list[int]:
    """The prompt as the model saw its training data: through the chat template when there is one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    return prompt


def generate(model, tokenizer, prompt: str, max_tokens: int = 128, temperature: float = 0.0) -> Iterator[str]:
    """Stream the answer to a prompt, piece by piece."""
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    for response in stream_generate(model, tokenizer, chat_prompt(tokenizer, prompt), max_tokens=max_tokens, sampler=make_sampler(temp=temperature)):
        yield response.text


def evaluate(run_dir: Path, split: str = "test", which: str = "latest") -> dict:
    """Loss and perplexity of a run's adapters on a split of its data."""
    from engine import batches, data, trainer

    model, tokenizer, cfg = load(run_dir, which)
    splits = data.load_splits(cfg.data.path, tokenizer, mask_prompt=cfg.train.mask_prompt, max_seq_length=cfg.train.max_seq_length, skip_invalid=cfg.data.skip_invalid, batch_size=1)
    if split not in splits:
        raise UseError(f"{cfg.data.path}: no {split}.jsonl to evaluate on")
    examples = splits[split]
    loss = trainer.evaluate(model, batches.eval_batches(examples, cfg.train.batch_size if cfg.train.batch_size != "auto" else 4, cfg.train.max_seq_length))
    tokens = sum(int(batches.target_mask(b.lengths, b.tokens.shape[1]).sum()) for b in batches.eval_batches(examples, 8, cfg.train.max_seq_length))
    return {"split": split, "loss": loss, "perplexity": math.exp(loss), "examples": len(examples.examples), "tokens": tokens}


GGUF_TYPES = ("llama", "mixtral", "mistral")  # what mlx-lm's GGUF writer supports


def fuse(run_dir: Path, out: Path, dequantize: bool = False, gguf: bool = False, which: str = "latest") -> Path:
    """Fold the adapters into the base and save a standalone model (mlx-lm layout), optionally GGUF too."""
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm.utils import dequantize_model, save

    model, tokenizer, cfg = load(run_dir, which)
    model_dir = Path(json.loads((adapter_dir(run_dir, which) / "adapter_config.json").read_text())["model_path"])
    config = json.loads((model_dir / "config.json").read_text())
    if gguf and config.get("model_type") not in GGUF_TYPES:
        raise UseError(
            f"GGUF export supports {', '.join(GGUF_TYPES)} models; this one is {config.get('model_type')!r}. "
            "Fuse without --gguf and convert with llama.cpp's convert_hf_to_gguf.py"
        )
    fused = [(name, m.fuse(dequantize=dequantize)) for name, m in model.named_modules() if hasattr(m, "fuse")]
    if fused:
        model.update_modules(tree_unflatten(fused))
    if dequantize:
        model = dequantize_model(model)
        config.pop("quantization", None)
        config.pop("quantization_config", None)
    out = Path(out)
    save(out, str(model_dir), model, tokenizer, config, donate_model=False)
    if gguf:
        from mlx_lm.gguf import convert_to_gguf

        convert_to_gguf(out, dict(tree_flatten(model.parameters())), config, str(out / "model.gguf"))
    return out
