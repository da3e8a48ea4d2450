"""Pre-flight memory estimate vs measured peak, on several configurations.

Each configuration trains a few steps in its own process on text long enough
to fill train.max_seq_length; the measured figure is mlx's peak memory during
a step (weights, adapters, gradients, optimizer state and activations). The
estimate comes from engine.estimate before anything loads. Target: within 25%.

  .venv/bin/python benchmarks/memory_estimate.py
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONFIGS = [
    ("tiny LoRA b8 x 128", "builtin:tiny", ["train.batch_size=8", "train.max_seq_length=128"]),
    ("tiny DoRA b8 x 128", "builtin:tiny", ["fine_tune_type=dora", "train.batch_size=8", "train.max_seq_length=128"]),
    ("small LoRA b4 x 256", "builtin:small", ["train.batch_size=4", "train.max_seq_length=256"]),
    ("small LoRA b4 x 256 grad ckpt", "builtin:small", ["train.batch_size=4", "train.max_seq_length=256", "train.grad_checkpoint=true"]),
    ("small LoRA b8 x 512", "builtin:small", ["train.batch_size=8", "train.max_seq_length=512"]),
    ("small full b2 x 256", "builtin:small", ["fine_tune_type=full", "train.batch_size=2", "train.max_seq_length=256"]),
]


def make_data(folder: Path) -> None:
    rng = random.Random(0)
    words = "the a model learns from data each step adapter weight loss rate small large fast slow".split()
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in (("train", 64), ("valid", 8)):
        with open(folder / f"{name}.jsonl", "w") as f:
            for _ in range(count):
                f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(700))}) + "\n")


def worker(model: str, data: str, overrides: list[str]) -> None:
    from engine import blas

    blas.setup()
    from engine import config, estimate, memory, models, protocol as P, run
    from engine.control import Control

    preset = Path(data) / "preset.yaml"
    preset.write_text(f"model: {model}\ndata: {data}\n")
    cfg = config.load(str(preset), overrides + ["train.iters=3", "train.steps_per_report=1", "train.steps_per_eval=1000", "train.val_batches=1"])
    budget, source = memory.backend_memory()
    guess = estimate.preflight(cfg, *models.describe(cfg.model), budget, source)
    peaks = []
    run.start(cfg, Path(data) / f"run-{len(list(Path(data).glob('run-*')))}", lambda e: peaks.append(e.peak_memory_gb) if isinstance(e, P.StepReported) else None, Control())
    print(json.dumps({"estimate_gb": guess.total_gb, "measured_gb": max(peaks), "parts": guess.lines()[1]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)  # MODEL DATA_DIR [OVERRIDE ...]
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.worker[2:])
        return
    with tempfile.TemporaryDirectory() as tmp:
        make_data(Path(tmp))
        print(f"{'configuration':<32} {'estimate':>9} {'measured':>9} {'error':>7}")
        worst = 0.0
        for name, model, overrides in CONFIGS:
            out = subprocess.run(
                [sys.executable, __file__, "--worker", model, tmp, *overrides], capture_output=True, text=True, cwd=ROOT, check=True
            ).stdout.strip().splitlines()[-1]
            r = json.loads(out)
            error = (r["estimate_gb"] - r["measured_gb"]) / r["measured_gb"]
            worst = max(worst, abs(error))
            print(f"{name:<32} {r['estimate_gb']:8.3f}G {r['measured_gb']:8.3f}G {error:+7.1%}   {r['parts'].strip()}", flush=True)
    print(f"\nlargest error {worst:.1%} (target: within 25%)")


if __name__ == "__main__":
    main()
