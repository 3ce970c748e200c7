"""``fanlora eval --model M [--adapter DIR] --task T --split test --out DIR``.

Examples::

    fanlora eval --model smollm2-135m --adapter runs/boolq --task boolq --out runs/boolq/eval
    fanlora eval --model smollm2-135m --task squad --limit 100 --num-beams 3 --out eval/base
"""

from __future__ import annotations

from fanlora.cli.flags import add_allow_other_model
from fanlora.config import add_dataclass_args, resolve
from fanlora.evaluate.run import EvalConfig, evaluate


def register(sub) -> None:
    p = sub.add_parser("eval", help="a task's metric (appendix A.2) for a model or adapter")
    p.add_argument("--config", help="YAML file with any of the options below; flags win")
    p.add_argument("--out", required=True, help="folder for metrics.json and predictions.jsonl")
    add_dataclass_args(p, EvalConfig)
    add_allow_other_model(p)
    p.set_defaults(func=run)


def run(args) -> int:
    cfg = resolve(EvalConfig, args, args.config)
    evaluate(cfg, args.out, allow_other_model=args.allow_other_model)
    return 0
