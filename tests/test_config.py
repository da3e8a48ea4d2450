"""Config validation: every bad-input path, checked by the message a user sees."""

from pathlib import Path

import pytest

from engine import config
from engine.config import ConfigError

REQUIRED_KEYS = [
    "model", "data", "seed", "fine_tune_type", "lora.rank", "lora.alpha", "lora.dropout", "lora.num_layers",
    "lora.keys", "train.iters", "train.batch_size", "train.grad_accumulation", "train.learning_rate",
    "train.lr_schedule", "train.optimizer", "train.max_seq_length", "train.mask_prompt", "train.grad_checkpoint",
    "train.steps_per_report", "train.steps_per_eval", "train.save_every",
]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "preset.yaml"
    path.write_text(text)
    return path


def error_of(preset, overrides=()):
    with pytest.raises(ConfigError) as info:
        config.load(str(preset), list(overrides))
    return str(info.value)


BASE = "model: builtin:tiny\ndata: data/demo\n"


def test_every_documented_key_can_be_set(tmp_path):
    preset = write(tmp_path, BASE)
    values = {
        "model": "builtin:small", "data": "elsewhere", "seed": "7", "fine_tune_type": "dora", "lora.rank": "4",
        "lora.alpha": "8", "lora.dropout": "0.1", "lora.num_layers": "2", "lora.keys": "[self_attn.q_proj]",
        "train.iters": "50", "train.batch_size": "2", "train.grad_accumulation": "3", "train.learning_rate": "3e-4",
        "train.lr_schedule": "cosine", "train.optimizer": "adamw", "train.max_seq_length": "128",
        "train.mask_prompt": "true", "train.grad_checkpoint": "true", "train.steps_per_report": "5",
        "train.steps_per_eval": "25", "train.save_every": "10",
    }
    assert set(values) == set(REQUIRED_KEYS)
    cfg = config.load(str(preset), [f"{k}={v}" for k, v in values.items()])
    assert cfg.model == "builtin:small"
    assert cfg.data.path == str((Path.cwd() / "elsewhere").resolve())
    assert (cfg.seed, cfg.fine_tune_type, cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout) == (7, "dora", 4, 8.0, 0.1)
    assert (cfg.lora.num_layers, cfg.lora.keys) == (2, ["self_attn.q_proj"])
    t = cfg.train
    assert (t.iters, t.batch_size, t.grad_accumulation, t.learning_rate) == (50, 2, 3, 3e-4)
    assert (t.lr_schedule, t.optimizer, t.max_seq_length, t.mask_prompt, t.grad_checkpoint) == ("cosine", "adamw", 128, True, True)
    assert (t.steps_per_report, t.steps_per_eval, t.save_every) == (5, 25, 10)


def test_preset_paths_are_relative_to_the_preset_file(tmp_path):
    cfg = config.load(str(write(tmp_path, BASE)))
    assert cfg.data.path == str(tmp_path / "data" / "demo")


def test_data_may_be_a_mapping(tmp_path):
    cfg = config.load(str(write(tmp_path, "model: builtin:tiny\ndata:\n  path: d\n  skip_invalid: true\n")))
    assert cfg.data.skip_invalid is True and cfg.data.path.endswith("/d")


def test_scientific_notation_is_a_number_even_without_a_float_resolver(tmp_path):
    # PyYAML reads 1e-5 as a string (YAML 1.1); mlx_lm.lora changes that process-wide. Both must work.
    cfg = config.load(str(write(tmp_path, BASE + "train:\n  learning_rate: 1e-5\n")))
    assert cfg.train.learning_rate == 1e-5


def test_unknown_key_names_file_line_and_nearest_key(tmp_path):
    preset = write(tmp_path, BASE + "train:\n  iters: 10\n  learing_rate: 0.001\n")
    msg = error_of(preset)
    assert f"{preset}:5:" in msg
    assert "train.learing_rate: unknown key" in msg
    assert "did you mean 'train.learning_rate'" in msg


def test_unknown_top_level_key(tmp_path):
    msg = error_of(write(tmp_path, BASE + "seeds: 3\n"))
    assert ":3: seeds: unknown key (did you mean 'seed'?)" in msg


def test_key_in_the_wrong_section_suggests_the_right_one(tmp_path):
    msg = error_of(write(tmp_path, BASE + "lora:\n  iters: 3\n"))
    assert "lora.iters: unknown key" in msg and "train.iters" in msg


def test_wrong_type_names_key_and_allowed_range(tmp_path):
    msg = error_of(write(tmp_path, BASE + "train:\n  batch_size: four\n"))
    assert ":4: train.batch_size: must be an integer >= 1 and <= 65536, or auto, got 'four'" in msg


def test_out_of_range_value(tmp_path):
    msg = error_of(write(tmp_path, BASE + "lora:\n  dropout: 1.5\n"))
    assert "lora.dropout: must be a number >= 0.0 and <= 0.99, got 1.5" in msg


def test_learning_rate_must_be_positive(tmp_path):
    msg = error_of(write(tmp_path, BASE + "train:\n  learning_rate: 0\n"))
    assert "train.learning_rate: must be a number > 0.0" in msg


def test_bad_choice_lists_the_choices(tmp_path):
    msg = error_of(write(tmp_path, BASE + "fine_tune_type: qlora\n"))
    assert "fine_tune_type: must be one of lora, dora, full, got 'qlora'" in msg


def test_bool_is_not_an_int_and_int_is_not_a_bool(tmp_path):
    assert "train.iters: must be an integer" in error_of(write(tmp_path, BASE + "train:\n  iters: true\n"))
    assert "train.mask_prompt: must be true or false, got 1" in error_of(write(tmp_path, BASE + "train:\n  mask_prompt: 1\n"))


def test_empty_file(tmp_path):
    msg = error_of(write(tmp_path, ""))
    assert str(tmp_path / "preset.yaml") in msg and "the preset is empty" in msg


def test_comment_only_file_is_empty(tmp_path):
    assert "the preset is empty" in error_of(write(tmp_path, "# nothing here\n"))


def test_not_a_mapping(tmp_path):
    assert "must be a mapping" in error_of(write(tmp_path, "- a\n- b\n"))


def test_invalid_yaml_names_the_line(tmp_path):
    msg = error_of(write(tmp_path, BASE + "train:\n  iters: [1, 2\n"))
    assert "invalid YAML" in msg and f"{tmp_path / 'preset.yaml'}:" in msg


def test_duplicate_key(tmp_path):
    assert "train.iters: key appears twice" in error_of(write(tmp_path, BASE + "train:\n  iters: 1\n  iters: 2\n"))


def test_section_given_a_scalar(tmp_path):
    assert ":3: train: must be a mapping" in error_of(write(tmp_path, BASE + "train: 5\n"))


def test_missing_data(tmp_path):
    assert "data: no training data given" in error_of(write(tmp_path, "model: builtin:tiny\n"))


def test_unknown_builtin_model(tmp_path):
    assert "unknown builtin model 'builtin:huge'" in error_of(write(tmp_path, "model: builtin:huge\ndata: d\n"))


def test_override_errors_name_the_override(tmp_path):
    preset = write(tmp_path, BASE)
    assert "--set train.iters=abc: train.iters: must be an integer >= 1" in error_of(preset, ["train.iters=abc"])
    assert "--set trian.iters=3: trian.iters: unknown key (did you mean 'train.iters'?)" in error_of(preset, ["trian.iters=3"])
    assert "expected KEY=VALUE" in error_of(preset, ["train.iters"])


def test_override_beats_the_preset(tmp_path):
    cfg = config.load(str(write(tmp_path, BASE + "train:\n  iters: 10\n")), ["train.iters=20"])
    assert cfg.train.iters == 20


def test_unknown_preset_name_suggests_a_known_one():
    with pytest.raises(ConfigError, match="preset 'dmeo' not found \\(did you mean 'demo'\\?\\)"):
        config.resolve_preset("dmeo")


def test_bare_name_resolves_to_presets_folder():
    assert config.resolve_preset("demo") == config.REPO_ROOT / "presets" / "demo.yaml"


def test_missing_preset_file(tmp_path):
    assert "preset file not found" in error_of(tmp_path / "nope.yaml")


def test_round_trip_through_a_run_config(tmp_path):
    cfg = config.load(str(write(tmp_path, BASE)), ["lora.keys=[self_attn.q_proj, mlp.up_proj]", "train.learning_rate=2e-4"])
    import yaml

    again = config.from_dict(yaml.safe_load(config.dump(cfg)))
    assert again == cfg


def test_every_field_has_a_doc():
    for key, f in config.LEAF_FIELDS.items():
        assert f.metadata.get("doc"), key


def test_num_layers_zero_is_refused(tmp_path):
    assert "lora.num_layers: must be an integer >= -1, not 0, got 0" in error_of(write(tmp_path, BASE + "lora:\n  num_layers: 0\n"))


def test_config_reference_doc_is_in_sync():
    doc = (config.REPO_ROOT / "docs" / "config.md").read_text()
    from engine.config_reference import reference_markdown

    assert doc == reference_markdown(), "regenerate with: python -m engine.config_reference > docs/config.md"
