"""The configuration pane's logic: reading, validating and saving presets with the engine's validator."""

from pathlib import Path

import pytest
import yaml

from engine import config as C
from tui import presets

DEMO = C.resolve_preset("demo")


@pytest.fixture(autouse=True)
def user_presets(tmp_path, monkeypatch):
    folder = tmp_path / "mine"
    monkeypatch.setenv("LORA_MLX_PRESETS", str(folder))
    return folder


@pytest.fixture
def base(tmp_path):
    """A preset with a relative data path and one setting, like the project's."""
    folder = tmp_path / "base"
    (folder / "data").mkdir(parents=True)
    path = folder / "base.yaml"
    path.write_text("model: builtin:tiny\ndata: data\ntrain:\n  iters: 50  # short\n")
    return path


def test_presets_come_from_the_project_and_the_user(user_presets):
    user_presets.mkdir()
    (user_presets / "fast.yaml").write_text("model: builtin:tiny\ndata: /d\n")
    found = dict(presets.list_presets())
    assert found["demo"] == DEMO and found["fast (yours)"] == user_presets / "fast.yaml"


def test_the_picker_shows_the_preset_however_its_path_was_written(base, monkeypatch):
    monkeypatch.chdir(C.REPO_ROOT)
    options, value = presets.preset_options(Path("presets/demo.yaml"))  # `lora-mlx tui presets/demo.yaml`
    assert value == str(DEMO.resolve()) and dict((v, label) for label, v in options)[value] == "demo"
    assert len(options) == len(presets.list_presets())
    options, value = presets.preset_options(base)  # a preset outside the preset folders
    assert options[-1] == ("base.yaml", str(base.resolve())) and value == str(base.resolve())
    assert presets.preset_options(None)[1] is None


def test_a_preset_reads_as_every_key_with_its_own_values_raw(base):
    preset = presets.read_preset(base)
    assert set(preset.values) == set(C.LEAF_FIELDS)
    assert preset.values["data.path"] == "data"  # as written: relative to the preset
    assert preset.values["train.iters"] == 50 and preset.values["train.batch_size"] == C.Config().train.batch_size
    assert preset.explicit == {"model", "data.path", "train.iters"}
    assert not preset.errors and not preset.problems


@pytest.mark.parametrize(
    "key, text, message",
    [
        ("train.iters", "0", "train.iters: must be an integer >= 1, got 0"),
        ("train.learning_rate", "fast", "train.learning_rate: must be a number > 0.0 and <= 10.0, got 'fast'"),
        ("train.optimizer", "adagrad", "train.optimizer: must be one of adam, adamw, sgd, got 'adagrad'"),
        ("lora.num_layers", "0", "lora.num_layers: must be an integer >= -1, not 0, got 0"),
    ],
)
def test_field_errors_are_the_engines_words(key, text, message):
    with pytest.raises(C.ConfigError) as e:
        presets.parse_value(key, text)
    assert str(e.value) == message


@pytest.mark.parametrize(
    "key, text, value",
    [("train.learning_rate", "1e-4", 1e-4), ("train.iters", "30", 30), ("lora.keys", "[self_attn.q_proj]", ["self_attn.q_proj"]), ("model", "123", "123")],
)
def test_field_values_parse_like_set_overrides(key, text, value):
    assert presets.parse_value(key, text) == value


def test_unknown_keys_in_a_preset_name_the_nearest(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("model: builtin:tiny\ndata: /d\ntrain:\n  learning_rat: 1e-4\n  iters: -3\n")
    preset = presets.read_preset(path)
    assert preset.problems == [f"{path}:4: train.learning_rat: unknown key (did you mean 'train.learning_rate'?)"]
    assert preset.errors == {"train.iters": f"{path}:5: train.iters: must be an integer >= 1, got -3"}


def test_values_from_the_preset_resolve_against_its_folder_and_edits_against_the_cwd(tmp_path, monkeypatch, base):
    monkeypatch.chdir(tmp_path)
    preset = presets.read_preset(base)
    cfg = presets.build_config(preset, preset.values)
    assert cfg.data.path == str(base.parent / "data")
    edited = {**preset.values, "data.path": "mydata"}
    assert presets.build_config(preset, edited).data.path == str(tmp_path / "mydata")


def test_a_saved_preset_holds_its_bases_keys_and_those_that_differ_from_the_defaults_with_comments(user_presets, base):
    preset = presets.read_preset(base)
    values = {**preset.values, "train.iters": 30, "lora.rank": 16}
    cfg = presets.build_config(preset, values)
    text = presets.preset_text(cfg, preset, presets.changed_keys(preset, values))
    path = presets.save_preset("base-r16", text)
    assert path == user_presets / "base-r16.yaml"
    assert text.splitlines()[0] == "# Saved from the dashboard; based on 'base', changed: lora.rank, train.iters."
    assert "  iters: 30  # Optimizer steps to train for." in text.splitlines()
    assert set(_flat(yaml.safe_load(text))) == {"model", "data.path", "lora.rank", "train.iters"}
    loaded = C.load(str(path))
    assert (loaded.train.iters, loaded.lora.rank, loaded.data.path) == (30, 16, cfg.data.path)


def test_preset_names_are_checked(user_presets):
    assert presets.check_preset_name("demo") == f"a preset named 'demo' already exists in {DEMO.parent}"
    assert "use letters" in presets.check_preset_name("../evil")
    assert "use letters" in presets.check_preset_name("")
    assert presets.check_preset_name("mine-2") is None


def _flat(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"
