"""Extending fanlora by adding one file: a toy training method, defined here and registered,
trains, is offered by `fanlora train --help`, runs in a pipeline and shows in its report; a
toy scorer scores, journals and resumes through `fanlora score`. Nothing else in fanlora
knows their names."""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from peft import LoraConfig, TaskType

from fanlora.cli.main import main
from fanlora.pipeline.config import run_config_from
from fanlora.pipeline.run import run_pipeline
from fanlora.score.scorer import SCORERS, Scorer, module_key, parse_module_key, register_scorer
from fanlora.train import TrainConfig
from fanlora.train.methods import METHODS, Method, register
from fanlora.train.run import train

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


@dataclass(frozen=True)
class OnlyQueries(Method):
    """LoRA on the query projection of every layer, nothing else."""

    def peft_config(self, cfg, layout, total_steps, setting):
        targets = [layout.name(i, "q") for i in range(layout.num_layers)]
        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=cfg.rank,
            lora_alpha=self.alpha(cfg),
            target_modules=targets,
        )


@pytest.fixture(scope="module")
def data_file_words(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "words.jsonl"
    words = ["apple", "pear", "plum", "fig", "kiwi", "lime", "date", "sloe"] * 8
    rows = [
        {"instruction": f"Repeat the word {w}", "output": w, "split": "dev" if i % 8 else "train"}
        for i, w in enumerate(words)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


@pytest.fixture
def only_q():
    method = register(OnlyQueries("only-q", "LoRA on q only (a toy)"))
    yield method
    METHODS.pop(method.name)


def test_a_registered_method_trains(tmp_path, only_q, data_file_words):
    out = tmp_path / "q"
    cfg = TrainConfig(
        method="only-q",
        data=data_file_words,
        rank=2,
        lr=1e-2,
        max_steps=6,
        eval_every=3,
        batch_size=8,
        max_length=64,
    )
    record = train(cfg, out, log=lambda _: None)
    config = json.loads((out / "adapter_config.json").read_text())
    assert all(name.endswith("q_proj") for name in config["target_modules"])
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0] and record["trainable_params"] == 4 * 2 * (64 + 64)


def test_a_registered_method_is_offered_by_the_cli(only_q, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "only-q" in capsys.readouterr().out


def test_a_registered_method_runs_in_a_pipeline_and_the_report(tasks_home, tmp_path, only_q):
    data = yaml.safe_load(TINY.read_text())
    data.update(tasks=["yesno"], methods=["fanlora", "only-q"], decode=False, eval_base=False)
    data["evaluation"].update(limit=4)
    run_pipeline(run_config_from(data, "test"), tmp_path / "run")
    doc = json.loads((tmp_path / "run/5-eval/yesno/only-q/metrics.json").read_text())
    report = (tmp_path / "run/report/report.md").read_text()
    assert f"| only-q | 2,048 | 4 | {doc['value']:.1f}" in report


# --- a toy scorer -------------------------------------------------------------------


class LoRANorm(Scorer):
    """||B A||_F of every module: no evaluation at all, a unit per module."""

    def prepare(self, ctx, log):
        ctx.notes["toy"] = True

    def units(self, ctx):
        return [module_key(k) for k in ctx.gates.keys]

    def compute(self, ctx, key):
        module = ctx.gates.modules[parse_module_key(key)]
        a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
        return {"norm": float((b @ a).norm())}

    def records(self, ctx):
        return [
            {"layer": k[0], "module": k[1], "score": ctx.journal.get(module_key(k))["norm"]}
            for k in ctx.gates.keys
        ]


@pytest.fixture
def lora_norm():
    scorer = register_scorer(LoRANorm("lora-norm", "||BA|| per module (a toy)"))
    yield scorer
    SCORERS.pop(scorer.name)


def test_a_registered_scorer_scores_journals_and_resumes(tmp_path, lora_norm, monkeypatch, capsys):
    from test_score import make_adapter

    adapter = make_adapter(tmp_path / "a", zero=[(1, "v")])
    data = tmp_path / "d.jsonl"
    data.write_text(
        "\n".join(json.dumps({"instruction": f"Say {i}", "output": "ok"}) for i in range(8))
    )
    args = [
        "score",
        "--method",
        "lora-norm",
        "--adapter",
        adapter,
        "--data",
        str(data),
        "--split",
        "train",
        "--val-examples",
        "4",
        "--out",
        str(tmp_path / "s.json"),
    ]
    assert main(args) == 0
    doc = json.loads((tmp_path / "s.json").read_text())
    by = {(r["layer"], r["module"]): r["score"] for r in doc["scores"]}
    assert len(by) == 28 and by[(1, "v")] == 0.0 and by[(0, "q")] > 0
    assert doc["method"] == "lora-norm" and doc["toy"] is True
    calls = []
    monkeypatch.setattr(LoRANorm, "compute", lambda self, ctx, key: calls.append(key))
    assert main(args) == 0 and calls == []  # every unit came from the journal
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    assert "lora-norm" in capsys.readouterr().out
