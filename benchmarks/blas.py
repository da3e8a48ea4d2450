"""Stock vs accelerated BLAS for mlx on the CPU: matmul GFLOP/s and one LoRA training step.

The BLAS is chosen before mlx is imported, so each variant (a `LORA_MLX_BLAS` value) runs in its
own subprocess, variants alternating within each round; ratios are against the first variant.

    .venv/bin/python benchmarks/blas.py            # 27M-parameter Llama, batch 4 x 256 (~3 min)
    .venv/bin/python benchmarks/blas.py --quick    # 4.4M parameters, batch 2 x 128 (~20 s)
    .venv/bin/python benchmarks/blas.py --quick --variants none,mkl,openblas --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Llama shapes: hidden, intermediate, heads, layers, vocab; batch, tokens per sequence.
FULL = dict(hidden=512, intermediate=1408, heads=8, layers=7, vocab=8000, batch=4, tokens=256)
QUICK = dict(hidden=256, intermediate=704, heads=4, layers=4, vocab=4000, batch=2, tokens=128)


def measure(shape: dict, timed_steps: int) -> dict:
    """In this process: BLAS setup, matmul GFLOP/s, then seconds per LoRA training step."""
    from engine import blas

    info = blas.setup()
    gflops = blas.measure_gflops(seconds=0.3)

    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    from mlx_lm.models import llama
    from mlx_lm.tuner.utils import linear_to_lora_layers

    mx.random.seed(0)
    model = llama.Model(llama.ModelArgs(
        model_type="llama", hidden_size=shape["hidden"], num_hidden_layers=shape["layers"],
        intermediate_size=shape["intermediate"], num_attention_heads=shape["heads"],
        rms_norm_eps=1e-5, vocab_size=shape["vocab"],
    ))
    model.freeze()
    linear_to_lora_layers(model, shape["layers"], {"rank": 8, "scale": 20.0, "dropout": 0.0})
    optimizer = optim.Adam(learning_rate=1e-4)
    tokens = mx.random.randint(0, shape["vocab"], (shape["batch"], shape["tokens"] + 1))

    def loss_fn(model, inputs, targets):
        return nn.losses.cross_entropy(model(inputs), targets, reduction="mean")

    loss_and_grad = nn.value_and_grad(model, loss_fn)

    def step() -> float:
        tick = time.perf_counter()
        loss, grads = loss_and_grad(model, tokens[:, :-1], tokens[:, 1:])
        optimizer.update(model, grads)
        mx.eval(loss, model.parameters(), optimizer.state)
        return time.perf_counter() - tick

    step()  # warm-up
    step_s = [step() for _ in range(timed_steps)]
    params = sum(v.size for _, v in nn.utils.tree_flatten(model.parameters()))
    return {"library": info.library, "gflops": gflops, "step_s": statistics.median(step_s), "params": params}


def run_variant(variant: str, quick: bool, timed_steps: int) -> dict:
    """Run `measure` in a fresh interpreter with LORA_MLX_BLAS=variant."""
    env = {**os.environ, "LORA_MLX_BLAS": variant}
    command = [sys.executable, __file__, "--worker", "--steps", str(timed_steps)] + (["--quick"] if quick else [])
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller model and batch (~20 s)")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds of both variants")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per fast run (stock: 2)")
    parser.add_argument(
        "--variants", default="none,auto", help="LORA_MLX_BLAS values to compare; the first is the baseline"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = QUICK if args.quick else FULL
    if args.worker:
        print(json.dumps(measure(shape, args.steps)))
        return

    variants = args.variants.split(",")
    results = {variant: [] for variant in variants}
    for _ in range(args.rounds):
        for variant in variants:
            results[variant].append(run_variant(variant, args.quick, 2 if variant == "none" else args.steps))
    medians = {
        variant: {key: statistics.median(run[key] for run in runs) for key in ("gflops", "step_s")}
        for variant, runs in results.items()
    }
    print(f"{results[variants[0]][0]['params'] / 1e6:.1f}M-parameter Llama, LoRA rank 8 on all layers, "
          f"batch {shape['batch']} x {shape['tokens']} tokens, {args.rounds} round(s), "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'LORA_MLX_BLAS':<14}{'library':<11}{'matmul GFLOP/s':>15}{'s/step':>9}{'matmul x':>10}{'step x':>8}")
    base = medians[variants[0]]
    for variant, median in medians.items():
        print(f"{variant:<14}{results[variant][0]['library']:<11}{median['gflops']:>15.1f}{median['step_s']:>9.2f}"
              f"{median['gflops'] / base['gflops']:>10.1f}{base['step_s'] / median['step_s']:>8.1f}")

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
