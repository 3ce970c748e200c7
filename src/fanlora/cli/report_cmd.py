"""``fanlora report RUN_DIR``: (re)render RUN_DIR/report/report.{md,html} from its JSON."""

from __future__ import annotations

from pathlib import Path

from fanlora.errors import FanLoRAError
from fanlora.report.render import write_report


def register(sub) -> None:
    p = sub.add_parser("report", help="render a run folder's report (markdown and HTML)")
    p.add_argument("run_dir", help="a folder made by `fanlora run`")
    p.add_argument("--out", help="where to write (default: RUN_DIR/report)")
    p.set_defaults(func=run)


def run(args) -> int:
    run_dir = Path(args.run_dir)
    if not (run_dir / "run.json").is_file():
        raise FanLoRAError(f"{run_dir} is not a fanlora run folder (no run.json)")
    paths = write_report(run_dir, args.out or run_dir / "report")
    print("wrote " + ", ".join(str(p) for p in paths[:2]))
    return 0
