"""Qwen2 and Gemma-3 end to end, on tiny models of each built from config: modules, the
pipeline with every method, every scorer (fast AB equal to straightforward), the batched
multi-tenant path against PEFT, and the vLLM export. The Qwen2 model has an untied
``lm_head``, which LoRA must never reach; the Gemma-3 one slides a window of 8 tokens."""

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from fanlora.cli.main import main
from fanlora.models import load_model
from fanlora.modules import discover_layout
from fanlora.pipeline.config import run_config_from
from fanlora.pipeline.run import run_pipeline
from fanlora.score.run import ScoreConfig, score
from fanlora.score.scorer import SCORERS
from fanlora.select import FanLoRASetting
from fanlora.serve.multitenant import TenantServer
from test_pipeline import tiny_data

MODELS = ["tiny-random-qwen2", "tiny-random-gemma3"]
METHODS = ["fanlora", "lora", "adalora", "ia3", "random"]
KINDS = ["q", "k", "v", "o", "gate", "up", "down"]


@pytest.fixture(scope="module", params=MODELS)
def finished(request, tmp_path_factory, tasks_home_dir):
    """The tiny pipeline on one architecture, every method and the decode stage."""
    mp = pytest.MonkeyPatch()
    mp.setenv("FANLORA_HOME", tasks_home_dir)
    out = tmp_path_factory.mktemp("arch") / request.param
    cfg = run_config_from(tiny_data(model=request.param, methods=METHODS), "test")
    records = run_pipeline(cfg, out)
    mp.undo()
    return request.param, out, records


def adapter_keys(folder: Path) -> list[str]:
    return list(load_file(folder / "adapter_model.safetensors"))


@pytest.mark.parametrize("model", MODELS)
def test_modules_finds_seven_kinds_in_four_layers(model, capsys):
    assert main(["modules", "--model", model, "--json"]) == 0
    layout = json.loads(capsys.readouterr().out)
    assert list(layout["kinds"]) == KINDS and layout["num_layers"] == 4
    assert layout["from_table"] is True


def test_the_qwen2_preset_has_an_untied_lm_head_and_gemma3_a_sliding_window():
    qwen, _ = load_model("tiny-random-qwen2")
    gemma, _ = load_model("tiny-random-gemma3")
    assert qwen.lm_head.weight.data_ptr() != qwen.model.embed_tokens.weight.data_ptr()
    assert gemma.config.sliding_window == 8
    assert "sliding_attention" in gemma.config.layer_types


def test_every_stage_and_method_finishes(finished):
    model, out, records = finished
    assert all(r["status"] == "finished" for r in records.values()), model
    setting = FanLoRASetting.load(out / "3-setting" / "setting.json")
    assert setting.model == model and setting.layout.model_type in ("qwen2", "gemma3_text")
    for task in ("boolq", "squad"):
        for method in ("base", *METHODS):
            doc = json.loads((out / "5-eval" / task / method / "metrics.json").read_text())
            assert 0 <= doc["value"] <= 100, (task, method)
    decode = json.loads((out / "6-decode" / "decode.json").read_text())
    assert [r["variant"] for r in decode["rows"]] == ["base", *METHODS]


def test_no_adapter_touches_the_lm_head_or_the_embeddings(finished):
    model, out, _ = finished
    folders = [p.parent for p in out.glob("**/adapter_model.safetensors")]
    assert len(folders) >= 1 + 2 * len(METHODS), folders  # step 1 and every step-4 run
    layers = discover_layout(load_model(model)[0]).layers_prefix
    for folder in folders:
        keys = adapter_keys(folder)
        assert keys and all(f".{layers}." in k for k in keys), folder
        assert not any("lm_head" in k or "embed" in k for k in keys), folder


def test_fanlora_trains_exactly_the_setting(finished):
    _, out, _ = finished
    setting = FanLoRASetting.load(out / "3-setting" / "setting.json")
    keys = adapter_keys(out / "4-downstream" / "boolq" / "fanlora")
    wrapped = {k.removeprefix("base_model.model.").split(".lora_")[0] for k in keys}
    assert wrapped == set(setting.target_modules)


@pytest.mark.parametrize("method", sorted(SCORERS))
def test_every_scorer_scores_every_module(finished, method, tmp_path):
    model, out, _ = finished
    data = tmp_path / "val.jsonl"
    rows = [{"instruction": f"Say {w}", "output": w * 2, "split": "dev"} for w in "abcdefgh"]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    options = dict(model=model, method=method, val_examples=8, batch_size=8, max_length=48)
    cfg = ScoreConfig(adapter=str(out / "1-full-lora"), data=str(data), **options)
    doc = score(cfg, tmp_path / "s.json", log=lambda _: None)
    layout = discover_layout(load_model(model)[0])
    assert len(doc["scores"]) == layout.num_layers * len(layout.kinds)
    assert all(torch.isfinite(torch.tensor(r["score"])) for r in doc["scores"])


@pytest.mark.parametrize("model", MODELS)
def test_fast_ab_equals_straightforward(model, tmp_path):
    from fanlora.data.example import Example
    from fanlora.score import ab
    from fanlora.score.evaluator import build_valset
    from fanlora.score.gates import Gates

    base, tok = load_model(model)
    layout = discover_layout(base)
    torch.manual_seed(0)
    config = LoraConfig(r=4, target_modules=layout.all_names(), init_lora_weights=False)
    peft_model = get_peft_model(base, config).eval()
    examples = [Example(f"e{i}", "Say " + "ab" * 5 * i, "yes" * (1 + i % 3)) for i in range(6)]
    valset = build_valset(tok, examples, 64, 3, "loss")  # longer than the 8-token window
    gates = Gates(peft_model, layout)
    fast, plain = ab.fast(peft_model, gates, valset), ab.straightforward(peft_model, gates, valset)
    every = set(gates.keys)
    checks = [(every, gates.layers[-1], "on"), (set(), gates.layers[-1], "off")]
    checks += [(every - {k}, k[0], "on") for k in gates.keys]
    checks += [({k}, k[0], "off") for k in gates.keys]
    for open_keys, layer, start in checks:
        a, b = fast(open_keys, layer, start), plain(open_keys, layer, start)
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4), (model, layer, start)


@pytest.mark.parametrize("model", MODELS)
def test_batched_multi_tenant_logits_match_peft(model, tmp_path):
    from fanlora.evaluate.generate import left_pad

    base, tok = load_model(model)
    layout = discover_layout(base)
    placements = {
        "a": [layout.name(i, k) for i in range(layout.num_layers) for k in ("q", "down")],
        "b": layout.all_names(),
    }
    for seed, (name, targets) in enumerate(placements.items()):
        fresh = get_peft_model(load_model(model)[0], LoraConfig(r=4, target_modules=targets))
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for pname, p in fresh.named_parameters():
                if "lora_" in pname:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        fresh.save_pretrained(tmp_path / name)
    peft_model = PeftModel.from_pretrained(load_model(model)[0], tmp_path / "a", adapter_name="a")
    peft_model.load_adapter(tmp_path / "b", adapter_name="b")
    peft_model.eval()
    server = TenantServer(base)
    for name in placements:
        server.register(name, str(tmp_path / name))
    texts = ["hello there", "a much longer prompt than the window", "x", "2+2?"]
    names = ["a", "b", None, "b"]
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    batch = left_pad(rows, tok.pad_token_id)
    with torch.no_grad():
        want = peft_model(**batch, adapter_names=[n or "__base__" for n in names]).logits
    got = server.forward(batch["input_ids"], batch["attention_mask"], names)
    mask = batch["attention_mask"].bool()
    assert (got[mask] - want[mask]).abs().max() < 1e-4


def test_vllm_export_covers_the_pipelines_adapter(finished, tmp_path):
    _, out, _ = finished
    deploy = tmp_path / "deploy"
    fan = out / "4-downstream" / "boolq" / "fanlora"
    args = ["export", "vllm", str(out / "3-setting" / "setting.json"), "--adapter"]
    assert main([*args, f"boolq={fan}", "--out", str(deploy)]) == 0
    doc = json.loads((deploy / "deployment.json").read_text())
    assert doc["llm_kwargs"]["lora_target_modules"], doc
    assert (deploy / "serve.sh").is_file()


def test_figure1_draws_settings_side_by_side_and_refuses_a_bare_path(finished, tmp_path, capsys):
    from PIL import Image

    _, out, _ = finished
    setting = out / "3-setting" / "setting.json"
    png = tmp_path / "f1.png"
    assert main(["figure1", f"a={setting}", f"b={setting}", "--out", str(png)]) == 0
    one = tmp_path / "one.png"
    assert main(["figure1", f"a={setting}", "--out", str(one)]) == 0
    assert Image.open(png).size[0] > 1.8 * Image.open(one).size[0]  # a column per model
    assert main(["figure1", str(setting), "--out", str(tmp_path / "x.png")]) == 2
    assert "LABEL=SETTING" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
