"""The engine on builtin:tiny: training, adapters mlx-lm can load, exact resume, failures."""

import json
import threading
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from engine import adapters as engine_adapters, batches, checkpoint, config, data, models, protocol as P, run, trainer

DEMO = str(config.REPO_ROOT / "presets" / "demo.yaml")
FAST = ["train.max_seq_length=64", "train.batch_size=4", "train.learning_rate=1e-3", "train.steps_per_report=1"]


def make_cfg(*overrides):
    return config.load(DEMO, FAST + list(overrides))


def train_run(run_dir: Path, *overrides, stop_at=None, control=None):
    events: list[P.Event] = []
    run.start(make_cfg(*overrides), run_dir, events.append, control or trainer.Control(), stop_at=stop_at)
    return events


def resume_run(run_dir: Path, *overrides):
    events: list[P.Event] = []
    run.resume(run_dir, events.append, trainer.Control(), list(overrides))
    return events


def losses(events):
    return [(e.step, e.train_loss) for e in events if isinstance(e, P.StepReported)]


def val_losses(events):
    return [(e.step, e.val_loss) for e in events if isinstance(e, P.EvalReported)]


def adapters(run_dir: Path) -> dict:
    return mx.load(str(run_dir / "adapters" / "adapters.safetensors"))


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(mx.max(mx.abs(a[k] - b[k])).item() for k in a)


@pytest.mark.parametrize("fine_tune_type, bits", [("lora", 0), ("dora", 0), ("full", 0), ("lora", 4), ("dora", 4)])
def test_training_reduces_validation_loss_and_adapters_load_in_mlx_lm(tmp_path, fine_tune_type, bits):
    events = train_run(tmp_path / "run", f"fine_tune_type={fine_tune_type}", f"quantize.bits={bits}", "train.iters=30", "train.steps_per_eval=30")
    vals = val_losses(events)
    assert [s for s, _ in vals] == [0, 30]
    assert vals[-1][1] < vals[0][1] - 0.5, vals

    # mlx-lm loads the adapters as they are and computes the same validation loss.
    from mlx_lm.utils import load

    cfg = make_cfg()
    adapter_cfg = json.loads((tmp_path / "run" / "adapters" / "adapter_config.json").read_text())
    if bits:  # QLoRA: the adapters belong to the quantized copy of the base
        assert json.loads((Path(adapter_cfg["model_path"]) / "config.json").read_text())["quantization"]["bits"] == bits
    model, tokenizer = load(adapter_cfg["model_path"], adapter_path=str(tmp_path / "run" / "adapters"))
    splits = data.load_splits(cfg.data.path, tokenizer, max_seq_length=64, batch_size=4, mask_prompt=cfg.train.mask_prompt)
    val = trainer.evaluate(model, batches.eval_batches(splits["valid"], 4, 64, cfg.train.val_batches))
    assert val == pytest.approx(vals[-1][1], abs=1e-4)


def test_metrics_jsonl_has_the_documented_lines(tmp_path):
    train_run(tmp_path / "run", "train.iters=4", "train.steps_per_eval=2")
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_lines = [l for l in lines if l["event"] == "train"]
    assert [l["step"] for l in train_lines] == [1, 2, 3, 4]
    for key in ("train_loss", "learning_rate", "tokens_per_second", "trained_tokens", "peak_memory_gb"):
        assert all(isinstance(l[key], (int, float)) for l in train_lines), key
    assert [l["step"] for l in lines if l["event"] == "eval"] == [0, 2, 4]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "finished"
    assert record["environment"]["blas"]["library"] in ("mkl", "openblas", "reference", "accelerate")
    assert record["environment"]["blas"]["gflops"] > 0
    cfg = config.from_dict(__import__("yaml").safe_load((tmp_path / "run" / "config.yaml").read_text()))
    assert cfg.train.iters == 4


RESUME_SETTINGS = [
    "train.iters=12",
    "train.save_every=4",
    "train.steps_per_eval=6",
    "train.grad_accumulation=2",
    "train.lr_schedule=cosine",
    "train.warmup_steps=3",
    "lora.dropout=0.1",  # dropout draws random numbers: the RNG must be restored too
    "train.sample_prompt=hello",  # sampling at each eval must not disturb training
]


def test_resume_is_exact(tmp_path):
    straight = train_run(tmp_path / "a", *RESUME_SETTINGS)
    first = train_run(tmp_path / "b", *RESUME_SETTINGS, stop_at=5)
    assert json.loads((tmp_path / "b" / "run.json").read_text())["status"] == "stopped"
    second = resume_run(tmp_path / "b")
    assert losses(first) + losses(second) == losses(straight)
    assert val_losses(first) + val_losses(second) == val_losses(straight)
    assert max_abs_diff(adapters(tmp_path / "a"), adapters(tmp_path / "b")) <= 1e-6
    samples = [e for e in straight if isinstance(e, P.SampleGenerated)]
    assert [s.step for s in samples] == [0, 6, 12] and all(s.prompt == "hello" and s.text for s in samples)


def test_a_weights_only_resume_would_fail_the_parity_check(tmp_path):
    """What mlx-lm's --resume-adapter-file does: weights back, but a fresh optimizer and data order."""
    train_run(tmp_path / "a", *RESUME_SETTINGS)
    train_run(tmp_path / "b", *RESUME_SETTINGS, stop_at=6)
    cfg = make_cfg(*RESUME_SETTINGS)
    loaded = checkpoint.load_latest(tmp_path / "b" / "checkpoints", cfg, lambda *a: None)
    model, tokenizer, _ = models.load(cfg.model)
    engine_adapters.apply_adapters(model, cfg)
    engine_adapters.load_adapter_weights(model, loaded.adapters, loaded.path)
    optimizer = engine_adapters.build_optimizer(cfg.train)
    splits = data.load_splits(cfg.data.path, tokenizer, max_seq_length=64, batch_size=4, mask_prompt=cfg.train.mask_prompt)
    stream = batches.BatchStream(splits["train"], 4, cfg.seed, 64)
    state = trainer.TrainState(step=6)
    trainer.train(
        model=model, optimizer=optimizer, stream=stream, eval_batches=None, args=cfg.train, seed=cfg.seed,
        state=state, emit=lambda e: None, save=lambda s, r: "", control=trainer.Control(),
    )
    from mlx.utils import tree_flatten

    weights_only = dict(tree_flatten(model.trainable_parameters()))
    assert max_abs_diff(adapters(tmp_path / "a"), weights_only) > 1e-3


def test_pause_and_resume_keep_the_exact_trajectory(tmp_path):
    straight = train_run(tmp_path / "a", "train.iters=10", "lora.dropout=0.1")
    control = trainer.Control()
    seen: list[P.Event] = []

    def emit(event):
        seen.append(event)
        if isinstance(event, P.StepReported) and event.step == 4:
            control.submit(P.Pause())
            control.submit(P.SaveCheckpoint())  # asked while paused: written without resuming
        if isinstance(event, P.Paused):
            threading.Timer(0.3, control.submit, [P.Resume()]).start()

    run.start(make_cfg("train.iters=10", "lora.dropout=0.1"), tmp_path / "b", emit, control)
    kinds = [type(e).__name__ for e in seen]
    assert kinds.count("Paused") == 1 and kinds.count("Resumed") == 1
    paused_at = kinds.index("Paused")
    assert any(isinstance(e, P.CheckpointSaved) and e.reason == "requested" for e in seen[paused_at:])
    assert losses(seen) == losses(straight)
    assert max_abs_diff(adapters(tmp_path / "a"), adapters(tmp_path / "b")) == 0.0


def test_stop_saves_a_checkpoint_and_resume_finishes(tmp_path):
    control = trainer.Control()

    def emit(event):
        if isinstance(event, P.StepReported) and event.step == 3:
            control.submit(P.Stop())

    run.start(make_cfg("train.iters=8"), tmp_path / "run", emit, control)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "run" / "checkpoints")][0] == "step-0000003"
    events = resume_run(tmp_path / "run")
    assert events[-1].step == 8 and not events[-1].stopped_early


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path):
    straight = train_run(tmp_path / "a", *RESUME_SETTINGS)
    train_run(tmp_path / "b", *RESUME_SETTINGS, stop_at=8)
    latest = tmp_path / "b" / "checkpoints" / "step-0000008"
    (latest / "optimizer.safetensors").write_bytes(b"garbage")
    events = resume_run(tmp_path / "b")
    warnings = [e.text for e in events if isinstance(e, P.LogMessage) and e.level == "warning"]
    assert any("step-0000008" in w and "optimizer.safetensors is truncated" in w for w in warnings), warnings
    started = next(e for e in events if isinstance(e, P.RunStarted))
    assert started.start_step == 6  # the previous intact checkpoint (the best, at the step-6 eval)
    assert max_abs_diff(adapters(tmp_path / "a"), adapters(tmp_path / "b")) <= 1e-6
    assert losses(events)[-1] == losses(straight)[-1]


def test_checkpoint_from_another_rank_is_refused(tmp_path):
    train_run(tmp_path / "run", "train.iters=6", stop_at=2)
    cfg_path = tmp_path / "run" / "config.yaml"
    cfg_path.write_text(cfg_path.read_text().replace("rank: 8", "rank: 4"))
    with pytest.raises(checkpoint.CheckpointError, match="lora.rank: checkpoint has 8, config has 4"):
        resume_run(tmp_path / "run")


def test_resume_refuses_to_change_the_trajectory(tmp_path):
    train_run(tmp_path / "run", "train.iters=6", stop_at=2)
    with pytest.raises(config.ConfigError, match="train.learning_rate cannot change on resume"):
        resume_run(tmp_path / "run", "train.learning_rate=0.1")
    events = resume_run(tmp_path / "run", "train.iters=8")
    assert events[-1].step == 8


def test_non_finite_loss_skips_updates_then_stops_without_saving_nan(tmp_path):
    cfg = make_cfg("train.iters=20", "train.max_bad_steps=3")
    model, tokenizer, _ = models.load(cfg.model)
    engine_adapters.apply_adapters(model, cfg)
    optimizer = engine_adapters.build_optimizer(cfg.train)
    splits = data.load_splits(cfg.data.path, tokenizer, max_seq_length=64, batch_size=4, mask_prompt=cfg.train.mask_prompt)
    stream = batches.BatchStream(splits["train"], 4, cfg.seed, 64)
    before = {k: np.array(v) for k, v in __import__("mlx.utils", fromlist=["x"]).tree_flatten(model.trainable_parameters())}

    def poisoned_loss(model, tokens, lengths):
        value, ntoks = trainer.masked_loss(model, tokens, lengths)
        return value * float("nan"), ntoks

    events, saves = [], []
    with pytest.raises(trainer.RunAborted, match="not finite for 3 steps in a row"):
        trainer.train(
            model=model, optimizer=optimizer, stream=stream, eval_batches=None, args=cfg.train, seed=0,
            state=trainer.TrainState(), emit=events.append, save=lambda s, r: saves.append(r) or "",
            control=trainer.Control(), loss=poisoned_loss,
        )
    assert saves == []
    assert sum(isinstance(e, P.LogMessage) and "update skipped" in e.text for e in events) == 3
    from mlx.utils import tree_flatten

    for k, v in tree_flatten(model.trainable_parameters()):
        assert np.array_equal(np.array(v), before[k]), k  # no update was applied


def test_running_short_of_memory_halves_the_micro_batch_and_keeps_the_update(tmp_path):
    settings = ["train.iters=4", "train.batch_size=8", "train.steps_per_eval=1000"]
    whole = train_run(tmp_path / "whole", *settings)
    single = train_run(tmp_path / "single", *settings, "train.micro_batch_size=1")
    peak_whole = max(e.peak_memory_gb for e in whole if isinstance(e, P.StepReported))
    peak_single = max(e.peak_memory_gb for e in single if isinstance(e, P.StepReported))
    assert peak_single < peak_whole
    limit_gb = (peak_single + peak_whole) / 2

    events = train_run(tmp_path / "limited", *settings, f"memory.limit_gb={limit_gb}")
    warnings = [e.text for e in events if isinstance(e, P.LogMessage) and "ran out of memory" in e.text]
    assert warnings and "the same examples and the same update" in warnings[0]
    assert any(isinstance(e, P.CheckpointSaved) and e.reason == "memory" for e in events)
    assert isinstance(events[-1], P.RunFinished) and events[-1].step == 4
    # Summed-loss micro-batches give the whole batch's gradient: same losses, same weights.
    assert [s for s, _ in losses(events)] == [s for s, _ in losses(whole)]
    # Float summation order differs (more so on a GPU, whose fp32 matmuls may use TF32).
    assert [v for _, v in losses(events)] == pytest.approx([v for _, v in losses(whole)], rel=1e-3)
    # Only float summation order differs; Adam's g / sqrt(v) magnifies it where gradients are ~0,
    # and on a GPU (TF32 matmuls, measured on CUDA: 7e-3) far more than on the CPU.
    tolerance = 2e-4 if mx.default_device() == mx.cpu else 1e-2
    assert max_abs_diff(adapters(tmp_path / "whole"), adapters(tmp_path / "limited")) < tolerance
    assert max_abs_diff(adapters(tmp_path / "whole"), adapters(tmp_path / "single")) < tolerance
    saved = checkpoint.load_latest(tmp_path / "limited" / "checkpoints", make_cfg(*settings), lambda *a: None)
    assert saved.state["train_state"]["micro_splits"] > 1  # a resume keeps the smaller micro-batch


def test_a_step_that_cannot_fit_at_all_stops_with_advice(tmp_path):
    with pytest.raises(trainer.RunAborted, match="does not fit in memory even one sequence at a time"):
        train_run(tmp_path / "run", "train.iters=2", "train.batch_size=2", "memory.limit_gb=0.000001")


def test_batch_size_auto_probes_what_fits_and_records_it(tmp_path):
    roomy = train_run(tmp_path / "roomy", "train.iters=1", "train.batch_size=auto", "train.steps_per_eval=1000")
    found = config.from_dict(__import__("yaml").safe_load((tmp_path / "roomy" / "config.yaml").read_text())).train.batch_size
    assert found == 64  # the ceiling: the tiny model fits easily
    assert any(isinstance(e, P.LogMessage) and "train.batch_size auto: 64" in e.text for e in roomy)

    tight = train_run(tmp_path / "tight", "train.iters=1", "train.batch_size=auto", "train.steps_per_eval=1000", "memory.limit_gb=0.03")
    small = config.from_dict(__import__("yaml").safe_load((tmp_path / "tight" / "config.yaml").read_text())).train.batch_size
    assert 1 <= small < found
    assert isinstance(tight[-1], P.RunFinished)


def test_micro_batch_size_auto_keeps_the_batch(tmp_path):
    train_run(tmp_path / "run", "train.iters=1", "train.batch_size=32", "train.micro_batch_size=auto", "memory.limit_gb=0.03", "train.steps_per_eval=1000")
    resolved = config.from_dict(__import__("yaml").safe_load((tmp_path / "run" / "config.yaml").read_text())).train
    assert resolved.batch_size == 32 and 1 <= resolved.micro_batch_size < 32


def test_a_reused_base_gives_every_run_the_same_start(tmp_path):
    """Trials of a study share one loaded base; each must train exactly as if it loaded its own."""
    base = models.Base(make_cfg().model)
    first = [e for e in []]
    for i, kind in enumerate(["full", "dora", "lora"]):
        events: list[P.Event] = []
        run.start(make_cfg(f"fine_tune_type={kind}", "train.iters=3", "train.grad_checkpoint=true"), tmp_path / f"shared{i}", events.append, trainer.Control(), base=base)
        first.append(losses(events))
    alone = train_run(tmp_path / "alone", "fine_tune_type=lora", "train.iters=3", "train.grad_checkpoint=true")
    assert first[-1] == losses(alone)
    assert max_abs_diff(adapters(tmp_path / "shared2"), adapters(tmp_path / "alone")) == 0.0
