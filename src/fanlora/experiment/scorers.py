"""Scoring methods against the exact AB-score of the same step-1 adapter (issue 19's
first-order goal, the scorers of paper table 6).

Runs are grouped by their step-1 unit (its key): within a group the ``ab`` score file
(exact, fast) is the reference, and every other scorer's file is compared with it:

    spearman       Spearman rho over all modules
    same_setting   share of layers whose kept set (top K_max, never negative) is the same
    straightforward_s = (2N + 2) * t_eval        N modules, t_eval one evaluation of D_val
    x_straightforward = straightforward_s / seconds
    x_exact           = seconds(ab) / seconds

``seconds`` is the sum of the scorer's journalled units (every sitting of a resumed run)
plus its fast evaluator's two capture passes when it built one (exact AB, refined first
order), and t_eval the time of one full evaluation of the validation set (scores.json's
``compute.full_evaluation_s``: half the fast scorer's two full capture passes, since its
own ``all`` and ``none`` units rerun only the last layer); the straightforward AB-score is
costed, not run: it is 2N + 2 evaluations of that cost.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from scipy.stats import spearmanr

from fanlora.modules.discovery import ModuleLayout
from fanlora.run_layout import FULL_LORA, SCORES, RunLayout
from fanlora.score.compare import aligned, topk_agreement, within_layer_spearman
from fanlora.select import parse_scores
from fanlora.utils.io import md_table, read_json_if_present
from fanlora.utils.plotting import pyplot, save_figure

REFERENCE = "ab"  # the exact (fast) AB-score's label in scores.json
LENGTH = "max_steps"  # the step-1 parameter a shorter step 1 changes
STATS = ("spearman", "within_layer_spearman", "same_setting", "x_straightforward", "x_exact")


def finished_scores(out: Path, points) -> list[dict]:
    """Each run's finished step-2 file, read once for table 4 and for the scorers:
    ``{"run", "scores_key", "adapter_key", "adapter_params", "adapter_seconds", "doc"}``
    (the keys of its scores and step-1 units, runs that share a unit sharing its key; the
    step-1 unit's parameters and wall time)."""
    found = []
    for point in points:
        layout = RunLayout(out / point.name)
        stage = read_json_if_present(layout.stage_record(SCORES))
        doc = read_json_if_present(layout.scores)
        if stage and doc:
            train = read_json_if_present(layout.stage_record(FULL_LORA)) or {}
            found.append(
                {
                    "run": point.name,
                    "scores_key": stage.get("key"),
                    "adapter_key": train.get("key"),
                    "adapter_params": train.get("params"),
                    "adapter_seconds": train.get("wall_time_s"),
                    "doc": doc,
                }
            )
    return found


def cost(doc: dict, key: str):
    return (doc.get("compute") or {}).get(key)


def seconds(doc: dict) -> float | None:
    """What a scorer cost: its journalled units plus its capture passes (module docstring)."""
    units = cost(doc, "unit_seconds")
    return units + (cost(doc, "capture_seconds") or 0.0) if units else None


def ratio(numerator, denominator) -> float | None:
    return numerator / denominator if numerator and denominator else None


def compare_scorer(reference: dict, doc: dict, k_max: int) -> dict:
    """One scorer's file against the reference's, on the same adapter (module docstring)."""
    layout = ModuleLayout.from_dict(reference["layout"])
    ref, other = parse_scores(reference, layout), parse_scores(doc, layout)
    t_eval = cost(reference, "full_evaluation_s") or cost(doc, "full_evaluation_s")
    straightforward = (2 * len(ref) + 2) * t_eval if t_eval else None
    spent, exact = seconds(doc), seconds(reference)
    x, y = aligned(ref, other)
    return {
        "method": doc["method"],
        "seed": doc.get("seed"),
        "spearman": float(spearmanr(x, y).statistic),
        "within_layer_spearman": within_layer_spearman(ref, other),
        "same_setting": topk_agreement(ref, other, layout, k_max),
        "refined_modules": doc.get("refined_modules"),
        "unit_seconds": spent,
        "exact_seconds": exact,
        "straightforward_s": straightforward,
        "x_straightforward": ratio(straightforward, spent),
        "x_exact": ratio(exact, spent),
        "pairs": [[a, b] for a, b in zip(x, y, strict=True)],
    }


def scorer_rows(scores: list[dict], k_max: int) -> list[dict]:
    """``compare_scorer`` for every non-reference file of each step-1 adapter that has a
    reference file (``scores`` from :func:`finished_scores`)."""
    groups: dict[str, dict[str, tuple[str, dict]]] = {}
    for entry in scores:
        if entry["adapter_key"]:
            group = groups.setdefault(entry["adapter_key"], {})
            group.setdefault(entry["doc"]["method"], (entry["run"], entry["doc"]))
    rows = []
    for members in groups.values():
        if REFERENCE in members:
            reference = members[REFERENCE][1]
            rows += [
                {"run": name, **compare_scorer(reference, doc, k_max)}
                for label, (name, doc) in members.items()
                if label != REFERENCE
            ]
    return rows


def _recipe(entry: dict) -> tuple[str, int | None]:
    """A step-1 unit's parameters but its length, and its length (``max_steps``)."""
    params = dict(entry.get("adapter_params") or {})
    steps = params.pop(LENGTH, None)
    return json.dumps(params, sort_keys=True), steps


def _longest_references(scores: list[dict]) -> dict[str, tuple[dict, int]]:
    """Per step-1 recipe (:func:`_recipe`), the exact AB file of its longest step 1."""
    references: dict[str, tuple[dict, int]] = {}
    for entry in scores:
        recipe, steps = _recipe(entry)
        exact = entry["doc"]["method"] == REFERENCE and steps is not None
        if exact and steps > references.get(recipe, ({}, -1))[1]:
            references[recipe] = (entry, steps)
    return references


def shorter_step1_rows(scores: list[dict], k_max: int) -> list[dict]:
    """Paper table 6's step 1 on less data: each score file of a step-1 adapter that has no
    exact AB file of its own, against the exact AB file of the longest step 1 whose
    parameters differ from its own only in ``max_steps`` (same seed, data, rank, batch),
    when its own is shorter. Its scorer and its adapter both differ from the reference's,
    so the row measures the two together; ``step1_s`` and ``reference_step1_s`` are the
    two step-1 wall times."""
    references = _longest_references(scores)
    own_reference = {e["adapter_key"] for e in scores if e["doc"]["method"] == REFERENCE}
    rows, seen = [], set()
    for entry in scores:
        recipe, steps = _recipe(entry)
        reference, reference_steps = references.get(recipe, ({}, None))
        if not reference or entry["adapter_key"] in own_reference or entry["scores_key"] in seen:
            continue  # no reference, its own reference, or a scores unit already shown
        if steps is None or steps >= reference_steps:
            continue
        seen.add(entry["scores_key"])
        rows.append(
            {
                "run": entry["run"],
                **compare_scorer(reference["doc"], entry["doc"], k_max),
                "step1_steps": steps,
                "reference_steps": reference_steps,
                "step1_s": entry.get("adapter_seconds"),
                "reference_step1_s": reference.get("adapter_seconds"),
            }
        )
    return rows


def scorer_summary(rows: list[dict]) -> list[dict]:
    """Median, min and max of each statistic over the groups (seeds), per scorer."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        group = [r for r in rows if r["method"] == method]
        entry = {"method": method, "runs": len(group)}
        for stat in STATS:
            values = [r[stat] for r in group if r[stat] is not None]
            entry[stat] = (
                {"median": statistics.median(values), "min": min(values), "max": max(values)}
                if values
                else None
            )
        out.append(entry)
    return out


def _cell(value, fmt: str = "{:.3f}") -> str:
    return "-" if value is None else fmt.format(value)


def _spread(stat: dict | None, fmt: str) -> str:
    if stat is None:
        return "-"
    return f"{fmt.format(stat['median'])} ({fmt.format(stat['min'])}-{fmt.format(stat['max'])})"


# (header, row key, format) of the per-run table and of the summary over seeds
ROW_COLUMNS = (
    ("run", "run", "{}"),
    ("scorer", "method", "{}"),
    ("Spearman", "spearman", "{:.3f}"),
    ("within-layer Spearman", "within_layer_spearman", "{:.3f}"),
    ("same setting (K_max {k})", "same_setting", "{:.3f}"),
    ("refined modules", "refined_modules", "{}"),
    ("compute s", "unit_seconds", "{:.0f}"),
    ("x cheaper than straightforward", "x_straightforward", "{:.1f}"),
    ("x cheaper than exact fast", "x_exact", "{:.1f}"),
)
SUMMARY_COLUMNS = (
    ("Spearman", "spearman", "{:.3f}"),
    ("same setting", "same_setting", "{:.2f}"),
    ("x straightforward", "x_straightforward", "{:.1f}"),
    ("x exact fast", "x_exact", "{:.1f}"),
)


def _rows_table(rows: list[dict], columns: tuple, k_max: int) -> str:
    """``rows`` as a markdown table of ``columns`` ((header, row key, format) each)."""
    cells = [[_cell(r[key], fmt) for _, key, fmt in columns] for r in rows]
    return md_table([h.format(k=k_max) for h, _, _ in columns], cells)


def scorer_markdown(rows: list[dict], k_max: int) -> list[str]:
    """The per-run table and the summary over seeds, as markdown lines."""
    totals = [
        [s["method"], str(s["runs"]), *(_spread(s[key], fmt) for _, key, fmt in SUMMARY_COLUMNS)]
        for s in scorer_summary(rows)
    ]
    return [
        "## Scoring methods against the exact AB-score of the same step-1 adapter",
        "",
        "Straightforward = 2N + 2 evaluations of the validation set, each costed at the "
        "measured time of one full pass over it (half the exact fast scorer's two capture "
        "passes).",
        "",
        _rows_table(rows, ROW_COLUMNS, k_max),
        "",
        "Median (min-max) over the step-1 adapters:",
        "",
        md_table(["scorer", "runs", *(h for h, _, _ in SUMMARY_COLUMNS)], totals),
    ]


STEP1_COLUMNS = (
    *ROW_COLUMNS[:2],  # run, scorer
    ("step-1 steps", "step1_steps", "{}"),
    ("reference steps", "reference_steps", "{}"),
    *ROW_COLUMNS[2:5],  # Spearman, within-layer Spearman, same setting
    ("step-1 s", "step1_s", "{:.0f}"),
    ("reference step-1 s", "reference_step1_s", "{:.0f}"),
    ("scoring s", "unit_seconds", "{:.0f}"),
    ("reference scoring s", "exact_seconds", "{:.0f}"),
)


def shorter_step1_markdown(rows: list[dict], k_max: int) -> list[str]:
    """The rows of :func:`shorter_step1_rows` as a markdown section."""
    return [
        "## A shorter step 1 against the exact AB-score of the full one",
        "",
        "Each score file of a step 1 that differs from the reference step 1 only in its "
        "number of steps (same seed), against the reference's exact AB-score: the shorter "
        "step 1 and its scorer together.",
        "",
        _rows_table(rows, STEP1_COLUMNS, k_max),
    ]


def plot_scorers(rows: list[dict], path: Path, reference: str = "exact AB-score") -> Path:
    """One panel per scorer: each module's score against ``reference`` (by default the
    exact AB-score of the same adapter), a colour per step-1 adapter (seed), with the line
    y = x (where first order lands when the loss is linear in every gate)."""
    plt = pyplot()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods), 3.4), squeeze=False)
    for ax, method in zip(axes[0], methods, strict=True):
        for row in (r for r in rows if r["method"] == method):
            x, y = zip(*row["pairs"], strict=True)
            ax.scatter(x, y, s=6, alpha=0.6, label=f"seed {row['seed']}: rho {row['spearman']:.2f}")
        low, high = ax.get_xlim()
        ax.plot([low, high], [low, high], color="grey", linewidth=0.8)
        ax.set_xlabel(reference, fontsize=8)
        ax.set_ylabel(f"{method} score", fontsize=8)
        ax.set_title(method, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
