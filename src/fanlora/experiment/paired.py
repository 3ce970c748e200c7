"""FanLoRA against each method on the same test rows: a seed-aware interval and per-seed tests.

Every method of every seed is evaluated on the same test rows (the pipeline's draw of test
rows does not depend on the seed), so for seed s and example i there is a paired difference
``x_si = v_fanlora(s, i) - v_other(s, i)``, in points.

- **Difference**: ``mean_s mean_i x_si`` with a 95% interval from a hierarchical bootstrap:
  each replicate draws the seeds with replacement, then, inside each drawn seed, the
  examples with replacement (the same examples for both methods, so the pairing is kept).
  The interval thus carries the variance between trained models (seeds) as well as between
  test rows. Pooling discordant counts over seeds, as fanlora did before, treated the
  trained models as fixed and was anti-conservative. With one seed, the interval covers the
  test rows only, and the table says so.
- **Per-seed exact tests**: McNemar's exact test for 0/1 metrics (the binomial test of "only
  FanLoRA right" among the discordant examples at 1/2) and the exact sign test for graded
  metrics such as F1 (the same binomial test on the signs of the non-zero differences).

The bootstrap is written here because scipy's ``bootstrap`` resamples one level only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.stats import binomtest

from fanlora.run_layout import RunLayout
from fanlora.utils.io import md_table

REFERENCE = "fanlora"
PREDICTIONS = "predictions.jsonl"
BOOTSTRAP_REPLICATES = 4000
BOOTSTRAP_SEED = 0


def values_by_example(path: Path) -> dict[str, float] | None:
    """``{uid: headline metric value}`` from an evaluation's ``predictions.jsonl``."""
    if not path.is_file():
        return None
    values = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            values[row["uid"]] = next(iter(row["values"].values()))
    return values


def paired_differences(a: dict[str, float], b: dict[str, float]) -> np.ndarray:
    """100 (a_i - b_i) over the examples both have, in uid order."""
    shared = sorted(a.keys() & b.keys())
    return 100.0 * np.array([a[u] - b[u] for u in shared], dtype=float)


def hierarchical_bootstrap(
    diffs: list[np.ndarray], replicates: int = BOOTSTRAP_REPLICATES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float, float]:
    """(mean over seeds of the mean difference, 2.5th and 97.5th percentiles) resampling
    seeds, then examples within each drawn seed."""
    rng = np.random.default_rng(seed)
    n_seeds = len(diffs)
    drawn = rng.integers(n_seeds, size=(replicates, n_seeds))
    means = np.zeros((replicates, n_seeds))
    for s, x in enumerate(diffs):
        slots = drawn == s
        count = int(slots.sum())
        if count:
            rows = rng.integers(len(x), size=(count, len(x)))
            means[slots] = x[rows].mean(axis=1)
    boot = means.mean(axis=1)
    point = float(np.mean([x.mean() for x in diffs]))
    low, high = np.percentile(boot, [2.5, 97.5])
    return point, float(low), float(high)


def exact_test(x: np.ndarray) -> dict:
    """McNemar's exact test (0/1 values) or the exact sign test (graded), two-sided."""
    binary = bool(np.all(np.isin(x, (-100.0, 0.0, 100.0))))
    a_better, b_better = int((x > 0).sum()), int((x < 0).sum())
    n = a_better + b_better
    p = float(binomtest(a_better, n, 0.5).pvalue) if n else 1.0
    return {
        "test": "McNemar exact" if binary else "sign test",
        "a_better": a_better,
        "b_better": b_better,
        "examples": len(x),
        "p": p,
    }


def compare(folders: list[Path], other: str) -> dict | None:
    """Difference, interval and per-seed tests of FanLoRA against ``other`` over the eval
    folders of one task (one per seed); None when no seed has both predictions."""
    pairs = [
        (f / REFERENCE / "predictions.jsonl", f / other / "predictions.jsonl", f.parent.parent.name)
        for f in folders
    ]
    return compare_pairs(pairs)


def compare_pairs(pairs: list[tuple[Path, Path, str]]) -> dict | None:
    """Difference, interval and per-seed tests of predictions A against B, one (A, B, run)
    triple per seed; None when no seed has both."""
    diffs, tests = [], []
    for path_a, path_b, run in pairs:
        a, b = values_by_example(path_a), values_by_example(path_b)
        if a is None or b is None:
            continue
        x = paired_differences(a, b)
        if len(x):
            diffs.append(x)
            tests.append({"run": run, **exact_test(x)})
    if not diffs:
        return None
    point, low, high = hierarchical_bootstrap(diffs)
    return {
        "diff": point,
        "ci_low": low,
        "ci_high": high,
        "seeds": len(diffs),
        "examples_per_seed": [len(x) for x in diffs],
        "per_seed": tests,
    }


def axis_value(row: dict, axis: str) -> str:
    """A row's value of the ``axis`` grid key as text; a linked key's values as a list
    (``k_max+downstream.rank`` gives ``"[2, 12]"``, as the grid writes it)."""
    parts = axis.split("+")
    return str([row.get(k) for k in parts] if len(parts) > 1 else row.get(axis))


def axis_summary(
    rows: list[dict], out: Path, keys: list[str], seeds: list[str], axis: str, values: list
) -> list[dict]:
    """The same method at ``axis`` = ``values[0]`` (A) against each other value (B), paired
    by seed and test row, within each group of the other grid values and task."""
    others = [k for k in keys if k not in axis.split("+")]
    groups: dict[tuple, dict[tuple, dict]] = {}
    for row in rows:
        group = tuple(str(row.get(k)) for k in [*others, "task", "method"])
        replicate = tuple(str(row.get(k)) for k in seeds)
        groups.setdefault(group, {}).setdefault(replicate, {})[axis_value(row, axis)] = row
    found = []
    for by_seed in groups.values():
        first = next(iter(next(iter(by_seed.values())).values()))
        task, method = first["task"], first["method"]
        for value in values[1:]:
            pairs = [
                (
                    RunLayout(out / at[str(values[0])]["point"]).eval_task(task) / method,
                    RunLayout(out / at[str(value)]["point"]).eval_task(task) / method,
                    at[str(values[0])]["point"],
                )
                for at in by_seed.values()
                if str(values[0]) in at and str(value) in at
            ]
            result = compare_pairs([(a / PREDICTIONS, b / PREDICTIONS, r) for a, b, r in pairs])
            if result is not None:
                found.append(
                    {
                        **{k: first.get(k) for k in others},
                        "task": task,
                        "method": method,
                        "axis": axis,
                        "a": values[0],
                        "b": value,
                        **result,
                    }
                )
    return found


def axis_markdown(paired: list[dict], keys: list[str]) -> list[str]:
    """A table of :func:`axis_summary`."""
    axis, reference = paired[0]["axis"], paired[0]["a"]
    header = [*keys, "task", "method", f"{axis}={reference} vs", "seeds", "difference", "95% CI"]
    body = [
        [
            *(str(p[k]) for k in keys),
            p["task"],
            p["method"],
            str(p["b"]),
            str(p["seeds"]),
            f"{p['diff']:+.1f}",
            f"[{p['ci_low']:+.1f}, {p['ci_high']:+.1f}] ("
            + ", ".join(_p_text(t["p"]) for t in p["per_seed"])
            + f"; {p['per_seed'][0]['test']})"
            + (" (one seed: rows only)" if p["seeds"] == 1 else ""),
        ]
        for p in paired
    ]
    return [
        f"## {axis} = {reference} against each other {axis}, same method and test rows",
        "",
        f"Difference = the method at {axis}={reference} minus at the other value, mean over "
        "seeds of the mean over rows, in points; 95% interval from a bootstrap over seeds "
        "then rows; per-seed exact p-values in brackets.",
        "",
        md_table(header, body),
    ]


def paired_summary(rows: list[dict], out: Path, keys: list[str]) -> list[dict]:
    """For each group (``keys``: the grid values but the seed) and task, FanLoRA against
    every other method: difference in points, its 95% interval, per-seed exact tests."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(str(row.get(k)) for k in [*keys, "task"]), []).append(row)
    found = []
    for group in groups.values():
        others = [m for m in dict.fromkeys(r["method"] for r in group) if m != REFERENCE]
        points = sorted({r["point"] for r in group if r["method"] == REFERENCE})
        folders = [RunLayout(out / p).eval_task(group[0]["task"]) for p in points]
        for other in others:
            result = compare(folders, other)
            if result is not None:
                found.append(
                    {
                        **{k: group[0].get(k) for k in keys},
                        "task": group[0]["task"],
                        "a": REFERENCE,
                        "b": other,
                        **result,
                    }
                )
    return found


def paired_markdown(paired: list[dict], keys: list[str]) -> list[str]:
    """A table of :func:`paired_summary`: one line per group, task and compared method."""
    header = [
        *keys,
        "task",
        "fanlora vs",
        "seeds",
        "rows per seed",
        "difference (points)",
        "95% interval",
        "per-seed p (test)",
    ]
    body = []
    for p in paired:
        tests = ", ".join(_p_text(t["p"]) for t in p["per_seed"])
        interval = f"[{p['ci_low']:+.1f}, {p['ci_high']:+.1f}]"
        if p["seeds"] == 1:
            interval += " (one seed: rows only)"
        body.append(
            [
                *(str(p[k]) for k in keys),
                p["task"],
                p["b"],
                str(p["seeds"]),
                "/".join(map(str, sorted(set(p["examples_per_seed"])))),
                f"{p['diff']:+.1f}",
                interval,
                f"{tests} ({p['per_seed'][0]['test']})",
            ]
        )
    return [
        "## FanLoRA against each method on the same test rows",
        "",
        "Difference = FanLoRA minus the method, mean over seeds of the mean over rows; "
        "95% interval from a bootstrap over seeds, then rows within each seed; exact "
        "tests per seed (McNemar for right/wrong metrics, sign test for graded ones).",
        "",
        md_table(header, body),
    ]


def _p_text(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else "<0.001"
