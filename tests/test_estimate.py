"""The pre-flight memory estimate: parameter counts, verdicts and advice."""

import json

import pytest

from engine import config, estimate, models

DEMO = str(config.REPO_ROOT / "presets" / "demo.yaml")


def cfg(*overrides):
    return config.load(DEMO, list(overrides))


def tiny_dir():
    return models.resolve("builtin:tiny")


def test_parameter_count_matches_the_real_model():
    from mlx.utils import tree_flatten
    from mlx_lm.utils import load

    model, _ = load(str(tiny_dir()))
    real = sum(v.size for _, v in tree_flatten(model.parameters()))
    shape = estimate.Shape.from_config(json.loads((tiny_dir() / "config.json").read_text()))
    assert sum(shape.parameters()) == real


def test_trainable_count_matches_lora_on_the_real_model():
    from mlx.utils import tree_flatten
    from mlx_lm.utils import load

    from engine import adapters

    c = cfg("lora.rank=4", "lora.num_layers=2", "lora.keys=[self_attn.q_proj, mlp.down_proj]")
    model, _ = load(str(tiny_dir()))
    adapters.apply_adapters(model, c)
    real = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    shape = estimate.Shape.from_config(json.loads((tiny_dir() / "config.json").read_text()))
    assert estimate._trainable(shape, c) == real


def test_small_budget_will_not_fit_and_says_what_to_change():
    e = estimate.preflight(cfg("train.batch_size=16", "train.max_seq_length=1024"), *models.describe("builtin:tiny"), 50_000_000, "test budget")
    assert e.verdict == "will not fit"
    text = "\n".join(e.lines())
    assert "will not fit" in text and "50 MB" not in text
    assert any("train.grad_checkpoint=true" in a for a in e.advice)
    assert any("train.micro_batch_size=8" in a for a in e.advice)
    assert any("quantize.bits=4" in a for a in e.advice)


def test_verdicts_follow_the_budget():
    c = cfg("train.batch_size=4", "train.max_seq_length=128")
    need = estimate.preflight(c, *models.describe("builtin:tiny"), 10**12, "x").total_gb * 1e9
    assert estimate.preflight(c, *models.describe("builtin:tiny"), int(need * 2), "x").verdict == "fits"
    assert estimate.preflight(c, *models.describe("builtin:tiny"), int(need * 1.1), "x").verdict == "tight"
    assert estimate.preflight(c, *models.describe("builtin:tiny"), int(need * 0.9), "x").verdict == "will not fit"


@pytest.mark.parametrize("change", [["train.grad_checkpoint=true"], ["train.micro_batch_size=1"], ["train.max_seq_length=64"]])
def test_memory_savers_lower_the_estimate(change):
    base = cfg("train.batch_size=8", "train.max_seq_length=256")
    saver = cfg("train.batch_size=8", "train.max_seq_length=256", *change)
    assert estimate.preflight(saver, *models.describe("builtin:tiny"), 10**12, "x").activations_gb < estimate.preflight(base, *models.describe("builtin:tiny"), 10**12, "x").activations_gb


def test_quantized_weights_are_smaller():
    c = cfg()
    shape_cfg, weights = models.describe("builtin:small")
    plain = estimate.estimate(c, shape_cfg, weights, 10**12, "x")
    four_bit = estimate.estimate(c, shape_cfg, weights, 10**12, "x", quant_bits=4, quant_group=64)
    assert four_bit.weights_gb < 0.5 * plain.weights_gb


def test_estimate_command(tmp_path):
    import subprocess, sys

    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "estimate", "demo", "--set", "train.batch_size=64", "--set", "train.max_seq_length=2048", "--set", "memory.limit_gb=1"],
        capture_output=True, text=True, cwd=config.REPO_ROOT, timeout=120,
    )
    assert result.returncode == 1
    assert "of 1.0 GB (memory.limit_gb): will not fit" in result.stdout
    assert "train.grad_checkpoint=true saves about" in result.stdout


def test_estimate_command_judges_against_the_limit_a_run_gets():
    import subprocess, sys

    from engine import memory

    total, source = memory.backend_memory()
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "estimate", "demo"], capture_output=True, text=True, cwd=config.REPO_ROOT, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    # the same budget as `lora-mlx train` (memory.limit_gb 0: 90% of the backend's memory) and the dashboard
    assert f"of {total * 0.9 / 1e9:.1f} GB (90% of {source}): fits" in result.stdout
