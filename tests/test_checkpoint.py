"""Checkpoint files: atomic writes, corruption detection, fallback, compatibility, pruning."""

import json
import pickle
from pathlib import Path

import mlx.core as mx
import pytest

from engine import checkpoint, config, protocol
from engine.checkpoint import CheckpointError


def cfg_for(tmp_path, *overrides):
    preset = tmp_path / "p.yaml"
    preset.write_text("model: builtin:tiny\ndata: d\n")
    return config.load(str(preset), list(overrides))


def save_step(folder: Path, cfg, step: int) -> Path:
    adapters = {"layers.0.q.lora_a": mx.full((4, 2), float(step))}
    optimizer = {"step": mx.array(step, mx.uint64), "layers.0.q.lora_a.m": mx.zeros((4, 2))}
    state = {"fingerprint": checkpoint.fingerprint(cfg), "train_state": {"step": step}}
    return checkpoint.save(folder, step, adapters, optimizer, state, {"fine_tune_type": "lora"})


def silent(level, text):
    pass


def test_save_then_load_round_trips_arrays_and_state(tmp_path):
    cfg = cfg_for(tmp_path)
    save_step(tmp_path / "ck", cfg, 5)
    loaded = checkpoint.load_latest(tmp_path / "ck", cfg, silent)
    assert loaded.state["train_state"] == {"step": 5}
    assert mx.array_equal(loaded.adapters["layers.0.q.lora_a"], mx.full((4, 2), 5.0)).item()
    assert loaded.optimizer["step"].item() == 5 and loaded.optimizer["step"].dtype == mx.uint64
    assert not list((tmp_path / "ck").glob(".tmp-*"))  # nothing left half-written


def test_truncated_latest_falls_back_to_previous_with_a_message(tmp_path):
    cfg = cfg_for(tmp_path)
    save_step(tmp_path / "ck", cfg, 10)
    latest = save_step(tmp_path / "ck", cfg, 20)
    data = (latest / "adapters.safetensors").read_bytes()
    (latest / "adapters.safetensors").write_bytes(data[: len(data) // 2])
    messages = []
    loaded = checkpoint.load_latest(tmp_path / "ck", cfg, lambda level, text: messages.append(text))
    assert loaded.state["train_state"]["step"] == 10
    assert "step-0000020" in messages[0] and "adapters.safetensors is truncated" in messages[0]


def test_flipped_byte_is_detected(tmp_path):
    cfg = cfg_for(tmp_path)
    latest = save_step(tmp_path / "ck", cfg, 3)
    raw = bytearray((latest / "optimizer.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (latest / "optimizer.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="optimizer.safetensors is corrupt"):
        checkpoint.verify(latest)


def test_missing_state_json_is_skipped(tmp_path):
    cfg = cfg_for(tmp_path)
    save_step(tmp_path / "ck", cfg, 1)
    latest = save_step(tmp_path / "ck", cfg, 2)
    (latest / "state.json").unlink()
    assert checkpoint.load_latest(tmp_path / "ck", cfg, silent).state["train_state"]["step"] == 1


def test_checkpoint_from_a_different_rank_is_refused(tmp_path):
    save_step(tmp_path / "ck", cfg_for(tmp_path), 4)
    with pytest.raises(CheckpointError, match="lora.rank: checkpoint has 8, config has 16"):
        checkpoint.load_latest(tmp_path / "ck", cfg_for(tmp_path, "lora.rank=16"), silent)


def test_checkpoint_from_a_different_model_is_refused(tmp_path):
    save_step(tmp_path / "ck", cfg_for(tmp_path), 4)
    with pytest.raises(CheckpointError, match="model: checkpoint has 'builtin:tiny', config has 'builtin:small'"):
        checkpoint.load_latest(tmp_path / "ck", cfg_for(tmp_path, "model=builtin:small"), silent)


def test_prune_keeps_last_n_and_the_best(tmp_path):
    cfg = cfg_for(tmp_path)
    paths = [save_step(tmp_path / "ck", cfg, s) for s in (1, 2, 3, 4, 5)]
    checkpoint.prune(tmp_path / "ck", keep_last=2, keep={paths[0]})
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "ck")] == ["step-0000005", "step-0000004", "step-0000001"]


def test_saving_the_same_step_twice_replaces_it(tmp_path):
    cfg = cfg_for(tmp_path)
    save_step(tmp_path / "ck", cfg, 7)
    save_step(tmp_path / "ck", cfg, 7)
    assert len(checkpoint.list_checkpoints(tmp_path / "ck")) == 1
    checkpoint.verify(tmp_path / "ck" / "step-0000007")


def test_no_pickle_in_a_checkpoint(tmp_path):
    path = save_step(tmp_path / "ck", cfg_for(tmp_path), 1)
    assert sorted(p.name for p in path.iterdir()) == ["adapter_config.json", "adapters.safetensors", "optimizer.safetensors", "state.json"]
    json.loads((path / "state.json").read_text())


def test_protocol_messages_pickle():
    for message in [
        protocol.StepReported(1, 0.1, 2.0, 1e-4, 100.0, 10, 0.1, 1.0),
        protocol.RunFailed(3, "boom", None, ["line"]),
        protocol.Pause(),
        protocol.Stop(),
    ]:
        assert pickle.loads(pickle.dumps(message)) == message
