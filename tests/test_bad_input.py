"""Bad input never costs a finished run, never passes silently, never writes outside the
run, and is a clear error (exit 2) rather than a traceback (issue 45)."""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from fanlora.cli.main import main
from fanlora.data.registry import load_split
from fanlora.errors import FanLoRAError
from fanlora.models import resolve_model
from fanlora.pipeline.checks import check_run
from fanlora.pipeline.config import load_run_config, run_config_from
from fanlora.pipeline.run import build_units, run_pipeline
from fanlora.pipeline.stages import RunDir
from fanlora.run_layout import RunLayout, downstream_unit, task_folder
from fanlora.train import TrainConfig
from fanlora.train.run import train
from fanlora.utils.locks import output_lock

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["apple", "pear", "plum", "fig", "kiwi", "lime", "date", "sloe"]


def quiet(_):
    return None


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "words.jsonl"
    rows = [
        {
            "instruction": f"Repeat {w}",
            "output": w,
            "split": ["dev", "test"][i % 2] if i % 8 < 2 else "train",
        }
        for i, w in enumerate(WORDS * 8)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


def train_cfg(data_file, **kw):
    base = dict(data=data_file, rank=2, batch_size=8, micro_batch_size=8, max_steps=2, eval_every=2)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_file):
    out = tmp_path_factory.mktemp("runs") / "done"
    train(train_cfg(data_file), str(out), log=quiet)
    return out


@pytest.fixture(scope="module")
def two_layer_model(tmp_path_factory):
    """A local 2-layer model folder, the tiny preset's shapes otherwise."""
    source = resolve_model("tiny-random-llama")
    config = AutoConfig.from_pretrained(source)
    config.num_hidden_layers = 2
    folder = tmp_path_factory.mktemp("models") / "two-layers"
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def two_layer_adapter(tmp_path_factory, data_file, two_layer_model):
    out = tmp_path_factory.mktemp("runs") / "two-layer-adapter"
    train(train_cfg(data_file, model=two_layer_model), str(out), log=quiet)
    return out


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


# --- a finished run is never lost ------------------------------------------------------


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lr", "-1"], "lr must be > 0"),
        (["--dropout", "1.5"], "dropout must be in [0, 1)"),
        (["--max-steps", "0"], "max_steps must be >= 1"),
        (["--max-steps", "-1"], "max_steps must be >= 1"),
    ],
)
def test_a_refused_overwrite_keeps_the_finished_run(finished, data_file, capsys, flags, message):
    before = snapshot(finished)
    args = ["train", "--data", data_file, "--out", finished, "--overwrite", *flags]
    code, err = cli(capsys, *args)
    assert code == 2 and message in err
    assert snapshot(finished) == before


@pytest.mark.parametrize("flags", [["--lr", "-1"], ["--dropout", "1.5"], ["--max-steps", "0"]])
def test_a_refused_run_creates_no_folder(tmp_path, data_file, capsys, flags):
    code, err = cli(capsys, "train", "--data", data_file, "--out", tmp_path / "new", *flags)
    assert code == 2 and "error" in err
    assert not (tmp_path / "new").exists()


def test_an_overwrite_that_fails_mid_run_keeps_the_old_run(
    finished, data_file, tmp_path, monkeypatch
):
    out = tmp_path / "done"
    shutil.copytree(finished, out)
    before = snapshot(out)
    import fanlora.train.engine as engine

    def broken(self, indices):
        raise RuntimeError("the machine broke")

    monkeypatch.setattr(engine.Trainer, "train_step", broken)
    with pytest.raises(RuntimeError, match="machine broke"):
        train(train_cfg(data_file, rank=3), str(out), overwrite=True, log=quiet)
    assert snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["done"]  # no staging folder left


def test_a_finished_overwrite_replaces_the_run(finished, data_file, tmp_path):
    out = tmp_path / "done"
    shutil.copytree(finished, out)
    record = train(train_cfg(data_file, rank=3), str(out), overwrite=True, log=quiet)
    saved = json.loads((out / "run.json").read_text())
    assert saved["config"]["rank"] == 3 == record["config"]["rank"]
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done"]


def test_a_failed_fresh_run_leaves_nothing(data_file, tmp_path, monkeypatch):
    import fanlora.train.engine as engine

    def broken(self, indices):
        raise RuntimeError("the machine broke")

    monkeypatch.setattr(engine.Trainer, "train_step", broken)
    with pytest.raises(RuntimeError):
        train(train_cfg(data_file), str(tmp_path / "new"), log=quiet)
    assert not (tmp_path / "new").exists()


# --- an artifact made for another model is refused -------------------------------------


def test_run_json_records_the_model_layout(two_layer_adapter):
    record = json.loads((two_layer_adapter / "run.json").read_text())
    assert record["model_layout"]["num_layers"] == 2


def test_scoring_an_adapter_of_another_model_is_refused(
    two_layer_adapter, data_file, tmp_path, capsys
):
    out = tmp_path / "scores.json"
    args = ["score", "--adapter", two_layer_adapter, "--data", data_file, "--split", "train"]
    args += ["--val-examples", "4", "--out", out]
    code, err = cli(capsys, *args)
    assert code == 2 and "made for another model" in err and "layers 2 vs 4" in err
    assert "two-layers" in err and "tiny-random-llama" in err  # both models named
    assert "--allow-other-model" in err and not list(tmp_path.iterdir())
    code = main([*map(str, args), "--allow-other-model"])
    captured = capsys.readouterr()
    assert code == 0 and "warning" in captured.out and out.is_file()


def test_evaluating_an_adapter_of_another_model_is_refused(
    two_layer_adapter, data_file, tmp_path, capsys
):
    args = ["eval", "--adapter", two_layer_adapter, "--task", data_file, "--split", "dev"]
    code, err = cli(capsys, *args, "--metric", "f1_em", "--out", tmp_path / "e")
    assert code == 2 and "layers 2 vs 4" in err and not (tmp_path / "e").exists()


def test_selecting_scores_of_another_model_for_this_one_is_refused(tmp_path, capsys):
    layout = {"model_class": "LlamaForCausalLM", "num_layers": 2, "kinds": {"q": "q"}}
    scores = [{"layer": 0, "module": "q", "score": 1.0}]
    doc = {"model": "elsewhere/model", "layout": layout, "scores": scores}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(doc))
    args = ["select", "--scores", path, "--model", "tiny-random-llama", "--out", tmp_path / "x"]
    code, err = cli(capsys, *args)
    assert code == 2 and "model 'elsewhere/model' vs 'tiny-random-llama'" in err
    assert "layers 2 vs 4" in err and not (tmp_path / "x").exists()


def test_a_preset_and_its_cache_folder_are_one_model(finished, tmp_path, capsys, data_file):
    """The provenance check knows a preset's folder is the preset: no false refusal."""
    folder = resolve_model("tiny-random-llama")
    args = ["eval", "--model", folder, "--adapter", finished, "--task", data_file]
    code, err = cli(capsys, *args, "--split", "dev", "--metric", "f1_em", "--out", tmp_path / "e")
    assert code == 0, err


# --- the pipeline checks everything up front -------------------------------------------


def tiny_data(**top) -> dict:
    data = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    data.update(top)
    return data


def test_run_refuses_a_missing_task_file_before_creating_anything(tasks_home, tmp_path):
    cfg = run_config_from(tiny_data(tasks=[str(tmp_path / "nope.jsonl")]), "test")
    with pytest.raises(FanLoRAError, match="task file not found"):
        run_pipeline(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_run_refuses_a_task_without_a_metric_up_front(tasks_home, data_file, tmp_path):
    cfg = run_config_from(tiny_data(tasks=[data_file]), "test")
    with pytest.raises(FanLoRAError, match=r"no metric of their own.*task_metrics"):
        run_pipeline(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    cfg = run_config_from(tiny_data(tasks=[data_file], task_metrics={data_file: "f1_em"}), "t")
    assert check_run(cfg) == {data_file: "f1_em"}


def test_evaluation_metric_never_overrides_a_tasks_own(tasks_home, data_file, tmp_path):
    data = tiny_data(tasks=["yesno", data_file], evaluation={"limit": 4, "metric": "number_acc"})
    cfg = run_config_from(data, "test")
    assert check_run(cfg) == {"yesno": "accuracy", data_file: "number_acc"}
    units = {u.name: u for u in build_units(cfg, RunDir(tmp_path / "run"))}
    assert "metric" not in units["5-eval/yesno/fanlora"].params
    assert units[f"5-eval/{task_folder(data_file)}/fanlora"].params["metric"] == "number_acc"


def test_run_refuses_unprepared_data_before_touching_the_model(tmp_path, monkeypatch):
    import fanlora.pipeline.checks as checks

    monkeypatch.setattr(checks, "load_config", lambda name: pytest.fail("model resolved"))
    cfg = run_config_from(tiny_data(), "test")
    with pytest.raises(FanLoRAError, match="not prepared"):
        run_pipeline(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_run_with_an_unreachable_model_creates_nothing(tasks_home, tmp_path):
    cfg = run_config_from(tiny_data(model="nobody/no-such-model"), "test")
    with pytest.raises(FanLoRAError, match="not in the local Hugging Face cache"):
        run_pipeline(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_an_empty_config_is_an_error(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(FanLoRAError, match="is empty"):
        load_run_config(path)


@pytest.mark.parametrize("task", ["../../../data/x.jsonl", "/tmp/a b/x.jsonl", "..", "a/../b"])
def test_task_names_become_folders_inside_the_run(task, tmp_path):
    root = tmp_path / "run"
    folder = (root / downstream_unit(task, "lora")).resolve()
    assert folder.is_relative_to(root.resolve()) and folder.parent.parent == root / "4-downstream"
    assert RunLayout(root).eval_task(task).parent == root / "5-eval"
    assert task_folder("yesno") == "yesno" and task_folder("x.jsonl") == "x.jsonl"
    assert task_folder("../a/x.jsonl") != task_folder("../b/x.jsonl")


# --- tracebacks become errors naming the file and line -------------------------------


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bare.json", json.dumps("just a string"), "expected a JSON list of rows"),
        ("count.json", json.dumps({"examples": 5}), "got int"),
        ("latin.jsonl", b'{"instruction": "caf\xe9", "output": "x"}\n', "line 1 is not UTF-8"),
        ("turns.jsonl", json.dumps({"messages": ["hi"]}), "list of {role, content}"),
    ],
)
def test_malformed_data_files_are_clear_errors(tmp_path, name, content, message):
    path = tmp_path / name
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    with pytest.raises(FanLoRAError, match=message.replace("{", r"\{").replace("}", r"\}")):
        load_split(str(path), "train")


def test_a_broken_jsonl_line_is_named_by_its_number(tmp_path):
    rows = [json.dumps({"instruction": f"q{i}", "output": "a"}) for i in range(20)]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join([*rows, '{"instruction": "q", "output": }', *rows]))
    with pytest.raises(FanLoRAError, match=r"d.jsonl line 21 is not valid JSON"):
        load_split(str(path), "train")


def test_report_on_a_train_folder_is_refused_and_writes_nothing(finished, tmp_path, capsys):
    out = tmp_path / "done"
    shutil.copytree(finished, out)
    code, err = cli(capsys, "report", out)
    assert code == 2 and "not a folder made by `fanlora run`" in err
    assert not (out / "report").exists()


def test_a_second_writer_of_one_output_is_refused(data_file, tmp_path, capsys):
    out = tmp_path / "busy"
    with output_lock(out):
        code, err = cli(capsys, "train", "--data", data_file, "--max-steps", "2", "--out", out)
    assert code == 2 and "being written by another fanlora process" in err
    assert not out.exists()
    code, err = cli(capsys, "train", "--data", data_file, "--max-steps", "2", "--out", out)
    assert code == 0, err  # the lock went with its holder
