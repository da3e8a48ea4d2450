"""Pre-flight memory estimate: will this run fit, before a byte of the model loads?

Counts, for a Llama-style decoder read from the model's config.json:
weights (at their precision, or the quantized size), trainable parameters,
their gradients and optimizer state, and the activations a micro-batch keeps
for the backward pass (with or without gradient checkpointing), then compares
the total with the memory this backend can use. The activation constants
were fitted against measured peaks (benchmarks/memory_estimate.py).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

GB = 1e9
# Values kept per token and layer for the backward pass, in units of hidden
# size, intermediate size and attention scores (per head, per key position).
PER_HIDDEN, PER_INTERMEDIATE, PER_SCORE = 10.0, 4.0, 2.0
PER_VOCAB = 3.0  # logits, their softmax and its gradient
OVERHEAD = 1.10  # allocator rounding and short-lived buffers
TIGHT_FRACTION = 0.8  # above this share of the budget the verdict is "tight"


@dataclass
class Shape:
    """The sizes that decide memory, from a Hugging Face config.json."""

    vocab: int
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool

    @classmethod
    def from_config(cls, c: dict) -> "Shape":
        heads = c["num_attention_heads"]
        hidden = c["hidden_size"]
        return cls(
            vocab=c["vocab_size"],
            hidden=hidden,
            layers=c["num_hidden_layers"],
            intermediate=c["intermediate_size"],
            heads=heads,
            kv_heads=c.get("num_key_value_heads", heads),
            head_dim=c.get("head_dim") or hidden // heads,
            tied=c.get("tie_word_embeddings", False),
        )

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer in one block, by its module path."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {
            "self_attn.q_proj": (h, q), "self_attn.k_proj": (h, kv), "self_attn.v_proj": (h, kv),
            "self_attn.o_proj": (q, h), "mlp.gate_proj": (h, i), "mlp.up_proj": (h, i), "mlp.down_proj": (i, h),
        }

    def parameters(self) -> tuple[int, int]:
        """(parameters in linear layers of the blocks, all other parameters)."""
        linear = self.layers * sum(a * b for a, b in self.linear_shapes().values())
        other = self.vocab * self.hidden * (1 if self.tied else 2) + self.layers * 2 * self.hidden + self.hidden
        return linear, other


@dataclass
class Estimate:
    weights_gb: float
    trainable_gb: float
    gradients_gb: float
    optimizer_gb: float
    activations_gb: float
    total_gb: float
    budget_gb: float
    budget_source: str
    verdict: str  # "fits", "tight" or "will not fit"
    advice: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """A short report for the CLI and the config pane."""
        return [
            f"memory estimate: {self.total_gb:.2f} GB of {self.budget_gb:.1f} GB ({self.budget_source}): {self.verdict}",
            f"  weights {self.weights_gb:.2f} GB, trainable {self.trainable_gb:.3f} GB, gradients {self.gradients_gb:.3f} GB, "
            f"optimizer {self.optimizer_gb:.3f} GB, activations {self.activations_gb:.2f} GB",
            *[f"  - {a}" for a in self.advice],
        ]


def _trainable(shape: Shape, cfg) -> int:
    linear, other = shape.parameters()
    if cfg.fine_tune_type == "full":
        return linear + other
    adapted = shape.linear_shapes()
    if cfg.lora.keys:
        adapted = {k: v for k, v in adapted.items() if k in cfg.lora.keys}
    layers = shape.layers if cfg.lora.num_layers == -1 else min(cfg.lora.num_layers, shape.layers)
    per_layer = sum(cfg.lora.rank * (a + b) + (b if cfg.fine_tune_type == "dora" else 0) for a, b in adapted.values())
    return layers * per_layer


def _activations(shape: Shape, micro_batch: int, seq: int, grad_checkpoint: bool, dsize: int, dora: bool = False, layers: int | None = None) -> float:
    """Bytes kept for the backward pass. Only the `layers` blocks that gradients flow through
    count: with adapters on the last N blocks, nothing below them is differentiated."""
    layers = shape.layers if layers is None else layers
    per_token_layer = PER_HIDDEN * shape.hidden + PER_INTERMEDIATE * shape.intermediate
    if dora:  # DoRA also keeps every adapted layer's output before its rescaling
        per_token_layer += sum(out for _, out in shape.linear_shapes().values())
    one_layer = micro_batch * seq * per_token_layer + PER_SCORE * micro_batch * shape.heads * seq * seq
    logits = PER_VOCAB * micro_batch * seq * shape.vocab * dsize
    if grad_checkpoint:  # keep each block's input; recompute one block at a time
        return (layers * micro_batch * seq * shape.hidden + one_layer) * dsize + logits
    return layers * one_layer * dsize + logits


def estimate(cfg, model_config: dict, weight_bytes: int, budget_bytes: int, budget_source: str, quant_bits: int = 0, quant_group: int = 64) -> Estimate:
    """The memory a run needs, compared with budget_bytes, with a verdict and advice."""
    shape = Shape.from_config(model_config)
    linear, other = shape.parameters()
    dsize = max(2, min(4, round(weight_bytes / max(linear + other, 1))))  # bytes per weight: 2 (fp16/bf16) or 4
    if quant_bits:  # packed weights plus a scale and a bias per group, in the weights' dtype
        weights = linear * (quant_bits / 8 + 2 * dsize / quant_group) + other * dsize
    else:
        weights = weight_bytes
    trainable = _trainable(shape, cfg) * 4 if cfg.fine_tune_type != "full" else _trainable(shape, cfg) * dsize
    copies = 2 if (cfg.train.grad_accumulation > 1 or cfg.train.micro_batch_size) else 1  # running sum + current
    gradients = trainable * copies
    optimizer = 2 * trainable if cfg.train.optimizer in ("adam", "adamw") else 0
    micro = cfg.train.micro_batch_size or cfg.train.batch_size
    if micro == "auto":  # the probe will pick what fits; judge the smallest case
        micro = 1
    dora = cfg.fine_tune_type == "dora"
    layers = shape.layers if cfg.fine_tune_type == "full" or cfg.lora.num_layers == -1 else min(cfg.lora.num_layers, shape.layers)
    activations = _activations(shape, micro, cfg.train.max_seq_length, cfg.train.grad_checkpoint, dsize, dora, layers)
    adapters = trainable if cfg.fine_tune_type != "full" else 0  # full fine-tuning trains the weights themselves
    total = (weights + adapters + gradients + optimizer + activations) * OVERHEAD
    verdict = "fits" if total <= TIGHT_FRACTION * budget_bytes else "tight" if total <= budget_bytes else "will not fit"
    advice = []
    if verdict != "fits":
        if not cfg.train.grad_checkpoint:
            saved = activations - _activations(shape, micro, cfg.train.max_seq_length, True, dsize, dora, layers)
            advice.append(f"train.grad_checkpoint=true saves about {saved * OVERHEAD / GB:.2f} GB")
        if micro > 1:
            advice.append(f"train.micro_batch_size={max(1, micro // 2)} halves the activations ({activations * OVERHEAD / GB / 2:.2f} GB saved) without changing the update")
        if not quant_bits and cfg.fine_tune_type != "full":
            advice.append(f"quantize.bits=4 cuts the weights to about {(linear * (0.5 + 2 * dsize / 64) + other * dsize) / GB:.2f} GB")
        if cfg.train.max_seq_length > 512:
            advice.append("a lower train.max_seq_length shrinks activations (attention grows with its square)")
    to_gb = lambda b: b / GB  # noqa: E731
    return Estimate(
        to_gb(weights), to_gb(trainable), to_gb(gradients), to_gb(optimizer), to_gb(activations), to_gb(total),
        to_gb(budget_bytes), budget_source, verdict, advice,
    )


def preflight(cfg, model_config: dict, weights_bytes: int, budget_bytes: int, budget_source: str) -> Estimate:
    """Estimate a run from the model's config.json and the size of its weight files."""
    quant = getattr(cfg, "quantize", None)
    bits = getattr(quant, "bits", 0) or 0
    if model_config.get("quantization"):  # a pre-quantized model: its files already have the quantized size
        bits = 0
    return estimate(cfg, model_config, weights_bytes, budget_bytes, budget_source, bits, getattr(quant, "group_size", 64))


def budget(cfg) -> tuple[int, str]:
    """The memory a run may use, judged without importing mlx (the dashboard asks too).

    Matches the engine's default limit (engine.memory): 90% of what the backend has, where a
    Mac's GPU gets about two thirds of unified memory (Metal's recommended working set).
    """
    import psutil

    if cfg.memory.limit_gb:
        return int(cfg.memory.limit_gb * GB), "memory.limit_gb"
    total = psutil.virtual_memory().total
    if sys.platform == "darwin":
        return int(total * 2 / 3 * 0.9), "90% of Metal's working set"
    return int(total * 0.9), "90% of system memory"
