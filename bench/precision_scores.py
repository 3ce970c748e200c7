"""Exact AB-scores of the same adapter in two precisions: how far apart, and the setting.

Reads two scoring journals of one run (the same adapter, D_val and modules; made in
different precisions, e.g. bf16 on a CPU with AVX512-BF16 and fp32 on one without), and
the run's ``scores.json``. For every module both journals scored exactly:

    V = S(all) - S(all without m) + S(only m) - S(none)        (eq. 3)

each term from that journal alone, and the V a mixed journal would have given (the first
journal's S(all), S(none) with the second's module terms: what scoring did before a
journal's identity held the precision it ran in). Then, per layer whose exactly scored
modules are all in both journals, the kept kinds (top K_max, never negative) with the
first journal's V in place of ``scores.json``'s, against the setting from ``scores.json``.

    python bench/precision_scores.py \\
        --scores results/runs/v3-step1/seed=0/2-scores/scores.json \\
        --first results/runs/v3-step1/seed=0/2-scores/scores.json.journal/rank-0.jsonl \\
        --out bench/results/precision-scores.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from scipy.stats import spearmanr

from fanlora.modules.discovery import ModuleLayout
from fanlora.score.evaluator import score_of
from fanlora.score.journal import read_entries
from fanlora.select.scores import parse_scores
from fanlora.select.setting import top_modules
from fanlora.utils.io import atomic_write_text


def journal(path: Path) -> tuple[str, dict[str, dict]]:
    """(the precision it ran in, its entries by key)."""
    entries = read_entries(path)
    return entries[0]["identity"]["precision"], {e["key"]: e for e in entries[1:]}


def s(stats) -> float:
    return score_of(torch.tensor(stats, dtype=torch.float64), None, "loss")


def ab(all_none: dict, module: dict) -> float:
    """Eq. 3 from ``all_none``'s S(all), S(none) and ``module``'s two terms."""
    terms = s(all_none["all"]["stats"]) - s(all_none["none"]["stats"])
    return terms - s(module["without"]) + s(module["only"])


def layer_choices(doc: dict, replaced: dict[str, float], k_max: int) -> list[list[str]]:
    """Kept kinds per layer from ``doc``'s scores with ``replaced``'s values put in."""
    rows = [
        {**r, "score": replaced.get(f"module:{r['layer']}:{r['module']}", r["score"])}
        for r in doc["scores"]
    ]
    layout = ModuleLayout.from_dict(doc["layout"])
    return top_modules(parse_scores({**doc, "scores": rows}, layout), layout, k_max)


def compare(scores: Path, first: Path, second: Path, k_max: int) -> dict:
    doc = json.loads(scores.read_text())
    (p1, one), (p2, two) = journal(first), journal(second)
    common = sorted(k for k in one if k.startswith("module:") and k in two)
    v1 = {k: ab(one, one[k]) for k in common}
    v2 = {k: ab(two, two[k]) for k in common}
    mixed = {k: ab(one, two[k]) for k in common}
    exact = {k for k in two if k.startswith("module:")}
    layers = sorted(
        {int(k.split(":")[1]) for k in common} - {int(k.split(":")[1]) for k in exact - set(common)}
    )
    base, swapped = layer_choices(doc, {}, k_max), layer_choices(doc, v1, k_max)
    return {
        "scores": str(scores),
        "journals": {p1: str(first), p2: str(second)},
        "modules": len(common),
        "s_all": {p1: s(one["all"]["stats"]), p2: s(two["all"]["stats"])},
        "s_none": {p1: s(one["none"]["stats"]), p2: s(two["none"]["stats"])},
        f"median_abs_v_{p2}": statistics.median(abs(v) for v in v2.values()),
        "median_abs_difference": statistics.median(abs(v1[k] - v2[k]) for k in common),
        "max_abs_difference": max(abs(v1[k] - v2[k]) for k in common),
        "median_abs_mixed_error": statistics.median(abs(mixed[k] - v2[k]) for k in common),
        "spearman": spearmanr([v1[k] for k in common], [v2[k] for k in common]).statistic,
        "layers_compared": layers,
        "layers_that_differ": {
            layer: {p2: base[layer], p1: swapped[layer]}
            for layer in layers
            if base[layer] != swapped[layer]
        },
        "per_module": {k: {p1: v1[k], p2: v2[k], "mixed": mixed[k]} for k in common},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scores", type=Path, required=True)
    parser.add_argument("--first", type=Path, required=True, help="the other precision's journal")
    parser.add_argument(
        "--second", type=Path, help="the journal scores.json came from (default: the other file)"
    )
    parser.add_argument("--k-max", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/precision-scores.json"))
    args = parser.parse_args()
    if args.second is None:
        (args.second,) = [p for p in args.first.parent.glob("rank-*.jsonl") if p != args.first]
    result = compare(args.scores, args.first, args.second, args.k_max)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "per_module"}, indent=2))


if __name__ == "__main__":
    main()
