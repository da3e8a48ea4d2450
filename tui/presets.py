"""Presets for the configuration pane: list, read, validate, save. No Textual here.

Every check goes through `engine.config` (`parse_override`, `coerce`, `build`),
so the form accepts exactly what the engine accepts, with the engine's words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine import config as C

DEFAULTS = C.Config()


def list_presets() -> list[tuple[str, Path]]:
    """(label, path) for every preset: the project's first, then the user's (marked)."""
    found: list[tuple[str, Path]] = []
    project, user = C.preset_dirs()
    for folder, mark in ((project, ""), (user, " (yours)")):
        if folder.is_dir():
            found += [(p.stem + mark, p) for p in sorted(folder.glob("*.yaml"))]
    return found


def preset_options(current: Path | None) -> tuple[list[tuple[str, str]], str | None]:
    """The picker's (label, value) options, and the value for `current`.

    Paths are resolved, so `presets/demo.yaml` picks "demo"; a preset outside the preset
    folders (`lora-mlx tui ~/my.yaml`) is listed by its file name (`my.yaml`)."""
    options = [(label, str(path.resolve())) for label, path in list_presets()]
    if current is None:
        return options, None
    value = str(Path(current).expanduser().resolve())
    if all(v != value for _, v in options):
        options.append((Path(current).name, value))
    return options, value


def format_value(value: Any) -> str:
    """A value as the user types it in a field (YAML flow style, like `--set`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return yaml.safe_dump(value, default_flow_style=True).strip()
    return str(value)


def parse_value(key: str, text: str) -> Any:
    """The typed value of a field's text, or ConfigError with the engine's message."""
    key, value = C.parse_override(f"{key}={text}")
    return C.coerce(key, value)


@dataclass
class Preset:
    """A preset read for the form: every key's value (the preset's, else the default)."""

    path: Path | None
    values: dict[str, Any]
    errors: dict[str, str] = field(default_factory=dict)  # key -> problem with the preset's own value
    problems: list[str] = field(default_factory=list)  # problems not tied to a field (unknown key, bad YAML)
    explicit: set[str] = field(default_factory=set)  # keys the preset file itself sets

    @property
    def name(self) -> str:
        return self.path.stem if self.path else "defaults"


def read_preset(path: Path | None) -> Preset:
    values = {key: DEFAULTS.get(key) for key in C.LEAF_FIELDS}
    preset = Preset(path, values)
    if path is None:
        return preset
    try:
        raw = C.read_yaml(path)
    except C.ConfigError as e:
        preset.problems.append(str(e))
        return preset
    for key, (value, line) in raw.items():
        if key not in C.LEAF_FIELDS:
            try:
                C.build({key: (value, line)}, str(path), path.parent)
            except C.ConfigError as e:
                preset.problems.append(str(e))
            continue
        preset.explicit.add(key)
        try:
            values[key] = C.coerce(key, value, f"{path}:{line}: ")
        except C.ConfigError as e:
            values[key] = value
            preset.errors[key] = str(e)
    return preset


def build_config(preset: Preset, values: dict[str, Any]) -> C.Config:
    """Validate the form's values into a Config, exactly as the engine would load them.

    Values taken from the preset resolve relative paths against the preset's
    folder (as `lora-mlx train PRESET` does); edited paths resolve against the
    current directory (as `--set` does).
    """
    base = preset.path.resolve().parent if preset.path else Path.cwd()
    source = str(preset.path) if preset.path else "the form"
    from_preset = {k: (v, None) for k, v in values.items() if v == preset.values.get(k)}
    edited = {k: (_absolute(k, v), None) for k, v in values.items() if v != preset.values.get(k)}
    cfg = C.build({**from_preset, **edited}, source, base)
    C.check_complete(cfg, source)
    return cfg


def _absolute(key: str, value: Any) -> Any:
    if not isinstance(value, str) or not value or Path(value).is_absolute():
        return value
    if key == "data.path" or (key == "model" and (value.startswith((".", "~")) or Path(value).is_dir())):
        return str(Path(value).expanduser().resolve())
    return value


def changed_keys(preset: Preset, values: dict[str, Any]) -> list[str]:
    return [k for k in C.LEAF_FIELDS if values.get(k) != preset.values.get(k)]


NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_preset_name(name: str) -> str | None:
    """Why name cannot be a new preset, or None when it can."""
    if not NAME_PATTERN.match(name):
        return "use letters, digits, '-', '_' or '.', starting with a letter or digit"
    for folder in C.preset_dirs():
        if (folder / f"{name}.yaml").exists():
            return f"a preset named '{name}' already exists in {folder}"
    return None


def preset_text(cfg: C.Config, based_on: Preset, changed: list[str]) -> str:
    """A preset file with the keys its base set and those that differ from the defaults, each with its doc."""
    keys = [k for k in C.LEAF_FIELDS if k in based_on.explicit or cfg.get(k) != DEFAULTS.get(k)]
    lines = [f"# Saved from the dashboard; based on '{based_on.name}'" + (f", changed: {', '.join(changed)}." if changed else ".")]
    lines.append("# Keys not listed take their defaults (see docs/config.md).")
    section = ""
    for key in keys:
        head, _, leaf = key.rpartition(".")
        if head and head != section:
            lines.append(f"{head}:")
        section = head
        indent = "  " if head else ""
        scalar = yaml.safe_dump(cfg.get(key), default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
        lines.append(f"{indent}{leaf}: {scalar}  # {C.LEAF_FIELDS[key].metadata['doc']}")
    return "\n".join(lines) + "\n"


def save_preset(name: str, text: str) -> Path:
    """Write the user's preset and check that the engine loads it back."""
    folder = C.preset_dirs()[1]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        C.load(str(path))
    except C.ConfigError:
        path.unlink()
        raise
    return path
