"""The real-model presets in presets/, written from one table so they stay consistent.

  python -m engine.preset_catalog     # rewrites presets/<family>-<lora|qlora>.yaml

Each preset's memory line comes from the pre-flight estimate (engine/estimate.py) on the
model's known shape (engine/known_models.py); a test checks the files match this output.
"""

from __future__ import annotations

import sys
from pathlib import Path

from engine import config, estimate, known_models

# family -> (display name, bf16 hub id, 4-bit hub id, learning rate, grad checkpointing).
# Checkpointing is on everywhere: it makes each of these fit a 16 GB Mac at batch 4 x 1024.
CATALOG = {
    "qwen2.5-0.5b": ("Qwen2.5 0.5B Instruct", "Qwen/Qwen2.5-0.5B-Instruct", "mlx-community/Qwen2.5-0.5B-Instruct-4bit", "2.0e-4", True),
    "qwen2.5-1.5b": ("Qwen2.5 1.5B Instruct", "Qwen/Qwen2.5-1.5B-Instruct", "mlx-community/Qwen2.5-1.5B-Instruct-4bit", "1.0e-4", True),
    "qwen2.5-7b": ("Qwen2.5 7B Instruct", "Qwen/Qwen2.5-7B-Instruct", "mlx-community/Qwen2.5-7B-Instruct-4bit", "1.0e-4", True),
    "llama3.2-1b": ("Llama 3.2 1B Instruct", "mlx-community/Llama-3.2-1B-Instruct-bf16", "mlx-community/Llama-3.2-1B-Instruct-4bit", "1.0e-4", True),
    "llama3.2-3b": ("Llama 3.2 3B Instruct", "mlx-community/Llama-3.2-3B-Instruct-bf16", "mlx-community/Llama-3.2-3B-Instruct-4bit", "1.0e-4", True),
    "mistral-7b": ("Mistral 7B Instruct v0.3", "mistralai/Mistral-7B-Instruct-v0.3", "mlx-community/Mistral-7B-Instruct-v0.3-4bit", "1.0e-4", True),
    "gemma2-2b": ("Gemma 2 2B it", "google/gemma-2-2b-it", "mlx-community/gemma-2-2b-it-4bit", "1.0e-4", True),
    "phi3.5-mini": ("Phi-3.5 mini instruct", "microsoft/Phi-3.5-mini-instruct", "mlx-community/Phi-3.5-mini-instruct-4bit", "1.0e-4", True),
}
GATED = {"mistralai/Mistral-7B-Instruct-v0.3", "google/gemma-2-2b-it"}
PRESETS_DIR = config.REPO_ROOT / "presets"
MAC_16GB_WORKING_SET = int(16 * 2**30 * 2 / 3)  # Metal recommends about two thirds of unified memory
# Families whose huge vocabulary makes the logits the biggest activation: half the batch, twice the steps' worth.
HALF_BATCH = {"qwen2.5-7b", "gemma2-2b"}

TEMPLATE = """\
# {name}, {kind}. {memory}
# Starting settings for chat fine-tuning (common LoRA/QLoRA recipes); point `data` at your own folder.
model: {model}{gated}
data: data/demo            # a folder with train.jsonl (and valid.jsonl); see docs/data-formats.md
seed: 0
fine_tune_type: lora       # lora | dora (full fine-tuning needs the bf16 model)

lora:
  rank: 8                  # size of the low-rank update
  alpha: 16                # scale = alpha / rank = 2
  dropout: 0.05
  num_layers: 16           # adapt the last 16 blocks (-1: all)

train:
  iters: 1000              # optimizer steps
  batch_size: {batch}{accumulation}
  learning_rate: {lr}
  lr_schedule: cosine      # decays to final_learning_rate after the warmup
  warmup_steps: 50
  max_seq_length: 1024     # longer records are truncated (and counted in the log)
  mask_prompt: true        # learn the answers, not the prompts
  grad_checkpoint: {ckpt}{ckpt_note}
  steps_per_report: 10
  steps_per_eval: 100
  val_batches: 25
  save_every: 100
"""


def render(family: str, quantized: bool) -> str:
    name, bf16, four_bit, lr, ckpt = CATALOG[family]
    model = four_bit if quantized else bf16
    text = TEMPLATE.format(
        name=name, kind="QLoRA on the 4-bit MLX conversion" if quantized else "LoRA on the bf16 weights",
        memory="{memory}", model=model, gated="     # gated: accept the licence on the hub, then `hf auth login`" if model in GATED else "",
        lr=lr, ckpt=str(ckpt).lower(), batch=2 if family in HALF_BATCH else 4,
        accumulation="\n  grad_accumulation: 2     # two batches of 2 per step: an effective batch of 4" if family in HALF_BATCH else "", ckpt_note="    # recompute activations: slower, much less memory" if ckpt else "",
    )
    return text.replace("{memory}", memory_line(text))


def memory_line(text: str) -> str:
    path = PRESETS_DIR / ".catalog-probe.yaml"
    path.write_text(text.replace("{memory}", ""))
    try:
        cfg = config.load(str(path))
    finally:
        path.unlink()
    shape_config, weights = known_models.describe(cfg.model)
    guess = estimate.preflight(cfg, shape_config, weights, MAC_16GB_WORKING_SET, "a 16 GB Mac")
    return (
        f"Needs about {guess.total_gb:.1f} GB (weights {guess.weights_gb:.1f} GB) per lora-mlx estimate:\n"
        f"# {guess.verdict} on a 16 GB Mac (Metal's working set there is about {MAC_16GB_WORKING_SET / 1e9:.1f} GB)."
    )


def files() -> dict[Path, str]:
    return {PRESETS_DIR / f"{family}-{'qlora' if q else 'lora'}.yaml": render(family, q) for family in CATALOG for q in (False, True)}


def main() -> int:
    for path, text in files().items():
        path.write_text(text)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
