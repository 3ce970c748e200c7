"""``fanlora score --model M --adapter FULL_LORA --data D --out SCORES.json``: step 2.

Examples::

    fanlora score --model smollm2-135m --adapter runs/full --data instruct --out scores.json
    fanlora score ... --method shapley --scope layer --out shapley.json
    fanlora score ... --method sensitivity --out sensitivity.json
    torchrun --nproc_per_node 2 -m fanlora.cli.main score ...   # modules sharded
"""

from __future__ import annotations

from fanlora.cli.flags import add_allow_other_model
from fanlora.config import add_dataclass_args, resolve
from fanlora.score.run import ScoreConfig, score


def register(sub) -> None:
    p = sub.add_parser("score", help="importance of every LoRA module (AB-score, Shapley, ...)")
    p.add_argument("--config", help="YAML file with any of the options below; flags win")
    p.add_argument("--out", required=True, help="scores JSON (a .png heatmap lands beside it)")
    add_dataclass_args(p, ScoreConfig)
    add_allow_other_model(p)
    p.set_defaults(func=run)


def run(args) -> int:
    cfg = resolve(ScoreConfig, args, args.config)
    score(cfg, args.out, allow_other_model=args.allow_other_model)
    return 0
