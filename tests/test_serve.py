"""The batched multi-tenant LoRA path against PEFT's adapter_names, and its refusals."""

import json
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from fanlora.errors import FanLoRAError
from fanlora.evaluate.generate import left_pad
from fanlora.models import load_model
from fanlora.modules import discover_layout
from fanlora.serve.multitenant import TenantServer

LLAMA_KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def make_adapter(folder, targets, rank, seed, **config):
    """A LoRA adapter on the tiny preset with random (non-zero) A and B."""
    model, _ = load_model("tiny-random-llama")
    peft_model = get_peft_model(
        model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, **config)
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    peft_model.save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Three tenants with different ranks and placements (one uses rsLoRA)."""
    root = tmp_path_factory.mktemp("adapters")
    layout = discover_layout(load_model("tiny-random-llama")[0])
    two_per_layer = [
        layout.name(i, k)
        for i in range(layout.num_layers)
        for k in (("v", "down") if i % 2 else ("q", "up"))
    ]
    return {
        "a": make_adapter(root / "a", two_per_layer, 4, 1),
        "b": make_adapter(root / "b", layout.all_names(), 8, 2),
        "c": make_adapter(
            root / "c", [layout.name(0, "o"), layout.name(3, "k")], 2, 3, use_rslora=True
        ),
    }


@pytest.fixture(scope="module")
def peft_and_server(adapters):
    peft_model = PeftModel.from_pretrained(
        load_model("tiny-random-llama")[0], adapters["a"], adapter_name="a"
    )
    for name in ("b", "c"):
        peft_model.load_adapter(adapters[name], adapter_name=name)
    peft_model.eval()
    base, tok = load_model("tiny-random-llama")
    server = TenantServer(base)
    for name, folder in adapters.items():
        server.register(name, folder)
    return peft_model, server, tok


def batch_of(tok, texts):
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    return left_pad(rows, tok.pad_token_id)


TEXTS = ["hello there", "a longer prompt for the model", "x", "what is 2+2?", "tenants!"]
NAMES = ["a", "b", None, "c", "a"]


def peft_names(names):
    return [n or "__base__" for n in names]


def test_mixed_batch_logits_match_peft(peft_and_server):
    peft_model, server, tok = peft_and_server
    batch = batch_of(tok, TEXTS)
    with torch.no_grad():
        want = peft_model(**batch, adapter_names=peft_names(NAMES)).logits
    got = server.forward(batch["input_ids"], batch["attention_mask"], NAMES)
    mask = batch["attention_mask"].bool()
    assert (got[mask] - want[mask]).abs().max() < 1e-4
    base = server.forward(batch["input_ids"], batch["attention_mask"], [None] * len(TEXTS))
    assert (base[mask] - want[mask]).abs().max() > 1e-2  # the adapters really change things


@pytest.mark.parametrize("beams", [1, 2])
def test_mixed_batch_generation_matches_peft_token_for_token(peft_and_server, beams):
    peft_model, server, tok = peft_and_server
    batch = batch_of(tok, TEXTS)
    kw = dict(max_new_tokens=8, num_beams=beams, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        want = peft_model.generate(**batch, adapter_names=peft_names(NAMES), **kw)
    got = server.generate(batch["input_ids"], batch["attention_mask"], NAMES, **kw)
    assert torch.equal(got, want)


def test_each_request_equals_serving_it_alone(peft_and_server):
    _, server, tok = peft_and_server
    batch = batch_of(tok, TEXTS)
    together = server.forward(batch["input_ids"], batch["attention_mask"], NAMES)
    for i, (text, name) in enumerate(zip(TEXTS, NAMES, strict=True)):
        one = batch_of(tok, [text])
        alone = server.forward(one["input_ids"], one["attention_mask"], [name])
        n = one["input_ids"].shape[1]
        assert torch.allclose(together[i, -n:], alone[0], atol=1e-4)


def test_untargeted_modules_cost_nothing(peft_and_server):
    _, server, _ = peft_and_server
    with server.batch(["c", None]):
        active = [m for m, w in server.wrapped.items() if w.a is not None]
    assert sorted(active) == sorted(server.adapters["c"].weights)
    assert all(w.a is None for w in server.wrapped.values())  # cleared after the batch


def test_refusals_leave_the_server_unchanged(peft_and_server, adapters, tmp_path):
    from conftest import build_tiny

    peft_model, server, tok = peft_and_server
    before = (dict(server.adapters), dict(server.wrapped))
    other = build_tiny("llama", vocab_size=300, hidden_size=32, intermediate_size=64)
    foreign = get_peft_model(other, LoraConfig(r=4, target_modules=["q_proj"]))
    foreign.save_pretrained(str(tmp_path / "foreign"))
    with pytest.raises(FanLoRAError, match="does not fit this base model"):
        server.register("foreign", tmp_path / "foreign")
    make_adapter(tmp_path / "dora", ["q_proj"], 4, 5, use_dora=True)
    with pytest.raises(FanLoRAError, match="use_dora"):
        server.register("dora", tmp_path / "dora")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FanLoRAError, match="not a PEFT adapter folder"):
        server.register("empty", tmp_path / "empty")
    with pytest.raises(FanLoRAError, match="already registered"):
        server.register("a", adapters["a"])
    assert (dict(server.adapters), dict(server.wrapped)) == before
    batch = batch_of(tok, TEXTS)
    with pytest.raises(FanLoRAError, match="request 1: adapter 'nobody' is not registered"):
        server.forward(batch["input_ids"], batch["attention_mask"], ["a", "nobody", *NAMES[2:]])
    with torch.no_grad():  # still serves the others exactly
        want = peft_model(**batch, adapter_names=peft_names(NAMES)).logits
    got = server.forward(batch["input_ids"], batch["attention_mask"], NAMES)
    assert (got - want)[batch["attention_mask"].bool()].abs().max() < 1e-4


def test_a_bad_request_gets_its_own_error_and_the_others_are_served(peft_and_server, tmp_path):
    _, server, tok = peft_and_server
    make_adapter(tmp_path / "dora", ["q_proj"], 4, 5, use_dora=True)
    with pytest.raises(FanLoRAError):
        server.register("dora", tmp_path / "dora")
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS[:4]]
    names = ["a", "nobody", "dora", None]
    kw = dict(max_new_tokens=5, do_sample=False)
    results = server.serve(prompts, names, tok.pad_token_id, **kw)
    assert "not registered" in results[1]["error"]
    assert "refused at registration" in results[2]["error"] and "use_dora" in results[2]["error"]
    alone = server.serve([prompts[0], prompts[3]], ["a", None], tok.pad_token_id, **kw)
    assert [results[0], results[3]] == alone and len(alone[0]["tokens"]) == 5


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Adapters written by `fanlora train`: FanLoRA on a setting, and LoRA on every module
    with a rank per kind (a matched budget), a few steps on a small file."""
    from fanlora.cli.main import main
    from fanlora.select import ScoreRecord, select_setting

    root = tmp_path_factory.mktemp("trained")
    data = root / "words.jsonl"
    words = ["apple", "pear", "plum", "fig"] * 8
    data.write_text("\n".join(json.dumps({"instruction": f"Say {w}", "output": w}) for w in words))
    layout = discover_layout(load_model("tiny-random-llama")[0])
    records = [
        ScoreRecord(i, k, 1.0 if k in ("q", "up") else -1.0)
        for i in range(layout.num_layers)
        for k in layout.kinds
    ]
    setting = select_setting(records, layout, 2).save(root / "setting.json")
    common = ["--data", str(data), "--max-steps", "2", "--eval-every", "2", "--lr", "0.05"]
    common += ["--batch-size", "8", "--max-length", "48"]
    (root / "lora.yaml").write_text("rank_pattern: {q: 3, down: 2}\n")  # as a matched budget
    runs = {
        "fan": ["--method", "fanlora", "--setting", str(setting), "--rank", "4"],
        "lora": ["--method", "lora", "--rank", "2", "--config", str(root / "lora.yaml")],
    }
    for name, args in runs.items():
        assert main(["train", *args, *common, "--out", str(root / name)]) == 0
    config = json.loads((root / "lora" / "adapter_config.json").read_text())
    assert config["rank_pattern"] == {"self_attn\\.q_proj": 3, "mlp\\.down_proj": 2}
    return {name: str(root / name) for name in runs}


def test_adapters_from_fanlora_train_serve_as_through_peft(trained):
    peft_model = PeftModel.from_pretrained(
        load_model("tiny-random-llama")[0], trained["fan"], adapter_name="fan"
    )
    peft_model.load_adapter(trained["lora"], adapter_name="lora")
    peft_model.eval()
    base, tok = load_model("tiny-random-llama")
    server = TenantServer(base)
    for name, folder in trained.items():
        server.register(name, folder)
    names = ["fan", "lora", None, "fan", "lora"]
    batch = batch_of(tok, TEXTS)
    with torch.no_grad():
        want = peft_model(**batch, adapter_names=peft_names(names)).logits
    got = server.forward(batch["input_ids"], batch["attention_mask"], names)
    mask = batch["attention_mask"].bool()
    assert (got[mask] - want[mask]).abs().max() < 1e-4


def test_saved_adapters_carry_what_vllm_reads(adapters, trained):
    """vLLM's PEFTHelper needs r, lora_alpha and target_modules; it refuses DoRA and
    modules_to_save; its loader wants base_model.model.<module>.lora_{A,B}.weight tensors
    in adapter_model.safetensors whose module suffix it knows (q_proj ... down_proj)."""
    for folder in [*adapters.values(), *trained.values()]:
        config = json.loads((Path(folder) / "adapter_config.json").read_text())
        assert isinstance(config["r"], int) and config["r"] > 0
        assert isinstance(config["lora_alpha"], int | float)
        assert config["target_modules"] and config["bias"] == "none"
        assert not config.get("modules_to_save") and not config.get("use_dora")
        targets = config["target_modules"]
        targets = targets if isinstance(targets, list) else [targets]
        assert all(t.split(".")[-1] in LLAMA_KINDS for t in targets)
        keys = load_file(f"{folder}/adapter_model.safetensors").keys()
        for key in keys:
            assert key.startswith("base_model.model.") and key.endswith(
                (".lora_A.weight", ".lora_B.weight")
            )
            assert key.split(".lora_")[0].split(".")[-1] in LLAMA_KINDS


def test_bench_commands_write_json_tables_and_plot(tmp_path):
    from fanlora.cli.main import main

    out = tmp_path / "tenants.json"
    code = main(
        [
            "bench",
            "tenants",
            "--model",
            "tiny-random-llama",
            "--counts",
            "1",
            "2",
            "--batch",
            "2",
            "--runs",
            "1",
            "--new-tokens",
            "2",
            "--prompt-tokens",
            "8",
            "--goal-sizes",
            "2",
            "4",
            "--goal-runs",
            "1",
            "--goal-new-tokens",
            "2",
            "--goal-prompt-tokens",
            "8",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    doc = json.loads(out.read_text())
    assert {(r["kind"], r["tenants"], r["path"]) for r in doc["sweep"]} == {
        (k, c, p) for k in ("fanlora", "lora") for c in (1, 2) for p in ("peft", "batched")
    }
    assert set(doc["goals"]) == {"2", "4"} and "goal_check" not in doc  # goals: the script's
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from tenants import judge

    check = judge(doc["goals"], vs_peft=1.3, vs_one=0.95)
    assert len(check) == 3 and all(
        v.split(": ")[-1] in ("met", "not met", "yes", "no") for v in check.values()
    )
    assert out.with_suffix(".png").is_file() and out.with_suffix(".md").is_file()
    out = tmp_path / "decode.json"
    code = main(
        [
            "bench",
            "decode",
            "--model",
            "tiny-random-llama",
            "--runs",
            "1",
            "--new-tokens",
            "2",
            "--prompt-tokens",
            "8",
            "--beams",
            "1",
            "2",
            "--device",
            "cpu",
            "--dtype",
            "bfloat16",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["device"] == "cpu (CPU)" and doc["dtype"] == "bfloat16"
    variants = {(r["variant"], r["beams"]) for r in doc["rows"]}
    assert variants == {
        (v, b) for v in ("base", "fanlora", "lora", "adalora", "ia3") for b in (1, 2)
    }
    assert doc["physical"]["limit_tokens_per_s_batch1"] > 0
    params = {r["variant"]: r["adapter_params"] for r in doc["rows"]}
    assert params["base"] == 0 < params["ia3"] < params["fanlora"] < params["lora"]
