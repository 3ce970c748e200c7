"""End-to-end runs of `fanlora modules` and `fanlora select` in a temporary folder."""

import json
import subprocess
import sys

import pytest

from fanlora.cli.main import main


def fanlora(*args):
    """Run the real console entry point in a subprocess; return (rc, stdout, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "fanlora.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_help_lists_commands():
    rc, out, _ = fanlora("--help")
    assert rc == 0 and "modules" in out and "select" in out


def test_modules_prints_every_layer_with_seven_kinds():
    rc, out, err = fanlora("modules", "--model", "tiny-random-llama")
    assert rc == 0, err
    header = next(line for line in out.splitlines() if line.startswith("layer "))
    assert header.split() == ["layer", "q", "k", "v", "o", "gate", "up", "down"]
    rows = [line.split() for line in out.splitlines() if line[:5].strip().isdigit()]
    assert [row[0] for row in rows] == ["0", "1", "2", "3"]
    assert all(len(row) == 8 for row in rows)


def test_modules_offline_unknown_id_fails_clearly(capsys):
    rc = main(["modules", "--model", "nobody/no-such-model"])
    assert rc == 2
    assert "not in the local Hugging Face cache" in capsys.readouterr().err


def write_scores(path, scores, model="tiny-random-llama"):
    path.write_text(json.dumps({"model": model, "scores": scores}))
    return path


def test_select_end_to_end(tmp_path):
    kinds = ["q", "k", "v", "o", "gate", "up", "down"]
    scores = [
        {"layer": n, "module": k, "score": (i - 3) * (1 if n % 2 else -1) + 0.01 * n}
        for n in range(4)
        for i, k in enumerate(kinds)
    ]
    path = write_scores(tmp_path / "scores.json", scores)
    rc, out, err = fanlora("select", "--scores", path, "--k-max", "2", "--out", tmp_path / "s.json")
    assert rc == 0, err
    setting = json.loads((tmp_path / "s.json").read_text())
    # odd layers: the scores grow with the kind's index, so up and down win;
    # even layers: the scores fall, so q and k win (and both are non-negative)
    assert [entry["modules"] for entry in setting["layers"]] == [
        ["q", "k"],
        ["up", "down"],
        ["q", "k"],
        ["up", "down"],
    ]
    assert len(setting["target_modules"]) == 8
    assert "kept 8 of 28" in out


@pytest.mark.parametrize(
    ("scores", "k_max", "message"),
    [
        ([{"layer": 0, "module": "zz", "score": 1}], "2", "unknown module kind"),
        ([{"layer": 9, "module": "q", "score": 1}], "2", "out of range"),
        ([{"layer": 0, "module": "q", "score": 1}] * 2, "2", "duplicate"),
        ([{"layer": 0, "module": "q"}], "2", "missing score"),
        ([], "2", "empty"),
        ([{"layer": 0, "module": "q", "score": 1}], "0", "--k-max must be >= 1"),
    ],
)
def test_select_bad_input_writes_nothing(tmp_path, capsys, scores, k_max, message):
    path = write_scores(tmp_path / "scores.json", scores)
    out = tmp_path / "setting.json"
    rc = main(["select", "--scores", str(path), "--k-max", k_max, "--out", str(out)])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left either


def test_select_nan_score_from_json_text(tmp_path, capsys):
    path = tmp_path / "scores.json"
    path.write_text(
        '{"model": "tiny-random-llama", "scores": [{"layer": 0, "module": "q", "score": NaN}]}'
    )
    assert main(["select", "--scores", str(path), "--out", str(tmp_path / "o.json")]) == 2
    assert "finite number" in capsys.readouterr().err


def test_select_for_vllm_keeps_one_wrapper_per_layer_and_prints_both_costs(tmp_path):
    scores = [
        {"layer": n, "module": k, "score": s}
        for n in range(4)
        for k, s in {"q": 0.5, "v": 1.0, "up": 0.9, "gate": 0.1, "down": -1.0}.items()
    ]
    path = write_scores(tmp_path / "scores.json", scores)
    out = tmp_path / "vllm.json"
    rc, stdout, err = fanlora("select", "--scores", path, "--engine", "vllm", "--out", out)
    assert rc == 0, err
    setting = json.loads(out.read_text())
    assert [e["modules"] for e in setting["layers"]] == [["q", "v"]] * 4
    assert setting["engine"] == "vllm" and setting["packed_budget"] == 1
    assert setting["cost"]["vllm"] == {"wrapped_modules": 4, "slices": 12}
    assert "vllm 4 wrapped modules (12 slices)" in stdout
    assert "peft 8 wrapped modules" in stdout


def test_a_packed_budget_without_an_engine_is_refused(tmp_path, capsys):
    path = write_scores(tmp_path / "scores.json", [{"layer": 0, "module": "q", "score": 1}])
    out = tmp_path / "setting.json"
    assert main(["select", "--scores", str(path), "--packed-budget", "1", "--out", str(out)]) == 2
    assert "needs an engine" in capsys.readouterr().err
    assert not out.exists()
