"""`fanlora export vllm`: a setting as vLLM's packed target modules, checked adapters."""

import json

import pytest
from peft import LoraConfig, get_peft_model

from fanlora.cli.main import main
from fanlora.engines import engine_cost
from fanlora.errors import FanLoRAError
from fanlora.models import load_model
from fanlora.modules import discover_layout
from fanlora.select import FanLoRASetting
from fanlora.serve.vllm_export import runtime_modules, to_runtime


@pytest.fixture(scope="module")
def layout():
    return discover_layout(load_model("tiny-random-llama")[0])


def setting_file(folder, layout, kinds):
    setting = FanLoRASetting("tiny-random-llama", 2, layout, [kinds] * layout.num_layers)
    return str(setting.save(folder / "setting.json")), setting


def adapter(folder, layout, names, rank=4):
    base, _ = load_model("tiny-random-llama")
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=names)
    get_peft_model(base, config).save_pretrained(folder)
    return str(folder)


def test_kept_kinds_map_to_vllms_packed_modules_and_their_cost(layout):
    """{q, v} costs vLLM one qkv_proj wrapper per layer; {v, up} costs two (qkv_proj and
    gate_up_proj), though PEFT pays 2 modules for either."""
    one = engine_cost(layout, [["q", "v"]] * 4)
    two = engine_cost(layout, [["v", "up"]] * 4)
    assert one["vllm"] == {"wrapped_modules": 4, "slices": 12}
    assert two["vllm"] == {"wrapped_modules": 8, "slices": 20}
    assert one["peft"] == two["peft"] == {"wrapped_modules": 8, "slices": 8}
    assert runtime_modules(layout, [["v", "up"], [], ["down"], ["q", "k"]]) == [
        "model.layers.0.self_attn.qkv_proj",
        "model.layers.0.mlp.gate_up_proj",
        "model.layers.2.mlp.down_proj",
        "model.layers.3.self_attn.qkv_proj",
    ]
    assert to_runtime("model.layers.3.mlp.up_proj", layout) == "model.layers.3.mlp.gate_up_proj"
    assert to_runtime("lm_head", layout) is None


def test_export_writes_the_deployment_for_adapters_it_covers(tmp_path, layout, capsys):
    path, setting = setting_file(tmp_path, layout, ["v", "down"])
    ok = adapter(tmp_path / "a", layout, setting.target_modules, rank=12)
    out = tmp_path / "deploy"
    assert main(["export", "vllm", path, "--adapter", f"t1={ok}", "--out", str(out)]) == 0
    doc = json.loads((out / "deployment.json").read_text())
    kwargs = doc["llm_kwargs"]
    assert kwargs["enable_lora"] and kwargs["max_lora_rank"] == 16 and kwargs["max_loras"] == 1
    assert kwargs["lora_target_modules"][:2] == [
        "model.layers.0.self_attn.qkv_proj",
        "model.layers.0.mlp.down_proj",
    ]
    assert doc["cost"]["vllm"] == {"wrapped_modules": 8, "slices": 16}
    script = (out / "serve.sh").read_text()
    assert "--lora-target-modules model.layers.0.self_attn.qkv_proj" in script
    assert f"--lora-modules t1={ok}" in script


def test_an_adapter_outside_the_deployment_is_refused_and_nothing_written(tmp_path, layout, capsys):
    path, _ = setting_file(tmp_path, layout, ["v", "down"])
    everywhere = adapter(tmp_path / "all", layout, layout.all_names())
    out = tmp_path / "deploy"
    assert main(["export", "vllm", path, "--adapter", f"all={everywhere}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "adapter all" in err and "outside the deployment" in err and "gate_proj" in err
    assert not out.exists()


def test_a_rank_above_max_lora_rank_is_refused(tmp_path, layout, capsys):
    path, setting = setting_file(tmp_path, layout, ["v"])
    big = adapter(tmp_path / "big", layout, setting.target_modules, rank=32)
    out = tmp_path / "deploy"
    args = ["export", "vllm", path, "--adapter", f"big={big}", "--out", str(out)]
    assert main([*args, "--max-lora-rank", "16"]) == 2
    assert "rank 32, above --max-lora-rank 16" in capsys.readouterr().err
    assert main([*args, "--max-lora-rank", "12"]) == 2  # not a value vLLM accepts
    assert not out.exists()
    assert main(args) == 0  # the default fits the largest rank
    assert json.loads((out / "deployment.json").read_text())["llm_kwargs"]["max_lora_rank"] == 32


def test_a_setting_for_an_architecture_vllm_is_not_known_for_is_refused():
    from conftest import build_tiny

    gpt2 = discover_layout(build_tiny("gpt2"))
    with pytest.raises(FanLoRAError, match="does not know vLLM's module names for 'gpt2'"):
        runtime_modules(gpt2, [["qkv"]] * gpt2.num_layers)
    assert "vllm" not in engine_cost(gpt2, [["qkv"]] * gpt2.num_layers)
