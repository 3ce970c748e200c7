import json

import pytest

from bigbench_fixture import fixture_files, write_archive
from fanlora.cli.main import main
from fanlora.data import TASKS, load_split
from fanlora.data.example import Example, split_of
from fanlora.data.packages import Packages
from fanlora.data.registry import build_tasks, split_counts, stratified_sample
from fanlora.data.sources.bigbench_sdist import extract_folders, install_extracted, sha256_of
from fanlora.data.user_files import load_user_file
from fanlora.errors import FanLoRAError

BIGBENCH = [name for name, spec in TASKS.items() if spec.optional]


def build_bigbench(names=None):
    """Build the BIG-bench tasks (offline: the package tasks are not asked for)."""
    return build_tasks(Packages(download=False), names or BIGBENCH, log=lambda _: None)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh FANLORA_HOME for one test."""
    monkeypatch.setenv("FANLORA_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def prepared(home, tmp_path):
    archive = write_archive(tmp_path / "bigbench-1.0.0.tar.gz")
    install_extracted(archive, expected_sha256=sha256_of(archive), log=lambda _: None)
    build_bigbench()
    return home


def test_every_dataset_builds_with_all_splits(prepared):
    counts = split_counts()
    assert set(counts) == set(BIGBENCH)
    for name, rows in counts.items():
        assert sum(rows.values()) > 0, name
    assert sum(counts["bb-instruct"].values()) == 40
    assert sum(counts["bb-squad"].values()) == 30
    assert sum(counts["yesno"].values()) == 20 + 6  # strategyqa + the yes/no CoQA turns
    assert sum(counts["mc"].values()) == 25  # the row with two right answers is skipped


def test_examples_have_the_expected_shape(prepared):
    squad = load_split("bb-squad", "train") + load_split("bb-squad", "test")
    assert squad[0].references == ("Paris", "in Paris") and "Question:" in squad[0].prompt
    mc = [e for s in ("train", "dev", "test") for e in _maybe(load_split, "mc", s)]
    physics = [e for e in mc if e.uid.startswith("physics/")]
    assert all(e.choices == ("A", "B", "C", "D") for e in physics)  # 5 options cut to 4
    assert all("p=mv" in e.prompt and e.response == e.choices[e.label] for e in physics)
    yesno = [e for s in ("train", "dev", "test") for e in _maybe(load_split, "yesno", s)]
    coqa = [e for e in yesno if e.uid.startswith("coqa/")]
    assert {e.response for e in coqa} == {"Yes", "No"} and all("Story" in e.prompt for e in coqa)


def _maybe(fn, *args):
    try:
        return fn(*args)
    except FanLoRAError:
        return []


def test_squad_splits_never_share_an_article(prepared):
    articles = {
        s: {e.group for e in _maybe(load_split, "bb-squad", s)} for s in ("train", "dev", "test")
    }
    assert not articles["train"] & articles["test"]
    assert not articles["train"] & articles["dev"]


def test_split_is_deterministic_and_order_free():
    keys = [f"k{i}" for i in range(2000)]
    first = [split_of(k, (0.8, 0.1, 0.1)) for k in keys]
    assert first == [split_of(k, (0.8, 0.1, 0.1)) for k in reversed(keys)][::-1]
    assert 0.75 < first.count("train") / len(keys) < 0.85
    assert first != [split_of(k, (0.8, 0.1, 0.1), seed=1) for k in keys]


def test_data_list_prints_counts(prepared, capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("bb-instruct"))
    assert sum(map(int, row.split()[3:6])) == 40
    assert "not built" in out  # the package tasks, not prepared here


def test_missing_cache_says_what_to_run(home):
    with pytest.raises(FanLoRAError, match="fanlora data prepare"):
        load_split("squad", "train")


def test_a_bad_archive_argument_is_refused_before_anything_is_made(home, tmp_path, capsys):
    assert main(["data", "prepare", "--archive", str(tmp_path / "nope.tar.gz")]) == 2
    assert "--archive" in capsys.readouterr().err and not home.exists()
    wrong = write_archive(tmp_path / "bigbench-1.0.0.tar.gz")  # the fixture: another sha256
    assert main(["data", "prepare", "--archive", str(wrong)]) == 2
    assert "not bigbench-1.0.0.tar.gz" in capsys.readouterr().err
    assert not list((home / "data").iterdir())


def test_unknown_dataset_and_split(prepared):
    with pytest.raises(FanLoRAError, match="unknown dataset 'sqaud'"):
        load_split("sqaud", "train")
    with pytest.raises(FanLoRAError, match="unknown split"):
        load_split("squad", "validation")


def test_truncated_archive_is_refused_and_leaves_nothing(home, tmp_path):
    archive = write_archive(tmp_path / "bigbench-1.0.0.tar.gz")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(FanLoRAError, match="truncated or corrupt"):
        install_extracted(cut, expected_sha256=sha256_of(archive), log=lambda _: None)
    with pytest.raises(FanLoRAError, match="truncated or corrupt"):
        install_extracted(cut, expected_sha256=None, log=lambda _: None)
    leftovers = [p.name for p in (home / "data").iterdir()]
    assert leftovers == []  # no half-written folder
    # a second prepare with a good archive repairs it
    install_extracted(archive, expected_sha256=sha256_of(archive), log=lambda _: None)
    assert (home / "data" / "bigbench-1.0.0" / "COMPLETE").is_file()


def test_archive_without_the_folders_is_refused(tmp_path):
    files = fixture_files()
    files.pop("strategyqa/task.json")
    archive = write_archive(tmp_path / "a.tar.gz", files)
    with pytest.raises(FanLoRAError, match="strategyqa"):
        extract_folders(archive, tmp_path / "out", None)


def test_dataset_file_with_missing_fields_is_named(home, tmp_path):
    files = fixture_files()
    files["semantic_parsing_spider/task.json"]["examples"][3] = {"question": "no input"}
    archive = write_archive(tmp_path / "bigbench-1.0.0.tar.gz", files)
    install_extracted(archive, expected_sha256=None, log=lambda _: None)
    with pytest.raises(FanLoRAError, match=r"semantic_parsing_spider.*examples\[3\]"):
        build_bigbench(["bb-sql"])
    assert not (home / "data" / "tasks" / "bb-sql").exists()


def test_user_files_jsonl_csv_and_chat(tmp_path):
    rows = [
        {"instruction": f"Say {i}", "input": "x" if i % 2 else "", "output": str(i)}
        for i in range(200)
    ]
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    splits = {s: load_user_file(jsonl, s) for s in ("train", "dev", "test")}
    assert sum(map(len, splits.values())) == 200 and len(splits["train"]) > 150
    assert splits["train"][0].prompt.startswith("Say")
    csv = tmp_path / "mine.csv"
    csv.write_text("instruction,input,output,split\nAdd,1+1,2,test\nSub,2-1,1,train\n")
    assert [e.response for e in load_split(str(csv), "test")] == ["2"]
    chat = tmp_path / "chat.json"
    chat.write_text(
        json.dumps(
            [
                {
                    "messages": [
                        {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "hello"},
                    ],
                    "split": "dev",
                }
            ]
        )
    )
    with pytest.raises(FanLoRAError, match="empty"):
        load_split(str(chat), "train")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"instruction": "x"}, "row 1: missing output"),
        ({"messages": [{"role": "user", "content": "q"}]}, "assistant turn"),
        ({"instruction": "x", "output": "y", "split": "val"}, "split 'val'"),
        ({"instruction": "x", "references": []}, "'references' must be a non-empty list"),
        ({"instruction": "x", "choices": ["a"], "label": 0}, "at least two options"),
        ({"instruction": "x", "choices": ["a", "b"], "label": 2}, "'label' must be the index"),
        ({"instruction": "x", "choices": ["a", "b"], "label": "c"}, "'label' must be the index"),
        ({"output": "y"}, "row 1: missing instruction"),
    ],
)
def test_user_file_bad_rows(tmp_path, row, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(row))
    with pytest.raises(FanLoRAError, match=message):
        load_user_file(path, "train")


def test_example_round_trip():
    e = Example("u", "p", "r", choices=("a", "b"), label=1, references=("r",), group="g")
    assert Example.from_dict(json.loads(json.dumps(e.to_dict()))) == e


def test_user_files_carry_references_and_labelled_choices(tmp_path):
    """Several acceptable answers (scored by the best match) and options with a label
    (scored by accuracy), as registered tasks have."""
    from fanlora.data.registry import task_metric

    rows = [
        {
            "instruction": "Capital of France?",
            "references": ["Paris", "paris, France"],
            "split": "test",
        },
        {"instruction": "Capital?", "output": "Rome", "references": ["Roma"], "split": "test"},
        {"instruction": "2+2?", "choices": ["3", "4"], "label": 1, "split": "dev"},
        {"instruction": "Sky?", "choices": ["blue", "green"], "label": "blue", "split": "dev"},
    ]
    path = tmp_path / "rich.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    paris, rome = load_user_file(path, "test")
    assert paris.references == ("Paris", "paris, France") and paris.response == "Paris"
    assert rome.references == ("Rome", "Roma") and rome.response == "Rome"
    two, sky = load_user_file(path, "dev")
    assert (two.choices, two.label, two.response) == (("3", "4"), 1, "4")
    assert (sky.label, sky.response) == (0, "blue")
    assert task_metric(str(path), [two, sky]) == "accuracy"


def test_a_dataset_from_another_source_is_one_registration(tmp_path, tasks_home_dir, monkeypatch):
    """A task whose builder is not BIG-bench: registered, built and loaded by name."""
    import shutil

    from fanlora.data.registry import TASKS, TaskSpec, register_task

    home = tmp_path / "home"
    shutil.copytree(tasks_home_dir, home)
    monkeypatch.setenv("FANLORA_HOME", str(home))
    rows = [Example(f"toy/{i}", f"Echo {i}", str(i), group=str(i)) for i in range(60)]
    register_task(TaskSpec("toy", lambda _: rows, (0.5, 0.25, 0.25), "f1_em", "-", "in memory"))
    try:
        manifest, missing = build_tasks(Packages(download=False), log=lambda _: None)
        counts = split_counts()
        assert sum(counts["toy"].values()) == 60 and counts["squad"] and not missing
        assert manifest["tasks"]["toy"]["packages"] == []
        loaded = load_split("toy", "train") + load_split("toy", "dev") + load_split("toy", "test")
        assert sorted(e.uid for e in loaded) == sorted(e.uid for e in rows)
        with pytest.raises(FanLoRAError, match="already registered"):
            register_task(TASKS["toy"])
    finally:
        TASKS.pop("toy")


def test_a_stratified_draw_keeps_each_answers_share_and_is_fixed():
    rows = [
        Example(uid=str(i), prompt="q", response="a", choices=("no", "yes"), label=int(i % 10 < 3))
        for i in range(1000)
    ]
    drawn = stratified_sample(rows, 101, seed=3)
    assert len(drawn) == len({e.uid for e in drawn}) == 101
    assert sum(e.label for e in drawn) == 30  # 30.3 of 101: the larger remainder goes to "no"
    assert [e.uid for e in drawn] == [e.uid for e in stratified_sample(rows, 101, seed=3)]
    assert [e.uid for e in drawn] != [e.uid for e in stratified_sample(rows, 101, seed=4)]
    assert sorted(e.label for e in drawn[:20]) != [e.label for e in drawn[:20]]  # shuffled


def test_a_stratified_draw_of_rows_without_answers_is_the_plain_draw():
    import random

    rows = [Example(uid=str(i), prompt="q", response="a") for i in range(50)]
    assert stratified_sample(rows, 7, seed=5) == random.Random(5).sample(rows, 7)
