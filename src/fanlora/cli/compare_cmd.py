"""``fanlora compare A.json B.json ...``: Spearman matrix (paper table 4), Kendall, top-K."""

from __future__ import annotations

from pathlib import Path

from fanlora.cli.select_cmd import layout_for_scores
from fanlora.errors import FanLoRAError
from fanlora.score.compare import STATISTICS, compare, plot_agreement, render_markdown
from fanlora.select import parse_scores
from fanlora.utils.io import atomic_write_json, atomic_write_text, read_json


def register(sub) -> None:
    p = sub.add_parser("compare", help="rank agreement between score files")
    p.add_argument("files", nargs="+", help="two or more scores JSON files")
    p.add_argument("--k-max", type=int, default=2, help="K for the per-layer top-K agreement")
    p.add_argument("--out", help="also write the matrices as JSON here (and markdown beside)")
    p.set_defaults(func=run)


def short_names(paths: list[str]) -> list[str]:
    """The shortest path suffixes that tell the files apart (``a/2-scores/scores.json`` and
    ``b/2-scores/scores.json`` need their run folder); a file given twice gets ``#2``."""
    parts = [Path(p).parts for p in paths]
    distinct = len(set(parts))
    for n in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-n:]) for p in parts]
        if len(set(names)) == distinct:
            break
    return [
        f"{n}#{names[:i].count(n) + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)
    ]


def run(args) -> int:
    if len(args.files) < 2:
        raise FanLoRAError("compare needs at least two score files")
    docs = {
        name: read_json(f, "scores file")
        for name, f in zip(short_names(args.files), args.files, strict=True)
    }
    layout, _ = layout_for_scores(next(iter(docs.values())), None, what=args.files[0])
    files = {name: parse_scores(doc, layout) for name, doc in docs.items()}
    result = compare(files, layout, args.k_max)
    width = max(len(n) for n in files) + 2
    for key in STATISTICS:
        print(f"\n{key}" + ("" if key != "topk_agreement" else f" (K = {args.k_max})"))
        print(" " * width + "".join(f"{n[:10]:>12}" for n in files))
        for x in files:
            print(f"{x:<{width}}" + "".join(f"{result[key][x][y]:>12.3f}" for y in files))
    if args.out:
        atomic_write_json(args.out, result)
        atomic_write_text(Path(args.out).with_suffix(".md"), render_markdown(result))
        plot_agreement(result, Path(args.out).with_suffix(".png"))
    return 0
