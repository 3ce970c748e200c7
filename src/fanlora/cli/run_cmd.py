"""``fanlora run [CONFIG.yaml] --out RUN_DIR``: the whole pipeline, resumable.

Examples::

    fanlora run --out runs/demo                      # the embedded default (SmolLM2-135M)
    fanlora run configs/tiny.yaml --out runs/tiny    # a config file; flags override it
    fanlora run --out runs/demo --from downstream    # redo step 4 and everything after it
    fanlora run --print-default > my.yaml            # start a config from the default
    torchrun --nproc_per_node 2 -m fanlora.cli.main run configs/tiny.yaml --out runs/ddp
"""

from __future__ import annotations

import dataclasses
import sys

from fanlora.config import add_dataclass_args
from fanlora.errors import FanLoRAError
from fanlora.pipeline.config import RunConfig, default_config_path, load_run_config
from fanlora.pipeline.run import run_pipeline
from fanlora.pipeline.stages import STAGES


def register(sub) -> None:
    p = sub.add_parser("run", help="the whole pipeline: steps 1-4, evaluation, decoding, report")
    p.add_argument("config", nargs="?", help="YAML config (default: the embedded default)")
    p.add_argument("--out", help="run folder (created, or resumed when it exists)")
    p.add_argument(
        "--from", dest="start_from", choices=STAGES, help="redo this stage and every later one"
    )
    p.add_argument("--print-default", action="store_true", help="print the default config")
    add_dataclass_args(p, RunConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.print_default:
        sys.stdout.write(default_config_path().read_text(encoding="utf-8"))
        return 0
    if not args.out:
        raise FanLoRAError("--out RUN_DIR is required")
    names = {f.name for f in dataclasses.fields(RunConfig)} - {"sections"}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    run_pipeline(load_run_config(args.config, overrides), args.out, args.start_from)
    return 0
