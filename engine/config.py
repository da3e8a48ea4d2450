"""The run configuration: typed dataclasses, YAML presets, `--set` overrides.

Precedence is `--set KEY=VALUE` > preset YAML > the defaults below. Every key is
checked before any model loads: an unknown key names the nearest valid one, a
bad value names the allowed range, and errors point at the file and line.
This module imports neither mlx nor textual: the UI validates with it too.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILTIN_MODELS = ("builtin:tiny", "builtin:small")


# Keys a resume may change: they do not alter the training trajectory.
RESUME_CHANGEABLE = (
    "train.iters",
    "train.steps_per_report",
    "train.steps_per_eval",
    "train.val_batches",
    "train.save_every",
    "train.keep_checkpoints",
    "train.max_bad_steps",
    "train.compile",
    "train.sample_prompt",
    "train.sample_max_tokens",
    "train.micro_batch_size",
    "train.grad_checkpoint",
    "data.skip_invalid",
    "memory.limit_gb",
    "memory.cache_limit_gb",
    "memory.clear_cache_every",
)


# Top-level preset sections that other modules validate: `search` (engine/search.py, the Optuna
# search space). The run config ignores them; read_yaml hands over their YAML nodes.
OWN_SECTIONS = ("search",)


class ConfigError(ValueError):
    """A problem with a preset or an override; the CLI exits with code 2."""


def _f(default, doc, **meta):
    """A config field with its one-line doc and validation metadata."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc, **meta})
    return field(default=default, metadata={"doc": doc, **meta})


@dataclass
class LoraConfig:
    rank: int = _f(8, "Rank of the LoRA/DoRA update matrices.", min=1, max=4096)
    alpha: float = _f(16.0, "LoRA alpha; the update is scaled by alpha / rank.", min=0.0)
    dropout: float = _f(0.0, "Dropout on the LoRA input during training.", min=0.0, max=0.99)
    num_layers: int = _f(-1, "How many transformer blocks, counted from the last, get adapters (-1: all).", min=-1, exclude=(0,))
    keys: list = _f(
        [],
        "Module paths inside each block to adapt, e.g. self_attn.q_proj (empty: every linear layer).",
        item=str,
    )


@dataclass
class DataConfig:
    path: str = _f("", "Directory with train.jsonl and optional valid.jsonl / test.jsonl.")
    skip_invalid: bool = _f(False, "Skip bad records (and report how many) instead of refusing to train.")


@dataclass
class TrainConfig:
    iters: int = _f(1000, "Optimizer steps to train for.", min=1)
    batch_size: int = _f(
        4, "Sequences per batch; auto: the largest power of two up to 64 that fits in memory, found by a short probe.", min=1, max=65536, auto=True
    )
    micro_batch_size: int = _f(
        0,
        "Run each batch in micro-batches of this many sequences to save memory; the update is the same "
        "(0: the whole batch; auto: the largest that fits).",
        min=0,
        max=65536,
        auto=True,
    )
    grad_accumulation: int = _f(1, "Batches whose gradients are summed into one optimizer step.", min=1, max=1024)
    learning_rate: float = _f(1e-5, "Peak learning rate.", min=0.0, max=10.0, exclusive_min=True)
    lr_schedule: str = _f("constant", "Schedule after warmup.", choices=("constant", "cosine", "linear"))
    warmup_steps: int = _f(0, "Steps of linear warmup from 0 to the peak learning rate.", min=0)
    final_learning_rate: float = _f(0.0, "Learning rate the cosine and linear schedules decay to.", min=0.0)
    optimizer: str = _f("adam", "Optimizer.", choices=("adam", "adamw", "sgd"))
    weight_decay: float = _f(0.0, "Weight decay (adamw, sgd).", min=0.0, max=1.0)
    max_seq_length: int = _f(2048, "Longer records are truncated to this many tokens.", min=2, max=1_048_576)
    mask_prompt: bool = _f(False, "Train only on completion tokens (not on the prompt).")
    grad_checkpoint: bool = _f(False, "Recompute activations in the backward pass to save memory.")
    steps_per_report: int = _f(10, "Report the training loss every this many steps.", min=1)
    steps_per_eval: int = _f(200, "Evaluate on the validation set every this many steps (and at the end).", min=1)
    val_batches: int = _f(25, "Validation batches per evaluation (-1: the whole validation set).", min=-1)
    save_every: int = _f(100, "Write a checkpoint every this many steps.", min=1)
    keep_checkpoints: int = _f(3, "How many recent checkpoints to keep (the best by validation loss is kept too).", min=1)
    max_bad_steps: int = _f(5, "Stop the run after this many non-finite losses in a row.", min=1)
    compile: bool = _f(True, "Compile the training step with mx.compile.")
    sample_prompt: str = _f("", "At each evaluation, answer this prompt (greedy) so you can watch the model change (empty: off).")
    sample_max_tokens: int = _f(48, "Length limit of that sample answer, in tokens.", min=1, max=4096)


@dataclass
class MemoryConfig:
    limit_gb: float = _f(
        0.0,
        "Memory the run may use; a step over it is retried in smaller micro-batches (0: 90% of the backend's memory).",
        min=0.0,
    )
    cache_limit_gb: float = _f(-1.0, "Cap on mlx's buffer cache (-1: mlx's default, 0: no cache).", min=-1.0)
    clear_cache_every: int = _f(0, "Empty mlx's buffer cache every this many steps (0: never; the cache limit bounds it).", min=0)


@dataclass
class QuantizeConfig:
    bits: int = _f(0, "Quantize the frozen base to this many bits for QLoRA (0: off).", choices=(0, 2, 3, 4, 5, 6, 8))
    group_size: int = _f(64, "Weights per quantization group (smaller: more accurate, a little larger).", choices=(16, 32, 64, 128))
    mode: str = _f("affine", "Quantization format.", choices=("affine", "mxfp4", "nvfp4", "mxfp8"))


@dataclass
class Config:
    model: str = _f("builtin:tiny", "Local model directory, Hugging Face hub id, or builtin:tiny / builtin:small.")
    data: DataConfig = field(default_factory=DataConfig, metadata={"doc": "Training data (a directory path, or a mapping)."})
    seed: int = _f(0, "Seed for weight init of adapters, data order and dropout.", min=0, max=2**32 - 1)
    fine_tune_type: str = _f("lora", "What to train.", choices=("lora", "dora", "full"))
    lora: LoraConfig = field(default_factory=LoraConfig, metadata={"doc": "Adapter settings (ignored for full)."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"doc": "Training loop settings."})
    memory: MemoryConfig = field(default_factory=MemoryConfig, metadata={"doc": "Memory limits."})
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig, metadata={"doc": "QLoRA: quantizing the base."})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def get(self, dotted: str) -> Any:
        obj: Any = self
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj


def iter_fields(cls=Config, prefix=""):
    """Yield (dotted_key, dataclass field) for every leaf key, in order."""
    for f in dataclasses.fields(cls):
        if f.name in _SECTIONS and cls is Config:
            yield from iter_fields(_SECTIONS[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f


_SECTIONS = {"lora": LoraConfig, "train": TrainConfig, "data": DataConfig, "memory": MemoryConfig, "quantize": QuantizeConfig}
LEAF_FIELDS = dict(iter_fields())
SECTION_KEYS = set(_SECTIONS)


def _where(source: str | None, line: int | None) -> str:
    if source and line:
        return f"{source}:{line}: "
    return f"{source}: " if source else ""


def _nearest(key: str) -> str:
    candidates = list(LEAF_FIELDS) + sorted(SECTION_KEYS)
    match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    if not match:
        leaf = key.rsplit(".", 1)[-1]
        leaves = {k.rsplit(".", 1)[-1]: k for k in LEAF_FIELDS}
        close = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.6)
        match = [leaves[close[0]]] if close else []
    return f" (did you mean '{match[0]}'?)" if match else ""


def describe(f: dataclasses.Field) -> str:
    """What a key accepts, in words: "an integer >= 1", "one of adam, adamw, sgd"."""
    meta = f.metadata
    kind = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list"}[
        _py_type(f)
    ]
    if "choices" in meta:
        return "one of " + ", ".join(map(str, meta["choices"]))
    described = _describe_range(kind, meta)
    if "exclude" in meta:
        described += ", not " + ", ".join(map(str, meta["exclude"]))
    return described + (", or auto" if meta.get("auto") else "")


def _describe_range(kind: str, meta) -> str:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and hi is not None:
        op = ">" if meta.get("exclusive_min") else ">="
        return f"{kind} {op} {lo} and <= {hi}"
    if lo is not None:
        return f"{kind} {'>' if meta.get('exclusive_min') else '>='} {lo}"
    return kind


def _py_type(f: dataclasses.Field):
    return {"int": int, "float": float, "bool": bool, "str": str, "list": list}[
        f.type if isinstance(f.type, str) else f.type.__name__
    ]


def coerce(key: str, value: Any, where: str = "") -> Any:
    """Check one value against its field; return it in the field's type."""
    f = LEAF_FIELDS[key]
    want = _py_type(f)
    meta = f.metadata
    bad = ConfigError(f"{where}{key}: must be {describe(f)}, got {value!r}")
    if meta.get("auto") and value == "auto":
        return value
    if want is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if want is int:
        if isinstance(value, bool) or not isinstance(value, int) or value not in meta.get("choices", (value,)):
            raise bad
    elif want is float:
        if isinstance(value, str):  # "1e-5" is a str to PyYAML's YAML 1.1 resolver
            try:
                value = float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise bad
    elif want is str:
        if not isinstance(value, str):
            raise bad
        if "choices" in meta and value not in meta["choices"]:
            raise bad
    elif want is list:
        if value is None:
            value = []
        if not isinstance(value, list) or not all(isinstance(v, meta.get("item", object)) for v in value):
            raise ConfigError(f"{where}{key}: must be a list of strings, got {value!r}")
        return list(value)
    lo, hi = meta.get("min"), meta.get("max")
    if value in meta.get("exclude", ()):
        raise bad
    if lo is not None and (value < lo or (meta.get("exclusive_min") and value == lo)):
        raise bad
    if hi is not None and value > hi:
        raise bad
    return value


def _flatten_yaml(node: yaml.Node, source: str, prefix: str = "") -> dict[str, tuple[Any, int]]:
    """Map dotted keys to (python value, line) from a composed YAML mapping."""
    out: dict[str, tuple[Any, int]] = {}
    for key_node, value_node in node.value:
        key = yaml.safe_load(yaml.serialize(key_node)) if not isinstance(key_node, yaml.ScalarNode) else key_node.value
        line = key_node.start_mark.line + 1
        dotted = f"{prefix}{key}"
        if dotted in out:
            raise ConfigError(f"{source}:{line}: {dotted}: key appears twice")
        if dotted in SECTION_KEYS and isinstance(value_node, yaml.MappingNode):
            out.update(_flatten_yaml(value_node, source, dotted + "."))
        elif dotted == "data" and isinstance(value_node, yaml.ScalarNode):
            out["data.path"] = (yaml.safe_load(yaml.serialize(value_node)), line)
        elif dotted in SECTION_KEYS:
            raise ConfigError(f"{source}:{line}: {dotted}: must be a mapping of keys")
        elif dotted in OWN_SECTIONS:  # validated by its own module, which wants the YAML node (for lines)
            out[dotted] = (value_node, line)
        else:
            out[dotted] = (yaml.safe_load(yaml.serialize(value_node)), line)
    return out


def read_yaml(path: Path) -> dict[str, tuple[Any, int]]:
    """Parse a preset into {dotted_key: (value, line)}; syntax errors name the line."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: preset file not found") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{source}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f"{mark.line + 1}: " if mark else ""
        raise ConfigError(f"{source}:{line}invalid YAML: {getattr(e, 'problem', e)}") from None
    if node is None:
        raise ConfigError(f"{source}: the preset is empty; it needs at least 'model' and 'data'")
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{source}:{node.start_mark.line + 1}: the preset must be a mapping of keys")
    return _flatten_yaml(node, source)


def parse_override(text: str) -> tuple[str, Any]:
    """Split `--set KEY=VALUE`; the value is read as YAML (so `true`, `8`, `[a, b]` work)."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected KEY=VALUE")
    key, raw = text.split("=", 1)
    key = key.strip()
    if key == "data":
        key = "data.path"
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if LEAF_FIELDS.get(key) is not None and _py_type(LEAF_FIELDS[key]) is str and not isinstance(value, str):
        value = raw  # model=123 or a path like 2024 stays a string
    return key, value


def resolve_preset(name_or_path: str) -> Path:
    """A bare name (`demo`) is a file in presets/ or the user's preset folder; else a path."""
    p = Path(name_or_path).expanduser()
    if p.suffix in (".yaml", ".yml") or os.sep in name_or_path or p.exists():
        return p
    for folder in preset_dirs():
        candidate = folder / f"{name_or_path}.yaml"
        if candidate.exists():
            return candidate
    known = sorted({q.stem for d in preset_dirs() if d.is_dir() for q in d.glob("*.yaml")})
    close = difflib.get_close_matches(name_or_path, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(f"preset '{name_or_path}' not found{hint}; known presets: {', '.join(known) or 'none'}")


def preset_dirs() -> list[Path]:
    user = Path(os.environ.get("LORA_MLX_PRESETS", "~/.config/lora-mlx/presets")).expanduser()
    return [REPO_ROOT / "presets", user]


def _set(cfg: Config, key: str, value: Any, where: str, base: Path) -> None:
    """Validate one dotted key and store it; relative paths resolve against base."""
    if key not in LEAF_FIELDS:
        raise ConfigError(f"{where}{key}: unknown key{_nearest(key)}")
    value = coerce(key, value, where)
    if key == "model" and value.startswith("builtin:") and value not in BUILTIN_MODELS:
        raise ConfigError(f"{where}model: unknown builtin model {value!r}; one of {', '.join(BUILTIN_MODELS)}")
    if (key == "data.path" and value) or (key == "model" and (_looks_like_path(value) or (base / value).is_dir())):
        value = str((base / Path(value).expanduser()).resolve())
    section, _, leaf = key.rpartition(".")
    setattr(cfg.get(section) if section else cfg, leaf, value)


def _looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or model.count("/") > 1


def build(values: dict[str, tuple[Any, int | None]], source: str, base_dir: Path) -> Config:
    """Validate {dotted_key: (value, line)} into a Config (sections in OWN_SECTIONS are skipped)."""
    cfg = Config()
    for key, (value, line) in values.items():
        if key in OWN_SECTIONS:
            continue
        _set(cfg, key, value, _where(source, line), base_dir)
    return cfg


def check_complete(cfg: Config, source: str) -> None:
    if not cfg.data.path:
        raise ConfigError(f"{source}: data: no training data given (add 'data: DIR' or --set data=DIR)")
    if not cfg.model:
        raise ConfigError(f"{source}: model: no model given")


def load(preset: str, overrides: list[str] = ()) -> Config:
    """Load a preset (name or path) and apply `--set` overrides on top.

    Paths in the preset are relative to the preset's folder; paths given with
    --set are relative to the current directory.
    """
    path = resolve_preset(preset)
    cfg = build(read_yaml(path), str(path), path.resolve().parent)
    for text in overrides:
        key, value = parse_override(text)
        _set(cfg, key, value, f"--set {text}: ", Path.cwd())
    check_complete(cfg, str(path))
    return cfg


def from_dict(d: dict, source: str = "config") -> Config:
    """Rebuild a Config from `to_dict()` output (a run's config.yaml)."""
    flat: dict[str, tuple[Any, None]] = {}
    for key, value in d.items():
        if key in SECTION_KEYS and isinstance(value, dict):
            for k, v in value.items():
                flat[f"{key}.{k}"] = (v, None)
        else:
            flat[key] = (value, None)
    cfg = build(flat, source, Path.cwd())
    check_complete(cfg, source)
    return cfg


def dump(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
