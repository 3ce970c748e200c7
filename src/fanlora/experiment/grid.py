"""``fanlora experiment CONFIG.yaml``: a grid of ``fanlora run`` pipelines.

An experiment file::

    name: table1
    run: ../tiny.yaml          # the base run config (relative to this file), or a mapping
    out: results/runs/table1   # one run folder per grid point below this (relative to cwd)
    reuse: [runs/demo]         # optional: run folders (or other experiments' output folders)
                               # whose finished units are copied
    compare: engine            # optional: a grid key whose first value each other value is
                               # compared with, method by method, paired by seed and row
    prune: [downstream]        # optional: once a point is finished, remove the adapter
                               # weights of these stages (full-lora, downstream) and every
                               # training checkpoint (hashes kept), so that the grid's
                               # folders are small enough to commit
    grid:                      # every combination; keys are run-config keys, and
      seed: [0, 1, 2]          # "section.key" for a stage's option
      downstream.rank: [6, 12]
      k_max+downstream.rank: [[1, 24], [2, 12]]   # linked: set together

Every point's config is built and checked before anything runs, so a typo in a method,
task or key fails at once. Points run in order; a finished point is skipped (its units are
done), a unit another point already computed with the same key is copied, and a point
that crashes is recorded and the grid goes on. Then every run is aggregated
(:mod:`fanlora.experiment.aggregate`). ``--only seed=0`` runs only the points with those
values (a sitting's share of a long grid); the aggregation still reads every point's folder.
"""

from __future__ import annotations

import itertools
import traceback
from dataclasses import dataclass
from pathlib import Path

import yaml

from fanlora.config import load_yaml
from fanlora.errors import FanLoRAError
from fanlora.experiment.aggregate import aggregate, is_seed, write_results
from fanlora.experiment.plan import (
    COSTS_FILE,
    describe,
    load_costs,
    machine_note,
    plan,
    total_hours,
)
from fanlora.pipeline.config import RunConfig, run_config_from
from fanlora.pipeline.run import build_units, run_pipeline
from fanlora.pipeline.stages import RunDir, assign_keys


@dataclass
class Point:
    """One grid point: its folder name, the values it sets, its run config."""

    name: str
    values: dict
    config: RunConfig

    def flat_values(self) -> dict:
        """The grid values, linked axes split: ``{"seed+decode": [0, True]}`` gives
        ``{"seed": 0, "decode": True}``."""
        return {k: v for key, value in self.values.items() for k, v in linked_values(key, value)}


def _base_run(doc: dict, path: Path) -> dict:
    run = doc.get("run")
    if isinstance(run, str):
        return load_yaml((path.parent / run).resolve())
    if isinstance(run, dict):
        return dict(run)
    raise FanLoRAError(f"{path}: 'run' must be a run-config file or a mapping")


def _apply(data: dict, key: str, value, source: str) -> dict:
    data = {**data, **{k: dict(v) for k, v in data.items() if isinstance(v, dict)}}
    if "." in key:
        section, option = key.split(".", 1)
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise FanLoRAError(f"{source}: grid key {key!r}: {section!r} is not a section")
        data[section][option] = value
    else:
        data[key] = value
    return data


def linked_values(key: str, value, source: str = "grid") -> list[tuple[str, object]]:
    """``"k_max+downstream.rank": [2, 12]`` sets both keys together (a linked grid axis)."""
    keys = key.split("+")
    if len(keys) == 1:
        return [(key, value)]
    if not isinstance(value, list) or len(value) != len(keys):
        raise FanLoRAError(
            f"{source}: grid key {key!r} links {len(keys)} keys, so each of "
            f"its values must be a list of {len(keys)}; got {value!r}"
        )
    return list(zip(keys, value, strict=True))


def point_name(values: dict) -> str:
    """``seed=0,downstream.rank=6`` (the grid's varying keys), safe as a folder name."""
    text = ",".join(
        f"{k}={'+'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in values.items()
    )
    return "".join(c if c.isalnum() or c in "=,.+-_" else "_" for c in text) or "default"


def reuse_folders(path: str | Path) -> list[Path]:
    """Extra run folders (``reuse:`` in the file) whose finished units may be copied."""
    doc = load_yaml(path)
    extra = doc.get("reuse") or []
    if not isinstance(extra, list):
        raise FanLoRAError(f"{path}: 'reuse' must be a list of run folders")
    return [run for p in extra for run in run_folders(Path(p))]


def compare_axis(path: str | Path) -> tuple[str, list] | None:
    """(``compare:`` key, its grid values, ``compare_reference:`` first) of the experiment
    file, or None. The key may be linked (``k_max+downstream.rank``), not with the seed."""
    doc = load_yaml(path)
    axis = doc.get("compare")
    if axis is None:
        if "compare_reference" in doc:
            raise FanLoRAError(f"{path}: 'compare_reference' needs a 'compare' key")
        return None
    values = (doc.get("grid") or {}).get(axis)
    if not isinstance(values, list) or len(values) < 2 or is_seed(str(axis)):
        raise FanLoRAError(
            f"{path}: 'compare' must name a grid key with 2 or more values, not the seed"
        )
    reference = doc.get("compare_reference", values[0])
    if reference not in values:
        raise FanLoRAError(
            f"{path}: 'compare_reference' {reference!r} is not one of {axis}'s values {values}"
        )
    return str(axis), [reference, *(v for v in values if v != reference)]


def run_folders(path: Path) -> list[Path]:
    """``path`` itself if it is a run folder; the run folders in it if it is another
    experiment's output folder (``reuse: [results/runs/table4-stability]``)."""
    if (path / "run.json").is_file() or not path.is_dir():
        return [path]
    return sorted(p for p in path.iterdir() if (p / "run.json").is_file()) or [path]


def load_experiment(path: str | Path) -> tuple[str, Path, list[Point]]:
    """(name, output folder, points), every point's config validated."""
    path = Path(path)
    doc = load_yaml(path)
    known = ("name", "run", "out", "grid", "reuse", "compare", "compare_reference", "prune")
    unknown = sorted(set(doc) - set(known))
    if unknown:
        raise FanLoRAError(f"{path}: unknown key(s) {unknown}; known: {', '.join(known)}")
    compare_axis(path)  # a bad `compare` or `prune` fails before anything runs
    prune_stages(path)
    name = str(doc.get("name") or path.stem)
    out = Path(doc.get("out") or f"results/runs/{name}")
    grid = doc.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise FanLoRAError(f"{path}: 'grid' must map keys to non-empty lists of values")
    base = _base_run(doc, path)
    points = []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo, strict=True))
        varied = {k: v for k, v in values.items() if len(grid[k]) > 1}
        data = base
        for key, value in values.items():
            for sub, v in linked_values(key, value, str(path)):
                data = _apply(data, sub, v, str(path))
        where = f"{path} (grid point {point_name(values)})"
        points.append(Point(point_name(varied), values, run_config_from(data, where)))
    return name, out, points


def select_points(points: list[Point], only: list[str] | None) -> list[Point]:
    """The points whose grid values match every ``KEY=VALUE`` of ``only`` (a linked key's
    parts may be named alone: ``seed=0`` matches ``seed+decode: [0, true]``); a key that
    is not in the grid, or a selection that matches no point, is refused."""
    if not only:
        return points
    keys = {k for p in points for k in p.flat_values()}
    chosen = points
    for item in only:
        key, sep, text = item.partition("=")
        if not sep or key not in keys:
            raise FanLoRAError(
                f"--only {item!r}: give KEY=VALUE with KEY one of the grid's keys "
                f"({', '.join(sorted(keys))})"
            )
        value = yaml.safe_load(text)
        chosen = [p for p in chosen if p.flat_values()[key] == value]
    if not chosen:
        raise FanLoRAError(f"--only {' '.join(only)}: no grid point has these values")
    return chosen


def check_plan(
    points, out: Path, reuse: list[Path], budget_hours: float | None, costs_path=None, log=print
) -> float | None:
    """Print the units left and their estimated cost; refuse (before anything is created) a
    grid estimated above ``budget_hours``. Returns the estimated hours (None: no costs)."""
    path = Path(costs_path) if costs_path else COSTS_FILE
    if not path.is_file():
        log(f"no measured unit costs ({path}): the grid's cost is not estimated")
        return None
    costs = load_costs(path)
    todo = plan(points, out, reuse, costs)
    log(f"plan: units left to compute, estimated from {path}:\n{describe(todo)}")
    if note := machine_note(costs):
        log(note)
    hours = total_hours(todo)
    if budget_hours is not None and hours > budget_hours:
        raise FanLoRAError(
            f"the grid's remaining units are estimated at {hours:.1f} h, above the budget of "
            f"{budget_hours:g} h: pass --yes to run it anyway, raise --budget-hours, or make "
            "the grid smaller"
        )
    return hours


TRAINING_STAGES = ("full-lora", "downstream")


def prune_stages(path: str | Path) -> list[str]:
    """The experiment file's ``prune:`` list of training stages (checked)."""
    stages = load_yaml(path).get("prune") or []
    if not isinstance(stages, list) or not set(stages) <= set(TRAINING_STAGES):
        raise FanLoRAError(f"{path}: 'prune' must be a list of {', '.join(TRAINING_STAGES)}")
    return stages


def prune_point(point: Point, folder: Path, stages: list[str]) -> int:
    """Remove a finished point's adapter weights of ``stages`` and its training checkpoints
    (hashes stay in the records, :meth:`RunDir.prune`); the number of files removed."""
    run_dir = RunDir(folder)
    units = build_units(point.config, run_dir)
    assign_keys(units)
    removed = 0
    for unit in units:
        if unit.stage in TRAINING_STAGES:
            weights = ("adapter_model.safetensors",) if unit.stage in stages else ()
            removed += len(run_dir.prune(unit, weights))
    return removed


def run_experiment(
    path: str | Path,
    log=print,
    aggregate_only: bool = False,
    budget_hours: float | None = None,
    costs_path=None,
    only: list[str] | None = None,
) -> dict:
    """Run every point (skipping finished ones), or those ``only`` selects, then aggregate
    every point; return the results. With ``budget_hours``, a grid whose remaining units
    are estimated above it is refused."""
    name, out, points = load_experiment(path)
    chosen = [] if aggregate_only else select_points(points, only)
    log(f"experiment {name}: {len(points)} run(s) under {out}, {len(chosen)} to run now")
    failures = {}
    folders = [out / p.name for p in points] + reuse_folders(path)
    if chosen:
        check_plan(chosen, out, reuse_folders(path), budget_hours, costs_path, log)
    for i, point in enumerate(chosen, 1):
        folder = out / point.name
        log(f"=== [{i}/{len(chosen)}] {point.name}")
        try:
            run_pipeline(point.config, folder, reuse=folders)
            if stages := prune_stages(path):
                log(f"pruned {prune_point(point, folder, stages)} file(s) of {point.name}")
        except (FanLoRAError, RuntimeError, ValueError, OSError) as exc:
            failures[point.name] = f"{type(exc).__name__}: {exc}"
            (folder).mkdir(parents=True, exist_ok=True)
            (folder / "failure.txt").write_text(traceback.format_exc())
            log(f"run {point.name} failed, the grid goes on: {failures[point.name]}")
    results = aggregate(name, out, points, compare_axis(path))
    results["failures_this_call"] = failures
    write_results(results, out)
    return results
