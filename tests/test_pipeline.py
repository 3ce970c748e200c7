"""`fanlora run`: stages skip when done, redo what a change invalidates, resume, report."""

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import free_port
from fanlora.cli.main import main
from fanlora.errors import FanLoRAError
from fanlora.pipeline.config import load_run_config, run_config_from
from fanlora.pipeline.run import run_pipeline
from fanlora.select import FanLoRASetting

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


def tiny_data(**top) -> dict:
    data = yaml.safe_load(TINY.read_text())
    data.update(methods=["fanlora", "lora"], decode=True)
    data["evaluation"].update(limit=4)
    data["decoding"].update(runs=1, beams=[1], new_tokens=4)
    data.update(top)
    return data


def tiny_cfg(**top):
    return run_config_from(tiny_data(**top), "test")


def run_quiet(cfg, out, start_from=None):
    """Run the pipeline; return (records, names of the units that ran)."""
    lines = []
    import fanlora.pipeline.run as run_mod

    original = run_mod._log
    run_mod._log = lambda run_dir: lines.append
    try:
        records = run_pipeline(cfg, out, start_from)
    finally:
        run_mod._log = original
    ran = [
        m.group(1)
        for line in lines
        if (m := re.match(r"\[\d+/\d+\] (\S+): (starts|resumes)", line))
    ]
    return records, ran


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tasks_home_dir):
    """One finished tiny run, copied by the tests that change it."""
    mp = pytest.MonkeyPatch()
    mp.setenv("FANLORA_HOME", tasks_home_dir)
    out = tmp_path_factory.mktemp("runs") / "tiny"
    records, ran = run_quiet(tiny_cfg(), out)
    mp.undo()
    return out, records, ran


def copy_run(finished, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished[0], out)
    return out


def test_every_unit_runs_once_and_the_report_traces_to_files(finished):
    out, records, ran = finished
    assert ran == list(records)  # a fresh run runs every unit, in order
    assert {"1-full-lora", "2-scores", "3-setting", "6-decode", "report"} <= set(ran)
    assert all(r["status"] == "finished" for r in records.values())
    setting = FanLoRASetting.load(out / "3-setting" / "setting.json")
    assert all(len(kinds) <= 2 for kinds in setting.layers)
    report = (out / "report" / "report.md").read_text()
    for task in ("boolq", "squad"):
        for method in ("base", "fanlora", "lora"):
            doc = json.loads((out / "5-eval" / task / method / "metrics.json").read_text())
            assert f"{doc['value']:.1f}" in report
    from fanlora.select.budget import match_kind_ranks

    lora = json.loads((out / "4-downstream/boolq/lora/run.json").read_text())
    fan = json.loads((out / "4-downstream/boolq/fanlora/run.json").read_text())
    ranks, match = match_kind_ranks(setting.layout, fan["trainable_params"])
    assert fan["trainable_params"] == 4 * setting.params_per_rank()
    assert lora["config"]["rank_pattern"] == ranks  # the budget is matched per module kind
    assert lora["trainable_params"] == match.got
    low, high = min(ranks.values()), max(ranks.values())
    shown = f"{low} by kind" if low == high else f"{low}-{high} by kind"
    assert f"| {lora['trainable_params']:,} | {shown} |" in report
    html = (out / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "<table>" in html
    decode = json.loads((out / "6-decode" / "decode.json").read_text())
    assert [r["variant"] for r in decode["rows"]] == ["base", "fanlora", "lora"]


def test_a_second_run_skips_everything(finished, tasks_home, tmp_path):
    out = copy_run(finished, tmp_path)
    _, ran = run_quiet(tiny_cfg(), out)
    assert ran == []


def test_a_changed_downstream_config_redoes_only_what_it_invalidates(
    finished, tasks_home, tmp_path
):
    out = copy_run(finished, tmp_path)
    data = tiny_data()
    data["downstream"]["lr"] = 0.02
    _, ran = run_quiet(run_config_from(data, "test"), out)
    assert not {"1-full-lora", "2-scores", "3-setting"} & set(ran)
    assert {"5-eval/boolq/base", "5-eval/squad/base"}.isdisjoint(ran)
    assert {"4-downstream/boolq/fanlora", "5-eval/squad/lora", "6-decode", "report"} <= set(ran)


def test_an_output_deleted_or_edited_by_hand_is_recomputed(finished, tasks_home, tmp_path):
    out = copy_run(finished, tmp_path)
    (out / "5-eval/boolq/lora/metrics.json").unlink()
    _, ran = run_quiet(tiny_cfg(), out)
    assert ran == ["5-eval/boolq/lora", "report"]
    setting = out / "3-setting" / "setting.json"
    setting.write_text(setting.read_text().replace('"k_max": 2', '"k_max": 3'))
    _, ran = run_quiet(tiny_cfg(), out)
    assert ran[0] == "3-setting" and "4-downstream/boolq/fanlora" in ran


def test_an_engine_aware_setting_redoes_step_3_and_later_only(finished, tasks_home, tmp_path):
    out = copy_run(finished, tmp_path)
    _, ran = run_quiet(tiny_cfg(engine="vllm"), out)
    assert ran[0] == "3-setting" and not {"1-full-lora", "2-scores"} & set(ran)
    setting = FanLoRASetting.load(out / "3-setting" / "setting.json")
    assert setting.extra["engine"] == "vllm" and setting.extra["packed_budget"] == 1
    cost = setting.extra["cost"]["vllm"]
    assert cost["wrapped_modules"] <= setting.layout.num_layers
    report = (out / "report" / "report.md").read_text()
    assert "Selected for vllm" in report and "| vllm | " in report


def test_pruned_weights_keep_a_unit_done_until_a_unit_that_must_run_reads_them(
    finished, tasks_home, tmp_path
):
    from fanlora.pipeline.run import build_units
    from fanlora.pipeline.stages import RunDir, assign_keys

    out = copy_run(finished, tmp_path)
    run_dir = RunDir(out)
    units = {u.name: u for u in build_units(tiny_cfg(), run_dir)}
    assign_keys(list(units.values()))
    adapter = out / "4-downstream/boolq/fanlora/adapter_model.safetensors"
    before = adapter.read_bytes()
    assert run_dir.prune(units["4-downstream/boolq/fanlora"], ("adapter_model.safetensors",))
    assert not adapter.exists() and not (adapter.parent / "checkpoints").exists()
    _, ran = run_quiet(tiny_cfg(), out)
    assert ran == []  # pruned on purpose: still done
    data = tiny_data()
    data["evaluation"]["limit"] = 3  # every evaluation must run, so the adapter is needed
    _, ran = run_quiet(run_config_from(data, "test"), out)
    assert "4-downstream/boolq/fanlora" in ran and "4-downstream/boolq/lora" not in ran
    assert adapter.read_bytes() == before  # recomputed, the same weights


def test_pruned_weights_put_back_with_their_hash_are_not_trained_again(
    finished, tasks_home, tmp_path
):
    """A pruned adapter restored from git history (its recorded hash) serves the unit that
    must read it; a file that is not the one recorded does not (session 27: table 1's
    decoding unit would have retrained four adapters that git still held)."""
    from fanlora.pipeline.run import build_units
    from fanlora.pipeline.stages import RunDir, assign_keys

    out = copy_run(finished, tmp_path)
    run_dir = RunDir(out)
    units = {u.name: u for u in build_units(tiny_cfg(), run_dir)}
    assign_keys(list(units.values()))
    unit = units["4-downstream/boolq/fanlora"]
    adapter = out / "4-downstream/boolq/fanlora/adapter_model.safetensors"
    before = adapter.read_bytes()
    assert run_dir.prune(unit, ("adapter_model.safetensors",))
    adapter.write_bytes(before[:-1] + bytes([before[-1] ^ 1]))  # not the recorded file
    assert run_dir.pruned(unit) == ["adapter_model.safetensors"]
    adapter.write_bytes(before)  # put back as recorded
    assert run_dir.pruned(unit) == []
    data = tiny_data()
    data["evaluation"]["limit"] = 3  # every evaluation must run and reads the adapter
    _, ran = run_quiet(run_config_from(data, "test"), out)
    assert "5-eval/boolq/fanlora" in ran and "4-downstream/boolq/fanlora" not in ran


def test_method_lr_gives_each_method_its_own_step_4_learning_rate(tmp_path):
    from fanlora.pipeline.run import build_units
    from fanlora.pipeline.stages import RunDir

    cfg = tiny_cfg(method_lr={"lora": 0.005})
    units = {u.name: u for u in build_units(cfg, RunDir(tmp_path / "run"))}
    assert units["4-downstream/boolq/lora"].params["lr"] == 0.005
    assert units["4-downstream/boolq/fanlora"].params["lr"] == tiny_data()["downstream"]["lr"]


def test_a_report_that_must_run_does_not_revive_pruned_units(finished, tasks_home, tmp_path):
    """The report reads records, not weights: when it reruns (here forced, as when a new
    unit's key changes its deps), pruned step-4 units stay pruned (session 18's resume of
    v2-lr-sweep retrained a pruned FanLoRA unit because the report had to run)."""
    from fanlora.pipeline.run import build_units
    from fanlora.pipeline.stages import RunDir, assign_keys

    out = copy_run(finished, tmp_path)
    run_dir = RunDir(out)
    units = {u.name: u for u in build_units(tiny_cfg(), run_dir)}
    assign_keys(list(units.values()))
    assert run_dir.prune(units["4-downstream/boolq/fanlora"], ("adapter_model.safetensors",))
    _, ran = run_quiet(tiny_cfg(), out, start_from="report")
    assert ran == ["report"]


def test_a_methods_revision_keys_its_units_and_no_other(tmp_path):
    """The random placement's matched rank and AdaLoRA's fractional target rank (revision 1
    each) changed what their units train, so their keys changed; every other unit keeps
    the key it had."""
    from fanlora.pipeline.run import build_units
    from fanlora.pipeline.stages import RunDir

    cfg = tiny_cfg(methods=["fanlora", "lora", "random", "adalora"])
    units = {u.name: u for u in build_units(cfg, RunDir(tmp_path / "run"))}
    revised = {
        n: u.params["method_revision"] for n, u in units.items() if "method_revision" in u.params
    }
    step4 = [n for n in units if n.startswith("4-downstream/")]
    assert revised == {n: 1 for n in step4 if n.endswith(("/random", "/adalora"))}
    assert len(revised) == 2 * len(cfg.tasks)


def test_from_stage_forces_that_stage_and_later(finished, tasks_home, tmp_path):
    out = copy_run(finished, tmp_path)
    _, ran = run_quiet(tiny_cfg(), out, start_from="decode")
    assert ran == ["6-decode", "report"]


def test_an_interrupted_run_resumes_where_it_stopped(tasks_home, tmp_path, finished):
    from test_train import before_each_step, kill_before_step

    out = tmp_path / "run"
    cfg = tiny_cfg(tasks=["boolq"], eval_base=False, decode=False)
    with before_each_step(kill_before_step(2)), pytest.raises(KeyboardInterrupt):
        run_quiet(cfg, out)  # dies inside step 1, at its third optimizer step
    assert json.loads((out / "1-full-lora" / "stage.json").read_text())["status"] == "running"
    records, ran = run_quiet(cfg, out)
    assert ran[0] == "1-full-lora" and records["1-full-lora"]["status"] == "finished"
    # resuming gives the same adapter as the uninterrupted run
    a = (out / "1-full-lora" / "adapter_model.safetensors").read_bytes()
    b = (finished[0] / "1-full-lora" / "adapter_model.safetensors").read_bytes()
    assert a == b


def test_a_full_disk_fails_the_stage_and_keeps_earlier_ones(
    finished, tasks_home, tmp_path, monkeypatch
):
    import errno

    import fanlora.utils.io as io_mod

    out = copy_run(finished, tmp_path)
    (out / "5-eval/squad/fanlora/metrics.json").unlink()
    real = io_mod.atomic_write_text

    def full(path, text):
        if "5-eval" in str(path) and "stage.json" not in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, text)

    monkeypatch.setattr(io_mod, "atomic_write_text", full)
    with pytest.raises(FanLoRAError, match=r"No space left.*intact"):
        run_quiet(tiny_cfg(), out)
    monkeypatch.setattr(io_mod, "atomic_write_text", real)
    assert json.loads((out / "3-setting" / "stage.json").read_text())["status"] == "finished"
    _, ran = run_quiet(tiny_cfg(), out)
    assert ran == ["5-eval/squad/fanlora", "report"]


def test_a_run_folder_of_another_format_or_not_a_run_is_refused(finished, tasks_home, tmp_path):
    out = copy_run(finished, tmp_path)
    doc = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**doc, "format_version": 99}))
    with pytest.raises(FanLoRAError, match="run format 99"):
        run_quiet(tiny_cfg(), out)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FanLoRAError, match="holds no fanlora run"):
        run_quiet(tiny_cfg(), tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"epochs": 3}, r"unknown key\(s\) 'epochs'"),
        ({"k_max": "two"}, "key 'k_max' must be int"),
        ({"tasks": ["boolq", "nosuch"]}, r"unknown task\(s\) \['nosuch'\]"),
        ({"methods": ["fanlora", "lorra"]}, r"unknown downstream method\(s\) \['lorra'\]"),
        ({"downstream": {"rnk": 4}}, "section 'downstream': unknown key"),
        (
            {"scoring": {"val_examples": "many"}},
            "section 'scoring': key 'val_examples' must be int",
        ),
        ({"downstream": {"method": "lora"}}, "set by the pipeline itself"),
        ({"decoding": {"beams": []}}, "decoding.beams"),
        ({"engine": "tgi"}, "engine must be one of peft, vllm"),
        ({"packed_budget": 1}, "packed_budget needs engine"),
        ({"method_lr": {"adalora": 0.001}}, r"method_lr: \['adalora'\] are not methods"),
    ],
)
def test_bad_configs_fail_before_anything_runs(tmp_path, change, message):
    data = tiny_data()
    data.update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(FanLoRAError, match=message) as info:
        load_run_config(path)
    assert "bad.yaml" in str(info.value)  # the error names the file
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()


CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", [*CONFIGS, None], ids=[p.name for p in CONFIGS] + ["default"])
def test_every_shipped_config_parses(path):
    cfg = load_run_config(path)
    assert cfg.tasks and cfg.methods


def test_flags_override_the_config_file(tmp_path, capsys):
    cfg = load_run_config(TINY, {"k_max": 3, "tasks": ["choice"]})
    assert cfg.k_max == 3 and cfg.tasks == ["choice"]
    assert main(["run", "--print-default"]) == 0
    assert "smollm2-135m" in capsys.readouterr().out


def test_report_command_rerenders_from_json(finished, tmp_path):
    out = copy_run(finished, tmp_path)
    shutil.rmtree(out / "report")
    assert main(["report", str(out)]) == 0
    assert (out / "report" / "report.html").is_file()
    assert main(["report", str(tmp_path)]) == 2


def test_units_of_an_older_results_version_are_recomputed_and_never_reused(tmp_path, monkeypatch):
    """A fix that changes numbers bumps RESULTS_VERSION: finished units of the old code are
    stale in their own folder and are not copied into another run by `reuse:`."""
    import fanlora.pipeline.stages as stages

    def unit():
        def run(folder):
            (folder / "x.txt").write_text("made")
            return {}

        return stages.Unit("u", "scores", {"a": 1}, run, ("x.txt",))

    old = stages.RunDir(tmp_path / "old")
    old.open({})
    monkeypatch.setattr(stages, "RESULTS_VERSION", 1)
    stages.run_units(old, [unit()], log=lambda _: None)
    assert stages.run_units(old, [unit()], log=lambda _: None)["u"]["results_version"] == 1
    monkeypatch.setattr(stages, "RESULTS_VERSION", 2)
    lines = []
    new = stages.RunDir(tmp_path / "new")
    new.open({})
    stages.run_units(new, [unit()], log=lines.append, reuse=[old])
    assert not any("copied" in line for line in lines) and any("starts" in line for line in lines)
    lines.clear()
    record = stages.run_units(old, [unit()], log=lines.append)["u"]
    assert record["results_version"] == 2 and any("starts" in line for line in lines)


def test_a_run_resumed_by_newer_code_keeps_the_code_of_each_unit(tmp_path, monkeypatch):
    """Reopening a run does not relabel it: run.json keeps the code that created it, each
    unit's record the code that computed it (a record made before records carried one
    falls back to run.json's), and a unit copied by `reuse:` keeps its source's code."""
    import fanlora.pipeline.stages as stages
    from fanlora.experiment.aggregate import point_codes

    def unit(name):
        def run(folder):
            (folder / "x.txt").write_text(name)
            return {}

        return stages.Unit(name, "scores", {"n": name}, run, ("x.txt",))

    def sitting(path, code, names, reuse=()):
        monkeypatch.setattr(stages, "code_version", lambda: code)
        run_dir = stages.RunDir(path)
        run_dir.open({})
        stages.run_units(run_dir, [unit(n) for n in names], log=lambda _: None, reuse=reuse)
        return run_dir

    first = sitting(tmp_path / "a", "v1", ["old", "new"])
    old_record = first.path / "old" / "stage.json"
    legacy = {k: v for k, v in json.loads(old_record.read_text()).items() if k != "code"}
    old_record.write_text(json.dumps(legacy))  # as written before records carried a code
    assert point_codes(first.path, json.loads(first.run_json.read_text())) == ["v1"]
    again = sitting(tmp_path / "a", "v2", ["old", "new", "later"])
    run = json.loads(again.run_json.read_text())
    assert (run["code"], run["opened_by"]) == ("v1", "v2")
    assert json.loads((again.path / "new" / "stage.json").read_text())["code"] == "v1"
    assert point_codes(again.path, run) == ["v1", "v2"]
    copy = sitting(tmp_path / "b", "v3", ["old"], reuse=[again])
    assert json.loads((copy.path / "old" / "stage.json").read_text())["code"] == "v1"
    assert "code" not in json.loads(old_record.read_text())  # the source is left as it was


@pytest.mark.slow
def test_the_pipeline_on_two_processes_equals_one(tasks_home_dir, tmp_path):
    """torchrun: training units run on both processes (DDP), scoring shares its modules,
    the other units run once on the main process; same setting, scores within 1e-3 (DDP's
    loss equals one process's to 1e-4, not bitwise) and one log line per event."""
    import os
    import subprocess
    import sys

    data = tiny_data(tasks=["boolq"], methods=["fanlora"], decode=False, until="eval")
    data["full_lora"].update(dropout=0.0)
    data["downstream"].update(dropout=0.0)
    config = tmp_path / "two.yaml"
    config.write_text(yaml.safe_dump(data))
    env = {**os.environ, "FANLORA_HOME": tasks_home_dir, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [
            *launch,
            "--master_port",
            str(free_port()),
            "-m",
            "fanlora.cli.main",
            "run",
            str(config),
            "--out",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    mp = pytest.MonkeyPatch()
    mp.setenv("FANLORA_HOME", tasks_home_dir)
    try:
        run_quiet(run_config_from(dict(data), "test"), tmp_path / "one")
    finally:
        mp.undo()
    two, one = tmp_path / "two", tmp_path / "one"
    assert json.loads((two / "4-downstream/boolq/fanlora/run.json").read_text())["world_size"] == 2
    same = [FanLoRASetting.load(d / "3-setting/setting.json").layers for d in (two, one)]
    assert same[0] == same[1]
    scores = [json.loads((d / "2-scores/scores.json").read_text())["scores"] for d in (two, one)]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(*scores, strict=True)) < 1e-3
    assert (two / "5-eval/boolq/fanlora/metrics.json").is_file()
    log = (two / "pipeline.log").read_text().splitlines()
    assert log.count("[1/7] 1-full-lora: starts") == 1, log
    assert len([line for line in log if line.startswith("setting: ")]) == 1, log


def test_the_pipeline_runs_on_an_explicit_device_in_bf16(tasks_home, tmp_path):
    cfg = tiny_cfg(device="cpu", precision="bf16", until="setting")
    _, ran = run_quiet(cfg, tmp_path / "bf16")
    assert ran[:3] == ["1-full-lora", "2-scores", "3-setting"]
    run = json.loads((tmp_path / "bf16" / "1-full-lora" / "run.json").read_text())
    assert run["config"]["precision"] == "bf16" and run["config"]["device"] == "cpu"
    scores = json.loads((tmp_path / "bf16" / "2-scores" / "scores.json").read_text())
    assert scores["config"]["precision"] == "bf16"


def test_the_device_is_set_at_the_top_level_only(tmp_path):
    data = tiny_data()
    data["scoring"]["device"] = "cpu"
    with pytest.raises(FanLoRAError, match="set model, seed, k_max and device at the top"):
        run_config_from(data, "test")


def test_a_section_precision_the_machine_refuses_is_refused_with_its_section():
    data = tiny_data()
    data["evaluation"]["precision"] = "fp16"  # refused on a CPU
    with pytest.raises(FanLoRAError, match=r"evaluation.*fp16"):
        run_config_from(data, "test")


def test_a_section_precision_wins_over_the_top_level_for_its_stage_only(tasks_home, tmp_path):
    """Train and score in one precision, evaluate in another: each stage records its own."""
    data = tiny_data(device="cpu", precision="fp32", methods=["fanlora"], decode=False)
    data["evaluation"]["precision"] = "auto"
    cfg = run_config_from(data, "test")
    run_quiet(cfg, tmp_path / "mixed")
    step1 = json.loads((tmp_path / "mixed/1-full-lora/run.json").read_text())
    scores = json.loads((tmp_path / "mixed/2-scores/scores.json").read_text())
    evals = list((tmp_path / "mixed/5-eval").glob("*/*/metrics.json"))
    assert step1["config"]["precision"] == "fp32" and scores["config"]["precision"] == "fp32"
    assert evals, "no evaluation ran"
    for path in evals:
        assert json.loads(path.read_text())["config"]["precision"] == "auto", path


def test_code_version_names_the_last_commit_that_changed_the_source():
    """Committing results or docs between two sittings keeps the code version: it is the
    last commit under src/, not HEAD."""
    import subprocess

    import fanlora
    from fanlora.pipeline.stages import code_version

    root = Path(fanlora.__file__).resolve().parents[2]
    last = subprocess.run(
        ["git", "-C", str(root), "log", "-1", "--format=%h", "--", "src"],
        capture_output=True,
        text=True,
    )
    if last.returncode or not last.stdout.strip():
        pytest.skip("not a git checkout")
    version = code_version()
    assert version.removesuffix("-dirty") == f"{fanlora.__version__}+{last.stdout.strip()}"


def test_unit_keys_carry_the_identity_of_their_data(tasks_home, tmp_path):
    """A task rebuilt from other data (another sha256 in the manifest) gets new unit keys."""
    from fanlora.data.registry import data_identity
    from fanlora.pipeline.run import build_units
    from fanlora.pipeline.stages import RunDir

    units = {u.name: u for u in build_units(tiny_cfg(), RunDir(tmp_path / "run"))}
    assert units["4-downstream/boolq/lora"].params["data_sha256"] == data_identity("boolq")
    assert units["5-eval/squad/base"].params["data_sha256"] == data_identity("squad")
    assert units["1-full-lora"].params["data_sha256"] == data_identity("instruct")
    assert not (tmp_path / "run").exists()
