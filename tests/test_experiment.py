"""`fanlora experiment`: grids of pipeline runs, reuse of shared units, aggregation."""

import json
from pathlib import Path

import pytest
import yaml
from scipy.stats import spearmanr

from fanlora.cli.main import main
from fanlora.errors import FanLoRAError
from fanlora.experiment.grid import compare_axis, load_experiment, run_experiment
from fanlora.experiment.paired import axis_markdown, axis_summary, values_by_example

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def grid_file(tmp_path, grid, **run) -> Path:
    base = yaml.safe_load(TINY.read_text())
    base.update(
        **{"tasks": ["yesno"], "methods": ["fanlora", "lora"], "eval_base": False, "decode": False}
        | run
    )
    base["evaluation"]["limit"] = 4
    base["scoring"]["adaptive"] = False  # exact scores do not depend on K_max: shared
    # the BIG-bench fixture's instructions (the numbers below were set on them)
    base["full_lora"]["data"] = base["scoring"]["data"] = "bb-instruct"
    path = tmp_path / "grid.yaml"
    path.write_text(
        yaml.safe_dump(
            {"name": "t", "run": base, "out": str(tmp_path / "runs"), "grid": grid}, sort_keys=False
        )
    )
    return path


def test_a_typo_anywhere_in_the_grid_fails_before_anything_runs(tmp_path):
    path = grid_file(tmp_path, {"seed": [0], "methods": [["fanlora"], ["lorra"]]})
    with pytest.raises(FanLoRAError, match=r"grid point .*methods=lorra.*unknown downstream"):
        load_experiment(path)
    path = grid_file(tmp_path, {"downstream.rnk": [4]})
    assert main(["experiment", str(path)]) == 2
    assert not (tmp_path / "runs").exists()


def test_grid_runs_reuse_shared_units_and_aggregate_medians(tasks_home, tmp_path, capsys):
    path = grid_file(tmp_path, {"seed": [0, 1], "k_max": [1, 2]})
    logs = []
    results = run_experiment(path, log=logs.append)
    assert set(results["runs"].values()) == {"finished"}
    runs = tmp_path / "runs"
    # k_max=2 reuses steps 1-2 of k_max=1 with the same seed: same key, copied not rerun
    log = (runs / "seed=1,k_max=2" / "pipeline.log").read_text()
    assert "2-scores: same unit as" in log and "1-full-lora: same unit as" in log
    a = json.loads((runs / "seed=1,k_max=1/2-scores/stage.json").read_text())
    b = json.loads((runs / "seed=1,k_max=2/2-scores/stage.json").read_text())
    assert a == b
    summary = {(s["k_max"], s["method"]): s for s in results["summary"]}
    assert set(summary) == {(k, m) for k in (1, 2) for m in ("fanlora", "lora")}
    for s in summary.values():
        assert s["runs"] == 2 and s["min"] <= s["median"] <= s["max"]
    saved = json.loads((runs / "results.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(results["summary"]))
    assert (runs / "results.md").is_file() and (runs / "results.png").is_file()
    # seeds 0 and 1 score differently: their agreement is tabled and drawn
    assert results["score_agreement"]["files"] == ["seed=0,k_max=1", "seed=1,k_max=1"]
    assert (runs / "agreement.png").read_bytes()[:4] == b"\x89PNG"
    # one run's units made by one code version, the others' by another: flagged
    assert not results["mixed_code_versions"]
    record = runs / "seed=0,k_max=1" / "5-eval" / "yesno" / "lora" / "stage.json"
    doc = json.loads(record.read_text())
    record.write_text(json.dumps({**doc, "code": "0.0.1+other"}))
    again = run_experiment(path, log=logs.append, aggregate_only=True)
    assert "0.0.1+other" in again["code_versions"]["seed=0,k_max=1"]
    assert (
        again["mixed_code_versions"]
        and "different code versions" in (runs / "results.md").read_text()
    )


def test_scoring_methods_are_set_against_the_exact_ab_score_of_the_same_adapter(
    tasks_home, tmp_path
):
    """A grid over scorers: table 4's agreement takes the exact AB files only, and every
    other scorer is compared with the AB file of its own step-1 adapter (seed); a shorter
    step 1 (table 6's less data) with the same seed's longer one's."""
    methods = [[4, "ab", False], [4, "first-order", True], [2, "first-order", True]]
    key = "full_lora.max_steps+scoring.method+scoring.refine"
    grid = {"until": ["setting"], "seed": [0, 1], key: methods}
    results = run_experiment(grid_file(tmp_path, grid), log=lambda _: None)
    assert set(results["runs"].values()) == {"finished"}
    agreement = results["score_agreement"]["files"]
    assert len(agreement) == 2 and all("=4+ab+False" in name for name in agreement)
    shorter = {r["seed"]: r for r in results["shorter_step1"]}
    assert set(shorter) == {0, 1}
    for seed, row in shorter.items():
        assert row["run"] == f"seed={seed},{key}=2+first-order+True"
        assert (row["step1_steps"], row["reference_steps"]) == (2, 4)
        assert row["step1_s"] > 0 and row["reference_step1_s"] > 0
    rows = {(r["seed"], r["method"]): r for r in results["scorers"]}
    assert set(rows) == {(0, "first-order-refined"), (1, "first-order-refined")}
    runs = tmp_path / "runs"
    for (seed, method), row in rows.items():
        ab_run = runs / f"seed={seed},{key}=4+ab+False"
        ab = json.loads((ab_run / "2-scores/scores.json").read_text())
        n = len(ab["scores"])
        assert row["straightforward_s"] == pytest.approx(
            (2 * n + 2) * ab["compute"]["full_evaluation_s"], rel=1e-12
        )
        exact_s = ab["compute"]["unit_seconds"] + ab["compute"]["capture_seconds"]
        assert row["x_exact"] == pytest.approx(exact_s / row["unit_seconds"], rel=1e-12)
        assert -1 <= row["spearman"] <= 1 and 0 <= row["same_setting"] <= 1
        assert row["refined_modules"] > 0 and method == "first-order-refined"
        assert len(row["pairs"]) == n  # each module's (exact, first-order) scores: the figure
    text = (runs / "results.md").read_text()
    assert "## Scoring methods against the exact AB-score" in text
    assert (runs / "scorers.png").read_bytes()[:4] == b"\x89PNG"
    same_adapter, shorter_step1 = text.split("## A shorter step 1 against the exact AB-score")
    assert same_adapter.count("| first-order-refined |") == 3  # two seeds and their median
    assert shorter_step1.count("| first-order-refined | 2 | 4 |") == 2
    assert (runs / "shorter-step1.png").read_bytes()[:4] == b"\x89PNG"


def test_a_crashing_run_is_reported_and_the_grid_goes_on(tasks_home, tmp_path, monkeypatch):
    import fanlora.experiment.grid as grid_mod

    real = grid_mod.run_pipeline

    def flaky(cfg, out, start_from=None, reuse=()):
        if cfg.seed == 1:
            raise RuntimeError("simulated crash")
        return real(cfg, out, start_from, reuse)

    monkeypatch.setattr(grid_mod, "run_pipeline", flaky)
    path = grid_file(tmp_path, {"seed": [1, 0]})
    assert main(["experiment", str(path)]) == 1
    results = json.loads((tmp_path / "runs" / "results.json").read_text())
    assert results["runs"] == {"seed=1": "failed", "seed=0": "finished"}
    assert "simulated crash" in (tmp_path / "runs" / "seed=1" / "failure.txt").read_text()


@pytest.mark.parametrize(
    "path",
    sorted((TINY.parent / "experiments").rglob("*.yaml")),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_every_shipped_experiment_parses(path):
    _, _, points = load_experiment(path)
    assert points and len({p.name for p in points}) == len(points)


def test_keys_linked_with_the_seed_are_part_of_the_replicate():
    from fanlora.experiment.aggregate import summarize

    rows = [
        {
            "seed": s,
            "decode": s == 0,
            "k_max": k,
            "task": "yesno",
            "method": "fanlora",
            "metric": "accuracy",
            "value": 50.0 + s + 10 * k,
            "trainable_params": 1,
        }
        for s in (0, 1, 2)
        for k in (1, 2)
    ]
    summary = summarize(rows, ["seed+decode", "k_max"])
    assert sorted((s["k_max"], s["runs"], s["median"]) for s in summary) == [
        (1, 3, 61.0),
        (2, 3, 71.0),
    ]
    assert all("decode" not in s for s in summary)


def test_a_stage_seed_is_a_replicate_too():
    from fanlora.experiment.aggregate import summarize

    rows = [
        {"seed": 0, "downstream.seed": s, "k_max": 2, "task": "boolq", "method": "fanlora"}
        | {"metric": "accuracy", "value": 60.0 + s, "trainable_params": 1}
        for s in (0, 1, 2)
    ]
    (summary,) = summarize(rows, ["downstream.seed", "k_max"])
    assert (summary["runs"], summary["median"], summary["min"]) == (3, 61.0, 60.0)
    assert "downstream.seed" not in summary


def test_step_4_is_replicated_on_one_step_1_adapter_by_its_own_seed(tasks_home, tmp_path):
    path = grid_file(tmp_path, {"downstream.seed": [0, 1]}, methods=["fanlora", "random"])
    results = run_experiment(path, log=lambda _: None)
    assert set(results["runs"].values()) == {"finished"}
    runs = tmp_path / "runs"
    log = (runs / "downstream.seed=1" / "pipeline.log").read_text()
    assert "1-full-lora: same unit as" in log and "2-scores: same unit as" in log
    for method in ("fanlora", "random"):
        a, b = (
            json.loads(
                (runs / f"downstream.seed={s}/4-downstream/yesno/{method}/run.json").read_text()
            )
            for s in (0, 1)
        )
        assert (a["config"]["seed"], b["config"]["seed"]) == (0, 1), method
    summary = {s["method"]: s for s in results["summary"]}
    assert {s["runs"] for s in summary.values()} == {2}, summary


def test_results_markdown_shows_varying_columns_and_decoding():
    from fanlora.experiment.aggregate import render_markdown

    row = {
        "tasks": ["yesno"],
        "k_max": 1,
        "task": "yesno",
        "method": "fanlora",
        "metric": "accuracy",
        "median": 60.0,
        "min": 55.0,
        "max": 65.0,
        "runs": 3,
        "values": [55.0, 60.0, 65.0],
        "trainable_params": 1000,
    }
    decode = {
        "device": "cpu",
        "threads": 2,
        "config": {"prompt_tokens": 8, "new_tokens": 4, "runs": 3},
        "rows": [
            {
                "variant": v,
                "beams": 1,
                "tokens_per_s_median": s,
                "tokens_per_s_p10": s,
                "tokens_per_s_p90": s,
                "adapter_params": 0,
                "adapter_mb": 0.0,
                "peak_extra_mb_median": 0.0,
            }
            for v, s in (("base", 10.0), ("fanlora", 8.0))
        ],
    }
    md = render_markdown(
        {
            "experiment": "t",
            "mixed_code_versions": False,
            "runs": {"a": "finished"},
            "score_agreement": None,
            "summary": [row, {**row, "k_max": 2, "median": 70.0}],
            "decoding": {"seed=0": decode},
        }
    )
    assert "| k_max | task | method | params (median) |" in md and "tasks" not in md
    assert "| 2 | yesno | fanlora | 1,000 | accuracy | 70.0 | 55.0-65.0 | 3 |" in md
    assert "## Decoding speed, run seed=0" in md and "fanlora 80%" in md


def test_an_lr_sweep_on_dev_shows_losses_to_the_thousandth_and_each_methods_best_rate():
    """v2-lr-sweep's dev losses differ in the second decimal (FanLoRA: 0.3165 at 1e-3,
    0.3266 at 3e-3), which one decimal showed as 0.3 for every rate and method; a best rate
    at the edge of the sweep is flagged."""
    from fanlora.experiment.aggregate import best_on_dev, render_markdown

    losses = {("fanlora", 3e-4): 0.3487, ("fanlora", 1e-3): 0.3165063, ("fanlora", 3e-3): 0.3266}
    losses |= {("ia3", 3e-4): 0.8572, ("ia3", 1e-3): 0.3681, ("ia3", 3e-3): 0.3161}
    summary = [
        {"downstream.lr": lr, "task": "mc", "method": m, "metric": "dev_loss", "median": v}
        | {"min": v, "max": v, "runs": 1, "values": [v], "trainable_params": 10}
        for (m, lr), v in losses.items()
    ]
    best = {b["method"]: b for b in best_on_dev(summary)}
    assert (best["fanlora"]["lr"], best["fanlora"]["at_edge"]) == (1e-3, False)
    assert (best["ia3"]["lr"], best["ia3"]["at_edge"]) == (3e-3, True)
    base = {"experiment": "t", "mixed_code_versions": False, "runs": {}, "decoding": {}}
    md = render_markdown({**base, "score_agreement": None, "summary": summary})
    assert "| 0.001 | mc | fanlora | 10 | dev_loss | 0.317 | 0.317-0.317 | 1 |" in md
    assert "| mc | ia3 | 0.003 | 0.316 | 0.0003, 0.001, 0.003 | **yes** |" in md
    assert best_on_dev([{**summary[0], "metric": "accuracy"}]) == []  # test scores: no choice


def test_results_of_an_older_results_version_are_marked_stale():
    from fanlora.experiment.aggregate import render_markdown
    from fanlora.pipeline.stages import RESULTS_VERSION

    base = {
        "experiment": "t",
        "mixed_code_versions": False,
        "runs": {"a": "finished"},
        "score_agreement": None,
        "summary": [],
        "decoding": {},
    }
    old = render_markdown({**base, "results_versions": {"a": 1, "b": RESULTS_VERSION}})
    assert "**Stale: made by results version 1" in old
    assert "Stale" in render_markdown(base)  # results.json from before the field existed
    assert "Stale" not in render_markdown({**base, "results_versions": {"a": RESULTS_VERSION}})


def test_reuse_takes_run_folders_and_other_experiments_folders(tmp_path):
    from fanlora.experiment.grid import reuse_folders

    for run in ("other/seed=0", "other/seed=1", "single"):
        (tmp_path / run).mkdir(parents=True)
        (tmp_path / run / "run.json").write_text("{}")
    (tmp_path / "other" / "results.json").write_text("{}")
    path = tmp_path / "g.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "reuse": [
                    str(tmp_path / "other"),
                    str(tmp_path / "single"),
                    str(tmp_path / "missing"),
                ]
            }
        )
    )
    assert reuse_folders(path) == [
        tmp_path / "other/seed=0",
        tmp_path / "other/seed=1",
        tmp_path / "single",
        tmp_path / "missing",
    ]


def test_a_numeric_sweep_is_plotted_as_lines_and_the_rest_as_bars(tmp_path, monkeypatch):
    from fanlora.experiment import aggregate

    row = {
        "k_max": 1,
        "downstream.rank": 24,
        "tasks": ["yesno"],
        "task": "yesno",
        "method": "fanlora",
        "metric": "accuracy",
        "median": 60.0,
        "min": 55.0,
        "max": 65.0,
        "runs": 1,
        "values": [60.0],
        "trainable_params": 1,
    }
    sweep = [{**row, "k_max": k, "downstream.rank": 24 // k, "median": 50.0 + k} for k in (1, 2, 3)]
    assert aggregate.sweep_key(sweep) == "k_max"
    assert aggregate.varying_keys(sweep) == ["k_max", "downstream.rank"]
    assert aggregate.sweep_key(sweep[:2]) is None  # two points: bars
    variants = [{**row, "scoring.method": m} for m in ("ab", "sensitivity", "shapley")]
    assert aggregate.sweep_key(variants) is None  # not numeric
    drawn = []
    monkeypatch.setattr(aggregate, "plot_sweep", lambda ax, rows, *a: drawn.append(rows))
    assert aggregate.plot({"summary": sweep}, tmp_path / "a.png").is_file()
    assert [[s["k_max"] for s in rows] for rows in drawn] == [[1, 2, 3]]
    drawn.clear()
    assert aggregate.plot({"summary": variants}, tmp_path / "b.png").is_file() and not drawn


def test_sweep_ticks_stack_linked_values_named_in_the_axis_label():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fanlora.experiment.aggregate import plot_sweep

    rows = [
        {
            "k_max": k,
            "downstream.rank": 24 // k,
            "method": "fanlora",
            "median": 50.0 + k,
            "min": 50.0,
            "max": 60.0,
        }
        for k in (1, 2, 4)
    ]
    fig, ax = plt.subplots()
    plot_sweep(ax, rows, "k_max", ["k_max", "downstream.rank"])
    labels = [t.get_text() for t in ax.get_xticklabels()]
    plt.close(fig)
    assert labels == ["1\n24", "2\n12", "4\n6"]
    assert ax.get_xlabel() == "k_max / downstream.rank"


def write_predictions(folder, correct: list[float]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"uid": f"t/{i}", "values": {"accuracy": v}}) for i, v in enumerate(correct)
    ]
    (folder / "predictions.jsonl").write_text("\n".join(lines))


def write_pair(tmp_path, task, cases, keys=None):
    rows = []
    for point, (fan, other) in cases.items():
        write_predictions(tmp_path / point / f"5-eval/{task}/fanlora", fan)
        write_predictions(tmp_path / point / f"5-eval/{task}/lora", other)
        rows += [
            {"point": point, **(keys or {}), "task": task, "method": m}
            for m in ("fanlora", "lora", "ia3")
        ]
    return rows


def test_paired_gives_per_seed_mcnemar_tests_and_a_seed_aware_interval(tmp_path):
    from fanlora.experiment.paired import paired_markdown, paired_summary

    # seed 0: fanlora alone right on 5, lora alone on 1; seed 1: 4 and 0 (10 rows each)
    cases = {
        "s0": ([1] * 5 + [0] + [1] * 4, [0] * 5 + [1] + [1] * 4),
        "s1": ([1] * 4 + [0] * 6, [0] * 4 + [0] * 6),
    }
    rows = write_pair(tmp_path, "mc", cases, {"k_max": 2})  # ia3 has no predictions: skipped
    (found,) = paired_summary(rows, tmp_path, ["k_max"])
    assert found["diff"] == 40.0 and found["seeds"] == 2 and found["examples_per_seed"] == [10, 10]
    assert found["ci_low"] < 40 < found["ci_high"]
    s0, s1 = found["per_seed"]
    assert (s0["a_better"], s0["b_better"], s0["test"]) == (5, 1, "McNemar exact")
    assert s0["p"] == pytest.approx(2 * 7 / 64)  # 2 P(X <= 1), X ~ Bin(6, 1/2)
    assert s1["p"] == pytest.approx(2 / 16)
    table = "\n".join(paired_markdown([found], ["k_max"]))
    assert "| 2 | mc | lora | 2 | 10 | +40.0 |" in table and "0.219, 0.125 (McNemar" in table


def test_the_interval_counts_seed_variance_that_pooled_counts_ignored(tmp_path):
    """Three seeds whose differences are +40, +5 and -6 points on 100 rows each: pooled
    discordant counts (52 vs 13) give p < 0.001, yet a seed can go either way, so the
    seed-aware interval reaches below 0."""
    from scipy.stats import binomtest

    from fanlora.experiment.paired import paired_summary

    def seed(a_only, b_only):
        fan = [1] * a_only + [0] * b_only + [1] * 20 + [0] * (80 - a_only - b_only)
        other = [0] * a_only + [1] * b_only + [1] * 20 + [0] * (80 - a_only - b_only)
        return fan, other

    cases = {"s0": seed(40, 0), "s1": seed(9, 4), "s2": seed(3, 9)}
    (found,) = paired_summary(write_pair(tmp_path, "mc", cases), tmp_path, [])
    assert binomtest(52, 65, 0.5).pvalue < 0.001
    assert found["diff"] == pytest.approx((40 + 5 - 6) / 3, abs=0.01)
    assert found["ci_low"] < 0 < found["ci_high"]


def test_graded_metrics_get_the_exact_sign_test(tmp_path):
    from fanlora.experiment.paired import paired_summary

    cases = {"s0": ([0.5, 1.0, 0.75, 0.2], [0.25, 1.0, 0.5, 0.1])}
    (found,) = paired_summary(write_pair(tmp_path, "squad", cases), tmp_path, [])
    (test,) = found["per_seed"]
    assert test["test"] == "sign test" and (test["a_better"], test["b_better"]) == (3, 0)
    assert test["p"] == pytest.approx(0.25) and found["diff"] == pytest.approx(15.0)


COSTS = {
    "train_tokens_per_s": 1.0,
    "forward_tokens_per_s": 1.0,
    "modules": 28,
    "mean_tokens": {"default": 50},
    "score_s": {"ab_per_module_example": 1.0, "first_order_per_example": 1.0},
    "eval_row_s": {"default": 1.0},
    "decode_s": 1.0,
}


def test_the_plan_costs_the_random_placement_as_any_other_step_4_method(tasks_home, tmp_path):
    """A unit's key may hold more than a TrainConfig takes (the random placement's
    ``method_revision``); the plan reads its schedule alone, as for LoRA."""
    from fanlora.experiment.plan import plan

    path = grid_file(tmp_path, {"seed": [0]}, methods=["fanlora", "lora", "random"])
    _, out, points = load_experiment(path)
    todo = {p.unit.name: p.seconds for p in plan(points, out, [], COSTS)}
    assert todo["4-downstream/yesno/random"] == todo["4-downstream/yesno/lora"] == 2000


def test_the_plan_prices_a_unit_from_the_costs_measured_in_its_own_precision(tasks_home, tmp_path):
    """Evaluation in fp32 (the grid's ``evaluation.precision``) is priced from the file's
    ``fp32`` section (3 s a row x 4 rows), training at the top level's measured precision."""
    from fanlora.experiment.plan import plan

    path = grid_file(tmp_path, {"seed": [0], "evaluation.precision": ["fp32"]})
    _, out, points = load_experiment(path)
    costs = {**COSTS, "fp32": {"eval_row_s": {"default": 3.0}}}
    todo = {p.unit.name: p.seconds for p in plan(points, out, [], costs)}
    assert todo["5-eval/yesno/lora"] == 12 and todo["4-downstream/yesno/lora"] == 2000
    todo = {p.unit.name: p.seconds for p in plan(points, out, [], COSTS)}
    assert todo["5-eval/yesno/lora"] == 4  # no fp32 section: the measured precision's cost


@pytest.mark.parametrize("native", [True, False])
def test_the_plan_resolves_precision_auto_for_this_machine(
    tasks_home, tmp_path, monkeypatch, native
):
    """``precision: auto`` is bf16 on a CPU with AVX512-BF16 and fp32 elsewhere: without it
    training is priced from the file's fp32 section (2 tokens/s, its dev passes too: 1000 s,
    not 2000)."""
    from fanlora.experiment.plan import plan
    from fanlora.utils import devices

    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
    path = grid_file(tmp_path, {"seed": [0], "precision": ["auto"]})
    _, out, points = load_experiment(path)
    costs = {
        **COSTS,
        "precision": "bf16",
        "fp32": {"train_tokens_per_s": 2.0, "forward_tokens_per_s": 2.0},
    }
    todo = {p.unit.name: p.seconds for p in plan(points, out, [], costs)}
    assert todo["4-downstream/yesno/lora"] == (2000 if native else 1000)


def test_the_plan_says_when_its_costs_come_from_another_kind_of_cpu():
    from fanlora.experiment.plan import machine_note

    zen = {"cpu": "AMD EPYC 9B14", "native_bf16": True}
    xeon = {"cpu": "Intel(R) Xeon(R) Processor @ 2.80GHz", "native_bf16": False}
    assert machine_note({**COSTS, "machine": zen}, here=zen) is None
    assert machine_note(COSTS, here=xeon) is None  # a file that does not say
    note = machine_note({**COSTS, "machine": zen}, here=xeon)
    assert "AMD EPYC 9B14 (native bf16)" in note and "(no native bf16)" in note
    assert "bench/unit_costs.py" in note


def test_the_plan_prices_a_stopped_training_unit_from_its_checkpoint(tasks_home, tmp_path):
    """Step 1 stopped after step 2 of 4 resumes there: 2 steps x 4 examples x 50 tokens at
    1 token/s + 2 dev evaluations x 8 x 50 = 1200 s, not 2000 (a step-4 unit is untouched)."""
    from fanlora.experiment.plan import plan

    path = grid_file(tmp_path, {"seed": [0]})
    _, out, points = load_experiment(path)
    checkpoints = out / "default" / "1-full-lora" / "checkpoints"
    (checkpoints / "step-2").mkdir(parents=True)
    (checkpoints / "step-2" / "state.json").write_text(json.dumps({"step": 2}))
    (checkpoints / "latest").write_text("step-2\n")
    todo = {p.unit.name: p.seconds for p in plan(points, out, [], COSTS)}
    assert todo["1-full-lora"] == 1200 and todo["4-downstream/yesno/lora"] == 2000
    (checkpoints / "latest").write_text("step-3\n")  # names no complete checkpoint
    assert {p.unit.name: p.seconds for p in plan(points, out, [], COSTS)}["1-full-lora"] == 2000


def test_only_runs_the_selected_points_and_refuses_a_selection_it_cannot_match(
    tasks_home, tmp_path, capsys
):
    """``--only seed=1`` runs that point (a linked key's part named alone) and nothing else;
    a key the grid lacks or a value no point has is refused before anything is created."""
    path = grid_file(tmp_path, {"seed+decode": [[0, False], [1, False]], "until": ["full-lora"]})
    runs = tmp_path / "runs"
    for only, message in (
        ("lr=3", "one of the grid's keys (decode, seed, until)"),
        ("seed=5", "no grid point has these values"),
        ("seed", "KEY=VALUE"),
    ):
        assert main(["experiment", str(path), "--only", only, "--yes"]) == 2
        assert message in capsys.readouterr().err and not runs.exists()
    assert main(["experiment", str(path), "--only", "seed=1", "--plan"]) == 0
    assert "full-lora      1 unit(s)" in capsys.readouterr().out
    results = run_experiment(path, log=lambda _: None, only=["seed=1"])
    assert results["runs"] == {
        "seed+decode=0+False": "not finished",
        "seed+decode=1+False": "finished",
    }
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == ["seed+decode=1+False"]


def test_the_plan_costs_refined_first_order_with_the_exact_units_it_recomputes():
    """Refined first order = first order (8 examples x 1 s) + 0.28 of the 28 modules
    recomputed exactly (x 8 examples x 1 s per module-example)."""
    from fanlora.experiment.plan import score_seconds

    first = {"method": "first-order", "val_examples": 8}
    assert score_seconds(first, COSTS) == 8
    assert score_seconds({**first, "refine": True}, COSTS) == pytest.approx(8 + 0.28 * 28 * 8)


def test_the_plan_refuses_a_grid_over_budget_and_a_pruned_grid_stays_done(
    tasks_home, tmp_path, capsys
):
    """One seed of the tiny grid (fanlora and lora on yesno): step 1 = 4 steps x 4 examples
    x 50 tokens at 1 token/s + 3 dev evaluations x 8 examples x 50 tokens = 2000 s, each
    step 4 the same, scoring 28 modules x 8 examples x 1 s = 224 s, each evaluation 4 rows x
    1 s: 6232 s in all."""
    from fanlora.experiment.plan import plan, total_hours

    costs = tmp_path / "costs.yaml"
    costs.write_text(yaml.safe_dump(COSTS))
    path = grid_file(tmp_path, {"seed": [0]})
    path.write_text(path.read_text() + "prune: [downstream]\n")
    _, out, points = load_experiment(path)
    todo = plan(points, out, [], COSTS)
    assert {p.unit.name: p.seconds for p in todo} == {
        "1-full-lora": 2000,
        "2-scores": 224,
        "3-setting": 0,
        "4-downstream/yesno/fanlora": 2000,
        "4-downstream/yesno/lora": 2000,
        "5-eval/yesno/fanlora": 4,
        "5-eval/yesno/lora": 4,
    }
    assert total_hours(todo) == pytest.approx(6232 / 3600)
    args = ["experiment", str(path), "--costs", str(costs)]
    assert main([*args, "--budget-hours", "1"]) == 2
    assert "estimated at 1.7 h, above the budget of 1 h" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    assert main([*args, "--plan"]) == 0
    assert "downstream     2 unit(s)" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists()
    assert main([*args, "--budget-hours", "1", "--yes"]) == 0  # runs it regardless
    assert plan(points, out, [], COSTS) == []  # nothing left: every unit is done
    # prune: [downstream]: step-4 weights and every checkpoint gone, the units still done
    run = out / "default"
    assert not list(run.glob("4-downstream/*/*/adapter_model.safetensors"))
    assert not list(run.glob("**/checkpoints")) and not list(run.glob("**/best"))
    assert (run / "1-full-lora" / "adapter_model.safetensors").is_file()  # step 1 stays
    seen = len((run / "pipeline.log").read_text())
    run_experiment(path, log=lambda _: None)
    again = (run / "pipeline.log").read_text()[seen:]
    assert "skipped" in again and ": starts" not in again and ": resumes" not in again
    # a unit that must run and reads pruned weights: the plan counts their retraining
    (run / "5-eval" / "yesno" / "lora" / "stage.json").unlink()
    todo = {p.unit.name for p in plan(points, out, [], COSTS)}
    assert todo == {"4-downstream/yesno/lora", "5-eval/yesno/lora"}


def test_compare_pairs_each_value_of_a_grid_key_with_the_first_by_seed_and_row(
    tasks_home, tmp_path
):
    """`compare: engine`: FanLoRA on the paper's setting against FanLoRA on the vLLM-aware
    setting, the difference recomputed from the two runs' predictions."""
    path = grid_file(tmp_path, {"seed": [0], "engine": [None, "vllm"]}, methods=["fanlora"])
    doc = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**doc, "compare": "engine"}, sort_keys=False))
    results = run_experiment(path, log=lambda _: None)
    (along,) = results["axis_paired"]
    assert (along["a"], along["b"], along["method"], along["seeds"]) == (None, "vllm", "fanlora", 1)
    runs = tmp_path / "runs"
    a = values_by_example(runs / "engine=None/5-eval/yesno/fanlora/predictions.jsonl")
    b = values_by_example(runs / "engine=vllm/5-eval/yesno/fanlora/predictions.jsonl")
    expected = 100 * sum(a[u] - b[u] for u in a) / len(a)
    assert along["diff"] == pytest.approx(expected, abs=0.01)
    assert "## engine = None against each other engine" in (runs / "results.md").read_text()
    bad = grid_file(tmp_path, {"seed": [0]})
    bad.write_text(bad.read_text() + "compare: seed\n")
    with pytest.raises(FanLoRAError, match="'compare' must name a grid key with 2 or more"):
        load_experiment(bad)


def test_compare_a_linked_key_against_a_chosen_reference_value(tmp_path):
    """Figure 3's axis: `compare: k_max+downstream.rank` with `compare_reference: [2, 12]`
    pairs K_max 2 against K_max 1 by seed and test row, whatever the order in the grid."""
    grid = {"seed": [0, 1], "k_max+downstream.rank": [[1, 24], [2, 12]]}
    doc = {"name": "t", "run": {}, "out": str(tmp_path / "runs"), "grid": grid}
    doc |= {"compare": "k_max+downstream.rank", "compare_reference": [2, 12]}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    axis = compare_axis(path)
    assert axis == ("k_max+downstream.rank", [[2, 12], [1, 24]])
    # seed s, K_max k: right on rows 0..3 except the rows listed
    wrong = {(0, 2): [3], (0, 1): [2, 3], (1, 2): [], (1, 1): [0]}
    rows = []
    for (seed, k_max), misses in wrong.items():
        point = f"seed={seed},k_max={k_max}"
        folder = tmp_path / "runs" / point / "5-eval" / "mc" / "fanlora"
        folder.mkdir(parents=True)
        lines = [{"uid": str(i), "values": {"accuracy": float(i not in misses)}} for i in range(4)]
        (folder / "predictions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        rank = 12 if k_max == 2 else 24
        row = {"point": point, "seed": seed, "k_max": k_max, "downstream.rank": rank}
        rows.append(row | {"task": "mc", "method": "fanlora"})
    keys = ["k_max", "downstream.rank"]
    (along,) = axis_summary(rows, tmp_path / "runs", keys, ["seed"], *axis)
    assert (along["a"], along["b"], along["seeds"]) == ([2, 12], [1, 24], 2)
    assert along["diff"] == pytest.approx((25 + 25) / 2)  # seed 0: 1 row of 4; seed 1: 1 of 4
    assert "k_max" not in along and "downstream.rank" not in along
    text = "\n".join(axis_markdown([along, {**along, "seeds": 1}], []))
    assert "## k_max+downstream.rank = [2, 12] against each other" in text
    assert text.count("(one seed: rows only)") == 1
    for extra, message in [
        ({"compare_reference": [3, 8]}, r"'compare_reference' \[3, 8\] is not one of"),
        ({"compare": "seed+k_max"}, "'compare' must name a grid key with 2 or more values"),
        ({"compare": None}, "'compare_reference' needs a 'compare' key"),
    ]:
        bad = {**doc, **extra, "grid": {**grid, "seed+k_max": [[0, 1], [1, 2]]}}
        path.write_text(yaml.safe_dump({k: v for k, v in bad.items() if v is not None}))
        with pytest.raises(FanLoRAError, match=message):
            load_experiment(path)


def doc(method, scores, **compute):
    """A hand-made scores.json: 2 layers of q, k, v, ``scores`` in that order."""
    from fanlora.modules.discovery import ModuleLayout

    layout = ModuleLayout("M", "llama", "model.layers", 2, {"q": "q", "k": "k", "v": "v"})
    keys = [(layer, kind) for layer in range(2) for kind in "qkv"]
    records = [
        {"layer": l_, "module": k, "score": s} for (l_, k), s in zip(keys, scores, strict=True)
    ]
    return {
        "method": method,
        "seed": 0,
        "layout": layout.to_dict(),
        "scores": records,
        "compute": compute,
    }


def test_a_scorer_is_costed_against_2n_plus_2_evaluations_and_exact_fast(tmp_path):
    """compare_scorer's arithmetic on hand-made files: 6 modules, one evaluation of D_val
    took 2 s, so straightforward is (2 x 6 + 2) x 2 = 28 s; exact fast took 10 s in units."""
    from fanlora.experiment.scorers import compare_scorer, plot_scorers, scorer_summary

    exact = doc("ab", [3.0, 2.0, -1.0, 1.0, 2.0, 3.0], unit_seconds=10.0, full_evaluation_s=2.0)
    # same order everywhere but layer 1, where the second and third swap: same top 2 there
    first = doc("first-order", [3.1, 1.9, -0.9, 1.0, 3.5, 2.5], unit_seconds=0.5)
    row = compare_scorer(exact, first, k_max=2)
    assert row["straightforward_s"] == 28.0 and row["x_straightforward"] == 56.0
    assert row["x_exact"] == 20.0 and row["same_setting"] == 1.0
    assert row["within_layer_spearman"] == pytest.approx(0.75)  # layer 0: 1, layer 1: 0.5
    flipped = doc("first-order", [-3.0, 2.0, 1.0, 1.0, 2.0, 3.0])  # layer 0 keeps k, v now
    row2 = compare_scorer(exact, flipped, k_max=2)
    assert row2["same_setting"] == 0.5 and row2["x_exact"] is None  # no timing: no ratio
    summary = scorer_summary([row, row2])
    assert summary[0]["same_setting"] == {"median": 0.75, "min": 0.5, "max": 1.0}
    assert summary[0]["x_exact"] == {"median": 20.0, "min": 20.0, "max": 20.0}
    assert len(row["pairs"]) == 6 and [2.0, 3.5] in row["pairs"]  # layer 1's k: (exact, V1)
    # a scorer that built the fast evaluator also pays its two capture passes
    refined = doc(
        "first-order-refined",
        [3.1, 1.9, -0.9, 1.0, 3.5, 2.5],
        unit_seconds=0.5,
        capture_seconds=1.5,
    )
    row3 = compare_scorer(exact, refined, k_max=2)
    assert row3["unit_seconds"] == 2.0 and row3["x_straightforward"] == 14.0
    assert row3["x_exact"] == 5.0
    assert plot_scorers([row, row2], tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_a_shorter_step1_is_set_against_the_longest_same_recipe_exact_ab(tmp_path):
    """Table 6's step 1 on less data: a file whose adapter has no exact AB file of its own
    is compared with the exact AB file of the longest step 1 of the same recipe (all
    parameters but max_steps); another seed's or data's AB file is never its reference."""
    from fanlora.experiment.aggregate import render_markdown
    from fanlora.experiment.scorers import plot_scorers, shorter_step1_rows

    def entry(run, key, steps, scores_doc, seed=0, data="instruct", seconds=None):
        params = {"seed": seed, "data": data, "rank": 12, "max_steps": steps}
        return {
            "run": run,
            "scores_key": run,
            "adapter_key": key,
            "adapter_params": params,
            "adapter_seconds": seconds,
            "doc": scores_doc,
        }

    mine = {"full": [3.0, 2.0, -1.0, 1.0, 2.0, 3.0], "mid": [3.0, -2.0, 2.0, 1.0, 2.0, 3.0]}
    full = doc("ab", mine["full"], unit_seconds=10.0)
    mid = doc("ab", mine["mid"], unit_seconds=9.0)  # layer 0 keeps q, v
    tenth_scores = [2.0, 3.0, -1.0, 1.0, 3.0, 2.0]  # keeps q, k and k, v as full does
    tenth = doc("first-order-refined", tenth_scores, unit_seconds=2.0)
    scores = [
        entry("full", "a400", 400, full, seconds=100.0),
        entry("mid", "a200", 200, mid),
        entry("refined-on-full", "a400", 400, tenth),  # has its own AB file: not a row here
        entry("tenth", "a40", 40, tenth, seconds=10.0),
        entry("tenth-again", "a40", 40, tenth, seconds=10.0) | {"scores_key": "tenth"},
        entry("other-seed", "b40", 40, tenth, seed=1),  # no AB file of seed 1: no row
        entry("other-data", "c40", 40, tenth, data="squad"),
        entry("longer", "a800", 800, tenth),  # longer than the reference: no row
    ]
    rows = shorter_step1_rows(scores, k_max=2)
    assert [r["run"] for r in rows] == ["tenth"]
    row = rows[0]
    assert row["reference_steps"] == 400 and row["step1_steps"] == 40
    assert row["step1_s"] == 10.0 and row["reference_step1_s"] == 100.0
    assert row["same_setting"] == 1.0  # layer 0 keeps q, k as in full (not mid's q, v)
    against = {name: spearmanr(scores, tenth_scores).statistic for name, scores in mine.items()}
    assert row["spearman"] == pytest.approx(against["full"], abs=1e-4) != against["mid"]
    assert row["unit_seconds"] == 2.0 and row["exact_seconds"] == 10.0
    text = render_markdown(
        {
            "experiment": "x",
            "runs": {"tenth": "finished"},
            "mixed_code_versions": False,
            "summary": [],
            "shorter_step1": rows,
            "k_max": 2,
        }
    )
    assert "## A shorter step 1 against the exact AB-score of the full one" in text
    assert "| tenth | first-order-refined | 40 | 400 |" in text
    assert plot_scorers(rows, tmp_path / "s.png", "full").read_bytes()[:4] == b"\x89PNG"


def test_a_method_that_prunes_its_ranks_is_counted_by_what_it_keeps(tmp_path):
    """AdaLoRA trains its initial ranks but keeps its target budget: the results count the
    kept LoRA-equivalent parameters (run.json ``kept_params``), every other method its
    trainable ones."""
    from fanlora.experiment.aggregate import point_rows
    from fanlora.run_layout import RunLayout

    path = grid_file(tmp_path, {"seed": [0]}, methods=["fanlora", "adalora"])
    _, out, (point,) = load_experiment(path)
    layout = RunLayout(out / point.name)
    for method, extra in (("fanlora", {}), ("adalora", {"kept_params": 300})):
        for path, doc in (
            (layout.trained_run("yesno", method), {"trainable_params": 400} | extra),
            (layout.metrics("yesno", method), {"metric": "accuracy", "value": 50.0, "examples": 4}),
        ):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(doc))
    rows = point_rows(point, out / point.name)
    assert {r["method"]: r["trainable_params"] for r in rows} == {"fanlora": 400, "adalora": 300}
