"""Run a `fanlora bench` command, then add a ``goal_check`` to the JSON it wrote and to
its markdown table (the goals are the calling script's arguments, not fanlora's)."""

import json
import sys
from pathlib import Path

from fanlora.cli.main import main
from fanlora.utils.io import atomic_write_json


def run_and_judge(command: list[str], out: str, judge) -> None:
    """``fanlora bench ...`` with ``--out out``; then ``judge(doc) -> {goal: verdict}``."""
    code = main([*command, "--out", out])
    if code == 0:
        path = Path(out)
        doc = json.loads(path.read_text())
        doc["goal_check"] = judge(doc)
        atomic_write_json(path, doc)
        md = path.with_suffix(".md")
        lines = "".join(f"\n- {k}: {v}" for k, v in doc["goal_check"].items())
        md.write_text(md.read_text() + lines + "\n")
        print(lines)
    sys.exit(code)
