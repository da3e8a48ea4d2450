"""QLoRA: quantizing the base, the CPU dequantizing linear, training on it, reloading with mlx-lm."""

import json

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import pytest
from mlx.utils import tree_flatten
from mlx_lm.tuner.dora import DoRALinear
from mlx_lm.tuner.lora import LoRALinear
from mlx_lm.tuner.utils import linear_to_lora_layers
from mlx_lm.utils import load

from engine import batches, config, data, quant, trainer
from engine.tiny import ensure_builtin

DEMO_DATA = config.REPO_ROOT / "presets" / "data" / "demo"


def quantized_layer(in_dims, out_dims, bits, group_size, mode="affine", bias=True, cls=nn.QuantizedLinear):
    mx.random.seed(in_dims * 7 + out_dims)
    return cls.from_linear(nn.Linear(in_dims, out_dims, bias=bias), group_size, bits, mode=mode)


def fast_copy(layer):
    """The same layer (same parameter arrays) with the CPU fast path's class."""
    out_dims, in_dims = layer.weight.shape
    in_dims = in_dims * 32 // layer.bits
    fast = quant.CPUQuantizedLinear(in_dims, out_dims, "bias" in layer, layer.group_size, layer.bits, layer.mode)
    fast.update(layer.parameters())
    return fast


def close(a, b, rtol=1e-4):
    """Equal up to rtol of the larger magnitude (the two kernels sum in different orders)."""
    scale = max(mx.abs(a).max().item(), mx.abs(b).max().item(), 1e-6)
    return mx.abs(a - b).max().item() <= rtol * scale


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("in_dims,out_dims,bias", [(128, 96, True), (384, 130, False), (1024, 512, True)])
def test_dequantizing_linear_matches_quantized_matmul(bits, group_size, in_dims, out_dims, bias):
    layer = quantized_layer(in_dims, out_dims, bits, group_size, bias=bias)
    fast = fast_copy(layer)
    x = mx.random.normal((2, 5, in_dims))
    r = mx.random.normal((2, 5, out_dims))
    assert close(fast(x), layer(x))

    def input_grad(module):
        return lambda x: mx.grad(lambda x: (module(x) * r).sum())(x)

    expected = input_grad(layer)(x)
    assert close(input_grad(fast)(x), expected)
    assert close(mx.compile(input_grad(fast))(x), expected)


def test_dequantizing_linear_without_biases_and_in_bfloat16():
    layer = quantized_layer(256, 64, 4, 32, mode="mxfp4", bias=False)  # mxfp4 has no affine biases
    assert layer.get("biases") is None
    x = mx.random.normal((3, 256))
    assert close(fast_copy(layer)(x), layer(x))
    half = x.astype(mx.bfloat16)
    assert fast_copy(layer)(half).dtype == mx.bfloat16
    g = mx.grad(lambda x: fast_copy(layer)(x).astype(mx.float32).sum())(half)
    assert g.dtype == mx.bfloat16


def test_the_cpu_dora_layer_matches_mlx_lm_dora_on_a_quantized_layer():
    mx.random.seed(3)
    reference = DoRALinear.from_base(quantized_layer(256, 192, 4, 64), r=8, scale=2.0)
    reference.linear.freeze()  # the base, bias included, is frozen as in training
    reference.lora_b = mx.random.normal(reference.lora_b.shape) * 0.1  # a trained-looking update, not zeros
    fast = DoRALinear.from_base(reference.linear, r=8, scale=2.0)
    fast.update(reference.parameters())
    fast.__class__ = quant.CPUQuantizedDoRALinear
    x = mx.random.normal((4, 256))
    assert close(fast(x), reference(x))

    def grads(layer):
        return nn.value_and_grad(layer, lambda layer, x: (layer(x) ** 2).sum())(layer, x)[1]

    expected = dict(tree_flatten(grads(reference)))
    got = dict(tree_flatten(grads(fast)))
    assert sorted(got) == sorted(expected) == ["lora_a", "lora_b", "m"]
    assert all(close(got[k], expected[k]) for k in expected)


def test_layers_that_cannot_be_quantized_stay_in_full_precision_and_are_reported():
    model, _ = load(str(ensure_builtin("builtin:tiny")))  # hidden 128, intermediate 352
    candidates = sum(isinstance(m, (nn.Linear, nn.Embedding)) for _, m in model.named_modules())
    report = quant.quantize_model(model, 4, 64)
    skipped = {s.path: s for s in report.skipped}
    assert sorted(skipped) == [f"model.layers.{i}.mlp.down_proj" for i in range(4)]
    assert skipped["model.layers.0.mlp.down_proj"].reason == "input dimension 352 is not a multiple of group_size 64"
    assert skipped["model.layers.0.mlp.down_proj"].shape == (128, 352)
    assert type(model.layers[0].mlp.down_proj) is nn.Linear
    assert isinstance(model.layers[0].mlp.up_proj, nn.QuantizedLinear)
    assert isinstance(model.model.embed_tokens, nn.QuantizedEmbedding)
    assert report.quantized_layers == candidates - 4
    assert report.bytes_after < 0.4 * report.bytes_before
    assert report.bytes_after == quant.weight_bytes(model)
    assert "model.layers.3.mlp.down_proj (input dimension 352" in report.summary()

    report_32 = quant.quantize_model(load(str(ensure_builtin("builtin:tiny")))[0], 4, 32)
    assert report_32.skipped == () and report_32.quantized_layers == candidates


@pytest.mark.parametrize(
    "bits,group_size,mode,message",
    [
        (7, 64, "affine", "quantize.bits: 7 is not supported for affine; choose one of 2, 3, 4, 5, 6, 8"),
        (4, 48, "affine", "quantize.group_size: 48 is not supported for affine; choose one of 32, 64, 128"),
        (8, 32, "mxfp4", "quantize.bits: 8 is not supported for mxfp4; choose one of 4"),
        (4, 64, "int4", "quantize.mode: 'int4' is not one of affine, mxfp4, nvfp4, mxfp8"),
    ],
)
def test_unsupported_settings_name_what_is_supported(bits, group_size, mode, message):
    with pytest.raises(quant.QuantizeError) as e:
        quant.check_settings(bits, group_size, mode)
    assert str(e.value) == message


@pytest.fixture(scope="module")
def quantized_tiny(tmp_path_factory):
    """builtin:tiny quantized to 4-bit (group 64) as an mlx-lm model directory, with its report."""
    path, report = quant.prepare_base(ensure_builtin("builtin:tiny"), 4, 64, cache_dir=tmp_path_factory.mktemp("qcache"))
    return path, report


def test_a_quantized_base_is_written_once_and_recognised(quantized_tiny, tmp_path):
    path, report = quantized_tiny
    assert quant.read_quantization(path) == {"group_size": 64, "bits": 4, "mode": "affine"}
    assert quant.read_quantization(ensure_builtin("builtin:tiny")) is None
    assert len(report.skipped) == 4
    written = (path / "model.safetensors").stat().st_mtime_ns
    again, cached = quant.prepare_base(ensure_builtin("builtin:tiny"), 4, 64, cache_dir=path.parent)
    assert again == path and cached == report
    assert (path / "model.safetensors").stat().st_mtime_ns == written
    assert quant.prepare_base(ensure_builtin("builtin:tiny"), None, 64) == (ensure_builtin("builtin:tiny"), None)
    # A pre-quantized directory is used as it is, with or without matching settings.
    assert quant.prepare_base(path, None, 64) == (path, None)
    assert quant.prepare_base(path, 4, 64) == (path, None)
    with pytest.raises(quant.QuantizeError, match="already quantized .* cannot be quantized again to 8-bit group 64"):
        quant.prepare_base(path, 8, 64)
    model, _ = load(str(path))
    assert isinstance(model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    assert type(model.layers[0].mlp.down_proj) is nn.Linear


def test_the_fast_path_is_used_only_on_the_cpu_backend(quantized_tiny, monkeypatch):
    model, _ = load(str(quantized_tiny[0]))
    monkeypatch.setattr(quant, "cpu_fast_path_applies", lambda: False)
    assert quant.use_cpu_fast_path(model) == 0
    assert type(model.layers[0].self_attn.q_proj) is nn.QuantizedLinear
    monkeypatch.undo()
    assert quant.cpu_fast_path_applies()  # these tests run on mlx's CPU backend
    assert quant.use_cpu_fast_path(model) == quantized_tiny[1].quantized_layers
    assert type(model.layers[0].self_attn.q_proj) is quant.CPUQuantizedLinear
    assert type(model.model.embed_tokens) is quant.CPUQuantizedEmbedding


def fixed_batches(tokenizer, n):
    splits = data.load_splits(DEMO_DATA, tokenizer, max_seq_length=64, batch_size=4)
    stream = batches.BatchStream(splits["train"], 4, 0, 64)
    return [stream.next() for _ in range(n)], list(batches.eval_batches(splits["valid"], 4, 64, 4))


def train_adapters(model, train, steps):
    """A compiled LoRA training loop like engine.trainer's, without its reporting."""
    optimizer = optim.Adam(learning_rate=1e-3)
    loss_and_grad = nn.value_and_grad(model, trainer.masked_loss)

    def step(tokens, lengths):
        (value, _), grads = loss_and_grad(model, tokens, lengths)
        optimizer.update(model, grads)
        return value

    step = mx.compile(step, inputs=[model.state, optimizer.state], outputs=[model.state, optimizer.state])
    model.train()
    for i in range(steps):
        batch = train[i % len(train)]
        step(mx.array(batch.tokens), mx.array(batch.lengths))
        mx.eval(model.state, optimizer.state)


@pytest.mark.parametrize("fine_tune_type", ["lora", "dora"])
def test_qlora_trains_and_its_adapters_reload_in_mlx_lm(quantized_tiny, tmp_path, fine_tune_type):
    path, report = quantized_tiny
    model, tokenizer = load(str(path))
    model.freeze()
    mx.random.seed(0)
    lora_parameters = {"rank": 8, "scale": 2.0, "dropout": 0.0}
    linear_to_lora_layers(model, 4, lora_parameters, use_dora=fine_tune_type == "dora")
    swapped = quant.use_cpu_fast_path(model)
    # DoRA layers over quantized layers (6 per block; down_proj stayed nn.Linear) are swapped as well.
    assert swapped == report.quantized_layers + (4 * 6 if fine_tune_type == "dora" else 0)
    adapted = model.layers[0].self_attn.q_proj
    if fine_tune_type == "dora":
        assert type(adapted) is quant.CPUQuantizedDoRALinear and isinstance(adapted, DoRALinear)
    else:
        assert type(adapted) is LoRALinear and type(adapted.linear) is quant.CPUQuantizedLinear
    assert all(k.rsplit(".", 1)[-1] in ("lora_a", "lora_b", "m") for k, _ in tree_flatten(model.trainable_parameters()))

    train, valid = fixed_batches(tokenizer, 8)
    before = trainer.evaluate(model, valid)
    train_adapters(model, train, 30)
    after = trainer.evaluate(model, valid)
    assert after < before - 0.5, (before, after)

    adapter_dir = tmp_path / "adapters"
    adapter_dir.mkdir()
    mx.save_safetensors(str(adapter_dir / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters())))
    adapter_config = {"fine_tune_type": fine_tune_type, "num_layers": 4, "lora_parameters": lora_parameters}
    (adapter_dir / "adapter_config.json").write_text(json.dumps(adapter_config))

    # mlx-lm, with its own quantized_matmul kernel, gives the same loss on the same quantized base.
    reloaded, _ = load(str(path), adapter_path=str(adapter_dir))
    assert type(reloaded.layers[0].self_attn.q_proj.linear) is nn.QuantizedLinear
    assert trainer.evaluate(reloaded, valid) == pytest.approx(after, abs=1e-4)


def backward_peak_bytes(layers, x) -> int:
    """Peak memory above the live arrays while computing the gradients of a stack of layers (and of x)."""
    def loss(params, x):
        for layer, p in zip(layers, params):
            layer.update(p)
        for layer in layers:
            x = mx.tanh(layer(x))
        return x.sum()

    grad = mx.grad(loss, argnums=(0, 1))
    params = [layer.trainable_parameters() for layer in layers]
    mx.eval(grad(params, x))
    mx.clear_cache()
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    mx.eval(grad(params, x))
    return mx.get_peak_memory() - base


class InGraphDequantize(nn.QuantizedLinear):
    """Dequantize inside the autodiff graph: autodiff keeps every dense weight for the backward pass."""

    def __call__(self, x):
        return x @ mx.dequantize(self.weight, self.scales, self.biases, self.group_size, self.bits).T


DENSE_BYTES = 1024 * 1024 * 4  # one dense weight of the stacks below


def stack(depth, cls, dora=False):
    layers = [quantized_layer(1024, 1024, 4, 64, bias=False, cls=cls) for _ in range(depth)]
    if dora:
        layers = [DoRALinear.from_base(layer, r=8, scale=2.0) for layer in layers]
        for layer in layers:
            layer.linear.freeze()
            if cls is quant.CPUQuantizedLinear:
                layer.__class__ = quant.CPUQuantizedDoRALinear
    mx.eval([layer.parameters() for layer in layers])
    return layers


@pytest.mark.parametrize("dora", [False, True], ids=["linear", "dora"])
def test_the_custom_vjp_does_not_keep_the_dense_weights_for_the_backward_pass(dora):
    x = mx.random.normal((32, 1024))
    # mlx-lm's DoRALinear dequantizes in the graph itself, whatever its base layer does.
    kept_cls = nn.QuantizedLinear if dora else InGraphDequantize
    variants = {"kept": kept_cls, "fast": quant.CPUQuantizedLinear}
    peaks = {d: {name: backward_peak_bytes(stack(d, cls, dora), x) for name, cls in variants.items()} for d in (4, 12)}
    # Eight more layers: eight more dense weights held in the graph, about none with the custom VJP.
    assert peaks[12]["kept"] - peaks[4]["kept"] >= 7.5 * DENSE_BYTES, peaks
    assert peaks[12]["fast"] - peaks[4]["fast"] <= 1.0 * DENSE_BYTES, peaks
    assert peaks[12]["fast"] < 0.5 * peaks[12]["kept"], peaks
