"""Collect an experiment's runs into ``results.json``, ``results.md`` and ``results.png``.

Rows: one per (grid point, task, method) with the test metric (from
``5-eval/TASK/METHOD/metrics.json``) and trainable parameters. Summary: rows grouped by
everything but the seed; median, min and max over seeds. Paired: FanLoRA against each
other method on the same test examples (``paired.py``). Runs made by different code
versions (each finished unit's ``code``, see :func:`point_codes`) are flagged, and so are
unfinished or failed runs.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from fanlora.experiment.paired import (
    axis_markdown,
    axis_summary,
    paired_markdown,
    paired_summary,
)
from fanlora.experiment.scorers import (
    REFERENCE,
    finished_scores,
    plot_scorers,
    scorer_markdown,
    scorer_rows,
    shorter_step1_markdown,
    shorter_step1_rows,
)
from fanlora.modules.discovery import ModuleLayout
from fanlora.pipeline.stages import RESULTS_VERSION
from fanlora.report.render import decode_table
from fanlora.run_layout import REPORT, RunLayout
from fanlora.score.compare import agreement_tables, compare, plot_agreement
from fanlora.select import parse_scores
from fanlora.utils.io import atomic_write_json, atomic_write_text, read_json_if_present
from fanlora.utils.plotting import pyplot, save_figure

STATS = ("median", "min", "max", "runs", "values", "metric", "trainable_params")
LR_KEY = "downstream.lr"
LOSS_METRICS = ("dev_loss",)


def shown(value: float, metric: str) -> str:
    """A metric for the tables: test scores (percent) to 0.1, losses to 0.001."""
    return f"{value:.3f}" if metric in LOSS_METRICS else f"{value:.1f}"


def best_on_dev(summary: list[dict]) -> list[dict]:
    """Per (task, method) of a sweep of ``downstream.lr`` on dev: the rate of the lowest
    median dev loss, and whether it is the lowest or highest rate swept (``at_edge``: the
    optimum may lie beyond it, so the sweep should go further before the rate is used)."""
    groups: dict[tuple, list[dict]] = {}
    for row in summary:
        if row["metric"] in LOSS_METRICS and row.get(LR_KEY) is not None:
            groups.setdefault((row["task"], row["method"]), []).append(row)
    out = []
    for (task, method), rows in groups.items():
        best = min(rows, key=lambda r: r["median"])
        rates = sorted(r[LR_KEY] for r in rows)
        edge = len(rates) > 1 and best[LR_KEY] in (rates[0], rates[-1])
        out.append(
            {"task": task, "method": method, "lr": best[LR_KEY], "dev_loss": best["median"]}
            | {"rates": rates, "at_edge": edge}
        )
    return out


def point_rows(point, folder: Path) -> list[dict]:
    rows = []
    cfg = point.config
    for task in cfg.tasks:
        for method in (["base"] if cfg.eval_base else []) + cfg.methods:
            doc = read_json_if_present(RunLayout(folder).metrics(task, method))
            trained = RunLayout(folder).trained_run(task, method)
            trained = read_json_if_present(trained) or {}
            if doc is None and cfg.until == "downstream" and "best_dev_loss" in trained:
                # a sweep on dev (until: downstream): the best dev loss is the result
                doc = {"metric": "dev_loss", "value": trained["best_dev_loss"], "examples": 0}
            if doc is None:
                continue
            rows.append(
                {
                    "point": point.name,
                    **point.flat_values(),
                    "task": task,
                    "method": method,
                    "metric": doc["metric"],
                    "value": doc["value"],
                    "examples": doc["examples"],
                    # a method that prunes its ranks (AdaLoRA) is counted by what it keeps
                    "trainable_params": trained.get("kept_params")
                    or trained.get("trainable_params", 0),
                }
            )
    return rows


def is_seed(key: str) -> bool:
    """Whether a grid key (linked keys joined by ``+``) holds a seed: the run's ``seed`` or a
    stage's (``downstream.seed``: step 4 replicated on one step-1 adapter)."""
    return any(k == "seed" or k.endswith(".seed") for k in key.split("+"))


def group_keys(grid_keys: list[str]) -> list[str]:
    """The grid keys a summary groups by: all but the seeds and any key linked with one
    (``seed+decode``: decode varies with the seed, so it is part of the replicate)."""
    return [k for key in grid_keys if not is_seed(key) for k in key.split("+")]


def summarize(rows: list[dict], grid_keys: list[str]) -> list[dict]:
    """Median, min and max over seeds of each (other grid values, task, method)."""
    keys = [*group_keys(grid_keys), "task", "method"]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(str(row.get(k)) for k in keys), []).append(row)
    out = []
    for group in groups.values():
        values = [r["value"] for r in group]
        out.append(
            {
                **{k: group[0].get(k) for k in keys},
                "metric": group[0]["metric"],
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
                "runs": len(values),
                "values": values,
                "trainable_params": round(statistics.median(r["trainable_params"] for r in group)),
            }
        )
    return out


def aggregate(name: str, out: Path, points, axis: tuple[str, list] | None = None) -> dict:
    rows, status, codes, versions = [], {}, {}, {}
    for point in points:
        folder = out / point.name
        run = read_json_if_present(folder / "run.json")
        report = read_json_if_present(RunLayout(folder).stage_record(REPORT))
        status[point.name] = (
            "failed"
            if (folder / "failure.txt").is_file() and not report
            else "finished"
            if report and report.get("status") == "finished"
            else "not finished"
        )
        if run:
            codes[point.name] = point_codes(folder, run)
        if report:  # a stage record without the field was made before RESULTS_VERSION
            versions[point.name] = report.get("results_version", 1)
        rows += point_rows(point, folder)
    grid_keys = list(points[0].values) if points else []  # as written, linked keys joined
    decoding = {
        p.name: doc for p in points if (doc := read_json_if_present(RunLayout(out / p.name).decode))
    }
    k_max = points[0].config.k_max if points else 2
    scores = finished_scores(out, points)
    agreement = score_agreement(scores, k_max)
    paired = paired_summary(rows, out, group_keys(grid_keys))
    seeds = [k for key in grid_keys if is_seed(key) for k in key.split("+")]
    along = axis_summary(rows, out, group_keys(grid_keys), seeds, *axis) if axis else []
    return {
        "format": "fanlora-experiment",
        "experiment": name,
        "runs": status,
        "code_versions": codes,
        "mixed_code_versions": len(distinct_codes(codes)) > 1,
        "results_versions": versions,
        "rows": rows,
        "summary": summarize(rows, grid_keys),
        "paired": paired,
        "axis_paired": along,
        "score_agreement": agreement,
        "k_max": k_max,
        "scorers": scorer_rows(scores, k_max),
        "shorter_step1": shorter_step1_rows(scores, k_max),
        "decoding": decoding,
    }


def point_codes(folder: Path, run: dict) -> list[str]:
    """The code versions that computed a run's finished units: each unit record's
    ``code``, or, for a record made before units carried one, ``run.json``'s (the code
    that created the run). A run resumed across a change of code shows both."""
    fallback = run.get("code", run.get("fanlora", "?"))
    records = (read_json_if_present(path) for path in folder.rglob("stage.json"))
    codes = {
        rec.get("code", fallback) for rec in records if rec and rec.get("status") == "finished"
    }
    return sorted(codes or {fallback})


def distinct_codes(codes: dict[str, list[str]]) -> list[str]:
    """Every code version of the runs' units (``codes``: run -> :func:`point_codes`)."""
    return sorted({code for run in codes.values() for code in run})


def score_agreement(scores: list[dict], k_max: int) -> dict | None:
    """Pairwise Spearman / Kendall / top-K agreement of the runs' step-2 scores (the
    paper's table 4 across seeds), when at least two runs have distinct scores (``scores``
    from :func:`finished_scores`). A grid that varies the scoring method compares the
    exact AB-score's files only (the other scorers are set against it in ``scorers.py``)."""
    docs, seen = {}, set()
    for entry in scores:
        if entry["scores_key"] not in seen:
            seen.add(entry["scores_key"])
            docs[entry["run"]] = entry["doc"]
    if len({doc["method"] for doc in docs.values()}) > 1:
        docs = {name: doc for name, doc in docs.items() if doc["method"] == REFERENCE}
    if len(docs) < 2:
        return None
    layout = ModuleLayout.from_dict(next(iter(docs.values()))["layout"])
    files = {name: parse_scores(doc, layout) for name, doc in docs.items()}
    return compare(files, layout, k_max)


def render_markdown(results: dict) -> str:
    lines = [f"# Experiment {results['experiment']}", ""]
    stale = sorted(
        {v for v in results.get("results_versions", {"?": 1}).values() if v < RESULTS_VERSION}
    )
    if stale:
        lines += [
            f"**Stale: made by results version {', '.join(map(str, stale))}, before "
            f"the fixes of version {RESULTS_VERSION} (README: rules that keep the "
            "numbers honest). Kept as an earlier section; not comparable with newer "
            "runs.**",
            "",
        ]
    if results["mixed_code_versions"]:
        lines += [
            "**Warning: these runs were made by different code versions: "
            + ", ".join(distinct_codes(results["code_versions"]))
            + ".**",
            "",
        ]
    bad = {k: v for k, v in results["runs"].items() if v != "finished"}
    if bad:
        lines += ["Runs not finished: " + ", ".join(f"{k} ({v})" for k, v in bad.items()), ""]
    summary = results["summary"]
    if summary:
        cols = [k for k in summary[0] if k in ("task", "method") or k in varying_keys(summary)]
        header = [*cols, "params (median)", "metric", "median", "min-max", "runs"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for s in summary:
            lines.append(
                "| "
                + " | ".join(
                    [
                        *(str(s[c]) for c in cols),
                        f"{s['trainable_params']:,}",
                        s["metric"],
                        shown(s["median"], s["metric"]),
                        f"{shown(s['min'], s['metric'])}-{shown(s['max'], s['metric'])}",
                        str(s["runs"]),
                    ]
                )
                + " |"
            )
        lines += [
            "",
            "params: trainable parameters; for a method that prunes its ranks (AdaLoRA), the "
            "LoRA-equivalent parameters its adapter keeps.",
        ]
    if best := best_on_dev(summary):
        lines += ["", *best_markdown(best)]
    if results.get("paired"):
        lines += ["", *paired_markdown(results["paired"], varying_keys(summary))]
    if results.get("axis_paired"):
        axis = results["axis_paired"][0]["axis"]
        keys = [k for k in varying_keys(summary) if k not in axis.split("+")]
        lines += ["", *axis_markdown(results["axis_paired"], keys)]
    agree = results.get("score_agreement")
    if agree:
        lines += [
            "",
            "## Agreement of the step-2 scores between runs (table 4)",
            "",
            *agreement_tables(agree),
        ]
    if results.get("scorers"):
        lines += ["", *scorer_markdown(results["scorers"], results.get("k_max", 2))]
    if results.get("shorter_step1"):
        lines += ["", *shorter_step1_markdown(results["shorter_step1"], results.get("k_max", 2))]

    for name, doc in results.get("decoding", {}).items():
        text, notes = decode_table(doc)
        lines += ["", f"## Decoding speed, run {name} (table 3)", "", text, "", " ".join(notes)]
    return "\n".join(lines) + "\n"


def best_markdown(best: list[dict]) -> list[str]:
    """The sweep's choice per method (:func:`best_on_dev`), for ``method_lr``."""
    lines = [
        "Best learning rate on dev (lowest median dev loss; `method_lr` of the grids that",
        "use it). A rate at the edge of the sweep may not be the optimum: sweep further.",
        "",
        "| task | method | lr | dev loss | rates swept | at the edge |",
        "|---|---|---|---|---|---|",
    ]
    for b in best:
        rates = ", ".join(f"{r:g}" for r in b["rates"])
        edge = "**yes**" if b["at_edge"] else "no"
        cells = [b["task"], b["method"], f"{b['lr']:g}", f"{b['dev_loss']:.3f}", rates, edge]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def varying_keys(summary: list[dict]) -> list[str]:
    """The grid keys whose value differs between summary rows (task and method aside)."""
    return [
        k
        for k in summary[0]
        if k not in ("task", "method") and k not in STATS and len({str(s[k]) for s in summary}) > 1
    ]


def sweep_key(summary: list[dict]) -> str | None:
    """The first varying grid key with 3 or more numeric values (K_max, a rank): plotted as
    an x axis, the paper's figures 3 and 4. None when there is none (bars instead)."""
    for key in varying_keys(summary):
        values = {s[key] for s in summary if not isinstance(s[key], list | dict)}
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        if numeric and len(values) >= 3 and len(values) == len({str(s[key]) for s in summary}):
            return key
    return None


def plot(results: dict, path: Path) -> Path | None:
    """Median test metric per method and task, bars (or error bars of a sweep) from min to
    max over seeds: a line per method over the sweep key when the grid has one."""
    summary = results["summary"]
    if not summary:
        return None
    plt = pyplot()
    tasks = sorted({s["task"] for s in summary})
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.2), squeeze=False)
    key, varying = sweep_key(summary), varying_keys(summary)
    for ax, task in zip(axes[0], tasks, strict=True):
        rows = [s for s in summary if s["task"] == task]
        (plot_sweep if key else plot_bars)(ax, rows, key, varying)
        ax.set_title(f"{task} ({rows[0]['metric']})", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def _errors(rows: list[dict]) -> list[list[float]]:
    return [[s["median"] - s["min"] for s in rows], [s["max"] - s["median"] for s in rows]]


def plot_bars(ax, rows: list[dict], _key, varying: list[str]) -> None:
    labels = [s["method"] + "".join(f"\n{k}={s[k]}" for k in varying) for s in rows]
    ax.bar(
        range(len(rows)),
        [s["median"] for s in rows],
        yerr=_errors(rows),
        capsize=3,
        color="#3a7d44",
    )
    ax.set_xticks(range(len(rows)), labels, fontsize=7)


def plot_sweep(ax, rows: list[dict], key: str, varying: list[str]) -> None:
    """One line per method over ``key``; keys linked with it (the rank that K_max sets)
    label the ticks."""
    for method in dict.fromkeys(s["method"] for s in rows):
        line = sorted((s for s in rows if s["method"] == method), key=lambda s: s[key])
        ax.errorbar(
            [s[key] for s in line],
            [s["median"] for s in line],
            yerr=_errors(line),
            marker="o",
            capsize=3,
            label=method,
        )
    ticks = {s[key]: s for s in rows}
    others = [k for k in varying if k != key]
    # linked values stacked under the tick, their names in the axis label, in the same
    # order: names under every tick are wider than the gap between ticks
    ax.set_xticks(
        list(ticks),
        ["\n".join(str(v) for v in (x, *(s[k] for k in others))) for x, s in ticks.items()],
        fontsize=7,
    )
    ax.set_xlabel(" / ".join([key, *others]), fontsize=8)
    ax.legend(fontsize=7)


def write_results(results: dict, out: Path) -> None:
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "results.md", render_markdown(results))
    plot(results, out / "results.png")
    if results.get("score_agreement"):
        plot_agreement(results["score_agreement"], out / "agreement.png")
    if results.get("scorers"):
        plot_scorers(results["scorers"], out / "scorers.png")
    if results.get("shorter_step1"):
        reference = "exact AB-score of the longest step 1"
        plot_scorers(results["shorter_step1"], out / "shorter-step1.png", reference)
