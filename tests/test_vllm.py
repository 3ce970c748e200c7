"""Real vLLM (its CPU build, in .venv-vllm from `make vllm`) serving FanLoRA adapters."""

import json
import os
import signal
import subprocess
import sys
import urllib.request

import pytest
import torch
from peft import PeftModel

from conftest import free_port
from fanlora.errors import FanLoRAError
from fanlora.models import load_model, resolve_model
from fanlora.modules import discover_layout
from fanlora.modules.architectures import ARCHITECTURES, VLLM_MODULES
from fanlora.select import FanLoRASetting
from fanlora.serve.adapters import method_config, write_tenants
from fanlora.serve.vllm_run import vllm_generate, vllm_python
from fanlora.train.methods import random_setting
from test_real_presets import real_preset

pytestmark = pytest.mark.slow

# model_type -> the HF (and vLLM) model class name
ARCH_CLASSES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
}
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


def make_tenants(name: str, folder, count: int = 2):
    """``count`` FanLoRA adapters on preset ``name`` (seeded random weights, 2 modules per
    layer, rank 12) and the greedy tokens PEFT generates with each, in fp32."""
    base, tokenizer = load_model(name)
    layout = discover_layout(base)
    two = FanLoRASetting(name, 2, layout, [list(layout.kinds)[:2]] * layout.num_layers)
    setting = random_setting(two, seed=0)
    config = method_config("fanlora", layout, setting, 12)
    paths = write_tenants(base, config, folder, count)
    prompts = [tokenizer(t)["input_ids"] for t in TEXTS]
    peft = {}
    for i, path in enumerate(paths):
        model = PeftModel.from_pretrained(load_model(name)[0], str(path)).eval()
        peft[f"t{i}"] = [
            model.generate(
                torch.tensor([ids]), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS
            )[0, len(ids) :].tolist()
            for ids in prompts
        ]
    adapters = {f"t{i}": str(p) for i, p in enumerate(paths)}
    return setting, prompts, adapters, peft


@pytest.fixture(scope="module")
def tenants(tmp_path_factory):
    return make_tenants("smollm2-135m", tmp_path_factory.mktemp("tenants"))


@pytest.mark.parametrize("name", ["qwen2.5-0.5b", "gemma3-270m"])
def test_vllm_serves_qwen2_and_gemma3_adapters_with_peft_greedy_tokens(
    needs_vllm, name, tasks_home_dir, tmp_path, monkeypatch
):
    """The real Qwen2.5 and Gemma-3 presets in vLLM's CPU build, one FanLoRA tenant."""
    monkeypatch.setenv("FANLORA_HOME", tasks_home_dir)
    model = str(real_preset(name))
    _, prompts, adapters, peft = make_tenants(name, tmp_path, count=1)
    kwargs = {"enable_lora": True, "max_lora_rank": 16, "max_loras": 1}
    kwargs |= {"dtype": "float32", "max_model_len": 512}
    got = vllm_generate(model, kwargs, prompts, adapters, NEW_TOKENS)["tokens"]
    assert got["t0"] == peft["t0"]


def test_vllm_unrestricted_gives_peft_greedy_tokens(needs_vllm, tenants):
    """LLM(...) in vLLM's environment (the benchmarks' path), every module wrapped."""
    _, prompts, adapters, peft = tenants
    kwargs = {"enable_lora": True, "max_lora_rank": 16, "max_loras": 2}
    kwargs |= {"dtype": "float32", "max_model_len": 512}
    model = str(resolve_model("smollm2-135m"))
    got = vllm_generate(model, kwargs, prompts, adapters, NEW_TOKENS)["tokens"]
    assert peft["t0"] != peft["t1"]  # the adapters change the output: the test can fail
    for name in adapters:
        assert got[name] == peft[name], name


def complete(port: int, model: str, ids: list[int]) -> list[int]:
    """Greedy token ids from the server's /v1/completions for prompt ``ids``."""
    body = {"model": model, "prompt": ids, "max_tokens": NEW_TOKENS, "temperature": 0}
    body |= {"ignore_eos": True, "return_token_ids": True}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as reply:
        return json.loads(reply.read())["choices"][0]["token_ids"]


def test_fanlora_serve_restricted_to_the_setting_answers_with_peft_greedy_tokens(
    needs_vllm, tenants, tmp_path
):
    """`fanlora serve`: vLLM's server wrapping only the setting's packed modules serves each
    tenant's own tokens, then stops on Ctrl-C."""
    setting, prompts, adapters, peft = tenants
    path = setting.save(tmp_path / "setting.json")
    port = free_port()
    command = [sys.executable, "-m", "fanlora.cli.main", "serve", "--setting", str(path)]
    command += [f"--adapter={n}={p}" for n, p in adapters.items()]
    command += ["--port", str(port), "--dtype", "float32", "--max-model-len", "512"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not (line := proc.stdout.readline()).startswith("Ctrl-C"):
            assert line, f"fanlora serve ended early: {proc.stderr.read()[-3000:]}"
        for name in adapters:
            assert [complete(port, name, ids) for ids in prompts] == peft[name], name
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]


def test_the_architecture_table_matches_vllms_packed_modules(needs_vllm):
    """fanlora's vLLM module names are vLLM's own: each packed module of the table holds
    exactly the HF modules vLLM's model class packs into it (packed_modules_mapping)."""
    classes = {t: f"{ARCH_CLASSES[t]}" for t in VLLM_MODULES}
    script = (
        "import json, sys\n"
        "from vllm.model_executor.models import ModelRegistry\n"
        "names = json.loads(sys.argv[1])\n"
        "print(json.dumps({t: ModelRegistry._try_load_model_cls(c).packed_modules_mapping "
        "for t, c in names.items()}))\n"
    )
    proc = subprocess.run(
        [str(needs_vllm), "-c", script, json.dumps(classes)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    packed = json.loads(proc.stdout.strip().splitlines()[-1])
    for model_type, table in VLLM_MODULES.items():
        hf = ARCHITECTURES[model_type]
        for kind, unit in table.items():
            inner, mine = hf[kind].split(".")[-1], unit.split(".")[-1]
            expected = packed[model_type].get(mine, [mine])
            assert inner in expected, (model_type, kind, unit, expected)
            members = [k for k in table if table[k] == unit]
            assert len(members) == len(expected), (model_type, unit, expected)


def test_without_the_vllm_environment_the_error_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("FANLORA_VLLM_PYTHON", str(tmp_path / "none" / "python"))
    with pytest.raises(FanLoRAError, match="make vllm"):
        vllm_python()
