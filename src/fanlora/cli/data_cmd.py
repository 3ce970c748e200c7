"""``fanlora data prepare`` and ``fanlora data list``."""

from __future__ import annotations

from pathlib import Path

from fanlora.data.bigbench import extracted_dir, install_extracted
from fanlora.data.example import SPLITS
from fanlora.data.registry import TASKS, build_tasks, read_manifest, split_counts, tasks_dir


def register(sub) -> None:
    p = sub.add_parser("data", help="prepare and list the datasets")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    prep = verbs.add_parser("prepare", help="fetch BIG-bench 1.0.0 and build every dataset")
    prep.add_argument(
        "--archive", type=Path, help="use this bigbench-1.0.0.tar.gz instead of downloading it"
    )
    prep.add_argument("--force", action="store_true", help="rebuild the datasets")
    prep.set_defaults(func=prepare)
    lst = verbs.add_parser("list", help="datasets with their splits and row counts")
    lst.set_defaults(func=list_tasks)


def _tasks_complete() -> bool:
    if read_manifest() is None:
        return False
    return all((tasks_dir() / t / f"{s}.jsonl").is_file() for t in TASKS for s in SPLITS)


def prepare(args) -> int:
    if _tasks_complete() and not args.force:
        print(f"data already prepared in {extracted_dir().parent}; nothing to do")
        return 0
    install_extracted(archive=args.archive)
    print("building datasets (rows per split):")
    build_tasks()
    print(f"prepared; see `fanlora data list` (cache: {extracted_dir().parent})")
    return 0


def list_tasks(args) -> int:
    counts = split_counts()
    print(
        f"{'dataset':<10}{'metric':<12}{'role':<12}"
        + "".join(f"{s:>8}" for s in SPLITS)
        + "  source"
    )
    for spec in TASKS.values():
        rows = counts.get(spec.name) if counts else None
        cells = "".join(f"{rows[s] if rows else '-':>8}" for s in SPLITS)
        print(f"{spec.name:<10}{spec.metric:<12}{spec.role:<12}{cells}  {spec.source}")
    if counts is None:
        print("\nnot prepared yet: run `fanlora data prepare`")
    return 0
