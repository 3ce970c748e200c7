"""``fanlora select --scores SCORES.json --k-max 2 --out SETTING.json``: step 3.

Examples::

    fanlora select --scores scores.json --out setting.json              # the paper's setting
    fanlora select --scores scores.json --engine vllm --out vllm.json   # 1 vLLM wrapper/layer
"""

from __future__ import annotations

from fanlora.cli.flags import add_allow_other_model
from fanlora.engines import ENGINES, describe_cost
from fanlora.errors import FanLoRAError
from fanlora.models import load_config
from fanlora.models.provenance import check_made_for, document_made_for
from fanlora.modules.discovery import ModuleLayout, layout_from_config
from fanlora.select import engine_setting, parse_scores
from fanlora.utils.io import read_json


def register(sub) -> None:
    p = sub.add_parser("select", help="build the FanLoRA setting from importance scores")
    p.add_argument("--scores", required=True, help="scores JSON (from `fanlora score`)")
    p.add_argument("--k-max", type=int, default=2, help="most modules kept per layer (default 2)")
    p.add_argument("--out", required=True, help="where to write the setting JSON")
    p.add_argument(
        "--model", help="model the scores belong to (default: the scores file's layout/model)"
    )
    p.add_argument(
        "--engine",
        choices=list(ENGINES),
        help="select for this serving engine's cost: the best scores under --packed-budget "
        "wrapped runtime modules per layer (vllm packs q/k/v and gate/up; default: the "
        "paper's top K_max per layer)",
    )
    p.add_argument(
        "--packed-budget",
        type=int,
        help="wrapped runtime modules per layer with --engine (default 1)",
    )
    add_allow_other_model(p)
    p.set_defaults(func=run)


def layout_for_scores(
    doc: dict, model: str | None, allow_other: bool = False, what: str = "the scores file"
) -> tuple[ModuleLayout, str]:
    """The module layout the scores refer to: embedded in the file, or discovered from a
    model (then checked against what the file records, unless ``allow_other``)."""
    if not isinstance(doc, dict):
        raise FanLoRAError(f"{what} must be a JSON object with 'scores', got {type(doc).__name__}")
    if model is None and isinstance(doc.get("layout"), dict):
        return ModuleLayout.from_dict(doc["layout"]), str(doc.get("model", ""))
    name = model or doc.get("model")
    if not name or not isinstance(name, str):
        raise FanLoRAError(f"{what} names no model or layout: pass --model")
    layout = layout_from_config(load_config(name))
    check_made_for(document_made_for(doc, what), name, layout, allow_other)
    return layout, name


def run(args) -> int:
    if args.k_max < 1:
        raise FanLoRAError(f"--k-max must be >= 1, got {args.k_max}")
    doc = read_json(args.scores, "scores file")
    what = f"the scores file {args.scores}"
    layout, model = layout_for_scores(doc, args.model, args.allow_other_model, what)
    records = parse_scores(doc, layout)
    setting = engine_setting(records, layout, args.k_max, model, args.engine, args.packed_budget)
    setting.extra["scores_file"] = str(args.scores)
    setting.save(args.out)
    counts = ", ".join(f"{k} {n}" for k, n in setting.kind_counts().items())
    print(
        f"kept {setting.num_modules} of {layout.num_layers * len(layout.kinds)} modules "
        f"(K_max {args.k_max}); layers per kind: {counts}; cost per token: "
        f"{describe_cost(setting.extra['cost'])}; wrote {args.out}"
    )
    return 0
