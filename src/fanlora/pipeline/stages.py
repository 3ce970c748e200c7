"""A run folder made of units of work that are skipped when done and redone when stale.

A unit (one training run, one evaluation, ...) lives in ``RUN/<unit name>/`` and, when it
finishes, writes ``stage.json`` there: its key, the sha256 of each output file and a
summary. The key is ``sha256(format version, RESULTS_VERSION, unit params, keys of the
units it reads)``,
so a changed config invalidates the unit and everything downstream of it, and nothing
else. A unit is done when its record carries the current key and every listed output
still has its recorded hash: an output deleted or edited by hand is recomputed. An
interrupted unit (no record, or a record of status "running" with the same key) is
resumed; one whose key changed is cleared first, since its partial state is stale.

Written by hand: workflow tools (snakemake, luigi, prefect) would add a scheduler and
their own config language for what is a sequential list of a dozen units.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from fanlora import __version__
from fanlora.errors import FanLoRAError
from fanlora.utils.io import atomic_write_json, read_json

RUN_FORMAT = "fanlora-run"
RUN_FORMAT_VERSION = 1
STAGES = ("full-lora", "scores", "setting", "downstream", "eval", "decode", "report")
# The version of what a unit computes. Bump it with any change that alters a finished
# unit's numbers (a fix to training, scoring or evaluation): every unit key changes, so
# old units are recomputed and `reuse:` never copies them into a new run.
#   1: up to the 8-step results of issue 7
#   2: issue 15's fixes (losses from logits, alpha rule, seeded dev rows, truncation
#      around the answer, matched budgets, acc_norm, fast-scoring arguments, racing rule)
RESULTS_VERSION = 2


@dataclass
class Unit:
    """One piece of work: ``run(folder)`` writes ``outputs`` (paths relative to folder)
    and returns a JSON-able summary."""

    name: str
    stage: str
    params: dict
    run: Callable[[Path], dict]
    outputs: tuple[str, ...]
    deps: tuple[str, ...] = ()
    collective: bool = False  # run by every process (training, scoring), else the main one
    reads_weights: bool = True  # reads its deps' files; False: their records only (report)
    key: str = field(default="", init=False)


def code_version() -> str:
    """fanlora's version plus the last git commit that changed its source tree (``src``),
    when there is one: committing results, configs or docs between two sittings of a grid
    does not make its runs look like the work of different code."""
    root = Path(__file__).resolve().parents[3]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "log", "-1", "--format=%h", "--", "src"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "src"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        if not commit.stdout.strip():  # a repository that does not hold this source
            return __version__
        return f"{__version__}+{commit.stdout.strip()}" + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return __version__


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def as_written(path: Path, digest: str | None) -> bool:
    """Whether ``path`` is there with the hash recorded when its unit wrote it."""
    return path.is_file() and file_hash(path) == digest


def unit_key(unit: Unit, dep_keys: list[str]) -> str:
    blob = json.dumps(
        [RUN_FORMAT_VERSION, RESULTS_VERSION, unit.params, dep_keys], sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def assign_keys(units: list[Unit]) -> None:
    """Set every unit's key, in order (a unit's deps come before it)."""
    keys: dict[str, str] = {}
    for unit in units:
        unit.key = unit_key(unit, [keys[d] for d in unit.deps])
        keys[unit.name] = unit.key


class RunDir:
    """``RUN/run.json`` (format, version, config) and the units' folders and records.

    ``run.json``'s ``code`` is the code version that created the run and is kept when
    the run is opened again; each unit's record carries the ``code`` that computed it
    (:meth:`finish`), which is what tells a grid resumed across a change apart."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.run_json = self.path / "run.json"

    @cached_property
    def code(self) -> str:
        return code_version()

    def open(self, config: dict) -> None:
        """Create the folder, or check an existing one was made by a compatible fanlora."""
        created = self.code
        if self.run_json.is_file():
            doc = read_json(self.run_json, "run.json")
            created = doc.get("code", created)
            if doc.get("format") != RUN_FORMAT or doc.get("format_version") != RUN_FORMAT_VERSION:
                raise FanLoRAError(
                    f"{self.path} was made by fanlora {doc.get('fanlora', '?')} (run format "
                    f"{doc.get('format_version', '?')}); this fanlora {__version__} reads "
                    f"format {RUN_FORMAT_VERSION}. Use a new --out folder"
                )
        elif self.path.is_dir() and any(self.path.iterdir()):
            raise FanLoRAError(
                f"{self.path} is not empty and holds no fanlora run (no "
                "run.json); choose another --out folder"
            )
        atomic_write_json(
            self.run_json,
            {
                "format": RUN_FORMAT,
                "format_version": RUN_FORMAT_VERSION,
                "fanlora": __version__,
                "code": created,
                "opened_by": self.code,
                "config": config,
            },
        )

    def folder(self, unit: Unit) -> Path:
        return self.path / unit.name

    def record(self, unit: Unit) -> dict | None:
        path = self.folder(unit) / "stage.json"
        return read_json(path, "stage record") if path.is_file() else None

    def is_done(self, unit: Unit) -> bool:
        """Finished with this key, and every output still as it was written (or pruned on
        purpose, see :meth:`prune`)."""
        rec = self.record(unit)
        if not rec or rec.get("status") != "finished" or rec.get("key") != unit.key:
            return False
        folder, pruned = self.folder(unit), set(rec.get("pruned", []))
        return all(
            p in pruned or as_written(folder / p, h) for p, h in rec.get("outputs", {}).items()
        )

    def pruned(self, unit: Unit) -> list[str]:
        """The outputs of a finished unit that were pruned (removed on purpose) and are still
        missing: one put back with its recorded hash (from git history) is there again."""
        rec = self.record(unit)
        if not rec or rec.get("key") != unit.key:
            return []
        folder, hashes = self.folder(unit), rec.get("outputs", {})
        return [p for p in rec.get("pruned", []) if not as_written(folder / p, hashes.get(p))]

    def prune(self, unit: Unit, names: tuple[str, ...]) -> list[str]:
        """Remove outputs ``names`` (and the training folders ``checkpoints`` and ``best``,
        which only a running unit needs) of a done unit, keeping
        their hashes: the unit stays done for the units that read it, and is recomputed
        only if a unit that must run needs them (:func:`run_units`). Returns what went."""
        if not self.is_done(unit):
            return []
        folder, rec = self.folder(unit), self.record(unit)
        gone = [n for n in names if n in rec["outputs"] and (folder / n).is_file()]
        for name in gone:
            (folder / name).unlink()
        for scratch in ("checkpoints", "best"):
            shutil.rmtree(folder / scratch, ignore_errors=True)
        if gone:
            rec["pruned"] = sorted({*rec.get("pruned", []), *gone})
            atomic_write_json(folder / "stage.json", rec)
        return gone

    def prepare(self, unit: Unit, force: bool) -> str:
        """Clear a stale or forced unit folder; say whether the unit starts or resumes."""
        folder, rec = self.folder(unit), self.record(unit)
        stale = rec is not None and (rec.get("key") != unit.key or rec.get("status") == "finished")
        if force or stale:
            shutil.rmtree(folder, ignore_errors=True)
        resumed = folder.is_dir() and any(folder.iterdir())
        folder.mkdir(parents=True, exist_ok=True)
        running = {"unit": unit.name, "stage": unit.stage, "key": unit.key, "status": "running"}
        atomic_write_json(folder / "stage.json", running)
        return "resumes" if resumed else "starts"

    def finish(self, unit: Unit, summary: dict, wall: float) -> dict:
        folder = self.folder(unit)
        missing = [p for p in unit.outputs if not (folder / p).is_file()]
        if missing:
            raise FanLoRAError(f"unit {unit.name} finished without writing {missing}")
        record = {
            "unit": unit.name,
            "stage": unit.stage,
            "key": unit.key,
            "status": "finished",
            "params": unit.params,
            "deps": list(unit.deps),
            "outputs": {p: file_hash(folder / p) for p in unit.outputs},
            "wall_time_s": wall,
            "fanlora": __version__,
            "code": self.code,
            "results_version": RESULTS_VERSION,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "summary": summary,
        }
        atomic_write_json(folder / "stage.json", record)
        return record


def reuse_unit(run_dir: RunDir, unit: Unit, others: list[RunDir]) -> str | None:
    """Copy a finished unit with the same key from another run folder (hard links where
    the file system allows): the same key means the same computation. Returns its source."""
    for other in others:
        if other.path.resolve() != run_dir.path.resolve() and other.is_done(unit):
            target = run_dir.folder(unit)
            shutil.rmtree(target, ignore_errors=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".tmp-{target.name}")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(other.folder(unit), tmp, copy_function=_link_or_copy)
            record = read_json(tmp / "stage.json", "stage record")
            if "code" not in record:  # made before units carried their code
                code = read_json(other.run_json, "run.json").get("code", "?")
                atomic_write_json(tmp / "stage.json", {**record, "code": code})
            tmp.rename(target)
            return str(other.folder(unit))
    return None


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class OneProcess:
    """The process group of a run without torchrun: one process, nothing to wait for."""

    is_main_process = True

    def wait_for_everyone(self) -> None:
        pass


def run_units(
    run_dir: RunDir,
    units: list[Unit],
    start_from: str | None = None,
    log=print,
    reuse: list[RunDir] = (),
    ranks=None,
) -> dict[str, dict]:
    """Run ``units`` in order (each after its deps), skipping the done ones; return the
    records. ``start_from``: units of this stage and later ones are redone regardless.
    ``reuse``: other run folders whose finished units with the same key are copied.
    ``ranks`` (accelerate's process state under torchrun): every process decides alike,
    the main one alone writes records and runs units that are not ``collective``."""
    if start_from is not None and start_from not in STAGES:
        raise FanLoRAError(f"unknown stage {start_from!r} for --from; stages: {', '.join(STAGES)}")
    ranks = ranks or OneProcess()
    forced = set(STAGES[STAGES.index(start_from) :]) if start_from else set()
    records: dict[str, dict] = {}
    ran: set[str] = set()  # a unit whose input was just recomputed is recomputed too
    assign_keys(units)
    revive = revived(run_dir, units, forced)
    for i, unit in enumerate(units, 1):
        head = f"[{i}/{len(units)}] {unit.name}"
        redo = unit.stage in forced or unit.name in revive or any(d in ran for d in unit.deps)
        settled = None if redo else _settled(run_dir, unit, reuse, ranks)
        if settled is not None:
            records[unit.name] = run_dir.record(unit)
            wall = records[unit.name]["wall_time_s"]
            log(f"{head}: " + (f"done ({wall:.0f} s), skipped" if settled == "done" else settled))
            continue
        if ranks.is_main_process:
            log(f"{head}: {run_dir.prepare(unit, redo)}")
        ranks.wait_for_everyone()
        ran.add(unit.name)
        started = time.time()
        summary = None
        if unit.collective or ranks.is_main_process:
            summary = _run(unit, run_dir)
        ranks.wait_for_everyone()
        if ranks.is_main_process:
            run_dir.finish(unit, summary or {}, time.time() - started)
            log(f"{head}: finished in {time.time() - started:.0f} s")
        ranks.wait_for_everyone()
        records[unit.name] = run_dir.record(unit)
    return records


def revived(run_dir: RunDir, units: list[Unit], forced: set[str]) -> set[str]:
    """Done units with pruned outputs that a unit which must run reads: recomputed first.
    (Everything reading a recomputed unit is recomputed too, so this is a fixed point.)"""
    by_name = {u.name: u for u in units}
    revive: set[str] = set()
    changed = True
    while changed:
        changed = False
        for unit in units:
            runs = (
                unit.stage in forced
                or unit.name in revive
                or not run_dir.is_done(unit)
                or any(d in revive for d in unit.deps)
            )
            if not runs or not unit.reads_weights:
                continue
            for dep in unit.deps:
                if dep not in revive and run_dir.pruned(by_name[dep]):
                    revive.add(dep)
                    changed = True
    return revive


def _settled(run_dir: RunDir, unit: Unit, reuse: list[RunDir], ranks) -> str | None:
    """ "done" when ``unit`` is done here, "same unit as SOURCE, copied" when the main
    process copied it from a reuse folder, None when it must run. Every process passes the
    same barriers, and none writes before all have looked."""
    done = run_dir.is_done(unit)
    ranks.wait_for_everyone()
    source = None
    if not done and ranks.is_main_process:
        source = reuse_unit(run_dir, unit, reuse)
    ranks.wait_for_everyone()
    if done:
        return "done"
    if run_dir.is_done(unit):
        return f"same unit as {source or 'another run'}, copied"
    return None


def _run(unit: Unit, run_dir: RunDir) -> dict:
    try:
        return unit.run(run_dir.folder(unit))
    except OSError as exc:  # a full disk, say: finished units are intact
        raise FanLoRAError(
            f"unit {unit.name} failed: {exc}. Units finished before it "
            "are intact; fix the cause and run again to resume"
        ) from exc
