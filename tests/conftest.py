"""Shared fixtures: an isolated FANLORA_HOME and tiny models built from config, seeded."""

from __future__ import annotations

import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

# Small configs, one per architecture in fanlora's table plus one that is not (OPT).
TINY_CONFIGS: dict[str, dict] = {
    "llama": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=2, num_hidden_layers=2),
    "mistral": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                    num_key_value_heads=2, num_hidden_layers=2),
    "qwen2": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=2, num_hidden_layers=2),
    "qwen3": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=2, num_hidden_layers=2, head_dim=16),
    "gemma": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=2, num_hidden_layers=2, head_dim=16),
    "gemma2": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                   num_key_value_heads=2, num_hidden_layers=2, head_dim=16),
    "gemma3_text": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                        num_key_value_heads=2, num_hidden_layers=2, head_dim=16),
    "phi3": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                 num_key_value_heads=4, num_hidden_layers=2, pad_token_id=0),
    "gpt2": dict(n_embd=64, n_layer=2, n_head=4, n_positions=128),
    "gpt_neox": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                     num_hidden_layers=2),
    "opt": dict(hidden_size=64, ffn_dim=128, num_attention_heads=4, num_hidden_layers=2,
                word_embed_proj_dim=64),
}  # fmt: skip


def build_tiny(model_type: str, vocab_size: int = 300, seed: int = 0, **overrides):
    """A tiny causal LM of ``model_type`` with random weights (fixed seed)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    params = {**TINY_CONFIGS[model_type], "vocab_size": vocab_size, **overrides}
    config = AutoConfig.for_model(model_type, **params)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(autouse=True, scope="session")
def fanlora_home(tmp_path_factory):
    """Every test session gets its own cache unless FANLORA_TEST_HOME points at a shared one."""
    shared = os.environ.get("FANLORA_TEST_HOME")
    home = shared or str(tmp_path_factory.mktemp("fanlora_home"))
    os.environ["FANLORA_HOME"] = home
    return home


@pytest.fixture(scope="session")
def tiny_llama():
    """(model, tokenizer) of the tiny-random-llama preset."""
    from fanlora.models import load_model

    return load_model("tiny-random-llama")
