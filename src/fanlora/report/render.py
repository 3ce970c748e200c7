"""``write_report(run_dir, out)``: report.md and a self-contained report.html for a run.

Everything is read from the run's JSON files (never recomputed), and each table says
which file its numbers come from, so any number traces to the examples behind it.
"""

from __future__ import annotations

import base64
import math
import re
from pathlib import Path

import markdown

from fanlora.engines import engine_cost
from fanlora.report.figures import draw_kind_counts, draw_setting
from fanlora.run_layout import RunLayout
from fanlora.score.heatmap import draw_heatmap
from fanlora.select import FanLoRASetting, parse_scores
from fanlora.train.methods import METHODS
from fanlora.utils.io import atomic_write_text, md_table, read_json, read_json_if_present


def stage_times(run: Path) -> list[list]:
    """[unit, stage, wall time] for every finished unit, in folder order."""
    rows = []
    for path in sorted(run.glob("**/stage.json")):
        rec = read_json(path, "stage record")
        if rec.get("status") == "finished":
            rows.append([rec["unit"], rec["stage"], f"{rec['wall_time_s']:.0f} s"])
    return rows


def margin(metric: str, value: float, n: int) -> float | None:
    """Two binomial standard errors of a percentage over n examples (accuracy-like only)."""
    if metric not in ("accuracy", "sql_em", "number_acc") or n < 1:
        return None
    p = value / 100
    return 200 * math.sqrt(max(p * (1 - p), 0.25 / n) / n)


def is_ranked(method: str) -> bool:
    """Whether ``method`` has a LoRA rank to show (a method unknown here is assumed to)."""
    known = METHODS.get(method)
    return known is None or known.ranked


def rank_text(config: dict) -> str:
    """The rank, or the range of per-kind ranks of a matched budget (``3-4 by kind``)."""
    pattern = config.get("rank_pattern")
    if not pattern:
        return str(config["rank"])
    low, high = min(pattern.values()), max(pattern.values())
    return f"{low} by kind" if low == high else f"{low}-{high} by kind"


def downstream_section(run: Path, cfg: dict) -> tuple[str, list[str]]:
    """The table-1-like table (method x task) and headline sentences."""
    methods = (["base"] if cfg.get("eval_base") else []) + cfg["methods"]
    header = ["method", "trainable params", "rank"] + [f"{t} (metric)" for t in cfg["tasks"]]
    rows, results = [], {}
    for method in methods:
        params, rank = "0", "-"
        cells = []
        for task in cfg["tasks"]:
            trained = read_json_if_present(RunLayout(run).trained_run(task, method))
            if trained:
                params = f"{trained['trainable_params']:,}"
                if "kept_params" in trained:  # a method that prunes its ranks (AdaLoRA)
                    params += f" ({trained['kept_params']:,} kept)"
                rank = rank_text(trained["config"]) if is_ranked(method) else "-"
            doc = read_json_if_present(RunLayout(run).metrics(task, method))
            if doc is None:
                cells.append("not run")
                continue
            pm = margin(doc["metric"], doc["value"], doc["examples"])
            results[(method, task)] = doc
            norm = f"; acc_norm {doc['acc_norm']:.1f}" if "acc_norm" in doc else ""
            cells.append(
                f"{doc['value']:.1f}"
                + (f" ± {pm:.1f}" if pm else "")
                + f" ({doc['metric']}{norm}, n={doc['examples']})"
            )
        rows.append([method, params, rank, *cells])
    notes = [
        task_note(task, {m: results[(m, task)] for m in methods if (m, task) in results})
        for task in cfg["tasks"]
    ]
    notes += [truncation_note(task, results) for task in cfg["tasks"]]
    return md_table(header, rows), [n for n in notes if n]


def truncation_note(task: str, results: dict) -> str:
    """How many test prompts still hold a reference answer after truncation (the same for
    every method: the prompts do not depend on the adapter)."""
    kept = [
        d["answer_in_prompt"]
        for (_, t), d in results.items()
        if t == task and d.get("answer_in_prompt")
    ]
    if not kept:
        return ""
    share, n = kept[0]["share"], kept[0]["examples"]
    warn = " (below 90%: raise evaluation.max_length)" if share < 90 else ""
    return (
        f"On **{task}**, a reference answer still occurs in {share:.1f}% of the {n} test "
        f"prompts that held one before truncation{warn}."
    )


def task_note(task: str, docs: dict[str, dict]) -> str:
    """One sentence: each method's value on ``task`` and whether the spread exceeds noise."""
    if len(docs) < 2:
        return ""
    values = {m: d["value"] for m, d in docs.items()}
    best = max(values, key=values.get)
    listed = ", ".join(f"{m} {v:.1f}" for m, v in sorted(values.items(), key=lambda x: -x[1]))
    doc = docs[best]
    pm = margin(doc["metric"], doc["value"], doc["examples"])
    spread = max(values.values()) - min(values.values())
    if spread == 0:
        verdict = "all equal"
    elif pm is not None and spread <= pm:
        verdict = f"the spread ({spread:.1f}) is within sampling noise (±{pm:.1f})"
    else:
        verdict = f"best: **{best}**"
    return f"On **{task}** ({doc['metric']}): {listed}; {verdict}."


def decode_section(run: Path) -> tuple[str, list[str]]:
    doc = read_json_if_present(RunLayout(run).decode)
    return ("", []) if doc is None else decode_table(doc)


def decode_table(doc: dict) -> tuple[str, list[str]]:
    """(intro and markdown table, one note per beam width) from a ``decode.json`` doc."""
    header = [
        "variant",
        "beams",
        "tokens/s (median)",
        "p10-p90",
        "adapter params",
        "adapter MB",
        "peak extra MB",
    ]
    rows = [
        [
            r["variant"],
            r["beams"],
            f"{r['tokens_per_s_median']:.1f}",
            f"{r['tokens_per_s_p10']:.1f}-{r['tokens_per_s_p90']:.1f}",
            f"{r['adapter_params']:,}",
            f"{r['adapter_mb']:.2f}",
            f"{r['peak_extra_mb_median']:.1f}",
        ]
        for r in doc["rows"]
    ]
    base = {r["beams"]: r["tokens_per_s_median"] for r in doc["rows"] if r["variant"] == "base"}
    notes = []
    for beams, speed in base.items():
        shares = [
            f"{r['variant']} {100 * r['tokens_per_s_median'] / speed:.0f}%"
            for r in doc["rows"]
            if r["beams"] == beams and r["variant"] != "base"
        ]
        if shares:
            notes.append(
                f"Decoding speed with beam {beams}, as a share of the base model's "
                f"{speed:.1f} tokens/s: " + ", ".join(shares) + "."
            )
    cfg = doc["config"]
    intro = (
        f"Unmerged adapters on {doc['device']} ({doc['threads']} threads): "
        f"{cfg.get('prompt_tokens')}-token prompt, {cfg.get('new_tokens')} new tokens, "
        f"{cfg.get('runs')} timed runs per variant after a warm-up, interleaved. "
        "Source: `6-decode/decode.json`.\n\n"
    )
    return intro + md_table(header, rows), notes


def setting_section(run: Path, figures: Path) -> tuple[str, list[str]]:
    path = RunLayout(run).setting
    if not path.is_file():
        return "The setting has not been computed yet.", []
    setting = FanLoRASetting.load(path)
    draw_setting(setting, figures / "setting.png")
    draw_kind_counts(setting, figures / "kinds.png")
    parts = []
    scores = read_json_if_present(RunLayout(run).scores)
    if scores:
        records = parse_scores(scores, setting.layout)
        draw_heatmap(
            records,
            setting.layout,
            setting.k_max,
            figures / "scores.png",
            title=f"{scores['method']} scores (dots: kept)",
        )
        spent = [r.get("sequences_spent") for r in scores["scores"] if "sequences_spent" in r]
        how = f"{scores['method']}, {scores['validation']['sequences']} validation sequences" + (
            f", median {sorted(spent)[len(spent) // 2]} spent per module" if spent else ""
        )
        parts.append(
            f"### Scores (figure 5)\n\n{how}; wall time {scores['wall_time_s']:.0f} s. "
            "Source: `2-scores/scores.json`.\n\n![scores](figures/scores.png)"
        )
    total = setting.layout.num_layers * len(setting.layout.kinds)
    rows = [[i, ", ".join(kinds) or "(none)"] for i, kinds in enumerate(setting.layers)]
    counts = setting.kind_counts()
    top = sorted(counts, key=counts.get, reverse=True)[:2]
    note = (
        f"The setting keeps **{setting.num_modules} of {total} modules** "
        f"({100 * setting.num_modules / total:.0f}%); the kinds chosen most are "
        + " and ".join(f"{k} ({counts[k]} layers)" for k in top)
        + "."
    )
    if "engine" in setting.extra:
        note += (
            f" Selected for {setting.extra['engine']}: the best scores under "
            f"{setting.extra['packed_budget']} wrapped runtime module(s) per layer."
        )
    cost = engine_cost(setting.layout, setting.layers)
    everything = engine_cost(setting.layout, [list(setting.layout.kinds)] * len(setting.layers))
    cost_rows = [
        [name, c["wrapped_modules"], c["slices"], everything[name]["wrapped_modules"]]
        for name, c in cost.items()
    ]
    cost_table = md_table(
        ["engine", "wrapped modules", "LoRA slices", "all-module LoRA wraps"], cost_rows
    )
    parts += [
        "### Setting (figure 6)\n\nSource: `3-setting/setting.json`.\n\n"
        "![setting](figures/setting.png)\n\n" + md_table(["layer", "modules"], rows),
        "### Cost per generated token, by serving engine\n\nPEFT wraps each kept module; "
        "vLLM wraps a packed module (q/k/v, gate/up) when it holds a kept kind and computes "
        "all its slices.\n\n" + cost_table,
        "### Kinds per layer (figure 1)\n\n![kinds](figures/kinds.png)",
    ]
    return "\n\n".join(parts), [note]


def render_markdown(run: Path, figures: Path) -> str:
    cfg = read_json(run / "run.json", "run.json")["config"]
    step1 = read_json_if_present(RunLayout(run).full_lora / "run.json")
    setting_md, setting_notes = setting_section(run, figures)
    down_md, down_notes = downstream_section(run, cfg)
    dec_md, dec_notes = decode_section(run)
    head = [
        f"# FanLoRA run: {cfg['model']}",
        "",
        f"Tasks {', '.join(cfg['tasks'])}; methods {', '.join(cfg['methods'])}; "
        f"K_max {cfg['k_max']}; budget {cfg['budget']}; seed {cfg['seed']}.",
        "",
        "## What this run found",
        "",
    ]
    head += [f"- {n}" for n in setting_notes + down_notes + dec_notes] or ["- (nothing yet)"]
    if step1:
        head += [
            "",
            f"Step 1 tuned {step1['trainable_params']:,} parameters (LoRA rank "
            f"{step1['config']['rank']} on every module) for {step1['steps']} steps on "
            f"{step1['config']['data']}; best dev loss {step1['best_dev_loss']:.3f}.",
        ]
    body = [
        "## Steps 2-3: scores and setting",
        setting_md,
        "## Step 4: downstream (table 1)",
        "Each cell: the test metric in percent ± two standard errors where it is a "
        "proportion, from `5-eval/TASK/METHOD/metrics.json` (per-example answers in "
        "`predictions.jsonl` beside it). Trainable parameters from "
        "`4-downstream/TASK/METHOD/run.json`.",
        down_md,
    ]
    if dec_md:
        body += ["## Decoding (table 3)", dec_md]
    body += ["## Wall time per unit", md_table(["unit", "stage", "wall time"], stage_times(run))]
    return "\n".join(head) + "\n\n" + "\n\n".join(body) + "\n"


CSS = (
    "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;"
    "color:#222}table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;"
    "padding:.25rem .6rem;text-align:left}img{max-width:100%}code{background:#f3f3f3}"
)


def to_html(markdown_text: str, base: Path) -> str:
    """One HTML page: markdown rendered by python-markdown, figures inlined as data URIs."""
    body = markdown.markdown(markdown_text, extensions=["tables"])

    def inline(match: re.Match) -> str:
        data = base64.b64encode((base / match.group(1)).read_bytes()).decode()
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="([^"]+\.png)"', inline, body)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>FanLoRA report</title>"
        f"<style>{CSS}</style></head><body>{body}</body></html>\n"
    )


def write_report(run: str | Path, out: str | Path) -> list[Path]:
    """Render ``run``'s JSON into ``out``/report.md, report.html and figures/*.png."""
    run, out = Path(run), Path(out)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    text = render_markdown(run, figures)
    md = atomic_write_text(out / "report.md", text)
    html = atomic_write_text(out / "report.html", to_html(text, out))
    return [md, html, *sorted(figures.glob("*.png"))]
