"""The one table that knows each architecture's module names.

Every other part of fanlora speaks of module *kinds* (``q``, ``k``, ``v``, ``o``, ``gate``,
``up``, ``down`` for the LLaMA family) and asks this table, through
:func:`fanlora.modules.discovery.discover_layout`, which module inside a decoder layer a
kind is. Keys are ``config.model_type``; values map kind -> path inside one decoder layer,
in the order the kinds are shown and tie-broken.
"""

from __future__ import annotations

_LLAMA_FAMILY = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}

ARCHITECTURES: dict[str, dict[str, str]] = {
    "llama": _LLAMA_FAMILY,
    "mistral": _LLAMA_FAMILY,
    "qwen2": _LLAMA_FAMILY,
    "qwen3": _LLAMA_FAMILY,
    "gemma": _LLAMA_FAMILY,
    "gemma2": _LLAMA_FAMILY,
    "gemma3_text": _LLAMA_FAMILY,
    "gemma3": _LLAMA_FAMILY,
    # Phi-3 fuses q, k, v into one projection and gate, up into another.
    "phi3": {
        "qkv": "self_attn.qkv_proj",
        "o": "self_attn.o_proj",
        "gate_up": "mlp.gate_up_proj",
        "down": "mlp.down_proj",
    },
    # GPT-2 uses transformers' Conv1D (a transposed linear layer); PEFT handles it.
    "gpt2": {
        "qkv": "attn.c_attn",
        "o": "attn.c_proj",
        "up": "mlp.c_fc",
        "down": "mlp.c_proj",
    },
    "gpt_neox": {
        "qkv": "attention.query_key_value",
        "o": "attention.dense",
        "up": "mlp.dense_h_to_4h",
        "down": "mlp.dense_4h_to_h",
    },
}


# vLLM's runtime module of each kind, as a path inside one decoder layer: vLLM packs q, k, v
# into one qkv_proj and gate, up into one gate_up_proj (the packed_modules_mapping of its
# model classes, vllm/model_executor/models/llama.py and kin). A packed module wrapped with
# LoRA computes every slice for every request, zero-filled where an adapter has none.
_LLAMA_VLLM = {
    "q": "self_attn.qkv_proj",
    "k": "self_attn.qkv_proj",
    "v": "self_attn.qkv_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_up_proj",
    "up": "mlp.gate_up_proj",
    "down": "mlp.down_proj",
}
VLLM_MODULES: dict[str, dict[str, str]] = {
    **dict.fromkeys(
        ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"], _LLAMA_VLLM
    ),
    "phi3": {
        "qkv": "self_attn.qkv_proj",
        "o": "self_attn.o_proj",
        "gate_up": "mlp.gate_up_proj",
        "down": "mlp.down_proj",
    },
}


def kinds_for(model_type: str) -> dict[str, str] | None:
    """Kind -> in-layer path for a known ``model_type``, or None when the table lacks it."""
    table = ARCHITECTURES.get(model_type)
    return dict(table) if table is not None else None


# The final norm applied after the last decoder layer, as a path from the causal LM (the
# fast exact AB-score runs the tail of the model itself: layers l..L-1, this norm, lm_head).
FINAL_NORMS: dict[str, str] = {
    **dict.fromkeys(
        ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3"],
        "model.norm",
    ),
    "gpt2": "transformer.ln_f",
    "gpt_neox": "gpt_neox.final_layer_norm",
}
