"""``fanlora train --model MODEL --data DATASET --method METHOD --out DIR``: steps 1 and 4.

Examples::

    fanlora train --model smollm2-135m --data instruct --method full-lora --rank 12 --out runs/full
    fanlora train --data boolq --method fanlora --setting setting.json --rank 12 --out runs/bq
    torchrun --nproc_per_node 2 -m fanlora.cli.main train --config train.yaml --out runs/ddp
"""

from __future__ import annotations

from fanlora.cli.flags import add_allow_other_model
from fanlora.config import add_dataclass_args, resolve
from fanlora.train.config import TrainConfig
from fanlora.train.run import train


def register(sub) -> None:
    p = sub.add_parser("train", help="fine-tune LoRA (full, FanLoRA setting) or a baseline")
    p.add_argument("--config", help="YAML file with any of the options below; flags win")
    p.add_argument("--out", required=True, help="output folder (adapter, run.json, metrics)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    add_dataclass_args(p, TrainConfig)
    add_allow_other_model(p)
    p.set_defaults(func=run)


def run(args) -> int:
    cfg = resolve(TrainConfig, args, args.config)
    record = train(
        cfg,
        args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        allow_other_model=args.allow_other_model,
    )
    if record.get("status") == "finished":  # only the main process has the full record
        print(
            f"best dev loss {record['best_dev_loss']:.4f} at step {record['best_step']}; "
            f"{record['trainable_params']:,} trainable parameters; adapter in {args.out}"
        )
    return 0
