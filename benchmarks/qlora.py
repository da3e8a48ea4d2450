"""QLoRA vs LoRA on the CPU backend: step time, peak memory and weight memory, side by side.

Three variants train the same adapters (rank 8, every linear layer of every block, Adam)
on builtin:small (~26M parameters) with the same batch (4 sequences x 256 tokens):

  lora       the fp32 base
  qlora      the base quantized to 4-bit (group 64), with engine.quant's CPU fast path
             (dequantize per call + BLAS matmul, custom VJP)
  qlora-mlx  the same quantized base with mlx's own kernel (mx.quantized_matmul)

Each run is a fresh process (variants alternate, round by round). A run compiles the step
as the engine does, takes warm-up steps, resets mlx's peak memory, then times steps. Weight
memory is the bytes of the base model's parameters (packed weights, scales and biases).

  .venv/bin/python benchmarks/qlora.py            # 3 rounds
  .venv/bin/python benchmarks/qlora.py --quick    # 1 round, 4 steps (qlora-mlx: 1); about 1-3 minutes

The machine these were written on is shared: compare ratios from one run, not absolute times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCH, SEQ, RANK, SCALE, BITS, GROUP = 4, 256, 8, 2.0, 4, 64
VARIANTS = ("lora", "qlora", "qlora-mlx")


def worker(variant: str, model_dir: str, steps: int, warmup: int, out: str) -> None:
    from engine import blas

    blas.setup()
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load

    from engine import quant, trainer

    model, _ = load(model_dir)
    weight_bytes = quant.weight_bytes(model)
    model.freeze()
    mx.random.seed(0)
    linear_to_lora_layers(model, len(model.layers), {"rank": RANK, "scale": SCALE, "dropout": 0.0})
    swapped = quant.use_cpu_fast_path(model) if variant == "qlora" else 0

    optimizer = optim.Adam(learning_rate=1e-4)
    loss_and_grad = nn.value_and_grad(model, trainer.masked_loss)

    def step(tokens, lengths):
        (value, _), grads = loss_and_grad(model, tokens, lengths)
        optimizer.update(model, grads)
        return value

    step = mx.compile(step, inputs=[model.state, optimizer.state], outputs=[model.state, optimizer.state])
    tokens = mx.random.randint(3, model.args.vocab_size, (BATCH, SEQ + 1))
    lengths = mx.array([[0, SEQ + 1]] * BATCH)
    model.train()
    times, cpu_times, losses = [], [], []
    for i in range(warmup + steps):
        if i == warmup:
            mx.clear_cache()
            mx.reset_peak_memory()
        tic, cpu_tic = time.perf_counter(), time.process_time()
        loss = step(tokens, lengths)
        mx.eval(loss, model.state, optimizer.state)
        times.append(time.perf_counter() - tic)
        cpu_times.append(time.process_time() - cpu_tic)
        losses.append(loss.item())
    result = {
        "step_s": statistics.median(times[warmup:]),
        "cpu_s": statistics.median(cpu_times[warmup:]),  # this process's CPU time: less swayed by other load
        "peak_bytes": mx.get_peak_memory(),
        "weight_bytes": weight_bytes,
        "swapped": swapped,
        "first_loss": losses[0],  # before any update: the three variants see the same batch and adapters
    }
    Path(out).write_text(json.dumps(result))


def measure(variant: str, model_dir: Path, steps: int, warmup: int, tmp: Path) -> dict:
    out = tmp / f"{variant}-{time.monotonic_ns()}.json"
    subprocess.run(
        [sys.executable, __file__, "--worker", variant, str(model_dir), str(steps), str(warmup), str(out)],
        check=True, cwd=ROOT,
    )
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 round, fewer steps")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--steps", type=int, help="timed steps for lora and qlora (qlora-mlx takes fewer: it is slow)")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        variant, model_dir, steps, warmup, out = args.worker
        worker(variant, model_dir, int(steps), int(warmup), out)
        return

    from engine import blas

    blas.setup()
    from engine import quant
    from engine.tiny import ensure_builtin

    rounds = args.rounds or (1 if args.quick else 3)
    steps = args.steps or (4 if args.quick else 10)
    base = ensure_builtin("builtin:small")
    quantized, report = quant.prepare_base(base, BITS, GROUP)
    dirs = {"lora": base, "qlora": quantized, "qlora-mlx": quantized}
    if report:
        print(report.summary())
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp_name:
        for r in range(rounds):
            for variant in VARIANTS:
                if variant == "qlora-mlx":  # ~10x slower: one timed step (in --quick, the first, compile included)
                    n, warmup = 1, 0 if args.quick else 1
                else:
                    n, warmup = steps, 1 if args.quick else 2
                res = measure(variant, dirs[variant], n, warmup, Path(tmp_name))
                results[variant].append(res)
                print(
                    f"round {r + 1}: {variant:<9} step {res['step_s'] * 1e3:7.0f} ms (cpu {res['cpu_s'] * 1e3:7.0f} ms)  "
                    f"peak {res['peak_bytes'] / 1e6:6.0f} MB  "
                    f"weights {res['weight_bytes'] / 1e6:6.1f} MB  first loss {res['first_loss']:.4f}",
                    flush=True,
                )

    def med(variant, key):
        return statistics.median(r[key] for r in results[variant])

    lora_s, lora_peak, lora_w = med("lora", "step_s"), med("lora", "peak_bytes"), med("lora", "weight_bytes")
    print(f"\nbuiltin:small, batch {BATCH} x {SEQ} tokens, rank {RANK} on every layer, {BITS}-bit group {GROUP}; "
          f"medians of {rounds} round(s)")
    lora_cpu = med("lora", "cpu_s")
    columns = zip(("step ms", "x LoRA", "cpu ms", "x LoRA", "peak MB", "x LoRA", "weights MB", "x LoRA"), (8, 7, 8, 7, 8, 7, 11, 7))
    print(f"{'':<10} " + " ".join(f"{name:>{width}}" for name, width in columns))
    for variant in VARIANTS:
        s, c = med(variant, "step_s"), med(variant, "cpu_s")
        p, w = med(variant, "peak_bytes"), med(variant, "weight_bytes")
        print(f"{variant:<10} {s * 1e3:8.0f} {s / lora_s:7.2f} {c * 1e3:8.0f} {c / lora_cpu:7.2f} "
              f"{p / 1e6:8.0f} {p / lora_peak:7.2f} {w / 1e6:11.1f} {w / lora_w:7.2f}")
    print(f"\nQLoRA (CPU fast path) step time / LoRA = {med('qlora', 'step_s') / lora_s:.2f} "
          f"(CPU time {med('qlora', 'cpu_s') / lora_cpu:.2f})  (target <= 1.5)")
    print(f"QLoRA weight memory / LoRA            = {med('qlora', 'weight_bytes') / lora_w:.2f}  (target <= 0.35)")
    print(f"mlx quantized_matmul / CPU fast path  = {med('qlora-mlx', 'step_s') / med('qlora', 'step_s'):.1f}x slower")


if __name__ == "__main__":
    main()
