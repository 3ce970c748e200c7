"""``fanlora experiment GRID.yaml``: a grid of pipeline runs, then one results file."""

from __future__ import annotations

from fanlora.experiment.grid import run_experiment


def register(sub) -> None:
    p = sub.add_parser("experiment", help="run a grid of pipelines and aggregate the results")
    p.add_argument("config", help="experiment YAML (name, run, out, grid)")
    p.add_argument(
        "--aggregate-only", action="store_true", help="only collect what the grid's runs hold now"
    )
    p.set_defaults(func=run)


def run(args) -> int:
    results = run_experiment(args.config, aggregate_only=args.aggregate_only)
    failed = {k: v for k, v in results["runs"].items() if v == "failed"}
    print(f"results: {len(results['rows'])} rows; runs {results['runs']}")
    if results["mixed_code_versions"]:
        print("warning: the runs were made by different code versions (see results.md)")
    return 1 if failed else 0
