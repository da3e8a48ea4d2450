"""generate, eval and fuse on a trained builtin:tiny run."""

import subprocess
import sys

import mlx.core as mx
import pytest

from engine import config, run, trainer, use

DEMO = str(config.REPO_ROOT / "presets" / "demo.yaml")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("use") / "run"
    cfg = config.load(DEMO, ["train.iters=60", "train.steps_per_eval=20", "train.learning_rate=1e-3"])
    run.start(cfg, run_dir, lambda e: None, trainer.Control())
    return run_dir


def logits_of(model, tokenizer, text="hello"):
    tokens = mx.array([tokenizer.encode(text)])
    return model(tokens)


def test_generate_streams_and_differs_from_the_base(trained):
    model, tokenizer, _ = use.load(trained)
    tuned = "".join(use.generate(model, tokenizer, "hi, what is your name?", max_tokens=12))
    base_model, _, _ = use.load(trained, with_adapters=False)
    base = "".join(use.generate(base_model, tokenizer, "hi, what is your name?", max_tokens=12))
    assert tuned and tuned != base


def test_eval_reports_loss_and_perplexity(trained):
    result = use.evaluate(trained, "test")
    assert result["examples"] == 100 and result["tokens"] > 0
    assert result["perplexity"] == pytest.approx(__import__("math").exp(result["loss"]))
    assert result["loss"] < 7.0  # below the untrained ~7.4


def test_best_checkpoint_is_found(trained):
    best = use.adapter_dir(trained, "best")
    assert best.parent.name == "checkpoints" and (best / "adapters.safetensors").exists()


def test_fused_model_loads_in_mlx_lm_and_matches(trained, tmp_path):
    from mlx_lm.utils import load

    out = use.fuse(trained, tmp_path / "fused", gguf=True)
    fused, tokenizer = load(str(out))
    model, _, _ = use.load(trained)
    assert mx.allclose(logits_of(fused, tokenizer), logits_of(model, tokenizer), atol=1e-4).item()
    assert (out / "model.gguf").stat().st_size > 0


def test_cli_generate_and_errors(trained, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "engine.cli", *map(str, args)], capture_output=True, text=True, cwd=config.REPO_ROOT, timeout=120)

    out = cli("generate", trained, "--prompt", "thanks a lot!", "--max-tokens", "8")
    assert out.returncode == 0 and out.stdout.strip()
    empty = tmp_path / "empty"
    cfg = config.load(DEMO, [])
    empty.mkdir()
    (empty / "config.yaml").write_text(config.dump(cfg))
    missing = cli("eval", empty)
    assert missing.returncode == 2 and "no adapters yet" in missing.stderr
    assert cli("eval", tmp_path / "nope").returncode == 2
