"""Finding and loading the base model: builtin, local directory, or hub id.

Loading itself is mlx-lm's (`mlx_lm.utils.load`). What this module adds is a
clear answer to "where does this model come from", and a fast, readable
failure when it cannot be had (a typo in a path, or a hub id while offline).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

HUB_HOST = ("huggingface.co", 443)
# The files mlx-lm fetches from a hub repository (mlx_lm.utils.DEFAULT_ALLOW_PATTERNS), kept here so
# that finding a model (the dashboard does, for its estimate) never imports mlx.
ALLOW_PATTERNS = ["*.json", "model*.safetensors", "*.py", "tokenizer.model", "*.tiktoken", "tiktoken.model", "*.txt", "*.jsonl", "*.jinja"]


class ModelError(ValueError):
    """The model cannot be found or loaded; the CLI exits with code 2."""


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout_s):
            return True
    except OSError:
        return False


def resolve(model: str) -> Path:
    """Return the local directory holding `model`, downloading a hub id if online."""
    if model.startswith("builtin:"):
        from engine.tiny import ensure_builtin

        return ensure_builtin(model)
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"model '{model}': directory has no config.json (expected a Hugging Face / mlx-lm model folder)")
        return path
    if path.is_absolute() or model.startswith((".", "~")) or path.exists():
        raise ModelError(f"model '{model}': no such directory")
    return _from_hub(model)


def offline_message(repo_id: str) -> str:
    # `hf` is huggingface_hub's CLI (installed with it); the old `huggingface-cli` is gone since huggingface_hub 1.0.
    return (
        f"model '{repo_id}': not found locally, and the hub is unreachable. "
        f"Download it once while online (hf download {repo_id}), or point 'model' at a local directory."
    )


def _from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return _from_hub_cache(repo_id)
    except ModelError:
        raise
    except Exception:  # not in the local cache, or only partly there
        pass
    if not _hub_reachable():
        raise ModelError(offline_message(repo_id))
    try:
        return Path(snapshot_download(repo_id, allow_patterns=ALLOW_PATTERNS))
    except Exception as e:  # RepositoryNotFoundError, GatedRepoError, network drops
        raise ModelError(f"model '{repo_id}': download from the hub failed: {type(e).__name__}: {e}") from None


def describe(model: str) -> tuple[dict, int]:
    """(config.json, bytes of the weight files) without downloading weights: enough for an estimate."""
    if model.startswith("builtin:") or Path(model).expanduser().is_dir():
        return _describe_dir(resolve(model))
    try:
        return _describe_dir(_from_hub_cache(model))
    except ModelError:
        raise
    except Exception:  # not cached: a model the presets use is known; else ask the hub
        pass
    from engine import known_models

    if (known := known_models.describe(model)) is not None:
        return known
    if not _hub_reachable():
        raise ModelError(offline_message(model))
    from huggingface_hub import HfApi, hf_hub_download

    try:
        config = json.loads(Path(hf_hub_download(model, "config.json")).read_text())
        info = HfApi().model_info(model, files_metadata=True)
    except Exception as e:
        raise ModelError(f"model '{model}': cannot read its config from the hub: {type(e).__name__}: {e}") from None
    return config, sum(s.size or 0 for s in info.siblings or [] if s.rfilename.endswith(".safetensors"))


def _describe_dir(path: Path) -> tuple[dict, int]:
    return json.loads((path / "config.json").read_text()), sum(p.stat().st_size for p in path.glob("*.safetensors"))


def _from_hub_cache(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=ALLOW_PATTERNS))
    except HFValidationError as e:
        raise ModelError(f"model '{repo_id}': not a local directory, and not a valid hub id ({e})") from None


class Base:
    """A base model loaded once and handed out fresh for run after run (e.g. Optuna trials).

    `fresh()` strips the adapters a previous run added, undoes gradient
    checkpointing, and puts back the original weights (a full fine-tune changes
    them), so every run starts from the same untouched base.
    """

    def __init__(self, model: str):
        from mlx.utils import tree_flatten

        self.model, self.tokenizer, self.model_dir = load(model)
        self.weights = dict(tree_flatten(self.model.parameters()))  # mlx arrays are immutable: no copy

    def fresh(self):
        from mlx.utils import tree_unflatten

        model = self.model
        originals = [(name, getattr(m, "linear", None) or getattr(m, "embedding", None)) for name, m in model.named_modules() if type(m).__name__ in _ADAPTER_TYPES]
        if originals:
            model.update_modules(tree_unflatten(originals))
        for block in model.layers:
            if type(block).__name__.startswith("Checkpointed"):
                block.__class__ = type(block).__bases__[0]
        model.load_weights(list(self.weights.items()))
        model.unfreeze()
        model.eval()
        return model


_ADAPTER_TYPES = {"LoRALinear", "DoRALinear", "CPUQuantizedDoRALinear", "LoRAEmbedding", "DoRAEmbedding", "LoRASwitchLinear"}


def load(model: str):
    """Load (model, tokenizer, model_dir) with mlx-lm."""
    from mlx_lm.utils import load as mlx_lm_load

    model_dir = resolve(model)
    try:
        loaded, tokenizer = mlx_lm_load(str(model_dir))
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise ModelError(f"model '{model}' ({model_dir}): cannot be loaded by mlx-lm: {e}") from None
    return loaded, tokenizer, model_dir
