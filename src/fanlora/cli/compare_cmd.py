"""``fanlora compare A.json B.json ...``: Spearman matrix (paper table 4), Kendall, top-K."""

from __future__ import annotations

from pathlib import Path

from fanlora.errors import FanLoRAError
from fanlora.utils.io import atomic_write_json, read_json


def register(sub) -> None:
    p = sub.add_parser("compare", help="rank agreement between score files")
    p.add_argument("files", nargs="+", help="two or more scores JSON files")
    p.add_argument("--k-max", type=int, default=2, help="K for the per-layer top-K agreement")
    p.add_argument("--out", help="also write the matrices as JSON here")
    p.set_defaults(func=run)


def run(args) -> int:
    from fanlora.cli.select_cmd import layout_for_scores
    from fanlora.score.compare import compare
    from fanlora.select import parse_scores

    if len(args.files) < 2:
        raise FanLoRAError("compare needs at least two score files")
    docs = {Path(f).name: read_json(f, "scores file") for f in args.files}
    layout, _ = layout_for_scores(next(iter(docs.values())), None)
    files = {name: parse_scores(doc, layout) for name, doc in docs.items()}
    result = compare(files, layout, args.k_max)
    width = max(len(n) for n in files) + 2
    for key in ("spearman", "kendall", "topk_agreement"):
        print(f"\n{key}" + ("" if key != "topk_agreement" else f" (K = {args.k_max})"))
        print(" " * width + "".join(f"{n[:10]:>12}" for n in files))
        for x in files:
            print(f"{x:<{width}}" + "".join(f"{result[key][x][y]:>12.3f}" for y in files))
    if args.out:
        atomic_write_json(args.out, result)
    return 0
