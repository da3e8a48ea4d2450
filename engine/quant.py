"""QLoRA: a quantized frozen base, and a fast quantized linear for the CPU backend.

`quantize_model` turns a model's Linear and Embedding layers into mlx's
`nn.QuantizedLinear` / `nn.QuantizedEmbedding`, as `mlx_lm.convert -q` does, and
reports the layers whose shapes cannot be quantized (they stay in full precision).
`prepare_base` writes such a model once as an mlx-lm model directory (config.json
carries `quantization`), so that training and `mlx_lm.utils.load(dir, adapter_path=...)`
see the very same quantized weights; a pre-quantized directory is used as it is.

On the CPU backend `mx.quantized_matmul` is ~60x slower than dequantizing and
multiplying with a fast BLAS. `use_cpu_fast_path` swaps the quantized layers for
subclasses that do that, through a custom VJP that keeps only the packed weights
for the backward pass and dequantizes them again there. Metal and CUDA keep mlx's kernel.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map_with_path

from engine.checkpoint import fsync_path

# Bits and group sizes each mode accepts (mx.quantize in mlx 0.32; affine also takes 1 bit, useless to train on).
SUPPORTED = {
    "affine": ((2, 3, 4, 5, 6, 8), (32, 64, 128)),
    "mxfp4": ((4,), (32,)),
    "nvfp4": ((4,), (16,)),
    "mxfp8": ((8,), (32,)),
}
REPORT_FILE = "quantize_report.json"
# Bump when the way a quantized base is written changes.
BASE_VERSION = 1


class QuantizeError(ValueError):
    """Quantization settings or a model that cannot be quantized as asked; the message says what to change."""


@dataclass(frozen=True)
class SkippedLayer:
    """A layer left in full precision, and why."""

    path: str  # e.g. "model.layers.0.mlp.down_proj"
    shape: tuple[int, ...]
    reason: str


@dataclass(frozen=True)
class QuantReport:
    """What `quantize_model` did."""

    bits: int
    group_size: int
    mode: str
    quantized_layers: int
    skipped: tuple[SkippedLayer, ...]
    already_quantized: int  # layers that were quantized before (a pre-quantized model)
    bytes_before: int  # all model parameters, before and after
    bytes_after: int
    config: dict = field(default_factory=dict)  # the `quantization` entry for config.json

    def summary(self) -> str:
        text = (
            f"quantized {self.quantized_layers} layers to {self.bits}-bit ({self.mode}, group {self.group_size}): "
            f"weights {self.bytes_before / 1e6:.1f} MB -> {self.bytes_after / 1e6:.1f} MB"
        )
        if self.skipped:
            text += f"; {len(self.skipped)} left in full precision: " + "; ".join(f"{s.path} ({s.reason})" for s in self.skipped)
        return text

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> QuantReport:
        skipped = tuple(SkippedLayer(s["path"], tuple(s["shape"]), s["reason"]) for s in d["skipped"])
        return cls(**{**d, "skipped": skipped})


def check_settings(bits: int, group_size: int, mode: str = "affine") -> None:
    """Raise QuantizeError unless mlx can quantize with these settings."""
    if mode not in SUPPORTED:
        raise QuantizeError(f"quantize.mode: {mode!r} is not one of {', '.join(SUPPORTED)}")
    all_bits, group_sizes = SUPPORTED[mode]
    if bits not in all_bits:
        raise QuantizeError(f"quantize.bits: {bits} is not supported for {mode}; choose one of {', '.join(map(str, all_bits))}")
    if group_size not in group_sizes:
        raise QuantizeError(
            f"quantize.group_size: {group_size} is not supported for {mode}; choose one of {', '.join(map(str, group_sizes))}"
        )


def weight_bytes(model: nn.Module) -> int:
    """Bytes of all the model's parameters (packed weights, scales and biases for quantized layers)."""
    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


def quantize_model(model: nn.Module, bits: int, group_size: int, mode: str = "affine") -> QuantReport:
    """Quantize, in place, every layer mlx-lm would (those with `to_quantized`: Linear, Embedding, SwitchLinear).

    A layer whose input dimension is not a multiple of group_size, or that mx.quantize
    rejects, stays in full precision and is listed in the report. The model's own
    `quant_predicate` (some mlx-lm models keep e.g. MoE routers unquantized) is honoured.
    """
    check_settings(bits, group_size, mode)
    bytes_before = weight_bytes(model)
    params = {"group_size": group_size, "bits": bits, "mode": mode}
    model_predicate = getattr(model, "quant_predicate", None)
    skipped: list[SkippedLayer] = []
    per_layer: dict[str, dict] = {}
    counts = {"quantized": 0, "already": 0}

    def quantize_one(path: str, module: nn.Module):
        if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            counts["already"] += 1
            return module
        if not hasattr(module, "to_quantized"):
            return module
        shape = tuple(module.weight.shape)
        wanted = model_predicate(path, module) if model_predicate else True
        if not wanted:
            skipped.append(SkippedLayer(path, shape, "the model keeps it in full precision (its quant_predicate)"))
            return module
        layer_params = dict(wanted) if isinstance(wanted, dict) else params
        if shape[-1] % layer_params["group_size"]:
            reason = f"input dimension {shape[-1]} is not a multiple of group_size {layer_params['group_size']}"
            skipped.append(SkippedLayer(path, shape, reason))
            return module
        try:
            quantized = module.to_quantized(**layer_params)
        except ValueError as e:  # whatever else mx.quantize rejects
            skipped.append(SkippedLayer(path, shape, str(e).strip()))
            return module
        if isinstance(wanted, dict):
            per_layer[path] = layer_params
        counts["quantized"] += 1
        return quantized

    leaves = tree_map_with_path(quantize_one, model.leaf_modules(), is_leaf=nn.Module.is_module)
    model.update_modules(leaves)
    mx.eval(model.parameters())
    return QuantReport(
        bits=bits,
        group_size=group_size,
        mode=mode,
        quantized_layers=counts["quantized"],
        skipped=tuple(skipped),
        already_quantized=counts["already"],
        bytes_before=bytes_before,
        bytes_after=weight_bytes(model),
        config={**params, **per_layer},
    )


def read_quantization(model_dir: Path) -> dict | None:
    """The `quantization` entry of a model directory's config.json (None: a full-precision model).

    Models from other quantizers (`quantization_config` with a `quant_method`: awq, gptq,
    mxfp4, ...) count as quantized too; mlx-lm converts them when it loads them.
    """
    config = json.loads((Path(model_dir) / "config.json").read_text())
    if config.get("quantization"):
        return dict(config["quantization"])
    for holder in (config, config.get("text_config", {})):
        if holder.get("quantization_config"):
            return dict(holder["quantization_config"])
    return None


def save_quantized(model: nn.Module, report: QuantReport, source_dir: Path, dest_dir: Path) -> Path:
    """Write a quantized model as an mlx-lm model directory: weights, config.json with `quantization`, tokenizer files."""
    from mlx_lm.utils import load_config, save_config, save_model

    source_dir, dest_dir = Path(source_dir), Path(dest_dir)
    save_model(dest_dir, model)
    config = load_config(source_dir)
    config["quantization"] = dict(report.config)
    save_config(config, dest_dir / "config.json")
    written = ("model.safetensors.index.json", "config.json", "manifest.json", REPORT_FILE)
    for f in source_dir.iterdir():
        if f.is_file() and f.name not in written and not (f.name.startswith("model") and f.suffix == ".safetensors"):
            shutil.copy(f, dest_dir / f.name)
    (dest_dir / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n")  # written last: marks it complete
    return dest_dir


def _source_digest(source_dir: Path, bits: int, group_size: int, mode: str) -> str:
    h = hashlib.sha256(f"v{BASE_VERSION} {source_dir.resolve()} {bits} {group_size} {mode}".encode())
    for f in sorted(source_dir.iterdir()):
        if f.suffix in (".safetensors", ".json"):
            st = f.stat()
            h.update(f"{f.name} {st.st_size} {st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def prepare_base(
    model_dir: Path, bits: int | None, group_size: int, mode: str = "affine", cache_dir: Path | None = None, log=None
) -> tuple[Path, QuantReport | None]:
    """The model directory to train on: model_dir itself, or a quantized copy built once and cached.

    bits None or 0: model_dir as it is (a pre-quantized directory trains quantized, as is).
    bits set on a full-precision model: a directory under `cache_dir` (default
    `$LORA_MLX_CACHE/quantized`) keyed by the source files and settings, with its report.
    bits set on a model that is already quantized with other settings: QuantizeError.
    """
    model_dir = Path(model_dir)
    if not bits:
        return model_dir, None
    existing = read_quantization(model_dir)
    check_settings(bits, group_size, mode)
    if existing is not None:
        have = (existing.get("bits"), existing.get("group_size"), existing.get("mode", "affine"))
        if have == (bits, group_size, mode):
            return model_dir, None
        raise QuantizeError(
            f"{model_dir} is already quantized ({existing}); it cannot be quantized again to {bits}-bit group {group_size}. "
            "Unset quantize.bits to train on it as it is, or start from a full-precision model."
        )
    if cache_dir is None:
        from engine.tiny import cache_root

        cache_dir = cache_root() / "quantized"
    final = Path(cache_dir) / f"{model_dir.name}-q{bits}g{group_size}-{mode}-{_source_digest(model_dir, bits, group_size, mode)}"
    if (final / REPORT_FILE).exists():
        return final, QuantReport.from_dict(json.loads((final / REPORT_FILE).read_text()))
    if log:
        log("info", f"quantizing {model_dir} to {bits}-bit (group {group_size}) into {final}")
    from mlx_lm.utils import load_model

    model, _ = load_model(model_dir, lazy=True)
    report = quantize_model(model, bits, group_size, mode)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        save_quantized(model, report, model_dir, tmp)
        for path in [*sorted(p for p in tmp.rglob("*") if p.is_file()), tmp]:  # on disk before it is published
            fsync_path(path)
        try:
            os.rename(tmp, final)
        except OSError:  # another process published it first, or a broken leftover is in the way
            if not (final / REPORT_FILE).exists():
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
        fsync_path(final.parent)  # the rename itself survives a power cut
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    del model
    mx.clear_cache()  # the caller loads the written copy next
    return final, report


# The CPU fast path -----------------------------------------------------------------------------


@functools.cache
def _dequantized_matmul_fn(group_size: int, bits: int, mode: str, has_biases: bool):
    """x @ dequantize(W).T in fp32 on BLAS, with a VJP that dequantizes W again instead of keeping it."""

    def dense(w, scales, biases):
        return mx.dequantize(w, scales, biases, group_size=group_size, bits=bits, mode=mode, dtype=mx.float32)

    # Making the dense weight depend on x (forward) and on the cotangent (backward) schedules it
    # right before its matmul, so about one is alive at a time instead of one per layer.
    def forward(x, w, scales, *biases):
        w, scales, *biases = mx.depends([w, scales, *biases], [x])
        y = x.astype(mx.float32) @ dense(w, scales, biases[0] if has_biases else None).T
        return y.astype(x.dtype)

    def backward(primals, cotangent, output):
        x, w, scales, *biases = primals
        w, scales, *biases = mx.depends([w, scales, *biases], [cotangent])
        dx = cotangent.astype(mx.float32) @ dense(w, scales, biases[0] if has_biases else None)
        # The quantized weights are frozen: their zero cotangents are never evaluated.
        return (dx.astype(x.dtype), mx.zeros_like(w), mx.zeros_like(scales), *[mx.zeros_like(b) for b in biases])

    fn = mx.custom_function(forward)
    fn.vjp(backward)
    return fn


def dequantized_matmul(x: mx.array, layer: nn.Module) -> mx.array:
    """`x @ W.T` for a quantized layer's W, computed as the CPU fast path does (no bias)."""
    biases = layer.get("biases")
    fn = _dequantized_matmul_fn(layer.group_size, layer.bits, layer.mode, biases is not None)
    return fn(x, layer["weight"], layer["scales"], *([biases] if biases is not None else []))


class CPUQuantizedLinear(nn.QuantizedLinear):
    """nn.QuantizedLinear that dequantizes per call and multiplies on BLAS (same parameters, same names)."""

    def __call__(self, x):
        y = dequantized_matmul(x, self)
        return y + self["bias"] if "bias" in self else y


class CPUQuantizedEmbedding(nn.QuantizedEmbedding):
    """nn.QuantizedEmbedding whose `as_linear` (tied output layers) uses the CPU fast path."""

    def as_linear(self, x):
        return dequantized_matmul(x, self)


def _dora_call(self, x):
    """mlx-lm's DoRALinear.__call__, with the dense weight made by the fast path (and not kept for backward)."""
    y = dequantized_matmul(x, self.linear)
    z = (self.dropout(x) @ self.lora_a) @ self.lora_b
    out = y + (self.scale * z).astype(x.dtype)
    # The weight norm is outside the gradient (as in mlx-lm), so this dense weight is freed after the forward pass.
    adapted = mx.stop_gradient(self._dequantized_weight()) + (self.scale * self.lora_b.T) @ self.lora_a.T
    denom = mx.stop_gradient(mx.linalg.norm(adapted, axis=1))
    out = (self.m / denom).astype(x.dtype) * out
    return out + self.linear.bias if "bias" in self.linear else out


@functools.cache
def _cpu_dora_class() -> type:
    # Built on first use: importing mlx_lm loads rich, which engine modules must not load at import.
    from mlx_lm.tuner.dora import DoRALinear

    doc = "mlx-lm's DoRALinear over a quantized layer, without keeping the dense weight for the backward pass."
    return type("CPUQuantizedDoRALinear", (DoRALinear,), {"__call__": _dora_call, "__doc__": doc, "__module__": __name__})


def __getattr__(name: str):
    if name == "CPUQuantizedDoRALinear":  # quant.CPUQuantizedDoRALinear, made on first use
        return _cpu_dora_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def cpu_fast_path_applies() -> bool:
    """True on mlx's CPU backend, where dequantize + BLAS beats `mx.quantized_matmul`."""
    return mx.default_device().type == mx.DeviceType.cpu


def use_cpu_fast_path(model: nn.Module, force: bool = False) -> int:
    """Swap quantized layers (and DoRA layers over them) for the CPU fast-path subclasses; return how many.

    Does nothing off the CPU backend unless `force`. Call it after the adapters are added
    (DoRA layers are swapped too). Only the instances' classes change: parameter names,
    `isinstance(m, nn.QuantizedLinear)` checks and saved adapters stay as they are.
    """
    if not (force or cpu_fast_path_applies()):
        return 0
    dora = sys.modules.get("mlx_lm.tuner.dora")  # not imported: the model has no DoRA layers
    swapped = 0
    for _, module in model.named_modules():
        if type(module) is nn.QuantizedLinear:
            module.__class__ = CPUQuantizedLinear
        elif type(module) is nn.QuantizedEmbedding:
            module.__class__ = CPUQuantizedEmbedding
        elif dora and type(module) is dora.DoRALinear and isinstance(module.linear, nn.QuantizedLinear):
            module.__class__ = _cpu_dora_class()
        else:
            continue
        swapped += 1
    return swapped
