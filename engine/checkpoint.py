"""Checkpoints that continue a run exactly: written atomically, verified on load.

A checkpoint is a directory `RUN_DIR/checkpoints/step-0000100/` holding
`adapters.safetensors` + `adapter_config.json` (loadable by mlx-lm as is),
`optimizer.safetensors`, and `state.json` (step, data position, counters, a
fingerprint of the settings that shape the weights, and a manifest of file
sizes and SHA-256 digests). No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

FORMAT_VERSION = 1
PREFIX = "step-"

# Settings a resumed run must share with the checkpoint for its weights to mean
# the same thing and its trajectory to be the one it would have been.
FINGERPRINT_KEYS = (
    "model",
    "fine_tune_type",
    "seed",
    "lora.rank",
    "lora.alpha",
    "lora.dropout",
    "lora.num_layers",
    "lora.keys",
    "train.batch_size",
    "train.grad_accumulation",
    "train.learning_rate",
    "train.lr_schedule",
    "train.warmup_steps",
    "train.final_learning_rate",
    "train.optimizer",
    "train.weight_decay",
    "train.max_seq_length",
    "train.mask_prompt",
    "quantize.bits",
    "quantize.group_size",
    "quantize.mode",
)


class CheckpointError(ValueError):
    """A checkpoint cannot be used (corrupt, or from different settings)."""


@dataclass
class Loaded:
    path: Path
    state: dict[str, Any]
    adapters: dict  # name -> mx.array
    optimizer: dict  # flattened name -> mx.array


def fingerprint(cfg) -> dict[str, Any]:
    return {key: cfg.get(key) for key in FINGERPRINT_KEYS}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (after a rename, the directory's entry is what must reach the disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_safetensors(path: Path, arrays: dict, metadata: dict | None = None) -> None:
    """mx.save_safetensors appends '.safetensors' to names without it; always pass a full name."""
    import mlx.core as mx

    assert path.suffix == ".safetensors", path
    mx.save_safetensors(str(path), arrays, metadata=metadata or {})


def write_adapter_dir(folder: Path, adapters: dict, adapter_config: dict) -> None:
    """Write adapters.safetensors and adapter_config.json (mlx-lm's layout) into folder."""
    save_safetensors(folder / "adapters.safetensors", adapters)
    (folder / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2) + "\n")


def save(
    checkpoints_dir: Path,
    step: int,
    adapters: dict,
    optimizer_state: dict,
    state: dict[str, Any],
    adapter_config: dict,
) -> Path:
    """Write a checkpoint atomically: temp dir, fsync every file, rename, fsync parent."""
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoints_dir / f"{PREFIX}{step:07d}"
    tmp = checkpoints_dir / f".tmp-{PREFIX}{step:07d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write_adapter_dir(tmp, adapters, adapter_config)
    save_safetensors(tmp / "optimizer.safetensors", optimizer_state)
    files = ["adapters.safetensors", "adapter_config.json", "optimizer.safetensors"]
    manifest = {name: {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)} for name in files}
    body = {"format_version": FORMAT_VERSION, "step": step, **state, "manifest": manifest}
    (tmp / "state.json").write_text(json.dumps(body, indent=2) + "\n")
    for name in files + ["state.json"]:
        fsync_path(tmp / name)
    fsync_path(tmp)
    if final.exists():  # the same step saved twice (e.g. "best" then "stop"): replace it
        old = checkpoints_dir / f".old-{final.name}-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    fsync_path(checkpoints_dir)
    return final


def list_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Finished checkpoint directories, newest step first."""
    if not checkpoints_dir.is_dir():
        return []
    found = [p for p in checkpoints_dir.iterdir() if p.is_dir() and p.name.startswith(PREFIX)]
    return sorted(found, key=lambda p: p.name, reverse=True)


def verify(path: Path) -> dict[str, Any]:
    """Read state.json and check every file against its manifest; raise CheckpointError if not intact."""
    try:
        state = json.loads((path / "state.json").read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: state.json is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: state.json is unreadable ({e})") from None
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unknown checkpoint format {state.get('format_version')!r}")
    for name, expect in state.get("manifest", {}).items():
        f = path / name
        if not f.exists():
            raise CheckpointError(f"{path}: {name} is missing")
        if f.stat().st_size != expect["bytes"]:
            raise CheckpointError(f"{path}: {name} is truncated ({f.stat().st_size} of {expect['bytes']} bytes)")
        if _sha256(f) != expect["sha256"]:
            raise CheckpointError(f"{path}: {name} is corrupt (checksum mismatch)")
    return state


def check_compatible(path: Path, state: dict[str, Any], cfg) -> None:
    """Refuse a checkpoint written with settings that change what the weights mean."""
    theirs = state.get("fingerprint", {})
    ours = fingerprint(cfg)
    diffs = [f"{k}: checkpoint has {theirs.get(k)!r}, config has {ours[k]!r}" for k in FINGERPRINT_KEYS if theirs.get(k) != ours[k]]
    if diffs:
        raise CheckpointError(
            f"{path} was written with different settings and cannot be resumed with this config:\n  " + "\n  ".join(diffs)
        )


def load_latest(checkpoints_dir: Path, cfg, log: Callable[[str, str], None]) -> Loaded | None:
    """Load the newest intact checkpoint; fall back past corrupt ones with a message."""
    import mlx.core as mx

    for path in list_checkpoints(checkpoints_dir):
        try:
            state = verify(path)
            adapters = mx.load(str(path / "adapters.safetensors"))
            optimizer = mx.load(str(path / "optimizer.safetensors"))
        except CheckpointError as e:
            log("warning", f"skipping checkpoint: {e}")
            continue
        except (OSError, ValueError, RuntimeError) as e:
            log("warning", f"skipping checkpoint {path}: unreadable ({e})")
            continue
        check_compatible(path, state, cfg)
        return Loaded(path, state, adapters, optimizer)
    return None


def prune(checkpoints_dir: Path, keep_last: int, keep: set[Path]) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints and those in `keep` (e.g. the best)."""
    removed = []
    for path in list_checkpoints(checkpoints_dir)[keep_last:]:
        if path.resolve() in {k.resolve() for k in keep}:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    for stale in checkpoints_dir.glob(".tmp-*"):  # left behind by a crash mid-save
        shutil.rmtree(stale, ignore_errors=True)
    return removed
