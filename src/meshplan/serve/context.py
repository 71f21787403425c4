"""Context windows of the serving presets (max prompt + output tokens), from each model's config.json."""

from __future__ import annotations

from meshplan.specs.model import ModelSpec

# max_position_embeddings of each model's Hugging Face config.json (tokens).
CONTEXT_TOKENS = {
    "Llama-2-7B": 4096, "Llama-2-13B": 4096, "Llama-2-70B": 4096,
    "Llama-3.1-8B": 131072, "Llama-3.1-70B": 131072, "Llama-3.1-405B": 131072, "Llama-3.3-70B": 131072,
    "Mistral-7B": 32768, "Mixtral-8x7B": 32768, "Mixtral-8x22B": 65536,
    "Qwen3-32B": 40960, "Qwen3-30B-A3B": 40960, "Qwen3-235B-A22B": 40960,
    "Qwen2.5-7B": 32768, "Qwen2.5-72B": 32768,
    "DeepSeek-R1": 163840, "DeepSeek-V3": 163840,
    "Llama-4-Scout-17B-16E": 10485760, "gpt-oss-120b": 131072,
}


def context_tokens(model: ModelSpec) -> int | None:
    """The model's context window, or None when unknown (a config.json model without learned positions)."""
    if model.name in CONTEXT_TOKENS:
        return CONTEXT_TOKENS[model.name]
    return model.learned_positions or None
