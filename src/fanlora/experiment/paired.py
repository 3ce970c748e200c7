"""Paired comparison of two methods on the same test examples: McNemar's exact test.

Every method of a run is evaluated on the same seeded test sample, so for each example it
is known whether method A and method B got it right. With ``a_only`` = examples only A
gets right and ``b_only`` = examples only B gets right, "A and B are equally good" means
``a_only ~ Binomial(a_only + b_only, 1/2)``; the two-sided p-value of that binomial test
is McNemar's exact test. Counts are pooled over the seeds of a summary group (each seed
draws its own examples). Only 0/1 metrics (accuracy) are paired; F1-type scores are not.
"""

from __future__ import annotations

import json
from pathlib import Path

REFERENCE = "fanlora"


def correct_by_example(path: Path) -> dict[str, float] | None:
    """``{uid: metric value}`` from an evaluation's ``predictions.jsonl``; None if absent."""
    if not path.is_file():
        return None
    values = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            values[row["uid"]] = next(iter(row["values"].values()))
    return values


def discordant(a: dict[str, float], b: dict[str, float]) -> tuple[int, int, int] | None:
    """(only A right, only B right, shared examples); None unless every value is 0 or 1."""
    shared = sorted(a.keys() & b.keys())
    if any(a[u] not in (0.0, 1.0) or b[u] not in (0.0, 1.0) for u in shared):
        return None
    a_only = sum(1 for u in shared if a[u] > b[u])
    b_only = sum(1 for u in shared if b[u] > a[u])
    return a_only, b_only, len(shared)


def mcnemar_p(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: binomial test of a_only in a_only + b_only at 1/2."""
    from scipy.stats import binomtest

    n = a_only + b_only
    return float(binomtest(a_only, n, 0.5).pvalue) if n else 1.0


def paired_summary(rows: list[dict], out: Path, keys: list[str]) -> list[dict]:
    """For each group (``keys``: the grid values but the seed) and task, FanLoRA against
    every other method: discordant counts pooled over seeds, gap in points, p-value."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(str(row.get(k)) for k in [*keys, "task"]), []).append(row)
    found = []
    for group in groups.values():
        others = [m for m in dict.fromkeys(r["method"] for r in group) if m != REFERENCE]
        points = sorted({r["point"] for r in group if r["method"] == REFERENCE})
        folders = [out / p / "5-eval" / group[0]["task"] for p in points]
        references = [correct_by_example(f / REFERENCE / "predictions.jsonl") for f in folders]
        for other in others:
            counts = [_counts(ref, f / other / "predictions.jsonl")
                      for f, ref in zip(folders, references, strict=True)]  # fmt: skip
            counts = [c for c in counts if c is not None]
            if not counts:
                continue
            a_only, b_only, n = (sum(c[i] for c in counts) for i in range(3))
            found.append({**{k: group[0].get(k) for k in keys}, "task": group[0]["task"],
                          "a": REFERENCE, "b": other, "a_only": a_only, "b_only": b_only,
                          "examples": n, "runs": len(counts),
                          "gap": round(100.0 * (a_only - b_only) / n, 2) if n else 0.0,
                          "p": mcnemar_p(a_only, b_only)})  # fmt: skip
    return found


def _counts(reference: dict[str, float] | None, other: Path) -> tuple[int, int, int] | None:
    b = correct_by_example(other) if reference is not None else None
    return discordant(reference, b) if b is not None else None


def paired_markdown(paired: list[dict], keys: list[str]) -> list[str]:
    """A table of ``paired_summary``: one line per group, task and compared method."""
    from fanlora.utils.io import md_table

    header = [*keys, "task", "fanlora vs", "only fanlora right", "only the other right",
              "examples", "gap (points)", "p (McNemar)"]  # fmt: skip
    body = [[*(str(p[k]) for k in keys), p["task"], p["b"], str(p["a_only"]), str(p["b_only"]),
             str(p["examples"]), f"{p['gap']:+.1f}", _p_text(p["p"])] for p in paired]  # fmt: skip
    return ["## FanLoRA against each method on the same test examples", "",
            "McNemar's exact test on the examples where the two differ, pooled over seeds.",
            "", md_table(header, body)]  # fmt: skip


def _p_text(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else "<0.001"
