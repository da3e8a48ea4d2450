"""The built-in models: deterministic builds, a safe cache, and what mlx-lm makes of them."""

import hashlib
import json
import math
import subprocess
import sys

import pytest

from engine import tiny

TINY = tiny.SPECS["builtin:tiny"]
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hello there!"},
    {"role": "assistant", "content": "Hello! How can I help you today?"},
]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh, empty cache root for one test."""
    monkeypatch.setenv(tiny.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def loaded():
    """builtin:tiny as mlx-lm loads it (from the session cache that conftest sets)."""
    from mlx_lm.utils import load

    model, tokenizer, config = load(str(tiny.ensure_builtin("builtin:tiny")), return_config=True)
    return model, tokenizer, config


def digests(model_dir):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(model_dir.iterdir())}


def test_two_builds_are_byte_identical(tmp_path, monkeypatch):
    builds = []
    for name in ("a", "b"):
        monkeypatch.setenv(tiny.CACHE_ENV, str(tmp_path / name))
        builds.append(tiny.ensure_builtin("builtin:tiny"))
    assert builds[0].name == builds[1].name
    assert builds[0].name.startswith(f"builtin-tiny-v{tiny.RECIPE_VERSION}-")
    assert digests(builds[0]) == digests(builds[1])
    assert sorted(digests(builds[0])) == [
        "config.json", "generation_config.json", "manifest.json", "model.safetensors",
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json",
    ]  # fmt: skip


def test_the_cache_is_reused_and_no_temp_dirs_are_left(cache, monkeypatch):
    path = tiny.ensure_builtin("builtin:tiny")
    written = (path / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(tiny, "build", lambda *a: pytest.fail("rebuilt a complete cache"))
    assert tiny.ensure_builtin("builtin:tiny") == path
    assert (path / "model.safetensors").stat().st_mtime_ns == written
    assert [p.name for p in cache.iterdir()] == [path.name]


@pytest.mark.parametrize("damage", ["delete weights", "truncate tokenizer", "delete manifest", "empty dir"])
def test_a_broken_cache_dir_is_rebuilt(cache, damage):
    path = tiny.ensure_builtin("builtin:tiny")
    good = digests(path)
    if damage == "delete weights":
        (path / "model.safetensors").unlink()
    elif damage == "truncate tokenizer":
        (path / "tokenizer.json").write_text("{")
    elif damage == "delete manifest":
        (path / tiny.MANIFEST).unlink()
    else:
        for p in path.iterdir():
            p.unlink()
    assert tiny.ensure_builtin("builtin:tiny") == path
    assert digests(path) == good
    assert [p.name for p in cache.iterdir()] == [path.name]


def test_losing_a_build_race_keeps_the_winners_dir(cache, tmp_path):
    winner = tiny.ensure_builtin("builtin:tiny")
    before = digests(winner)
    loser = tmp_path / "loser"
    loser.mkdir()
    tiny.build(TINY, tiny.tokenizer_corpus(), loser)
    tiny._publish(loser, winner)
    assert digests(winner) == before
    assert loser.exists()  # the caller (ensure_builtin) removes its own temp dir


def test_processes_racing_on_an_empty_cache_all_get_the_same_complete_dir(cache):
    code = "from engine import tiny; print(tiny.ensure_builtin('builtin:tiny'))"
    racers = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    paths = {racer.communicate(timeout=120)[0].strip() for racer in racers}
    assert all(racer.returncode == 0 for racer in racers)
    assert len(paths) == 1
    path = tiny.ensure_builtin("builtin:tiny")
    assert paths == {str(path)}
    assert [p.name for p in cache.iterdir()] == [path.name]  # no temp dirs left behind


def test_a_changed_recipe_builds_a_new_dir(cache, monkeypatch):
    old = tiny.ensure_builtin("builtin:tiny")
    monkeypatch.setattr(tiny, "RECIPE_VERSION", tiny.RECIPE_VERSION + 1)
    new = tiny.ensure_builtin("builtin:tiny")
    assert new != old and old.exists()
    assert f"-v{tiny.RECIPE_VERSION}-" in new.name


def test_cache_root_defaults_to_the_home_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(tiny.CACHE_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert tiny.cache_root() == tmp_path / ".cache" / "lora-mlx"


def test_an_unknown_name_lists_the_builtin_models(cache):
    with pytest.raises(ValueError, match="unknown built-in model 'builtin:huge'; choose one of builtin:tiny, builtin:small"):
        tiny.ensure_builtin("builtin:huge")


def test_builtin_small_is_about_26m_parameters():
    assert 25_000_000 < tiny.parameter_count(tiny.SPECS["builtin:small"]) < 27_000_000


def test_mlx_lm_loads_the_model_with_the_recipe_config(loaded):
    from mlx.utils import tree_flatten

    model, _, config = loaded
    assert config["model_type"] == "llama"
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (128, 4, TINY.vocab_size)
    assert len(model.layers) == TINY.num_hidden_layers
    assert sum(v.size for _, v in tree_flatten(model.parameters())) == tiny.parameter_count(TINY)


def test_forward_pass_gives_logits_over_the_vocabulary_near_uniform(loaded):
    import mlx.core as mx
    import mlx.nn as nn

    model, tokenizer, _ = loaded
    tokens = mx.array([tokenizer.encode("Hello there, how are you today?")] * 2)
    logits = model(tokens)
    assert logits.shape == (2, tokens.shape[1], TINY.vocab_size)
    assert logits.dtype == mx.float32
    # Random init starts close to a uniform guess: the first loss is near ln(vocab).
    loss = nn.losses.cross_entropy(logits[:, :-1], tokens[:, 1:]).mean().item()
    assert abs(loss - math.log(TINY.vocab_size)) < 1.0


def test_chat_template_renders_every_role_and_the_generation_prompt(loaded):
    _, tokenizer, _ = loaded
    text = tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert text == (
        "<|bos|><|system|>Be brief.<|end|><|user|>Hello there!<|end|>"
        "<|assistant|>Hello! How can I help you today?<|end|>"
    )
    prompt = tokenizer.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|bos|><|system|>Be brief.<|end|><|user|>Hello there!<|end|><|assistant|>"


def test_chat_tokens_round_trip_and_the_prompt_is_a_token_prefix(loaded):
    _, tokenizer, _ = loaded
    tokens = tokenizer.apply_chat_template(CHAT, return_dict=False)
    prompt = tokenizer.apply_chat_template(CHAT[:2], add_generation_prompt=True, return_dict=False)
    assert tokens[: len(prompt)] == prompt  # prompt masking relies on this
    assert tokens[0] == tokenizer.bos_token_id and tokens[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(tokens) == tokenizer.apply_chat_template(CHAT, tokenize=False)
    answer = tokenizer.decode(tokens[len(prompt) :], skip_special_tokens=True)
    assert answer == "Hello! How can I help you today?"


def test_special_token_ids_agree_between_tokenizer_and_configs(loaded):
    _, tokenizer, config = loaded
    model_dir = tiny.ensure_builtin("builtin:tiny")
    generation = json.loads((model_dir / "generation_config.json").read_text())
    ids = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert ids == (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"])
    assert ids == (generation["bos_token_id"], generation["eos_token_id"], generation["pad_token_id"])
    assert len(set(ids)) == 3
    assert tokenizer.eos_token_ids == {tokenizer.eos_token_id}


def test_any_text_encodes_and_decodes_unchanged(loaded):
    from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer

    _, tokenizer, _ = loaded
    text = "naïve café, 日本語 🙂 \t tabs\nnew lines and <angle> {braces}"
    tokens = tokenizer.encode(text)
    assert tokens[0] == tokenizer.bos_token_id
    assert tokenizer.decode(tokens[1:]) == text
    assert max(tokens) < TINY.vocab_size
    # mlx-lm picks its byte-level streaming detokenizer for generation.
    assert isinstance(tokenizer.detokenizer, BPEStreamingDetokenizer)


def test_the_vocabulary_has_exactly_the_configured_size():
    tokenizer = tiny.train_tokenizer(tiny.tokenizer_corpus(), TINY.vocab_size)
    assert tokenizer.get_vocab_size() == TINY.vocab_size
    assert [tokenizer.token_to_id(t) for t in tiny.SPECIAL_TOKENS] == list(range(len(tiny.SPECIAL_TOKENS)))
