"""Real vLLM (its CPU build, in .venv-vllm from `make vllm`) serving FanLoRA adapters."""

import os

import pytest
import torch
from peft import PeftModel

from fanlora.errors import FanLoRAError
from fanlora.models import load_model, resolve_model
from fanlora.modules import discover_layout
from fanlora.select import FanLoRASetting
from fanlora.serve.adapters import method_config, write_tenants
from fanlora.serve.vllm_export import runtime_modules
from fanlora.serve.vllm_run import vllm_generate, vllm_python
from fanlora.train.methods import random_setting

pytestmark = pytest.mark.slow

TEXTS = ["The capital of France is", "Write a haiku about rain:", "def fibonacci(n):", "2+2="]
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def needs_vllm():
    try:
        return vllm_python()
    except FanLoRAError as exc:
        if os.environ.get("CI"):  # CI installs it (make test runs make vllm): never skip there
            raise
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def tenants(tmp_path_factory):
    """Two FanLoRA adapters (seeded random weights, 2 modules per layer, rank 12) and the
    greedy tokens PEFT generates with each, in fp32."""
    base, tokenizer = load_model("smollm2-135m")
    layout = discover_layout(base)
    two = FanLoRASetting("smollm2-135m", 2, layout, [list(layout.kinds)[:2]] * layout.num_layers)
    setting = random_setting(two, seed=0)
    config = method_config("fanlora", layout, setting, 12)
    paths = write_tenants(base, config, tmp_path_factory.mktemp("tenants"), 2)
    prompts = [tokenizer(t)["input_ids"] for t in TEXTS]
    peft = {}
    for i, path in enumerate(paths):
        model = PeftModel.from_pretrained(load_model("smollm2-135m")[0], str(path)).eval()
        peft[f"t{i}"] = [
            model.generate(
                torch.tensor([ids]), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS
            )[0, len(ids) :].tolist()
            for ids in prompts
        ]
    adapters = {f"t{i}": str(p) for i, p in enumerate(paths)}
    return layout, setting, prompts, adapters, peft


@pytest.mark.parametrize("restricted", [True, False])
def test_vllm_gives_peft_greedy_tokens_restricted_or_not(needs_vllm, tenants, restricted):
    layout, setting, prompts, adapters, peft = tenants
    kwargs = {"enable_lora": True, "max_lora_rank": 16, "max_loras": 2}
    kwargs |= {"dtype": "float32", "max_model_len": 512}
    if restricted:
        kwargs["lora_target_modules"] = runtime_modules(layout, setting.layers)
    model = str(resolve_model("smollm2-135m"))
    got = vllm_generate(model, kwargs, prompts, adapters, NEW_TOKENS)["tokens"]
    assert peft["t0"] != peft["t1"]  # the adapters change the output: the test can fail
    for name in adapters:
        assert got[name] == peft[name], name


def test_without_the_vllm_environment_the_error_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("FANLORA_VLLM_PYTHON", str(tmp_path / "none" / "python"))
    with pytest.raises(FanLoRAError, match="make vllm"):
        vllm_python()
