"""Shapes of the models the shipped presets use, so `lora-mlx estimate` works before a download.

Copied from each model's published config.json (only the fields the estimate reads). Weight
bytes are computed: bf16 weights take 2 bytes each; mlx-community 4-bit models quantize every
linear layer and the embeddings at group 64 (4 bits plus a bf16 scale and bias per 64 weights).
A model in the local cache is always measured from its real files instead.
"""

from __future__ import annotations

FAMILIES = {
    "qwen2.5-0.5b": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-7b": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    "llama3.2-1b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                        num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True),
    "llama3.2-3b": dict(model_type="llama", hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                        num_attention_heads=24, num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=True),
    "mistral-7b": dict(model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=32768, tie_word_embeddings=False),
    "gemma2-2b": dict(model_type="gemma2", hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                      num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=256000, tie_word_embeddings=True),
    "phi3.5-mini": dict(model_type="phi3", hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=32, vocab_size=32064, tie_word_embeddings=False),
}

# hub id -> (family, bits): 0 for bf16 weights, 4 for an mlx-community 4-bit conversion.
HUB_IDS = {
    "Qwen/Qwen2.5-0.5B-Instruct": ("qwen2.5-0.5b", 0),
    "mlx-community/Qwen2.5-0.5B-Instruct-4bit": ("qwen2.5-0.5b", 4),
    "Qwen/Qwen2.5-1.5B-Instruct": ("qwen2.5-1.5b", 0),
    "mlx-community/Qwen2.5-1.5B-Instruct-4bit": ("qwen2.5-1.5b", 4),
    "Qwen/Qwen2.5-7B-Instruct": ("qwen2.5-7b", 0),
    "mlx-community/Qwen2.5-7B-Instruct-4bit": ("qwen2.5-7b", 4),
    "mlx-community/Llama-3.2-1B-Instruct-bf16": ("llama3.2-1b", 0),
    "mlx-community/Llama-3.2-1B-Instruct-4bit": ("llama3.2-1b", 4),
    "mlx-community/Llama-3.2-3B-Instruct-bf16": ("llama3.2-3b", 0),
    "mlx-community/Llama-3.2-3B-Instruct-4bit": ("llama3.2-3b", 4),
    "mistralai/Mistral-7B-Instruct-v0.3": ("mistral-7b", 0),
    "mlx-community/Mistral-7B-Instruct-v0.3-4bit": ("mistral-7b", 4),
    "google/gemma-2-2b-it": ("gemma2-2b", 0),
    "mlx-community/gemma-2-2b-it-4bit": ("gemma2-2b", 4),
    "microsoft/Phi-3.5-mini-instruct": ("phi3.5-mini", 0),
    "mlx-community/Phi-3.5-mini-instruct-4bit": ("phi3.5-mini", 4),
}


def describe(model: str) -> tuple[dict, int] | None:
    """(config, weight bytes) of a known hub model, or None."""
    if model not in HUB_IDS:
        return None
    from engine.estimate import Shape

    family, bits = HUB_IDS[model]
    config = dict(FAMILIES[family])
    linear, other = Shape.from_config(config).parameters()
    if not bits:
        return config, 2 * (linear + other)
    config["quantization"] = {"group_size": 64, "bits": bits}
    embeddings = config["vocab_size"] * config["hidden_size"] * (1 if config["tie_word_embeddings"] else 2)
    per_weight = bits / 8 + 2 * 2 / 64
    return config, int((linear + embeddings) * per_weight + (other - embeddings) * 2)
