import pytest
import torch
from torch import nn

from conftest import TINY_CONFIGS, build_tiny
from fanlora.errors import FanLoRAError
from fanlora.modules import ARCHITECTURES, discover_layout
from fanlora.modules.discovery import layout_from_config

EXPECTED_KINDS = {
    "llama": ["q", "k", "v", "o", "gate", "up", "down"],
    "mistral": ["q", "k", "v", "o", "gate", "up", "down"],
    "qwen2": ["q", "k", "v", "o", "gate", "up", "down"],
    "qwen3": ["q", "k", "v", "o", "gate", "up", "down"],
    "gemma": ["q", "k", "v", "o", "gate", "up", "down"],
    "gemma2": ["q", "k", "v", "o", "gate", "up", "down"],
    "gemma3_text": ["q", "k", "v", "o", "gate", "up", "down"],
    "phi3": ["qkv", "o", "gate_up", "down"],
    "gpt2": ["qkv", "o", "up", "down"],
    "gpt_neox": ["qkv", "o", "up", "down"],
}


@pytest.mark.parametrize("model_type", sorted(EXPECTED_KINDS))
def test_every_table_architecture_is_discovered(model_type):
    model = build_tiny(model_type)
    layout = discover_layout(model)
    assert layout.from_table
    assert layout.num_layers == 2
    assert list(layout.kinds) == EXPECTED_KINDS[model_type]
    names = dict(model.named_modules())
    for name in layout.all_names():
        assert name in names, name
    assert len(layout.all_names()) == 2 * len(EXPECTED_KINDS[model_type])


def test_table_covers_the_tested_architectures():
    assert set(EXPECTED_KINDS) <= set(ARCHITECTURES)


def test_gpt2_conv1d_shapes_are_in_by_out():
    layout = discover_layout(build_tiny("gpt2"))
    assert layout.shapes["qkv"] == [64, 192]
    assert layout.shapes["up"] == [64, 256]


def test_unknown_architecture_falls_back_to_linear_modules():
    assert "opt" in TINY_CONFIGS and "opt" not in ARCHITECTURES
    layout = discover_layout(build_tiny("opt"))
    assert not layout.from_table
    assert layout.layers_prefix == "model.decoder.layers"
    assert set(layout.kinds) == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}


def test_model_without_layers_fails_naming_the_class():
    class NoBlocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)

    with pytest.raises(FanLoRAError, match="NoBlocks"):
        discover_layout(NoBlocks())


def test_table_path_missing_from_model_is_reported():
    model = build_tiny("llama")
    model.model.layers[0].mlp.gate_proj = nn.Identity()
    with pytest.raises(FanLoRAError, match="gate"):
        discover_layout(model)


def test_layout_from_config_uses_no_real_memory():
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        vocab_size=32000,
    )
    layout = layout_from_config(config)  # a 7B model on the meta device
    assert layout.num_layers == 32 and layout.shapes["up"] == [4096, 11008]


def test_layout_dict_round_trip():
    layout = discover_layout(build_tiny("phi3"))
    assert type(layout).from_dict(layout.to_dict()) == layout


def test_tiny_preset_is_deterministic(tiny_llama):
    from fanlora.models.tiny import build_tiny_model

    model, tokenizer = tiny_llama
    again, _ = build_tiny_model()
    for (name, a), (_, b) in zip(
        model.state_dict().items(), again.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>assistant\n")
    ids = tokenizer("héllo wörld")["input_ids"]
    assert tokenizer.decode(ids) == "héllo wörld"
