"""The search: section: every form it may take, and every bad input, checked by the message a user sees."""

from pathlib import Path

import optuna
import pytest

from engine import config, search
from engine.config import ConfigError

DATA = config.REPO_ROOT / "presets" / "data" / "demo"
BASE = f"model: builtin:tiny\ndata: {DATA}\ntrain:\n  learning_rate: 5.0e-4\n"


def space_of(tmp_path: Path, text: str, base: str = BASE) -> search.SearchSpace:
    path = tmp_path / "preset.yaml"
    path.write_text(base + text)
    cfg = config.load(str(path))
    return search.parse(config.read_yaml(path).get("search"), str(path), cfg)


def error_of(tmp_path: Path, text: str, base: str = BASE) -> str:
    with pytest.raises(ConfigError) as info:
        space_of(tmp_path, text, base)
    return str(info.value).replace(str(tmp_path / "preset.yaml"), "P")


def test_every_form_of_entry(tmp_path):
    space = space_of(tmp_path, """search:
  train.learning_rate: {low: 1e-5, high: 1.0e-3, log: true}   # 1e-5 is a string to PyYAML: read as a number
  train.warmup_steps: {type: int, low: 0, high: 20, step: 10}
  lora:
    rank: [4, 8, 16]
    alpha: {type: categorical, choices: [8, 16]}
    dropout: {low: 0.0, high: 0.2, step: 0.1}
  train.lr_schedule: [constant, cosine]
""")
    params = {p.key: p for p in space.params}
    assert list(params) == ["train.learning_rate", "train.warmup_steps", "lora.rank", "lora.alpha", "lora.dropout", "train.lr_schedule"]
    assert params["train.learning_rate"] == search.Param("train.learning_rate", "float", 1e-5, 1e-3, log=True)
    assert params["train.warmup_steps"].grid_values() == [0, 10, 20]
    assert params["lora.alpha"].choices == (8.0, 16.0)  # in the key's own type
    assert params["lora.dropout"].grid_values() == [0.0, 0.1, 0.2]
    assert space.grid_size() is None  # the learning rate is continuous
    assert not space.is_default


def test_suggest_and_apply_give_a_valid_config(tmp_path):
    space = space_of(tmp_path, "search:\n  train.learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true}\n  lora.rank: {low: 4, high: 16, step: 4}\n  lora.alpha: [8, 32]\n")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(5):
        trial = study.ask()
        values = space.suggest(trial)
        assert 1e-5 <= values["train.learning_rate"] <= 1e-3
        assert values["lora.rank"] in (4, 8, 12, 16)
        cfg = search.apply(config.load(str(tmp_path / "preset.yaml")), values)
        assert (cfg.lora.rank, cfg.lora.alpha, cfg.train.learning_rate) == (values["lora.rank"], float(values["lora.alpha"]), values["train.learning_rate"])
        assert isinstance(cfg.lora.alpha, float)


def test_default_space_follows_the_preset(tmp_path):
    space = space_of(tmp_path, "")
    assert space.is_default
    lr = space.params[0]
    assert (lr.key, lr.low, lr.high, lr.log) == ("train.learning_rate", pytest.approx(5e-5), pytest.approx(5e-3), True)
    assert [p.key for p in space.params] == ["train.learning_rate", "lora.rank", "lora.alpha", "lora.dropout"]
    full = space_of(tmp_path, "fine_tune_type: full\n")
    assert [p.key for p in full.params] == ["train.learning_rate"]


def test_grid_needs_choices_or_steps(tmp_path):
    space = space_of(tmp_path, "search:\n  lora.rank: [4, 8]\n  train.warmup_steps: {low: 0, high: 4, step: 2}\n")
    assert space.grid() == {"lora.rank": [4, 8], "train.warmup_steps": [0, 2, 4]}
    assert space.grid_size() == 6
    continuous = space_of(tmp_path, "search:\n  train.learning_rate: {low: 1.0e-5, high: 1.0e-3}\n")
    with pytest.raises(ConfigError, match=r"--sampler grid: train.learning_rate is a continuous range \(float 1e-05..0.001\); a grid needs choices or a step"):
        continuous.grid()
    with pytest.raises(ConfigError, match="the default space has one: write a search: section"):
        space_of(tmp_path, "").grid()


BAD = [
    ("search:\n  train.learnig_rate: {low: 1, high: 2}\n",
     "P:6: search: train.learnig_rate: unknown parameter (did you mean 'train.learning_rate'?)"),
    ("search:\n  rnak: [4, 8]\n", "P:6: search: rnak: unknown parameter (did you mean 'lora.rank'?)"),
    ("search:\n  model: [builtin:tiny, builtin:small]\n",
     "P:6: search: model: cannot be searched: every trial trains the same base model (it is loaded, and quantized, once per study); searchable: fine_tune_type, "),
    ("search:\n  data.path: [a, b]\n", "P:6: search: data.path: cannot be searched: every trial trains and is measured on the same data"),
    ("search:\n  seed: [1, 2]\n", "P:6: search: seed: cannot be searched: every trial uses the preset's seed"),
    ("search:\n  train.iters: {low: 10, high: 20}\n", "P:6: search: train.iters: cannot be searched: it changes what the validation loss measures, or when"),
    ("search:\n  memory.limit_gb: [1, 2]\n", "P:6: search: memory.limit_gb: cannot be searched: it does not change what is learned"),
    ("search:\n  quantize.bits: [0, 4]\n", "P:6: search: quantize.bits: cannot be searched: every trial trains the same base model"),
    ("search:\n  lora.keys: [[a], [b]]\n", "P:6: search: lora.keys: cannot be searched: a list cannot be searched; fix it in the preset"),
    ("search:\n  lora.rank: {low: 8, high: 8}\n", "P:6: search: lora.rank: empty range: low and high are both 8 (a fixed value belongs in the preset)"),
    ("search:\n  train.learning_rate: {low: 1.0e-3, high: 1.0e-5}\n", "P:6: search: train.learning_rate: empty range: low 0.001 is above high 1e-05"),
    ("search:\n  lora.dropout:\n    low: 0.0\n    high: 0.5\n    log: true\n", "P:7: search: lora.dropout: a log range needs low > 0, got 0"),
    ("search:\n  train.learning_rate:\n    low: 0\n    high: 1.0e-3\n",
     "P:7: search: train.learning_rate: low must be a number > 0.0 and <= 10.0, got 0"),
    ("search:\n  lora.dropout: {low: 0.0, high: 1.5}\n", "P:6: search: lora.dropout: high must be a number >= 0.0 and <= 0.99, got 1.5"),
    ("search:\n  lora.rank:\n    - 8\n    - 0\n", "P:8: search: lora.rank: choice must be an integer >= 1 and <= 4096, got 0"),
    ("search:\n  train.optimizer: [adam, lion]\n", "P:6: search: train.optimizer: choice must be one of adam, adamw, sgd, got 'lion'"),
    ("search:\n  lora.rank:\n    low: 4\n    hgih: 8\n", "P:8: search: lora.rank: unknown field 'hgih' (did you mean 'high'?); fields: type, low, high, log, step, choices"),
    ("search:\n  lora.rank: {type: float, low: 4, high: 8}\n", "P:6: search: lora.rank: type float does not fit this key (it is int); use type: int, or choices"),
    ("search:\n  lora.rank: {type: range, low: 4, high: 8}\n", "P:6: search: lora.rank: type must be one of float, int, categorical, got 'range'"),
    ("search:\n  lora.rank: {low: 4}\n", "P:6: search: lora.rank: a range needs low and high (missing: high)"),
    ("search:\n  lora.rank: {low: 4, high: 10, step: 4}\n", "P:6: search: lora.rank: step 4 does not divide the range 4..10 evenly"),
    ("search:\n  lora.rank: {low: 4, high: 8, step: 0}\n", "P:6: search: lora.rank: step must be a positive integer, got 0"),
    ("search:\n  train.learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true, step: 1.0e-5}\n",
     "P:6: search: train.learning_rate: step cannot go with log: true (a log range is sampled without steps)"),
    ("search:\n  lora.rank: {low: 4, high: 8, log: yes please}\n", "P:6: search: lora.rank: log must be true or false, got 'yes please'"),
    ("search:\n  lora.num_layers: {low: -1, high: 4}\n", "P:6: search: lora.num_layers: the range -1..4 includes 0, which lora.num_layers cannot be; split it with choices"),
    ("search:\n  lora.rank: [4, 8, 4]\n", "P:6: search: lora.rank: choice 4 appears twice"),
    ("search:\n  lora.rank: [8]\n", "P:6: search: lora.rank: needs at least two choices, got 1 (a fixed value belongs in the preset)"),
    ("search:\n  lora.rank: {choices: 8}\n", "P:6: search: lora.rank: choices must be a list"),
    ("search:\n  lora.rank: {choices: [4, 8], low: 2}\n", "P:6: search: lora.rank: low does not apply to choices"),
    ("search:\n  lora.rank: {type: categorical}\n", "P:6: search: lora.rank: type categorical needs choices: [...]"),
    ("search:\n  lora.rank: 8\n", "P:6: search: lora.rank: expected a range like {low: 1, high: 8} or a list of choices, got 8"),
    ("search:\n  train.batch_size: [4, auto]\n", "P:6: search: train.batch_size: auto cannot be searched (a probe finds it)"),
    ("search:\n  lora.rank: [4, 8]\n  lora:\n    rank: [16, 32]\n", "P:8: search: lora.rank: appears twice"),
    ("search:\n", "P:5: search: empty; list the keys to search, or remove it to search the default space"),
    ("search: [lora.rank]\n", "P:5: search: must be a mapping of config keys to ranges or choices"),
    ("fine_tune_type: full\nsearch:\n  lora.rank: [4, 8]\n", "P:6: search: lora.* keys have no effect with fine_tune_type: full"),
]


@pytest.mark.parametrize("text, message", BAD, ids=[m.split(": ", 2)[-1][:40] for _, m in BAD])
def test_bad_search_sections_name_file_line_and_fix(tmp_path, text, message):
    assert error_of(tmp_path, text).startswith(message)


def test_the_run_config_ignores_the_search_section(tmp_path):
    path = tmp_path / "preset.yaml"
    path.write_text(BASE + "search:\n  lora.rank: [4, 8]\n")
    assert config.load(str(path)).lora.rank == 8
