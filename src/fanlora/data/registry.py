"""The datasets fanlora knows, their deterministic splits, and loading by name or file.

``fanlora data prepare`` builds each task into ``$FANLORA_HOME/data/tasks/<name>/<split>.jsonl``
(a task at a time, each through a temporary folder) and records in ``manifest.json`` its row
counts, the packages (name, version, sha256) it came from and the sha256 of its split files,
so a task's data has an identity that the pipeline's unit keys carry. A task whose package
cannot be had is named and skipped; the others still build, and built ones are kept.
Splits: a split the source fixes (``meta["split"]``), else
:func:`fanlora.data.example.split_of` with ``SPLIT_SEED`` and the task's fractions, on the
example's group (so they do not depend on file order).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fanlora.data.example import SPLITS, Example, split_of
from fanlora.data.hf_data import is_hf_data, load_hf_split
from fanlora.data.packages import MissingPackage, Packages
from fanlora.data.user_files import USER_SUFFIXES, load_user_file
from fanlora.errors import FanLoRAError
from fanlora.paths import fanlora_home
from fanlora.utils.io import atomic_dir, atomic_write_json
from fanlora.utils.registry import add

SPLIT_SEED = 0
TASKS_FORMAT_VERSION = 2
DATA_FORMS = (
    "a .jsonl/.json/.csv file, a .parquet/.arrow file, a save_to_disk folder, a .yaml data "
    "spec or a Hub id (owner/name[:config])"
)


@dataclass(frozen=True)
class TaskSpec:
    """A dataset: how to build it, how to split it, how to score it.

    ``builder(packages)`` returns every example of the dataset, reading the files it needs
    through :class:`~fanlora.data.packages.Packages`; it may raise :class:`FanLoRAError`
    saying how to get its data. A new dataset is one :func:`register_task` call in the file
    of its source (``fanlora.data.sources``). ``optional``: built only when its data is at
    hand (BIG-bench, whose archive the index no longer serves).
    """

    name: str
    builder: Callable[[Packages], list[Example]]
    fractions: tuple[float, float, float]  # train, dev, test, for rows without a fixed split
    metric: str  # loss | f1_em | sql_em | number_acc | accuracy
    role: str  # the paper's dataset this one stands in for
    source: str
    # Evaluation's default tokens per sequence: the smallest length at which at least 90%
    # of the test prompts that hold a reference answer still hold it after truncation, on
    # SmolLM2's tokenizer (bench/truncation.py: SQuAD 69.8% at 192, 92.6% at 256).
    max_length: int = 192
    license: str = ""
    packages: tuple[str, ...] = ()  # the pinned packages it reads (name==version)
    optional: bool = False
    available: Callable[[Packages], bool] | None = None  # optional tasks: is the data here


TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Make ``spec`` a dataset name every command accepts (built by `fanlora data prepare`)."""
    return add(TASKS, spec.name, spec, "dataset")


def data_root() -> Path:
    return fanlora_home() / "data"


def tasks_dir() -> Path:
    return data_root() / "tasks"


def manifest_path() -> Path:
    return tasks_dir() / "manifest.json"


def build_tasks(
    packages: Packages, names: list[str] | None = None, force: bool = False, log=print
) -> tuple[dict, list[MissingPackage]]:
    """Build the tasks ``names`` (default: every task, optional ones only when their data is
    at hand), skipping built ones unless ``force``; return (manifest, what was missing).
    Each task is written through a temporary folder and the manifest updated after it, so
    nothing built is lost when a later task fails."""
    manifest = read_manifest() or new_manifest()
    missing = []
    for spec in [TASKS[n] for n in names] if names else list(TASKS.values()):
        if spec.name in manifest["tasks"] and not force and (tasks_dir() / spec.name).is_dir():
            continue
        if spec.optional and not names and not (spec.available and spec.available(packages)):
            continue
        packages.used = {}
        try:
            examples = spec.builder(packages)
        except MissingPackage as exc:
            missing.append(exc)
            log(f"  {spec.name:<9} skipped: {exc.wheel.spec} cannot be had")
            continue
        manifest["tasks"][spec.name] = build_task(spec, examples, packages)
        atomic_write_json(manifest_path(), manifest)
        log(f"  {spec.name:<9} {manifest['tasks'][spec.name]['counts']}")
    return manifest, missing


def new_manifest() -> dict:
    return {"format_version": TASKS_FORMAT_VERSION, "split_seed": SPLIT_SEED, "tasks": {}}


def build_task(spec: TaskSpec, examples: list[Example], packages: Packages) -> dict:
    """Write one task's splits (atomically); its manifest entry."""
    with atomic_dir(tasks_dir() / spec.name) as work:
        counts, digest = write_splits(work, examples, spec.fractions)
    return {
        "counts": counts,
        "sha256": digest,
        "packages": [w.to_dict() for w in packages.used.values()],
        "source": spec.source,
    }


def split_for(example: Example, fractions) -> str:
    fixed = example.meta.get("split")
    return (
        fixed if fixed in SPLITS else split_of(example.group or example.uid, fractions, SPLIT_SEED)
    )


def write_splits(folder: Path, examples: list[Example], fractions) -> tuple[dict[str, int], str]:
    """Write ``<split>.jsonl`` files for ``examples``; (rows per split, sha256 of the files)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {s: [] for s in SPLITS}
    for example in examples:
        lines[split_for(example, fractions)].append(
            json.dumps(example.to_dict(), ensure_ascii=False) + "\n"
        )
    digest = hashlib.sha256()
    for split, rows in lines.items():
        text = "".join(rows)
        (folder / f"{split}.jsonl").write_text(text, encoding="utf-8")
        digest.update(f"{split}\0{text}".encode())
    return {split: len(rows) for split, rows in lines.items()}, digest.hexdigest()


def read_manifest() -> dict | None:
    try:
        manifest = json.loads(manifest_path().read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return manifest if manifest.get("format_version") == TASKS_FORMAT_VERSION else None


def split_counts() -> dict[str, dict[str, int]] | None:
    """Rows per built task and split, or None when no task is prepared."""
    manifest = read_manifest()
    if not manifest or not manifest["tasks"]:
        return None
    return {name: entry["counts"] for name, entry in manifest["tasks"].items()}


def is_data(name: str) -> bool:
    """Whether ``name`` names data: a registered task, a user file or a datasets form."""
    return name in TASKS or Path(name).suffix in USER_SUFFIXES or is_hf_data(name)


def data_identity(name: str) -> str | None:
    """What a task's data is, for unit keys: a built task's split-file sha256, a user file's
    sha256 (None when neither is there, or for a Hub id or folder)."""
    manifest = read_manifest()
    if name in TASKS:
        entry = (manifest or {}).get("tasks", {}).get(name)
        return entry["sha256"] if entry else None
    path = Path(name)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def split_size(name: str, split: str) -> int:
    """Rows of ``split`` of task ``name`` (from the manifest), or of a user's file."""
    counts = split_counts()
    if name in TASKS and counts and name in counts:
        return counts[name][split]
    return len(load_split(name, split))


def load_split(name: str, split: str) -> list[Example]:
    """Every example of task ``name`` (or a local file) in ``split``, in file order; clear
    errors otherwise. For a subset use :func:`load_sample` (a seeded draw): a split file's
    first rows may all come from one source."""
    if split not in SPLITS:
        raise FanLoRAError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if Path(name).suffix in USER_SUFFIXES:
        examples = load_user_file(Path(name), split)
    elif name not in TASKS and is_hf_data(name):
        examples = load_hf_split(name, split)
    elif name not in TASKS:
        raise FanLoRAError(f"unknown dataset {name!r}; known: {', '.join(TASKS)}, or {DATA_FORMS}")
    else:
        if name not in (split_counts() or {}):
            raise FanLoRAError(
                f"dataset {name!r} is not prepared: run `fanlora data prepare` "
                f"(it comes from {TASKS[name].source})"
            )
        path = tasks_dir() / name / f"{split}.jsonl"
        with open(path, encoding="utf-8") as handle:
            examples = [Example.from_dict(json.loads(line)) for line in handle]
    if not examples:
        raise FanLoRAError(f"the {split} split of {name!r} is empty")
    return examples


def load_sample(
    name: str, split: str, n: int | None, seed: int = 0, stratified: bool = False
) -> list[Example]:
    """At most ``n`` examples of the split: a seeded draw (``random.Random(seed).sample``),
    not the file's first rows, which may all come from one source; ``stratified``: each
    answer's share kept (:func:`stratified_sample`)."""
    examples = load_split(name, split)
    if n is not None and len(examples) > n:
        if stratified:
            return stratified_sample(examples, n, seed)
        examples = random.Random(seed).sample(examples, n)
    return examples


def stratified_sample(examples: list[Example], n: int, seed: int = 0) -> list[Example]:
    """``n`` of ``examples`` drawn so each right answer (``label``: BoolQ's no/yes, MMLU's
    letter) keeps its share of the split: stratum s gets n * N_s / N rows rounded by largest
    remainder, drawn by ``random.Random(seed)``; the rows are then shuffled by the same
    generator. Rows without a label form one stratum, so a task without options gets the
    plain draw. (A dozen lines by hand: scikit-learn's ``train_test_split(stratify=)`` does
    this but is not a dependency.)"""
    strata: dict[int, list[Example]] = {}
    for example in examples:
        strata.setdefault(example.label, []).append(example)
    rng = random.Random(seed)
    if len(strata) == 1:
        return rng.sample(examples, n)
    exact = {label: n * len(rows) / len(examples) for label, rows in strata.items()}
    quota = {label: int(share) for label, share in exact.items()}
    by_remainder = sorted(exact, key=lambda label: (quota[label] - exact[label], label))
    for label in by_remainder[: n - sum(quota.values())]:
        quota[label] += 1
    drawn = [row for label in sorted(strata) for row in rng.sample(strata[label], quota[label])]
    rng.shuffle(drawn)
    return drawn


def task_max_length(name: str) -> int:
    """Evaluation's default tokens per sequence for ``name`` (512 for a user's file)."""
    return TASKS[name].max_length if name in TASKS else 512


def task_metric(name: str, examples: list[Example] | None = None) -> str:
    """The metric of a registered task; for a user file, accuracy when it has options."""
    if name in TASKS:
        return TASKS[name].metric
    if examples and all(e.choices for e in examples):
        return "accuracy"
    raise FanLoRAError(
        f"{name} is not a registered task and has no options: pass --metric "
        "(f1_em, sql_em, number_acc or accuracy)"
    )
