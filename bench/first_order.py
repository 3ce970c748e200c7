"""First-order AB-scores against exact ones: cost, rank agreement, and the setting.

Takes a pipeline run folder whose step 2 scored exactly (fast mode), scores the same
step-1 adapter on the same validation examples with ``--method first-order`` (one forward
and backward pass per batch at g = 1 and at g = 0), and compares:

- cost: first-order wall time against the straightforward 2N + 2 evaluations (timed here
  as the median of full evaluations of the validation set, times 2N + 2) and against the
  run's own exact fast scoring (its recorded wall time);
- Spearman's rho over every module, and the layers whose K_max setting is the same.

Goals (issue 19): at least 20x cheaper than straightforward, the exact setting in at least
90% of layers.

    python bench/first_order.py --run runs/demo-check --out bench/results/first_order.json
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

from scipy.stats import spearmanr

from fanlora.modules.discovery import ModuleLayout
from fanlora.run_layout import RunLayout
from fanlora.score.evaluator import full_eval
from fanlora.score.run import ScoreConfig, build_and_gate, score
from fanlora.select import parse_scores, select_setting
from fanlora.utils.io import atomic_write_json, read_json
from fanlora.utils.versions import versions


def straightforward_seconds(cfg: ScoreConfig, repeats: int) -> tuple[float, int]:
    """(median seconds of one full evaluation of the validation set, gated modules N)."""
    model, gates, valset = build_and_gate(cfg)
    gates.all_open()
    full_eval(model, valset)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        full_eval(model, valset)
        times.append(time.perf_counter() - started)
    return statistics.median(times), len(gates.keys)


def same_layers(a, b) -> list[bool]:
    return [set(x) == set(y) for x, y in zip(a.layers, b.layers, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="a pipeline run folder (exact step 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed full evaluations")
    parser.add_argument("--out", default="bench/results/first_order.json")
    args = parser.parse_args()
    layout_of = RunLayout(Path(args.run))
    exact_doc = read_json(layout_of.scores, "scores file")
    fields = {f.name for f in dataclasses.fields(ScoreConfig)}
    known = {k: v for k, v in exact_doc["config"].items() if k in fields}
    base = ScoreConfig(**{**known, "adapter": str(layout_of.full_lora)})
    first_cfg = dataclasses.replace(base, method="first-order", adaptive=False)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        first_doc = score(first_cfg, Path(tmp) / "first.json")
        first_s = time.perf_counter() - started
    one_eval, modules = straightforward_seconds(base, args.repeats)
    layout = ModuleLayout.from_dict(exact_doc["layout"])
    exact, first = parse_scores(exact_doc, layout), parse_scores(first_doc, layout)
    rho = spearmanr([r.score for r in exact], [r.score for r in first])[0]
    k_max = base.k_max
    agree = same_layers(select_setting(exact, layout, k_max), select_setting(first, layout, k_max))
    straightforward_s = (2 * modules + 2) * one_eval
    record = {
        "benchmark": "first_order",
        "run": args.run,
        "adapter_steps": read_json(layout_of.full_lora / "run.json", "run record")["steps"],
        "validation": exact_doc["validation"],
        "modules": modules,
        "first_order_s": first_s,
        "full_evaluation_s": one_eval,
        "straightforward_s": straightforward_s,
        "exact_fast_s_recorded": exact_doc["wall_time_s"],
        "speedup_vs_straightforward": straightforward_s / first_s,
        "speedup_vs_exact_fast_recorded": exact_doc["wall_time_s"] / first_s,
        "spearman": rho,
        "k_max": k_max,
        "same_setting_layers": sum(agree),
        "layers": len(agree),
        "goals": {"speedup_vs_straightforward": 20, "same_setting_share": 0.9},
        "goals_met": {
            "speedup": straightforward_s / first_s >= 20,
            "setting": sum(agree) / len(agree) >= 0.9,
        },
        "versions": versions(),
    }
    atomic_write_json(args.out, record)
    print(
        f"first-order {first_s:.1f} s; straightforward {straightforward_s:.0f} s "
        f"(x{record['speedup_vs_straightforward']:.1f}); Spearman {rho:.3f}; same setting in "
        f"{sum(agree)}/{len(agree)} layers; wrote {args.out}"
    )


if __name__ == "__main__":
    main()
