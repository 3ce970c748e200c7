"""``fanlora``: the command-line entry point.

Usage::

    fanlora modules --model tiny-random-llama
    fanlora select --scores scores.json --k-max 2 --out setting.json
    fanlora data prepare && fanlora data list
    fanlora train --model smollm2-135m --data instruct --method full-lora --rank 12 --out runs/full
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from contextlib import nullcontext

from fanlora import __version__
from fanlora.errors import FanLoRAError
from fanlora.utils.devices import end_processes, is_main_rank
from fanlora.utils.locks import output_lock
from fanlora.utils.stopping import Stopped

# PEFT reads `model.is_gradient_checkpointing` whenever it wraps a model, which transformers 5
# deprecates with a FutureWarning: printed at every adapter, and nothing a user can change
warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)

# Subcommand name -> module under fanlora.cli exposing register(subparsers).
COMMANDS = {
    "modules": "fanlora.cli.modules_cmd",
    "select": "fanlora.cli.select_cmd",
    "data": "fanlora.cli.data_cmd",
    "model": "fanlora.cli.model_cmd",
    "train": "fanlora.cli.train_cmd",
    "score": "fanlora.cli.score_cmd",
    "compare": "fanlora.cli.compare_cmd",
    "eval": "fanlora.cli.eval_cmd",
    "run": "fanlora.cli.run_cmd",
    "report": "fanlora.cli.report_cmd",
    "figure1": "fanlora.cli.figure1_cmd",
    "bench": "fanlora.cli.bench_cmd",
    "experiment": "fanlora.cli.experiment_cmd",
    "export": "fanlora.cli.export_cmd",
    "serve": "fanlora.cli.serve_cmd",
}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fanlora",
        description="FanLoRA: find the few LoRA modules worth serving, tune and serve them.",
    )
    parser.add_argument("--version", action="version", version=f"fanlora {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS.values():
        importlib.import_module(module).register(sub)
    for command in leaf_parsers(parser):
        command.add_argument(
            "--offline",
            action="store_true",
            help="never download: a Hub id must already be in the local cache "
            "(as HF_HUB_OFFLINE=1)",
        )
    return parser


def leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers that take a command's own flags (``bench decode``'s, not ``bench``'s)."""
    nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not nested:
        return [parser]
    return [leaf for a in nested for child in a.choices.values() for leaf in leaf_parsers(child)]


def output_of(args) -> str | None:
    """What the command writes, locked while it runs so two processes never write it at
    once: the command's own ``writes(args)`` when it sets one, else its ``--out``. Only the
    main rank locks (the other ranks of torchrun write through it)."""
    if not is_main_rank():
        return None
    writes = getattr(args, "writes", None)
    return writes(args) if writes else getattr(args, "out", None)


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.offline:  # read by fanlora's model resolution, and by huggingface_hub's children
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        with output_lock(target) if (target := output_of(args)) else nullcontext():
            code = int(args.func(args) or 0)
    except FanLoRAError as exc:
        print(f"fanlora {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Stopped as exc:
        print(f"fanlora {args.command}: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"fanlora {args.command}: interrupted", file=sys.stderr)
        return 130
    end_processes()
    return code


if __name__ == "__main__":
    sys.exit(main())
