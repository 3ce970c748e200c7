"""``run_pipeline(cfg, out)``: the paper's four steps, evaluation, decoding and the report.

Units, in order (folder under RUN_DIR: what it holds)::

    1-full-lora/                 step 1: LoRA rank r0 on every module, instruction set
    2-scores/scores.json         step 2: AB-score of every module (+ heatmap)
    3-setting/setting.json       step 3: at most K_max modules per layer
    4-downstream/TASK/METHOD/    step 4: each method tuned on each task
    5-eval/TASK/METHOD/          metrics.json + predictions.jsonl on the test split
    6-decode/decode.json         decoding speed of the base and each method (first task)
    report/report.{md,html}      everything above, rendered from the JSON files
"""

from __future__ import annotations

from pathlib import Path

from fanlora.data.registry import data_identity
from fanlora.engines import describe_cost
from fanlora.evaluate.run import EvalConfig, evaluate
from fanlora.modules.discovery import ModuleLayout
from fanlora.pipeline.checks import check_run, own_metric
from fanlora.pipeline.config import RunConfig
from fanlora.pipeline.decoding import decode_variants
from fanlora.pipeline.stages import STAGES, RunDir, Unit, run_units
from fanlora.report.render import write_report
from fanlora.run_layout import (
    DECODE,
    FULL_LORA,
    REPORT,
    SCORES,
    SETTING,
    RunLayout,
    downstream_unit,
)
from fanlora.run_layout import eval_unit as eval_unit_name
from fanlora.score.run import ScoreConfig, score
from fanlora.select import FanLoRASetting, engine_setting, parse_scores
from fanlora.train.config import TrainConfig
from fanlora.train.methods import get_method
from fanlora.train.run import train
from fanlora.utils.devices import is_main_rank, process_state
from fanlora.utils.io import read_json

TRAIN_OUTPUTS = ("adapter_config.json", "adapter_model.safetensors", "run.json")
TRAIN_SUMMARY = ("trainable_params", "steps", "best_dev_loss", "train_examples", "wall_time_s")
TEST_DRAW_SEED = 0


def train_unit(
    cfg: RunConfig,
    run_dir: RunDir,
    name: str,
    stage: str,
    section: dict,
    setting_unit: str | None = None,
) -> Unit:
    """A `fanlora train` run; the method and data live in ``section``; a setting unit, when
    named, is read (fanlora, random) and sets the matched budget (lora, adalora)."""
    params = {**placed(cfg), **section}

    def run(folder: Path) -> dict:
        extra = {}
        if setting_unit:
            extra["setting"] = str(RunLayout(run_dir.path).setting)
        extra.update(matched_ranks(cfg, section, extra.get("setting"), _log(run_dir)))
        tc = TrainConfig(**{**params, **extra})
        record = train(tc, str(folder), resume=True, log=_log(run_dir))
        summary = {k: record.get(k) for k in TRAIN_SUMMARY}
        if "kept_params" in record:  # a method that prunes its ranks (AdaLoRA)
            summary["kept_params"] = record["kept_params"]
        return summary | {"method": tc.method, "rank": tc.rank, "data": tc.data}

    key_params = {**params, "budget": cfg.budget} if setting_unit else params
    key_params = with_data(key_params, params.get("data", "instruct"))
    if revision := get_method(section.get("method", "")).revision:
        key_params = {**key_params, "method_revision": revision}
    deps = (setting_unit,) if setting_unit else ()
    return Unit(name, stage, key_params, run, TRAIN_OUTPUTS, deps, collective=True)


def with_data(key_params: dict, data: str) -> dict:
    """A unit's key parameters plus its data's identity (a built task's sha256, a file's):
    the unit is redone when its data changes, even under the same name."""
    identity = data_identity(data)
    return {**key_params, "data_sha256": identity} if identity else key_params


def placed(cfg: RunConfig) -> dict:
    """The top-level options every stage shares: model, seed, device, precision (a stage's
    section may set its own precision, which wins: the callers put the section last)."""
    return {"model": cfg.model, "seed": cfg.seed, "device": cfg.device, "precision": cfg.precision}


def matched_ranks(cfg: RunConfig, section: dict, setting_path: str | None, log=print) -> dict:
    """With budget "matched", the options that give the method FanLoRA's trainable parameters
    at rank r1 (the section's ``rank``), by the method's own rule (:meth:`Method.match_budget`:
    LoRA ranks per module kind, AdaLoRA's average target rank, the random placement's
    rank)."""
    method = get_method(section.get("method", ""))
    if cfg.budget != "matched" or not method.matched or not setting_path:
        return {}
    setting = FanLoRASetting.load(setting_path)
    target = section.get("rank", TrainConfig.rank) * setting.params_per_rank()
    matched = method.match_budget(setting, target, section.get("seed", cfg.seed))
    if matched is None:
        return {}
    options, match = matched
    log(match.describe(f"matched budget, {method.name}"))
    return options


def uses_setting(cfg: RunConfig, method_name: str) -> bool:
    """Whether a step-4 unit of ``method_name`` reads step 3's setting: to train on it, or
    (budget "matched") to match its parameter count."""
    method = get_method(method_name)
    return method.needs_setting or (cfg.budget == "matched" and method.matched)


def _log(run_dir):
    def log(message: str) -> None:
        if not is_main_rank():  # one log under torchrun
            return
        print(message, flush=True)
        if run_dir is not None:
            with open(run_dir.path / "pipeline.log", "a", encoding="utf-8") as handle:
                handle.write(message + "\n")

    return log


def scores_unit(cfg: RunConfig, run_dir: RunDir) -> Unit:
    params = {**placed(cfg), "k_max": cfg.k_max, **cfg.section("scoring")}

    def run(folder: Path) -> dict:
        adapter = str(RunLayout(run_dir.path).full_lora)
        doc = score(
            ScoreConfig(**params, adapter=adapter), folder / "scores.json", log=_log(run_dir)
        )
        if doc is None:  # another process than the main one: its share is journalled
            return {}
        return {
            "method": doc["method"],
            "modules": len(doc["scores"]),
            "sequences": doc["validation"]["sequences"],
        }

    # Racing stops on the layer's top-K_max boundary, so adaptive scores depend on K_max;
    # exact scores do not (K_max only marks the heatmap), and are shared across K_max.
    key = params if params.get("adaptive") else {k: v for k, v in params.items() if k != "k_max"}
    key = with_data(key, params.get("data", "instruct"))
    return Unit(SCORES, "scores", key, run, ("scores.json",), (FULL_LORA,), collective=True)


def setting_unit(cfg: RunConfig, run_dir: RunDir) -> Unit:
    def run(folder: Path) -> dict:
        doc = read_json(RunLayout(run_dir.path).scores, "scores file")
        layout = ModuleLayout.from_dict(doc["layout"])
        records = parse_scores(doc, layout)
        setting = engine_setting(
            records, layout, cfg.k_max, cfg.model, cfg.engine, cfg.packed_budget
        )
        setting.extra["scores_file"] = f"../{SCORES}/scores.json"
        setting.save(folder / "setting.json")
        _log(run_dir)(
            f"setting: {setting.num_modules} modules; layers per kind {setting.kind_counts()}; "
            f"cost per token: {describe_cost(setting.extra['cost'])}"
        )
        return {"modules": setting.num_modules, "kind_counts": setting.kind_counts()}

    params = {"k_max": cfg.k_max}
    if cfg.engine is not None:  # only then: the paper's setting keeps its unit key
        params |= {"engine": cfg.engine, "packed_budget": cfg.packed_budget or 1}
    return Unit(SETTING, "setting", params, run, ("setting.json",), (SCORES,))


def eval_unit(cfg: RunConfig, run_dir: RunDir, task: str, method: str) -> Unit:
    adapter_unit = None if method == "base" else downstream_unit(task, method)
    # the test rows are drawn with a fixed seed, not the run's: every method of every seed is
    # evaluated on the same rows, which the paired statistics need
    params = {
        **placed(cfg),
        "task": task,
        "split": "test",
        "seed": TEST_DRAW_SEED,
        **cfg.section("evaluation"),
    }
    # a task's own metric wins over evaluation.metric, which is for tasks that have none
    if task in (cfg.task_metrics or {}):
        params["metric"] = cfg.task_metrics[task]
    elif own_metric(task):
        params.pop("metric", None)

    def run(folder: Path) -> dict:
        adapter = str(run_dir.path / adapter_unit) if adapter_unit else None
        doc = evaluate(EvalConfig(**params, adapter=adapter), folder, log=_log(run_dir))
        return {"metric": doc["metric"], "value": doc["value"], "examples": doc["examples"]}

    deps = (adapter_unit,) if adapter_unit else ()
    outputs = ("metrics.json", "predictions.jsonl")
    unit = Unit(eval_unit_name(task, method), "eval", with_data(params, task), run, outputs, deps)
    return unit


def decode_unit(cfg: RunConfig, run_dir: RunDir) -> Unit:
    task = cfg.tasks[0]
    params = {
        "model": cfg.model,
        "device": cfg.device,
        "task": task,
        "methods": cfg.methods,
        **cfg.section("decoding"),
    }

    def run(folder: Path) -> dict:
        adapters = {m: RunLayout(run_dir.path).downstream(task, m) for m in cfg.methods}
        doc = decode_variants(cfg.model, adapters, params, folder / "decode.json")
        return {"rows": len(doc["rows"])}

    deps = tuple(downstream_unit(task, m) for m in cfg.methods)
    return Unit(DECODE, "decode", params, run, ("decode.json",), deps)


def report_unit(run_dir: RunDir, deps: list[str]) -> Unit:
    def run(folder: Path) -> dict:
        paths = write_report(run_dir.path, folder)
        return {"files": [str(p.relative_to(folder)) for p in paths]}

    outputs = ("report.md", "report.html")
    # it renders records and JSON files, never adapter weights: pruned units stay pruned
    return Unit(
        REPORT, "report", {"report_version": 1}, run, outputs, tuple(deps), reads_weights=False
    )


def build_units(cfg: RunConfig, run_dir: RunDir) -> list[Unit]:
    """Every unit of the run, in an order that respects their dependencies."""
    step1 = {"data": "instruct", **cfg.section("full_lora"), "method": "full-lora"}
    units = [
        train_unit(cfg, run_dir, FULL_LORA, "full-lora", step1),
        scores_unit(cfg, run_dir),
        setting_unit(cfg, run_dir),
    ]
    for task in cfg.tasks:
        for method in cfg.methods:
            section = {**cfg.section("downstream"), "data": task, "method": method}
            if method in (cfg.method_lr or {}):
                section["lr"] = cfg.method_lr[method]
            units.append(
                train_unit(
                    cfg,
                    run_dir,
                    downstream_unit(task, method),
                    "downstream",
                    section,
                    SETTING if uses_setting(cfg, method) else None,
                )
            )
    for task in cfg.tasks:
        for method in (["base"] if cfg.eval_base else []) + cfg.methods:
            units.append(eval_unit(cfg, run_dir, task, method))
    if cfg.decode:
        units.append(decode_unit(cfg, run_dir))
    last = STAGES.index(cfg.until)
    units = [u for u in units if STAGES.index(u.stage) <= last]
    units.append(report_unit(run_dir, [u.name for u in units]))
    return units


def run_pipeline(
    cfg: RunConfig, out: str | Path, start_from: str | None = None, reuse: list[str | Path] = ()
) -> dict:
    """Run (or resume) the whole pipeline into ``out``; return the unit records. Finished
    units with the same key in the ``reuse`` run folders are copied instead of recomputed.
    Under torchrun (or accelerate launch), training units run on every process (DDP) and
    scoring shares its modules out; the other units run on the main process alone."""
    ranks, _ = process_state(cfg.runtime())
    check_run(cfg)  # a refused run creates nothing
    run_dir = RunDir(out)
    if ranks.is_main_process:
        run_dir.open(cfg.to_dict())
    ranks.wait_for_everyone()
    units = build_units(cfg, run_dir)
    others = [RunDir(p) for p in reuse]
    records = run_units(run_dir, units, start_from, _log(run_dir), others, ranks)
    _log(run_dir)(f"report: {run_dir.path / 'report' / 'report.html'}")
    return records
