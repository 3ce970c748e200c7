"""Data in Hugging Face ``datasets`` formats: save_to_disk folders, Parquet and Arrow files,
a .yaml spec with a column mapping, and Hub ids offline (all built here, no download)."""

import json

import pytest
from datasets import Dataset, DatasetDict

from fanlora.cli.main import main
from fanlora.data import load_split
from fanlora.data.hf_data import is_hf_data
from fanlora.errors import FanLoRAError

ROWS = [{"question": f"What is {i}+1?", "answer": str(i + 1)} for i in range(60)]
ALPACA = [{"instruction": f"Echo {i}", "input": "", "output": str(i)} for i in range(60)]


def splits_of(name):
    return {s: load_split(name, s) for s in ("train", "dev", "test")}


def test_a_save_to_disk_dataset_dict_keeps_its_splits(tmp_path):
    folder = tmp_path / "dd"
    data = {"train": ALPACA[:40], "validation": ALPACA[40:50], "test": ALPACA[50:]}
    DatasetDict({k: Dataset.from_list(v) for k, v in data.items()}).save_to_disk(folder)
    assert is_hf_data(str(folder))
    got = splits_of(str(folder))
    assert [len(got[s]) for s in ("train", "dev", "test")] == [40, 10, 10]
    assert got["dev"][0].prompt == "Echo 40" and got["dev"][0].response == "40"


def test_parquet_and_arrow_files_and_common_layouts(tmp_path):
    chat = [
        {"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}
        for i in range(40)
    ]
    parquet = tmp_path / "chat.parquet"
    Dataset.from_list(chat).to_parquet(parquet)
    rows = [e for s in splits_of(str(parquet)).values() for e in s]
    assert len(rows) == 40 and rows[0].messages[-1] == {"role": "assistant", "content": "a0"}
    folder = tmp_path / "pc"
    prompts = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(40)]
    Dataset.from_list(prompts).save_to_disk(folder)
    arrow = next(folder.glob("*.arrow"))
    rows = [e for s in splits_of(str(arrow)).values() for e in s]
    assert sorted(e.response for e in rows) == sorted(r["completion"] for r in prompts)


def test_a_yaml_spec_maps_columns(tmp_path):
    folder = tmp_path / "qa"
    Dataset.from_list(ROWS).save_to_disk(folder)
    spec = tmp_path / "qa.yaml"
    spec.write_text(f"path: {folder}\ncolumns: {{instruction: question, output: answer}}\n")
    rows = [e for s in splits_of(str(spec)).values() for e in s]
    assert len(rows) == 60 and {(e.prompt, e.response) for e in rows} >= {("What is 0+1?", "1")}


def test_a_mapping_naming_a_missing_column_lists_the_columns(tmp_path):
    folder = tmp_path / "qa"
    Dataset.from_list(ROWS).save_to_disk(folder)
    spec = tmp_path / "qa.yaml"
    spec.write_text(f"path: {folder}\ncolumns: {{instruction: query, output: answer}}\n")
    with pytest.raises(FanLoRAError, match=r"names \['query'\].*columns are question, answer"):
        load_split(str(spec), "train")


def test_an_unknown_layout_names_the_columns_to_map(tmp_path):
    folder = tmp_path / "qa"
    Dataset.from_list(ROWS).save_to_disk(folder)
    with pytest.raises(FanLoRAError, match=r"missing instruction.*columns are question, answer"):
        load_split(str(folder), "train")


def test_a_hub_id_offline_and_not_cached_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert is_hf_data("nobody/no-such-dataset")
    with pytest.raises(FanLoRAError, match="not in the local Hugging Face cache"):
        load_split("nobody/no-such-dataset", "train")
    out = tmp_path / "run"
    code = main(
        ["train", "--data", "nobody/no-such-dataset", "--max-steps", "1", "--out", str(out)]
    )
    assert code == 2 and "downloads are off" in capsys.readouterr().err
    assert not out.exists()


def test_train_reads_a_parquet_file(tmp_path, capsys):
    path = tmp_path / "echo.parquet"
    rows = [{**r, "split": "dev" if i % 6 == 0 else "train"} for i, r in enumerate(ALPACA)]
    Dataset.from_list(rows).to_parquet(path)
    out = tmp_path / "run"
    args = ["--data", str(path), "--max-steps", "4", "--batch-size", "16", "--eval-every", "2"]
    assert main(["train", *args, "--out", str(out)]) == 0, capsys.readouterr().err
    assert json.loads((out / "run.json").read_text())["train_examples"] == 50  # 10 are dev


@pytest.mark.parametrize(
    "content, message",
    [
        ("[1, 2]", "a data spec is a mapping"),
        ("path: x\ncolumns: {answer: a}\n", "map fanlora's fields"),
    ],
)
def test_bad_specs_are_clear_errors(tmp_path, content, message):
    spec = tmp_path / "s.yaml"
    spec.write_text(content)
    with pytest.raises(FanLoRAError, match=message):
        load_split(str(spec), "train")


def test_score_and_eval_read_datasets_formats(tmp_path, capsys):
    """Step 2's validation data from a save_to_disk folder; evaluation of a choice task
    from a Parquet file (scored by accuracy, since its rows have options)."""
    train_file = tmp_path / "echo.parquet"
    Dataset.from_list(ALPACA).to_parquet(train_file)
    adapter = tmp_path / "adapter"
    args = ["--data", str(train_file), "--max-steps", "2", "--eval-every", "2"]
    assert main(["train", *args, "--out", str(adapter)]) == 0
    folder = tmp_path / "val"
    DatasetDict({"validation": Dataset.from_list(ALPACA[:20])}).save_to_disk(folder)
    scores = tmp_path / "scores.json"
    args = ["--adapter", str(adapter), "--data", str(folder), "--split", "train"]
    assert main(["score", *args, "--val-examples", "4", "--out", str(scores)]) == 0
    assert len(json.loads(scores.read_text())["scores"]) == 28
    options = [
        {"instruction": f"Pick {i}", "choices": [str(i), "x"], "label": 0, "split": "test"}
        for i in range(6)
    ]
    choice_file = tmp_path / "pick.parquet"
    Dataset.from_list(options).to_parquet(choice_file)
    out = tmp_path / "eval"
    assert (
        main(["eval", "--adapter", str(adapter), "--task", str(choice_file), "--out", str(out)])
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metric"] == "accuracy" and metrics["examples"] == 6
    capsys.readouterr()
