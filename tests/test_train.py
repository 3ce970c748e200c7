"""The training engine on the tiny preset and a small local dataset."""

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
import torch
from safetensors.torch import load_file

from conftest import free_port
from fanlora.cli.main import main
from fanlora.errors import FanLoRAError
from fanlora.models import load_model
from fanlora.modules import discover_layout
from fanlora.select import ScoreRecord, select_setting
from fanlora.train import TrainConfig
from fanlora.train.checkpoint import latest_checkpoint
from fanlora.train.engine import Trainer, prepare_data
from fanlora.train.methods import build_peft_config
from fanlora.train.outputs import RunFolder
from fanlora.train.run import train
from fanlora.utils.stopping import Stopped, stop_on_signals

WORDS = ["apple", "pear", "plum", "fig", "kiwi", "lime", "date", "sloe"]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "words.jsonl"
    rows = [
        {
            "instruction": f"Repeat the word {w}",
            "output": w,
            "split": "dev" if i % 8 == 0 else "train",
        }
        for i, w in enumerate(WORDS * 8)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def setting_file(tmp_path_factory, tiny_llama):
    layout = discover_layout(tiny_llama[0])
    records = [
        ScoreRecord(layer, kind, 1.0 if kind in ("v", "down") else -1.0)
        for layer in range(layout.num_layers)
        for kind in layout.kinds
    ]
    setting = select_setting(records, layout, 2, model="tiny-random-llama")
    return str(setting.save(tmp_path_factory.mktemp("setting") / "setting.json"))


def cfg(data_file, **kw):
    base = dict(
        model="tiny-random-llama",
        data=data_file,
        rank=4,
        lr=1e-2,
        batch_size=8,
        micro_batch_size=4,
        max_steps=12,
        eval_every=4,
        max_length=64,
        seed=1,
    )
    return TrainConfig(**{**base, **kw})


@contextmanager
def before_each_step(hook):
    """Run ``hook(trainer)`` ahead of every train step; it may raise to simulate a kill."""
    original = Trainer.train_step

    def wrapped(self, indices):
        hook(self)
        return original(self, indices)

    Trainer.train_step = wrapped
    try:
        yield
    finally:
        Trainer.train_step = original


def kill_before_step(step):
    """A hook that interrupts the run when ``step`` steps are done."""

    def hook(trainer):
        if trainer.state.step == step:
            raise KeyboardInterrupt

    return hook


def assert_same_run(straight, broken):
    """The same adapter, bit for bit, and the same logged losses."""
    a = load_file(straight / "adapter_model.safetensors")
    b = load_file(broken / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert losses(straight) == losses(broken)


def losses(out):
    return [json.loads(line)["loss"] for line in open(os.path.join(out, "metrics.jsonl"))]


@pytest.mark.parametrize("method", ["full-lora", "fanlora", "lora", "adalora", "ia3", "random"])
def test_each_method_trains_with_a_falling_loss(tmp_path, data_file, setting_file, method):
    extra = {"setting": setting_file} if method in ("fanlora", "random") else {}
    if method == "ia3":
        extra["lr"] = 0.5  # (IA)3 only rescales activations: it needs a large step here
    record = train(cfg(data_file, method=method, **extra), tmp_path / method, log=lambda _: None)
    curve = losses(tmp_path / method)
    assert len(curve) == 12
    assert sum(curve[-3:]) / 3 < curve[0] - 0.1, curve
    assert record["trainable_params"] > 0 and record["status"] == "finished"
    assert (tmp_path / method / "adapter_model.safetensors").is_file()


def test_fanlora_wraps_exactly_the_setting(tmp_path, data_file, setting_file):
    from peft.tuners.lora import LoraLayer

    from fanlora.select import FanLoRASetting

    setting = FanLoRASetting.load(setting_file)
    captured = {}
    original = Trainer.setup

    def spy(self, *args):
        original(self, *args)
        captured["names"] = sorted(
            n.removeprefix("base_model.model.")
            for n, m in self.peft_model.named_modules()
            if isinstance(m, LoraLayer)
        )

    Trainer.setup = spy
    try:
        record = train(
            cfg(data_file, method="fanlora", setting=setting_file, max_steps=2),
            tmp_path / "f",
            log=lambda _: None,
        )
    finally:
        Trainer.setup = original
    assert captured["names"] == sorted(setting.target_modules)
    assert len(captured["names"]) == 8  # v and down in each of 4 layers
    # rank 4: A (in x 4) + B (4 x out) per module; v is 64->32, down is 128->64
    assert record["trainable_params"] == 4 * ((64 + 32) * 4 + (128 + 64) * 4)


def test_random_placement_keeps_modules_per_layer(setting_file):
    from fanlora.select import FanLoRASetting
    from fanlora.train import random_setting

    setting = FanLoRASetting.load(setting_file)
    placed = random_setting(setting, seed=3)
    assert [len(k) for k in placed.layers] == [len(k) for k in setting.layers]
    assert placed.layers != setting.layers
    assert placed.layers == random_setting(setting, seed=3).layers


def test_resume_equals_uninterrupted(tmp_path, data_file):
    straight = tmp_path / "straight"
    train(cfg(data_file, dropout=0.1), straight, log=lambda _: None)

    broken = tmp_path / "broken"
    with before_each_step(kill_before_step(6)), pytest.raises(KeyboardInterrupt):
        train(cfg(data_file, dropout=0.1), broken, log=lambda _: None)
    assert latest_checkpoint(broken / "checkpoints").name == "step-4"
    train(cfg(data_file, dropout=0.1), broken, resume=True, log=lambda _: None)
    assert_same_run(straight, broken)


def test_each_sitting_is_recorded_and_a_change_of_precision_is_said(tmp_path, data_file):
    """A run resumed on another machine records where each sitting started and what it
    computed in (here the first sitting's checkpoint is rewritten as made in bf16)."""
    folder = tmp_path / "run"
    with before_each_step(kill_before_step(6)), pytest.raises(KeyboardInterrupt):
        train(cfg(data_file), folder, log=lambda _: None)
    state_file = latest_checkpoint(folder / "checkpoints") / "state.json"
    state = json.loads(state_file.read_text())
    assert [(s["from_step"], s["precision"]) for s in state["sittings"]] == [(0, "fp32")]
    state["sittings"][0]["precision"] = "bf16"
    state_file.write_text(json.dumps(state))
    lines = []
    record = train(cfg(data_file), folder, resume=True, log=lines.append)
    assert [(s["from_step"], s["precision"]) for s in record["sittings"]] == [
        (0, "bf16"),
        (4, "fp32"),
    ]
    assert all(s["device"] for s in record["sittings"])
    assert any("earlier steps of this run computed in bf16" in line for line in lines)
    done = json.loads((folder / "run.json").read_text())
    assert done["sittings"] == record["sittings"]


def test_a_stop_signal_finishes_the_step_writes_a_checkpoint_and_resumes_exactly(
    tmp_path, data_file
):
    straight = tmp_path / "straight"
    train(cfg(data_file, dropout=0.1), straight, log=lambda _: None)

    def terminate_during_step_6(trainer):
        if trainer.state.step == 5:  # step 6 runs on, then the stop (no eval at 6)
            os.kill(os.getpid(), signal.SIGTERM)

    broken = tmp_path / "broken"
    before = signal.getsignal(signal.SIGTERM)
    with before_each_step(terminate_during_step_6), pytest.raises(Stopped, match="SIGTERM"):
        train(cfg(data_file, dropout=0.1), broken, log=lambda _: None)
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back
    assert latest_checkpoint(broken / "checkpoints").name == "step-6"
    assert len(losses(broken)) == 6
    train(cfg(data_file, dropout=0.1), broken, resume=True, log=lambda _: None)
    assert_same_run(straight, broken)


def test_a_second_stop_signal_interrupts_at_once():
    with stop_on_signals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs between bytecodes: the sleep is cut short


def test_reload_through_plain_peft_gives_identical_logits(tmp_path, data_file):
    from peft import PeftModel, get_peft_model

    from fanlora.models import load_model
    from fanlora.train import build_peft_config

    out = tmp_path / "run"
    train(cfg(data_file, max_steps=4, eval_every=4), out, log=lambda _: None)
    base, _ = load_model("tiny-random-llama")
    reloaded = PeftModel.from_pretrained(base, out).eval()
    # the same weights put in by hand from the final checkpoint (best = last step here)
    fresh, _ = load_model("tiny-random-llama")
    config = build_peft_config(cfg(data_file), discover_layout(fresh), 4)
    manual = get_peft_model(fresh, config).eval()
    weights = load_file(latest_checkpoint(out / "checkpoints") / "trainable.safetensors")
    manual.load_state_dict(weights, strict=False)
    x = torch.tensor([[5, 60, 70, 80, 90, 100]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, manual(x).logits, rtol=0, atol=0)
        plain = load_model("tiny-random-llama")[0](x).logits
        assert not torch.equal(reloaded(x).logits, plain)  # the adapter does something


def test_output_folder_with_another_run_is_refused(tmp_path, data_file):
    out = tmp_path / "run"
    train(cfg(data_file, max_steps=2, eval_every=2), out, log=lambda _: None)
    with pytest.raises(FanLoRAError, match=r"--resume.*--overwrite"):
        train(cfg(data_file, max_steps=2, eval_every=2), out, log=lambda _: None)
    with pytest.raises(FanLoRAError, match="another config"):
        train(cfg(data_file, max_steps=3, eval_every=2), out, resume=True, log=lambda _: None)
    record = train(
        cfg(data_file, max_steps=3, eval_every=3), out, overwrite=True, log=lambda _: None
    )
    assert record["steps"] == 3


def test_nan_loss_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path, data_file):
    out = tmp_path / "nan"

    def poison(trainer):
        if trainer.state.step == 2:
            with torch.no_grad():
                param = next(p for p in trainer.peft_model.parameters() if p.requires_grad)
                param.fill_(float("nan"))

    with before_each_step(poison), pytest.raises(FanLoRAError, match="step 3"):
        train(cfg(data_file, eval_every=1), out, log=lambda _: None)
    good = latest_checkpoint(out / "checkpoints")
    assert good.name == "step-2"
    weights = load_file(good / "trainable.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_resume_of_a_finished_run_changes_nothing(tmp_path, data_file):
    out = tmp_path / "run"
    first = train(cfg(data_file, max_steps=2, eval_every=2), out, log=lambda _: None)
    stamp = (out / "adapter_model.safetensors").stat().st_mtime_ns
    again = train(cfg(data_file, max_steps=2, eval_every=2), out, resume=True, log=lambda _: None)
    assert again == first
    assert (out / "adapter_model.safetensors").stat().st_mtime_ns == stamp


def test_killed_mid_save_leaves_previous_checkpoint_loadable(tmp_path, data_file):
    out = tmp_path / "run"
    with before_each_step(kill_before_step(2)), pytest.raises(KeyboardInterrupt):
        train(cfg(data_file, max_steps=4, eval_every=2), out, log=lambda _: None)
    half = out / "checkpoints" / ".tmp-step-4-abc"
    half.mkdir()
    (half / "trainable.safetensors").write_bytes(b"\x00" * 10)  # a save cut short
    assert latest_checkpoint(out / "checkpoints").name == "step-2"
    record = train(cfg(data_file, max_steps=4, eval_every=2), out, resume=True, log=lambda _: None)
    assert record["steps"] == 4 and record["status"] == "finished"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"rank": 0}, "rank must be >= 1"),
        ({"method": "fanlora"}, "needs --setting"),
        ({"method": "dora"}, "unknown method"),
        ({"adalora_target_rank": 0}, "adalora_target_rank must be above 0"),
        ({"adalora_target_rank": 13}, r"at most adalora_init_rank \(12\), got 13"),
    ],
)
def test_bad_configs(data_file, overrides, message):
    with pytest.raises(FanLoRAError, match=message):
        cfg(data_file, **overrides)


def test_setting_for_another_model_is_refused(tmp_path, data_file):
    from conftest import build_tiny
    from fanlora.select import select_setting as sel

    layout = discover_layout(build_tiny("llama", num_hidden_layers=12))
    setting = sel([ScoreRecord(11, "q", 1.0)], layout, 2)
    path = setting.save(tmp_path / "s12.json")
    with pytest.raises(FanLoRAError, match=r"made for another model.*layers 12 vs 4"):
        train(
            cfg(data_file, method="fanlora", setting=str(path)), tmp_path / "o", log=lambda _: None
        )
    assert not (tmp_path / "o").exists()  # a refused command creates nothing


def test_a_missing_setting_file_is_named_and_nothing_is_created(tmp_path, data_file):
    out = tmp_path / "o"
    code = main(
        [
            "train",
            "--data",
            data_file,
            "--method",
            "fanlora",
            "--setting",
            str(tmp_path / "nope.json"),
            "--out",
            str(out),
        ]
    )
    assert code == 2 and not out.exists()
    with pytest.raises(FanLoRAError, match=r"setting file not found: .*nope\.json"):
        train(
            cfg(data_file, method="fanlora", setting=str(tmp_path / "nope.json")),
            out,
            log=lambda _: None,
        )


def test_empty_training_split_is_refused(tmp_path):
    path = tmp_path / "dev_only.jsonl"
    path.write_text(json.dumps({"instruction": "a", "output": "b", "split": "dev"}))
    with pytest.raises(FanLoRAError, match=r"train split.*empty"):
        train(TrainConfig(data=str(path), max_steps=1), tmp_path / "o", log=lambda _: None)


def test_cli_with_yaml_config_and_flag_override(tmp_path, data_file):
    config = tmp_path / "train.yaml"
    config.write_text(
        f"data: {data_file}\nrank: 2\nmax_steps: 2\neval_every: 2\nbatch_size: 4\nmax_length: 64\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fanlora.cli.main",
            "train",
            "--config",
            str(config),
            "--rank",
            "3",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "is_gradient_checkpointing" not in proc.stderr  # PEFT's deprecated read, hidden
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["config"]["rank"] == 3 and run["config"]["max_steps"] == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("rnak: 3\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fanlora.cli.main",
            "train",
            "--config",
            str(bad),
            "--out",
            str(tmp_path / "o2"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "'rnak'" in proc.stderr and "bad.yaml" in proc.stderr


@pytest.mark.slow
def test_two_processes_on_cpu_agree(tmp_path, data_file):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            "-m",
            "fanlora.cli.main",
            "train",
            "--data",
            data_file,
            "--rank",
            "4",
            "--max-steps",
            "3",
            "--dropout",
            "0",
            "--micro-batch-size",
            "4",
            "--eval-every",
            "3",
            "--batch-size",
            "8",
            "--max-length",
            "64",
            "--out",
            str(tmp_path / "ddp"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert run["world_size"] == 2
    sums = run["rank_weight_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]
    # the loss is normalised by the step's global token count: two processes log (and
    # descend) the one-process loss, not the mean of per-rank means
    one = tmp_path / "one"
    train(
        cfg(data_file, rank=4, max_steps=3, dropout=0.0, eval_every=3, seed=0, lr=1e-4),
        one,
        log=lambda _: None,
    )
    assert losses(tmp_path / "ddp") == pytest.approx(losses(one), rel=1e-4)


def test_a_pruned_adalora_adapter_loads_whole_and_quietly(tmp_path, data_file):
    import warnings

    from fanlora.models.adapters import attach_adapter
    from fanlora.models.loading import load_model

    out = tmp_path / "adalora"
    train(cfg(data_file, method="adalora"), out, log=lambda _: None)
    assert json.loads((out / "adapter_config.json").read_text())["rank_pattern"]  # pruned
    base, _ = load_model("tiny-random-llama")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = attach_adapter(base, out, "tiny-random-llama")
    # PEFT's rank_pattern check does not know AdaLoRA's keys; every weight still loads
    assert not [w for w in caught if "rank_pattern" in str(w.message)]
    params = dict(model.named_parameters())
    saved = load_file(out / "adapter_model.safetensors")
    for key, value in saved.items():
        name = (
            key.replace(".weight", ".default.weight")
            if ".lora_" in key and key.endswith(".weight")
            else key + ".default"
        )
        assert torch.equal(params[name].detach(), value), key


def test_adalora_prunes_to_a_fractional_average_target_rank_and_records_what_it_keeps(
    tmp_path, data_file
):
    """Average target rank a = 1.5 over the N modules: the allocator's total is round(a N)
    triplets (PEFT's own total is an integer target_r x N), the trained adapter keeps
    exactly that many, and run.json counts them at their modules' shapes."""
    from fanlora.models.adapters import attach_adapter
    from fanlora.select.budget import adalora_kept_params

    out = tmp_path / "adalora"
    c = cfg(
        data_file, method="adalora", adalora_init_rank=3, adalora_target_rank=1.5, eval_every=12
    )
    record = train(c, out, log=lambda _: None)
    pattern = json.loads((out / "adapter_config.json").read_text())["rank_pattern"]
    layout = discover_layout(load_model("tiny-random-llama")[0])
    assert sum(sum(mask) for mask in pattern.values()) == round(1.5 * len(layout.all_names()))
    assert record["kept_params"] == adalora_kept_params(layout, pattern) > 0
    assert json.loads((out / "run.json").read_text())["kept_params"] == record["kept_params"]
    assert any(not any(mask) for mask in pattern.values())  # some modules keep nothing ...
    attach_adapter(load_model("tiny-random-llama")[0], out, "tiny-random-llama")  # ... and load


# --- issue 15: numbers you can trust -------------------------------------------------


def test_every_method_scales_its_lora_path_by_two(data_file, setting_file):
    """One alpha rule: alpha / r = 2 for LoRA-type methods, alpha / init rank = 2 for
    AdaLoRA (PEFT divides by ranknum, its initial rank)."""
    from fanlora.select import FanLoRASetting
    from fanlora.train.methods import build_peft_config

    layout = discover_layout(load_model("tiny-random-llama")[0])
    setting = FanLoRASetting.load(setting_file)
    lora = build_peft_config(cfg(data_file, method="lora", rank=3), layout, 10)
    assert lora.lora_alpha == 6
    fan = build_peft_config(
        cfg(data_file, method="fanlora", rank=5, setting=setting_file), layout, 10, setting
    )
    assert fan.lora_alpha == 10
    ada = build_peft_config(
        cfg(data_file, method="adalora", rank=12, adalora_init_rank=6, adalora_target_rank=4),
        layout,
        10,
    )
    assert ada.lora_alpha == 12 and ada.init_r == 6
    assert build_peft_config(cfg(data_file, method="lora", alpha=7), layout, 10).lora_alpha == 7


def adalora_trainer(data_file, tmp_path, **kw):
    c = cfg(data_file, method="adalora", dropout=0.0, **kw)
    model, tok = load_model(c.model)
    data = prepare_data(c, tok)
    trainer = Trainer(c, RunFolder(tmp_path / "t"), log=lambda _: None)
    trainer.setup(model, tok, build_peft_config(c, discover_layout(model), data.total_steps), data)
    return trainer


def test_adalora_dev_loss_is_the_cross_entropy_without_its_penalty(tmp_path, data_file):
    from fanlora.models.losses import orthogonal_penalty, sequence_losses
    from fanlora.train.engine import micro_batches

    trainer = adalora_trainer(data_file, tmp_path)
    trainer.train_step(list(range(8)))
    trainer.model.eval()
    rows = trainer.data.dev
    ce = torch.zeros(2)
    peft_loss = []
    with torch.no_grad():
        for batch in micro_batches(rows, list(range(len(rows))), 4, trainer.pad_id, "cpu"):
            out = trainer.model(**batch)
            ce += sequence_losses(out.logits, batch["labels"]).sum(0)
            peft_loss.append(float(out.loss))
    penalty = float(orthogonal_penalty(trainer.peft_model))
    assert penalty > 0.01  # PEFT's outputs.loss carries 0.5 x this on top of the CE
    assert trainer.evaluate() == pytest.approx(float(ce[0] / ce[1]), rel=1e-5)
    assert peft_loss[0] > trainer.evaluate() + 0.4 * penalty


def test_adalora_penalty_weight_does_not_depend_on_the_micro_batch_split(tmp_path, data_file):
    runs = {}
    for micro in (8, 2):
        trainer = adalora_trainer(data_file, tmp_path / str(micro), micro_batch_size=micro)
        losses_ = [trainer.train_step(list(range(8 * s, 8 * s + 8)))[::2] for s in range(2)]
        weights = {
            n: p.detach().clone()
            for n, p in trainer.peft_model.named_parameters()
            if p.requires_grad
        }
        runs[micro] = (losses_, weights)
    (l8, w8), (l2, w2) = runs[8], runs[2]
    for (a, pa), (b, pb) in zip(l8, l2, strict=True):
        assert a == pytest.approx(b, rel=1e-4) and pa == pytest.approx(pb, rel=1e-4)
    for name in w8:
        assert torch.allclose(w8[name], w2[name], atol=1e-5), name


def test_adalora_logs_its_penalty_apart_from_the_loss(tmp_path, data_file):
    out = tmp_path / "ada"
    train(cfg(data_file, method="adalora", max_steps=4), out, log=lambda _: None)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(line["orth_penalty"] > 0 for line in lines)
    lora = tmp_path / "lora"
    train(cfg(data_file, max_steps=2, eval_every=2), lora, log=lambda _: None)
    lora_lines = (lora / "metrics.jsonl").read_text().splitlines()
    assert all("orth_penalty" not in json.loads(line) for line in lora_lines)


@pytest.mark.parametrize("eval_every, kill_at", [(4, 6), (11, 11)])
def test_adalora_resume_equals_uninterrupted(tmp_path, data_file, eval_every, kill_at):
    """(4, 6): resumed inside the budget schedule (the rank allocator's running importance
    matters); (11, 11): resumed after total_step - tfinal = 10, where PEFT needs the saved
    rank pattern (without it, it crashed)."""
    c = dict(method="adalora", dropout=0.1, eval_every=eval_every)
    straight = tmp_path / "straight"
    train(cfg(data_file, **c), straight, log=lambda _: None)
    broken = tmp_path / "broken"
    with before_each_step(kill_before_step(kill_at)), pytest.raises(KeyboardInterrupt):
        train(cfg(data_file, **c), broken, log=lambda _: None)
    train(cfg(data_file, **c), broken, resume=True, log=lambda _: None)
    assert_same_run(straight, broken)


def test_train_and_dev_rows_are_seeded_draws_not_the_first_rows(tmp_path):
    """A split file written source by source: the dev sample must see both sources."""
    from fanlora.models import load_tokenizer
    from fanlora.train.engine import prepare_data

    path = tmp_path / "two_sources.jsonl"
    rows = [
        {
            "instruction": f"Say {i}",
            "output": "apple" if i < 40 else "pear",
            "split": "dev" if i % 2 else "train",
        }
        for i in range(80)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    tok = load_tokenizer("tiny-random-llama")
    c = TrainConfig(data=str(path), eval_examples=10, max_train_examples=10, max_steps=1)
    data = prepare_data(c, tok)
    for part in (data.dev, data.train):
        answers = {
            tok.decode([t for t in r["labels"] if t != -100], skip_special_tokens=True)
            for r in part
        }
        assert {"apple", "pear"} <= {a.strip() for a in answers}


def test_bf16_autocast_on_the_cpu_trains_near_fp32(tmp_path, data_file):
    """Every step of a bf16-autocast run stays within 0.05 nats of the fp32 run's loss (the
    embedded default's tolerance is measured on SmolLM2 by bench/precision.py)."""
    train(cfg(data_file, device="cpu"), tmp_path / "fp32", log=lambda _: None)
    record = train(
        cfg(data_file, device="cpu", precision="bf16"), tmp_path / "bf16", log=lambda _: None
    )
    fp32, bf16 = losses(tmp_path / "fp32"), losses(tmp_path / "bf16")
    assert len(fp32) == len(bf16) == 12
    assert fp32 != bf16  # autocast did change the arithmetic
    assert max(abs(a - b) for a, b in zip(fp32, bf16, strict=True)) < 0.05
    assert record["config"]["precision"] == "bf16"


def test_training_puts_the_batches_on_the_accelerators_device(tmp_path, data_file):
    seen = []
    trainer = Trainer(cfg(data_file, device="cpu", max_steps=1), RunFolder(tmp_path / "r"))
    assert trainer.acc.device == torch.device("cpu")
    model, tokenizer = load_model("tiny-random-llama")
    model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].device), with_kwargs=True
    )
    data = prepare_data(trainer.cfg, tokenizer)
    layout = discover_layout(model)
    trainer.setup(model, tokenizer, build_peft_config(trainer.cfg, layout, 1, None), data)
    trainer.train_step(list(range(8)))
    assert seen and all(d == trainer.acc.device for d in seen)


def test_gradient_checkpointing_leaves_the_losses_unchanged(tmp_path, data_file):
    train(cfg(data_file, max_steps=6), tmp_path / "plain", log=lambda _: None)
    train(
        cfg(data_file, max_steps=6, gradient_checkpointing=True),
        tmp_path / "ckpt",
        log=lambda _: None,
    )
    assert losses(tmp_path / "ckpt") == pytest.approx(losses(tmp_path / "plain"), rel=1e-5)
