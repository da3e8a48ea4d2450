"""Built-in models: small random-init Llamas that need no download.

`ensure_builtin("builtin:tiny")` returns a model directory in the Hugging Face
layout that `mlx_lm.utils.load` reads as is. It is built on first use from a
fixed recipe (byte-level BPE tokenizer trained on the demo data plus a little
English; weights drawn from numpy's `default_rng(seed)`), so every build is
byte-identical, and cached under `$LORA_MLX_CACHE` (default `~/.cache/lora-mlx`)
in a directory whose name carries a hash of the recipe: change the recipe and
the next call builds afresh.

This module imports neither mlx nor textual.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tokenizers
from safetensors.numpy import save as safetensors_bytes
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from engine import demo_data
from engine.checkpoint import fsync_path

# Shown in the cache dir name. Any edit to this file also changes the dir's hash,
# so a cache never outlives the code that built it.
RECIPE_VERSION = 1
CACHE_ENV = "LORA_MLX_CACHE"
MANIFEST = "manifest.json"

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|end|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD, BOS, EOS, *ROLE_TOKENS)

# Every turn is <|role|>content<|end|>. The prompt ends on a special token, so
# the tokens of the prompt are always a prefix of the tokens of the whole chat
# (prompt masking relies on that).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


@dataclass(frozen=True)
class BuiltinSpec:
    """The recipe of one built-in model."""

    vocab_size: int  # exact: the BPE vocabulary is padded with reserved tokens up to it
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int = 2048
    seed: int = 0


SPECS = {
    # Tests and the demo: ~1.0M parameters; a LoRA step at batch 4 x 64 tokens
    # takes tens of milliseconds on 2 CPU cores.
    "builtin:tiny": BuiltinSpec(
        vocab_size=1024,
        hidden_size=128,
        num_hidden_layers=4,
        intermediate_size=352,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    # Benchmarks: about 25.9M parameters.
    "builtin:small": BuiltinSpec(
        vocab_size=8000,
        hidden_size=512,
        num_hidden_layers=6,
        intermediate_size=1408,
        num_attention_heads=8,
        num_key_value_heads=4,
    ),
}

# Generic English for the tokenizer, so free text does not fall apart into bytes.
GENERIC_TEXT = """\
A model learns from examples. Each example is a short conversation: the user asks
for something, and the assistant answers. Training shows the model many such
examples and nudges its weights so that the right answer becomes more likely.
Low-rank adapters keep the original weights frozen and learn a small update on top
of them, which is why fine-tuning fits on a laptop. The learning rate sets the size
of each step; too high and the loss jumps around, too low and nothing seems to
happen. The validation loss, measured on examples the model never trained on,
tells you whether it is learning the task or only memorising the training set.
Save a checkpoint every few hundred steps, keep the best one, and stop when the
validation loss stops falling. Then try the model: ask it a question it has not
seen, and read the answer. Numbers such as 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 100
and 1000 appear in text too, as do punctuation marks: commas, periods, colons,
semicolons; quotes "like this", 'or this', (parentheses), [brackets] and {braces}.
The quick brown fox jumps over the lazy dog. What is the capital of France? Paris.
How many days are in a week? Seven. Which colour is the sky on a clear day? Blue.
Please write a short poem about the sea, the wind and the stars at night.
"""


def cache_root() -> Path:
    """Where built models live: `$LORA_MLX_CACHE`, else `~/.cache/lora-mlx`."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lora-mlx"


def tokenizer_corpus() -> list[str]:
    """The fixed text the tokenizer is trained on: demo chats plus generic English."""
    lines = GENERIC_TEXT.splitlines()
    for records in demo_data.generate().values():
        for record in records:
            lines.extend(m["content"] for m in record["messages"])
    return lines


def recipe_digest(spec: BuiltinSpec, corpus: list[str]) -> str:
    """A short hash of everything that determines the built files."""
    recipe = {
        "version": RECIPE_VERSION,
        "spec": dataclasses.asdict(spec),
        "builder": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "corpus": hashlib.sha256("\n".join(corpus).encode()).hexdigest(),
        # Their output for a fixed seed may change between releases.
        "numpy": np.__version__,
        "tokenizers": tokenizers.__version__,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def ensure_builtin(name: str) -> Path:
    """Return the directory of built-in model `name`, building it on first use.

    `name` is "builtin:tiny" or "builtin:small". A cached directory that is
    missing a file or has a file of the wrong size is rebuilt. Concurrent
    callers are safe: each builds in its own temp dir and renames it into place;
    whoever loses the race uses the winner's directory.
    """
    if name not in SPECS:
        raise ValueError(f"unknown built-in model {name!r}; choose one of {', '.join(SPECS)}")
    spec = SPECS[name]
    corpus = tokenizer_corpus()
    short = name.split(":", 1)[1]
    final = cache_root() / f"builtin-{short}-v{RECIPE_VERSION}-{recipe_digest(spec, corpus)}"
    if _is_complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build(spec, corpus, tmp)
        _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _is_complete(model_dir: Path) -> bool:
    """True when the manifest (written last) exists and every file has its size."""
    try:
        manifest = json.loads((model_dir / MANIFEST).read_text())
        return all((model_dir / f).stat().st_size == size for f, size in manifest["sizes"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _publish(tmp: Path, final: Path) -> None:
    """Move a finished build into place, replacing a broken dir, tolerating a racing winner."""
    for _ in range(3):
        try:
            os.rename(tmp, final)
            fsync_path(final.parent)
            return
        except OSError:
            if _is_complete(final):
                return  # another process won the race with an identical build
            # A broken leftover: move it aside (atomic), then delete it and retry.
            trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.trash.", dir=final.parent))
            try:
                os.rename(final, trash / "old")
            except FileNotFoundError:
                pass
            shutil.rmtree(trash, ignore_errors=True)
    raise OSError(f"could not publish built model to {final}")


def build(spec: BuiltinSpec, corpus: list[str], out_dir: Path) -> None:
    """Write config, tokenizer and weights for `spec` into the existing `out_dir`."""
    tokenizer = train_tokenizer(corpus, spec.vocab_size)
    ids = {f"{k}_token_id": tokenizer.token_to_id(t) for k, t in (("bos", BOS), ("eos", EOS), ("pad", PAD))}
    files = {
        "tokenizer.json": tokenizer.to_str(pretty=True).encode(),
        "config.json": _json({**model_config(spec), **ids}),
        "generation_config.json": _json(ids),
        "tokenizer_config.json": _json(tokenizer_config(spec)),
        "special_tokens_map.json": _json({"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}),
    }
    for filename, data in files.items():
        _write_synced(out_dir / filename, data)
    _write_weights(out_dir / "model.safetensors", init_weights(spec))
    # The manifest goes last: a dir with a manifest whose sizes match is complete.
    sizes = {f: (out_dir / f).stat().st_size for f in sorted([*files, "model.safetensors"])}
    _write_synced(out_dir / MANIFEST, _json({"recipe_version": RECIPE_VERSION, "sizes": sizes}))
    fsync_path(out_dir)


def train_tokenizer(corpus: list[str], vocab_size: int):
    """A byte-level BPE tokenizer with exactly `vocab_size` tokens.

    The 256 byte symbols are always in the vocabulary, so any text encodes. If
    the corpus runs out of merges first, reserved special tokens fill the rest.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    missing = vocab_size - tokenizer.get_vocab_size()
    tokenizer.add_special_tokens([f"<|reserved_{i}|>" for i in range(missing)])
    bos_id = tokenizer.token_to_id(BOS)
    # Plain-text encoding starts with BOS, as chat templates do.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    return tokenizer


def model_config(spec: BuiltinSpec) -> dict:
    """config.json for mlx-lm's llama model (build() adds the special token ids)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "num_hidden_layers": spec.num_hidden_layers,
        "intermediate_size": spec.intermediate_size,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "torch_dtype": "float32",
    }


def tokenizer_config(spec: BuiltinSpec) -> dict:
    """tokenizer_config.json: special tokens and the chat template."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": spec.max_position_embeddings,
        "clean_up_tokenization_spaces": False,
    }


def init_weights(spec: BuiltinSpec) -> dict[str, np.ndarray]:
    """Float32 Llama weights drawn from `default_rng(spec.seed)` in a fixed order.

    Embeddings and projections are N(0, 0.02), the projections that write to the
    residual stream scaled by 1/sqrt(2 * layers) (GPT-2's recipe). The output
    layer is untied and N(0, 1/sqrt(hidden)): its logits start with std ~1, so
    the first loss is near ln(vocab), yet the frozen head can still express a
    confident prediction. (Tied 0.02 embeddings cap every logit near 2.6 at
    hidden 128, and LoRA, which cannot train the head, stalls at a loss of ~4.4.)
    """
    rng = np.random.default_rng(spec.seed)
    std, out_std = 0.02, 0.02 / np.sqrt(2 * spec.num_hidden_layers)
    h, kv, m = spec.hidden_size, _kv_dim(spec), spec.intermediate_size

    def normal(shape, scale=std):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)

    weights = {"model.embed_tokens.weight": normal((spec.vocab_size, h))}
    for i in range(spec.num_hidden_layers):
        p = f"model.layers.{i}."
        weights[p + "self_attn.q_proj.weight"] = normal((h, h))
        weights[p + "self_attn.k_proj.weight"] = normal((kv, h))
        weights[p + "self_attn.v_proj.weight"] = normal((kv, h))
        weights[p + "self_attn.o_proj.weight"] = normal((h, h), out_std)
        weights[p + "mlp.gate_proj.weight"] = normal((m, h))
        weights[p + "mlp.up_proj.weight"] = normal((m, h))
        weights[p + "mlp.down_proj.weight"] = normal((h, m), out_std)
        weights[p + "input_layernorm.weight"] = np.ones(h, dtype=np.float32)
        weights[p + "post_attention_layernorm.weight"] = np.ones(h, dtype=np.float32)
    weights["model.norm.weight"] = np.ones(h, dtype=np.float32)
    weights["lm_head.weight"] = normal((spec.vocab_size, h), 1 / np.sqrt(h))
    return weights


def parameter_count(spec: BuiltinSpec) -> int:
    """Number of parameters of the model `spec` describes."""
    h, kv, m = spec.hidden_size, _kv_dim(spec), spec.intermediate_size
    per_layer = 2 * h * h + 2 * kv * h + 3 * h * m + 2 * h
    return 2 * spec.vocab_size * h + spec.num_hidden_layers * per_layer + h


def _kv_dim(spec: BuiltinSpec) -> int:
    return spec.num_key_value_heads * (spec.hidden_size // spec.num_attention_heads)


def _write_weights(path: Path, weights: dict[str, np.ndarray]) -> None:
    _write_synced(path, safetensors_bytes(weights, metadata={"format": "mlx"}))


def _json(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
