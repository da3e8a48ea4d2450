"""Training throughput: lora-mlx's engine vs mlx-lm's own LoRA trainer, side by side.

Both train LoRA (rank 8, every layer) on the same local model directory
(builtin:small, ~26M parameters) and the same text data (lengths 32-256
tokens), with the same BLAS loaded the same way (engine.blas.setup), batch 4,
Adam. Runs alternate (ours, theirs, ours, theirs, ...) in fresh processes.
Throughput is measured the same way on both sides: sequences trained between
step `--warmup` and the second-to-last step, times the data's mean length in
tokens, divided by the wall time between those two steps' reports.

The mlx-lm side calls `mlx_lm.tuner.trainer.train`, the loop `mlx_lm.lora` runs.

  .venv/bin/python benchmarks/vs_mlx_lm.py            # 3 rounds of 24 steps
  .venv/bin/python benchmarks/vs_mlx_lm.py --quick    # 1 round of 12 steps
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCH, MAX_LEN, RANK, ALPHA, LR = 4, 256, 8, 16.0, 1e-4


def make_data(folder: Path, seed: int = 0) -> float:
    """Text records of 32-256 words; returns the mean length in tokens under the model's tokenizer."""
    rng = random.Random(seed)
    words = "the a model learns from data each step adapter weight loss rate small large fast slow".split()
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in (("train", 400), ("valid", 16)):
        with open(folder / f"{name}.jsonl", "w") as f:
            for _ in range(count):
                text = " ".join(rng.choice(words) for _ in range(rng.randint(24, 200)))
                f.write(json.dumps({"text": text}) + "\n")
    return 0.0


def mean_tokens(model_dir: Path, data_dir: Path) -> float:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    lengths = []
    for line in open(data_dir / "train.jsonl"):
        n = len(tok.encode(json.loads(line)["text"]).ids) + 1  # + EOS
        lengths.append(min(n, MAX_LEN))
    return statistics.mean(lengths)


def worker_ours(model_dir: str, data_dir: str, steps: int, out: str) -> None:
    from engine import blas

    blas.setup()
    from engine import config, protocol as P, run
    from engine.control import Control

    preset = Path(out).with_suffix(".yaml")
    preset.write_text(f"model: {model_dir}\ndata: {data_dir}\n")
    cfg = config.load(
        str(preset),
        [f"train.iters={steps}", f"train.batch_size={BATCH}", f"train.max_seq_length={MAX_LEN}", f"lora.rank={RANK}",
         f"lora.alpha={ALPHA}", f"train.learning_rate={LR}", "train.steps_per_report=1", "train.steps_per_eval=1000000",
         "train.save_every=1000000", "train.val_batches=1"],
    )
    times: dict[int, float] = {}

    def emit(event):
        if isinstance(event, P.StepReported):
            times[event.step] = time.perf_counter()

    run.start(cfg, Path(out).with_suffix(".run"), emit, Control())
    Path(out).write_text(json.dumps(times))


def worker_mlx_lm(model_dir: str, data_dir: str, steps: int, out: str) -> None:
    from engine import blas

    blas.setup()
    import types

    import mlx.optimizers as optim
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm.tuner.datasets import CacheDataset, load_dataset
    from mlx_lm.tuner.trainer import TrainingArgs, train
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load

    model, tokenizer = load(model_dir)
    model.freeze()
    linear_to_lora_layers(model, len(model.layers), {"rank": RANK, "scale": ALPHA / RANK, "dropout": 0.0})
    args = types.SimpleNamespace(data=data_dir, train=True, test=False, hf_dataset=False, mask_prompt=False)
    train_set, valid_set, _ = load_dataset(args, tokenizer)
    times: dict[int, float] = {}

    class Times(TrainingCallback):
        def on_train_loss_report(self, info):
            times[info["iteration"]] = time.perf_counter()

    train(
        model, optim.Adam(learning_rate=LR), CacheDataset(train_set), CacheDataset(valid_set),
        args=TrainingArgs(batch_size=BATCH, iters=steps, val_batches=1, steps_per_report=1, steps_per_eval=1_000_000,
                          steps_per_save=1_000_000, max_seq_length=MAX_LEN, adapter_file=str(Path(out).with_suffix(".safetensors"))),
        training_callback=Times(),
    )
    Path(out).write_text(json.dumps(times))


def measure(kind: str, model_dir: Path, data_dir: Path, steps: int, warmup: int, tokens_per_seq: float, tmp: Path) -> float:
    out = tmp / f"{kind}-{time.monotonic_ns()}.json"
    subprocess.run(
        [sys.executable, __file__, "--worker", kind, str(model_dir), str(data_dir), str(steps), str(out)],
        check=True, stdout=subprocess.DEVNULL, cwd=ROOT,
    )
    times = {int(k): v for k, v in json.loads(out.read_text()).items()}
    last = steps - 1  # the final step is followed (mlx-lm: preceded) by an evaluation
    seconds = times[last] - times[warmup]
    return (last - warmup) * BATCH * tokens_per_seq / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, model_dir, data_dir, steps, out = args.worker
        (worker_ours if kind == "ours" else worker_mlx_lm)(model_dir, data_dir, int(steps), out)
        return

    rounds = args.rounds or (1 if args.quick else 3)
    steps = args.steps or (12 if args.quick else 24)
    warmup = 3
    from engine.tiny import ensure_builtin

    model_dir = ensure_builtin("builtin:small")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        make_data(tmp / "data")
        tokens_per_seq = mean_tokens(model_dir, tmp / "data")
        results: dict[str, list[float]] = {"ours": [], "mlx_lm": []}
        for r in range(rounds):
            for kind in ("ours", "mlx_lm"):
                rate = measure(kind, model_dir, tmp / "data", steps, warmup, tokens_per_seq, tmp)
                results[kind].append(rate)
                print(f"round {r + 1}: {kind:<7} {rate:8.0f} tokens/s", flush=True)
    ours, theirs = statistics.median(results["ours"]), statistics.median(results["mlx_lm"])
    print(f"\nmodel builtin:small ({model_dir.name}), batch {BATCH} x up to {MAX_LEN} tokens, LoRA rank {RANK} on all layers")
    print(f"lora-mlx engine : {ours:8.0f} tokens/s (median of {rounds})")
    print(f"mlx_lm trainer  : {theirs:8.0f} tokens/s (median of {rounds})")
    print(f"ratio lora-mlx / mlx-lm = {ours / theirs:.2f}  (target >= 1.0)")


if __name__ == "__main__":
    main()
