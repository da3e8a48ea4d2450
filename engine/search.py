"""The hyperparameter search space: a preset's `search:` section, checked like the rest of the config.

Each entry names a config key and the values a study may try:

  search:
    train.learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true}   # float range
    lora.rank: {low: 4, high: 32, step: 4}                         # int range
    lora.dropout: [0.0, 0.05, 0.1]                                 # choices (shorthand)
    train.lr_schedule: {type: categorical, choices: [constant, cosine]}

`type` may be left out: it follows from the key (and `choices` means categorical). Keys may also
be nested under their section (`lora:` then `rank: ...`). Every error names the file and line.
Without a `search:` section a study searches `default_space(cfg)`. No mlx or optuna here: the
UI validates with this module too; `suggest` takes any object with Optuna's `suggest_*` methods.
"""

from __future__ import annotations

import copy
import difflib
import math
from dataclasses import dataclass
from typing import Any

import yaml

from engine import config as config_mod
from engine.config import Config, ConfigError, LEAF_FIELDS, coerce

# Keys a study may search: they change what is learned, not what is measured.
SEARCHABLE = (
    "fine_tune_type",
    "lora.rank",
    "lora.alpha",
    "lora.dropout",
    "lora.num_layers",
    "train.learning_rate",
    "train.batch_size",
    "train.grad_accumulation",
    "train.warmup_steps",
    "train.lr_schedule",
    "train.final_learning_rate",
    "train.optimizer",
    "train.weight_decay",
)

# Why each other key is fixed for a study (the message a user sees).
_FIXED_BECAUSE = {
    "model": "every trial trains the same base model (it is loaded, and quantized, once per study)",
    "data": "every trial trains and is measured on the same data",
    "seed": "every trial uses the preset's seed, so trials differ only in what is searched",
    "measure": "it changes what the validation loss measures, or when, so trials would not be comparable",
    "list": "a list cannot be searched; fix it in the preset",
}
_FIXED = {
    "model": "model", "data.path": "data", "data.skip_invalid": "data", "seed": "seed",
    "train.iters": "measure", "train.steps_per_eval": "measure", "train.val_batches": "measure",
    "train.max_seq_length": "measure", "train.mask_prompt": "measure", "lora.keys": "list",
}

FIELDS = ("type", "low", "high", "log", "step", "choices")
TYPES = ("float", "int", "categorical")


@dataclass(frozen=True)
class Param:
    """One searched key: a float or int range, or a list of choices (values in the key's type)."""

    key: str
    type: str  # float, int or categorical
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()

    def grid_values(self) -> list | None:
        """Every value the parameter can take, or None for a continuous float range."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            return list(range(self.low, self.high + 1, self.step or 1))
        if self.step is None:
            return None
        count = int(round((self.high - self.low) / self.step)) + 1
        return [round(self.low + i * self.step, 12) for i in range(count)]

    def describe(self) -> str:
        if self.type == "categorical":
            return "one of " + ", ".join(map(str, self.choices))
        text = f"{self.type} {self.low:g}..{self.high:g}"
        if self.log:
            text += " log"
        if self.step is not None and not (self.type == "int" and self.step == 1):
            text += f" step {self.step:g}"
        return text

    def to_dict(self) -> dict:
        if self.type == "categorical":
            return {"type": self.type, "choices": list(self.choices)}
        out = {"type": self.type, "low": self.low, "high": self.high, "log": self.log}
        return out if self.step is None else {**out, "step": self.step}


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]
    is_default: bool = False  # True when the preset had no search section

    def suggest(self, trial) -> dict[str, Any]:
        """Ask an Optuna trial for one value per parameter; {key: value}."""
        values = {}
        for p in self.params:
            if p.type == "categorical":
                values[p.key] = trial.suggest_categorical(p.key, list(p.choices))
            elif p.type == "int":
                values[p.key] = trial.suggest_int(p.key, p.low, p.high, step=p.step or 1, log=p.log)
            else:
                values[p.key] = trial.suggest_float(p.key, p.low, p.high, step=p.step, log=p.log)
        return values

    def grid(self) -> dict[str, list]:
        """The grid of every combination, for Optuna's GridSampler; a continuous range is an error."""
        continuous = [p for p in self.params if p.grid_values() is None]
        if continuous:
            p = continuous[0]
            raise ConfigError(
                f"--sampler grid: {p.key} is a continuous range ({p.describe()}); a grid needs choices or a step, "
                f"e.g. {p.key}: [{p.low:g}, {p.high:g}] or {{low: {p.low:g}, high: {p.high:g}, step: ...}}"
                + (" (the default space has one: write a search: section)" if self.is_default else "")
            )
        return {p.key: p.grid_values() for p in self.params}

    def grid_size(self) -> int | None:
        sizes = [p.grid_values() for p in self.params]
        return None if any(s is None for s in sizes) else math.prod(len(s) for s in sizes)

    def to_dict(self) -> dict:
        return {p.key: p.to_dict() for p in self.params}


def apply(cfg: Config, values: dict[str, Any]) -> Config:
    """A copy of cfg with the searched values set (each checked like a --set)."""
    out = copy.deepcopy(cfg)
    for key, value in values.items():
        section, _, leaf = key.rpartition(".")
        setattr(out.get(section) if section else out, leaf, coerce(key, value, "search: "))
    return out


def default_space(cfg: Config) -> SearchSpace:
    """What a study searches when the preset has no search section (documented in docs/hpo.md).

    The learning rate spans a decade either side of the preset's; adapter settings are searched
    only for lora and dora.
    """
    lr = cfg.train.learning_rate
    params = [Param("train.learning_rate", "float", max(lr / 10, 1e-8), min(lr * 10, 1.0), log=True)]
    if cfg.fine_tune_type != "full":
        params += [
            Param("lora.rank", "categorical", choices=(4, 8, 16, 32)),
            Param("lora.alpha", "categorical", choices=(8.0, 16.0, 32.0, 64.0)),
            Param("lora.dropout", "categorical", choices=(0.0, 0.05, 0.1)),
        ]
    return SearchSpace(tuple(params), is_default=True)


def parse(entry: tuple[Any, int] | None, source: str, cfg: Config) -> SearchSpace:
    """The search space from read_yaml's `search` entry (its YAML node and line), or the default."""
    if entry is None:
        return default_space(cfg)
    node, line = entry
    where = f"{source}:{line}: search: "
    if isinstance(node, yaml.ScalarNode) and node.value in ("", "~", "null"):
        raise ConfigError(f"{where}empty; list the keys to search, or remove it to search the default space")
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{where}must be a mapping of config keys to ranges or choices")
    params: list[Param] = []
    for key, key_line, value_node in _entries(node):
        if key in (p.key for p in params):
            raise ConfigError(f"{source}:{key_line}: search: {key}: appears twice")
        params.append(_param(key, value_node, source, key_line))
    if cfg.fine_tune_type == "full" and any(p.key.startswith("lora.") for p in params):
        raise ConfigError(f"{where}lora.* keys have no effect with fine_tune_type: full")
    return SearchSpace(tuple(params))


def _entries(node: yaml.MappingNode, prefix: str = ""):
    """(dotted key, line, value node) for each entry; a section name with a mapping nests."""
    for key_node, value_node in node.value:
        key = f"{prefix}{key_node.value}"
        line = key_node.start_mark.line + 1
        if key in config_mod.SECTION_KEYS and isinstance(value_node, yaml.MappingNode):
            yield from _entries(value_node, key + ".")
        else:
            yield key, line, value_node


def _param(key: str, node: yaml.Node, source: str, line: int) -> Param:
    where = f"{source}:{line}: search: {key}: "
    if key not in LEAF_FIELDS:
        raise ConfigError(f"{where}unknown parameter{_nearest_searchable(key)}")
    if key not in SEARCHABLE:
        group = _FIXED.get(key) or ("model" if key.startswith("quantize.") else "")
        reason = _FIXED_BECAUSE.get(group, "it does not change what is learned (memory, speed or bookkeeping)")
        raise ConfigError(f"{where}cannot be searched: {reason}; searchable: {', '.join(SEARCHABLE)}")
    if isinstance(node, yaml.SequenceNode):  # shorthand: a list of choices
        return _categorical(key, node, source, line)
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(
            f"{where}expected a range like {{low: 1, high: 8}} or a list of choices, got {_load(node)!r} "
            "(a fixed value belongs in the preset's own section)"
        )
    spec: dict[str, tuple[Any, yaml.Node, int]] = {}
    for k_node, v_node in node.value:
        name, k_line = k_node.value, k_node.start_mark.line + 1
        if name not in FIELDS:
            close = difflib.get_close_matches(str(name), FIELDS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{source}:{k_line}: search: {key}: unknown field '{name}'{hint}; fields: {', '.join(FIELDS)}")
        spec[name] = (_load(v_node), v_node, k_line)
    natural = {"int": "int", "float": "float"}.get(str(LEAF_FIELDS[key].type), "categorical")  # str, bool: choices
    kind = spec["type"][0] if "type" in spec else "categorical" if "choices" in spec else natural
    if kind not in TYPES:
        raise ConfigError(f"{source}:{spec['type'][2]}: search: {key}: type must be one of {', '.join(TYPES)}, got {kind!r}")
    if kind == "categorical":
        extra = sorted(set(spec) - {"type", "choices"})
        if extra:
            raise ConfigError(f"{source}:{spec[extra[0]][2]}: search: {key}: {extra[0]} does not apply to choices")
        if "choices" not in spec:
            raise ConfigError(f"{where}type categorical needs choices: [...]")
        choices_node = spec["choices"][1]
        if not isinstance(choices_node, yaml.SequenceNode):
            raise ConfigError(f"{source}:{spec['choices'][2]}: search: {key}: choices must be a list")
        return _categorical(key, choices_node, source, spec["choices"][2])
    if kind != natural:
        raise ConfigError(
            f"{where}type {kind} does not fit this key (it is {LEAF_FIELDS[key].type}); use type: {natural}, or choices"
        )
    return _range(key, kind, spec, source, line)


def _range(key: str, kind: str, spec: dict, source: str, line: int) -> Param:
    where = f"{source}:{line}: search: {key}: "
    if "choices" in spec:
        raise ConfigError(f"{source}:{spec['choices'][2]}: search: {key}: choices do not go with a {kind} range")
    missing = [f for f in ("low", "high") if f not in spec]
    if missing:
        raise ConfigError(f"{where}a range needs low and high (missing: {', '.join(missing)})")
    bounds = {}
    for name in ("low", "high"):
        value, _, k_line = spec[name]
        if value == "auto":
            raise ConfigError(f"{source}:{k_line}: search: {key}: {name}: auto cannot be searched (a probe finds it)")
        bounds[name] = _coerced(key, value, f"{source}:{k_line}: search: {key}: {name} ")
    low, high = bounds["low"], bounds["high"]
    log = spec.get("log", (False, None, line))
    if not isinstance(log[0], bool):
        raise ConfigError(f"{source}:{log[2]}: search: {key}: log must be true or false, got {log[0]!r}")
    step = spec.get("step", (None, None, line))
    step_where = f"{source}:{step[2]}: search: {key}: step "
    if step[0] is not None:
        ok = isinstance(step[0], int) if kind == "int" else isinstance(step[0], (int, float))
        if isinstance(step[0], bool) or not ok or step[0] <= 0:
            raise ConfigError(f"{step_where}must be a positive {'integer' if kind == 'int' else 'number'}, got {step[0]!r}")
    step_value = float(step[0]) if kind == "float" and step[0] is not None else step[0]
    if low > high:
        raise ConfigError(f"{where}empty range: low {low:g} is above high {high:g}")
    if low == high:
        raise ConfigError(f"{where}empty range: low and high are both {low:g} (a fixed value belongs in the preset)")
    if log[0] and low <= 0:
        raise ConfigError(f"{source}:{spec['low'][2]}: search: {key}: a log range needs low > 0, got {low:g}")
    if log[0] and step_value not in (None, 1):
        raise ConfigError(f"{step_where}cannot go with log: true (a log range is sampled without steps)")
    if step_value is not None:
        span = (high - low) / step_value
        if abs(span - round(span)) > 1e-9:
            raise ConfigError(f"{step_where}{step_value:g} does not divide the range {low:g}..{high:g} evenly")
    if kind == "int":
        for bad in LEAF_FIELDS[key].metadata.get("exclude", ()):
            if low <= bad <= high and (bad - low) % (step_value or 1) == 0:
                raise ConfigError(f"{where}the range {low}..{high} includes {bad}, which {key} cannot be; split it with choices")
    return Param(key, kind, low, high, log=log[0], step=step_value if kind == "float" or step_value != 1 else None)


def _categorical(key: str, node: yaml.SequenceNode, source: str, line: int) -> Param:
    values = []
    for item in node.value:
        item_line = item.start_mark.line + 1
        raw = _load(item)
        if raw == "auto":
            raise ConfigError(f"{source}:{item_line}: search: {key}: auto cannot be searched (a probe finds it)")
        value = _coerced(key, raw, f"{source}:{item_line}: search: {key}: choice ")
        if value in values:
            raise ConfigError(f"{source}:{item_line}: search: {key}: choice {raw!r} appears twice")
        values.append(value)
    if len(values) < 2:
        raise ConfigError(
            f"{source}:{line}: search: {key}: needs at least two choices, got {len(values)}"
            + (" (a fixed value belongs in the preset)" if values else "")
        )
    return Param(key, "categorical", choices=tuple(values))


def _coerced(key: str, value: Any, where: str) -> Any:
    """coerce() with the message turned to the search entry: 'low must be a number > 0, got 0'."""
    try:
        return coerce(key, value)
    except ConfigError as e:
        raise ConfigError(f"{where.rstrip()} {str(e).removeprefix(f'{key}: ')}") from None


def _load(node: yaml.Node) -> Any:
    value = yaml.safe_load(yaml.serialize(node))
    return float(value) if _is_float_text(value) else value


def _is_float_text(value: Any) -> bool:
    """'1e-5' is a str to PyYAML's YAML 1.1 resolver; read it as the number it is meant to be."""
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return any(c.isdigit() for c in value) and value.strip().lower() not in ("nan", "inf", "-inf", "+inf")


def _nearest_searchable(key: str) -> str:
    match = difflib.get_close_matches(key, list(SEARCHABLE) + list(LEAF_FIELDS), n=1, cutoff=0.5)
    if not match:
        leaves = {k.rsplit(".", 1)[-1]: k for k in SEARCHABLE}
        close = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(leaves), n=1, cutoff=0.6)
        match = [leaves[close[0]]] if close else []
    return f" (did you mean '{match[0]}'?)" if match else ""
