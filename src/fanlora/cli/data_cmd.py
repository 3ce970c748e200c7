"""``fanlora data prepare`` and ``fanlora data list``.

Examples::

    fanlora data prepare                          # every task, its packages from the index
    fanlora data prepare --wheel ~/wheels/        # wheels copied by hand (files or a folder)
    fanlora data prepare --task boolq --force     # rebuild one task
    fanlora data prepare --archive bigbench-1.0.0.tar.gz   # also the BIG-bench tasks
    fanlora data list
"""

from __future__ import annotations

from pathlib import Path

from fanlora.cli.flags import add_wheel_flag
from fanlora.data.example import SPLITS
from fanlora.data.packages import Packages
from fanlora.data.registry import TASKS, build_tasks, data_root, read_manifest, split_counts
from fanlora.data.sources.bigbench_sdist import install_extracted
from fanlora.errors import FanLoRAError


def register(sub) -> None:
    p = sub.add_parser("data", help="prepare and list the datasets")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    prep = verbs.add_parser("prepare", help="fetch the pinned data packages and build the tasks")
    add_wheel_flag(prep)
    prep.add_argument(
        "--archive", type=Path, help="bigbench-1.0.0.tar.gz: also build the BIG-bench tasks"
    )
    prep.add_argument("--task", action="append", default=[], help="only this task (repeatable)")
    prep.add_argument("--force", action="store_true", help="rebuild tasks already built")
    prep.set_defaults(func=prepare, writes=lambda a: str(data_root()))
    lst = verbs.add_parser("list", help="datasets with their splits, row counts and sources")
    lst.set_defaults(func=list_tasks)


def prepare(args) -> int:
    unknown = [t for t in args.task if t not in TASKS]
    if unknown:
        raise FanLoRAError(f"unknown task(s) {unknown}; known: {', '.join(TASKS)}")
    packages = Packages(args.wheel)  # a --wheel that is not there is refused here
    if args.archive is not None:
        install_extracted(archive=args.archive)
    print(f"building datasets into {data_root()} (rows per split):")
    manifest, missing = build_tasks(packages, args.task or None, args.force)
    built = ", ".join(manifest["tasks"]) or "none"
    print(f"prepared: {built}; see `fanlora data list`")
    if missing:
        lines = "\n".join(f"- {exc}" for exc in {e.wheel.spec: e for e in missing}.values())
        raise FanLoRAError(f"some tasks could not be built; the others are ready:\n{lines}")
    return 0


def list_tasks(args) -> int:
    counts = split_counts() or {}
    manifest = read_manifest() or {"tasks": {}}
    print(f"{'dataset':<12}{'metric':<11}{'role':<11}" + "".join(f"{s:>8}" for s in SPLITS))
    for spec in sorted(TASKS.values(), key=lambda s: s.optional):
        rows = counts.get(spec.name)
        cells = "".join(f"{rows[s] if rows else '-':>8}" for s in SPLITS)
        print(f"{spec.name:<12}{spec.metric:<11}{spec.role:<11}{cells}")
        packages = manifest["tasks"].get(spec.name, {}).get("packages")
        made = ", ".join(f"{p['name']}=={p['version']}" for p in packages or []) or "not built"
        print(f"{'':<12}from {made}; licence {spec.license}\n{'':<12}{spec.source}")
    if not counts:
        print("\nnot prepared yet: run `fanlora data prepare`")
    return 0
