"""``fanlora experiment GRID.yaml``: a grid of pipeline runs, then one results file."""

from __future__ import annotations

from fanlora.experiment.grid import (
    check_plan,
    load_experiment,
    reuse_folders,
    run_experiment,
    select_points,
)


def register(sub) -> None:
    p = sub.add_parser("experiment", help="run a grid of pipelines and aggregate the results")
    p.add_argument("config", help="experiment YAML (name, run, out, grid)")
    p.add_argument(
        "--aggregate-only", action="store_true", help="only collect what the grid's runs hold now"
    )
    p.add_argument(
        "--plan", action="store_true", help="print the units left and their cost, run nothing"
    )
    p.add_argument(
        "--budget-hours",
        type=float,
        default=12.0,
        help="refuse a grid whose remaining units are estimated above this (default 12)",
    )
    p.add_argument("--yes", action="store_true", help="run the grid whatever its estimate")
    p.add_argument("--costs", help="measured unit costs (default configs/measured/unit-costs.yaml)")
    p.add_argument(
        "--only",
        nargs="+",
        metavar="KEY=VALUE",
        help="run (or plan) only the grid points with these values, e.g. seed=0",
    )
    p.set_defaults(func=run, writes=grid_output)


def grid_output(args) -> str | None:
    """The grid's output folder (locked while the grid runs; --plan writes nothing)."""
    return None if args.plan else str(load_experiment(args.config)[1])


def run(args) -> int:
    if args.plan:
        _, out, points = load_experiment(args.config)
        points = select_points(points, args.only)
        check_plan(points, out, reuse_folders(args.config), None, args.costs)
        return 0
    budget = None if args.yes else args.budget_hours
    results = run_experiment(
        args.config,
        aggregate_only=args.aggregate_only,
        budget_hours=budget,
        costs_path=args.costs,
        only=args.only,
    )
    failed = {k: v for k, v in results["runs"].items() if v == "failed"}
    print(f"results: {len(results['rows'])} rows; runs {results['runs']}")
    if results["mixed_code_versions"]:
        print("warning: the runs were made by different code versions (see results.md)")
    return 1 if failed else 0
