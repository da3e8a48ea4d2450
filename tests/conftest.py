"""Test set-up: the fast BLAS before mlx loads, and one local cache for the builtin models."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("LORA_MLX_CACHE", str(ROOT / ".cache"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from engine import blas  # noqa: E402  (must run before anything imports mlx)

blas.setup()
