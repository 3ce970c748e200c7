"""`fanlora export vllm`: a setting as vLLM's packed target modules, checked adapters."""

import json

import pytest
from peft import LoraConfig, get_peft_model

from conftest import build_tiny
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


def fake_vllm(calls):
    """vllm_generate's stand-in: seconds per batch grow with the wrapped modules (all of
    them when lora_target_modules is unset), so the ratios the benchmark reports are known."""

    def generate(model, kwargs, prompts, adapters, new_tokens, repeats, batches, **_):
        calls.append(kwargs)
        wrapped = 0
        if kwargs.get("enable_lora"):
            wrapped = len(kwargs.get("lora_target_modules") or range(16))
        return {"seconds": {str(n): [0.01 * n * (1 + wrapped / 4)] * repeats for n in batches}}

    return generate


def test_bench_vllm_writes_every_variant_its_ratios_a_table_and_a_plot(
    tmp_path, layout, monkeypatch, capsys
):
    import fanlora.serve.vllm_bench as vb

    calls = []
    monkeypatch.setattr(vb, "vllm_generate", fake_vllm(calls))
    monkeypatch.setattr("fanlora.cli.bench_cmd.vllm_python", lambda: "python")
    path, _ = setting_file(tmp_path, layout, ["v", "up"])
    engine = FanLoRASetting("tiny-random-llama", 2, layout, [["q", "v"]] * 4)
    engine_path = str(engine.save(tmp_path / "engine.json"))
    out = tmp_path / "vllm.json"
    args = ["bench", "vllm", "--model", "tiny-random-llama", "--setting", path]
    args += ["--engine-setting", engine_path, "--tenants", "1", "2", "--repeats", "1"]
    args += ["--new-tokens", "2", "--prompt-tokens", "8", "--out", str(out)]
    assert main(args) == 0
    doc = json.loads(out.read_text())
    assert {(r["engine"], r["variant"]) for r in doc["rows"]} == {
        *(("vllm", v) for v in ("base", "lora", "fanlora", "fanlora-restricted")),
        ("vllm", "engine-restricted"),
        *((p, k) for p in ("peft", "batched") for k in ("lora", "fanlora")),
    }
    restricted = [c for c in calls if "lora_target_modules" in c]
    assert [len(c["lora_target_modules"]) for c in restricted] == [8, 4]  # 2 and 1 per layer
    assert all(c["enable_prefix_caching"] is False for c in calls)
    # 16 wrapped: 5 units of time; 8: 3 units; 4: 2 units
    assert doc["ratios"]["2"]["fanlora-restricted_vs_lora"] == pytest.approx(5 / 3)
    assert doc["ratios"]["2"]["engine-restricted_vs_lora"] == pytest.approx(5 / 2)
    assert doc["wrapped_modules"]["engine"] == {"wrapped_modules": 4, "slices": 12}
    assert "(2.50x)" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 0


def test_bench_vllm_refuses_before_any_work(tmp_path, layout, monkeypatch, capsys):
    out = tmp_path / "vllm.json"
    path, _ = setting_file(tmp_path, layout, ["v", "up"])
    args = ["bench", "vllm", "--model", "tiny-random-llama", "--setting", path, "--out", str(out)]
    monkeypatch.setenv("FANLORA_VLLM_PYTHON", str(tmp_path / "none" / "python"))
    assert main(args) == 2
    assert "make vllm" in capsys.readouterr().err
    monkeypatch.setattr("fanlora.cli.bench_cmd.vllm_python", lambda: "python")
    other = FanLoRASetting("smollm2-135m", 2, discover_layout(build_tiny("llama")), [["q"]] * 2)
    bad = str(other.save(tmp_path / "other.json"))
    assert main([*args, "--engine-setting", bad]) == 2
    assert "the setting names modules this model lacks" in capsys.readouterr().err
    assert not out.exists()
