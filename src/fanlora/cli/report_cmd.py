"""``fanlora report RUN_DIR``: (re)render RUN_DIR/report/report.{md,html} from its JSON."""

from __future__ import annotations

from pathlib import Path

from fanlora.errors import FanLoRAError
from fanlora.pipeline.stages import RUN_FORMAT
from fanlora.report.render import write_report
from fanlora.utils.io import read_json_if_present


def register(sub) -> None:
    p = sub.add_parser("report", help="render a run folder's report (markdown and HTML)")
    p.add_argument("run_dir", help="a folder made by `fanlora run`")
    p.add_argument("--out", help="where to write (default: RUN_DIR/report)")
    p.set_defaults(func=run, writes=lambda a: a.out or str(Path(a.run_dir) / "report"))


def run(args) -> int:
    run_dir = Path(args.run_dir)
    record = read_json_if_present(run_dir / "run.json")
    if not isinstance(record, dict) or record.get("format") != RUN_FORMAT:
        what = "no run.json" if record is None else "its run.json is not a pipeline's"
        raise FanLoRAError(
            f"{run_dir} is not a folder made by `fanlora run` ({what}); `fanlora report` "
            "renders a pipeline run"
        )
    paths = write_report(run_dir, args.out or run_dir / "report")
    print("wrote " + ", ".join(str(p) for p in paths[:2]))
    return 0
