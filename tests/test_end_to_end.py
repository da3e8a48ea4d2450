"""What a user does, command by command, in a fresh model cache: train, resume, tune, generate, fuse, load."""

import json
import os
import subprocess
import sys

from engine import config


def lora_mlx(env, *args, timeout=300):
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", *map(str, args)],
        capture_output=True, text=True, cwd=config.REPO_ROOT, env=env, timeout=timeout,
    )
    assert result.returncode == 0, f"lora-mlx {' '.join(map(str, args))}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_a_user_session(tmp_path):
    env = {**os.environ, "LORA_MLX_CACHE": str(tmp_path / "cache"), "LORA_MLX_RUNS": str(tmp_path / "runs"),
           "LORA_MLX_STUDIES": str(tmp_path / "studies")}
    run_dir = tmp_path / "runs" / "demo"

    # Train the demo (the tiny model is built on first use), stopping half way, then resume.
    out = lora_mlx(env, "train", "demo", "--set", "train.iters=120", "--set", "train.steps_per_eval=60", "--run-dir", run_dir, "--stop-at", "60")
    assert "checkpoint (stop) at step 60" in out
    assert list((tmp_path / "cache").glob("builtin-tiny-*/config.json"))
    out = lora_mlx(env, "resume", run_dir)
    assert "resuming at step 60" in out and "finished at step 120" in out

    # A 3-trial study on the same preset.
    out = lora_mlx(env, "tune", "demo", "--trials", "3", "--study", "e2e", "--set", "train.iters=20", "--set", "train.steps_per_eval=10")
    board = lora_mlx(env, "trials", "e2e")
    assert board.count("complete") + board.count("pruned") >= 3

    # Try the adapters, measure them, fuse them, and load the fused model with mlx-lm.
    answer = lora_mlx(env, "generate", run_dir, "--prompt", "hi! what is your name?", "--max-tokens", "16")
    assert answer.strip()
    assert "perplexity" in lora_mlx(env, "eval", run_dir)
    lora_mlx(env, "fuse", run_dir, "--out", tmp_path / "fused")
    check = subprocess.run(
        [sys.executable, "-c", "import sys; from mlx_lm import load, generate; m, t = load(sys.argv[1]); "
         "print(generate(m, t, t.apply_chat_template([{'role': 'user', 'content': 'hi! what is your name?'}], add_generation_prompt=True), max_tokens=16))",
         str(tmp_path / "fused")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == answer.strip()  # the fused model answers exactly as base + adapters did

    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "finished" and record["best_val_loss"] < 3.0
