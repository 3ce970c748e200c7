"""``fanlora modules --model MODEL``: the candidate LoRA modules, layers x kinds."""

from __future__ import annotations

import json

from fanlora.models import load_config
from fanlora.modules.discovery import ModuleLayout, layout_from_config


def register(sub) -> None:
    p = sub.add_parser("modules", help="list the candidate LoRA modules of a model")
    p.add_argument("--model", required=True, help="preset, local folder or cached HF id")
    p.add_argument("--json", action="store_true", help="print the layout as JSON")
    p.set_defaults(func=run)


def format_layout(layout: ModuleLayout, model: str) -> str:
    """The layout as text: a kind legend, then one row per layer with a mark per kind."""
    kinds = list(layout.kinds)
    total = layout.num_layers * len(kinds)
    source = "architecture table" if layout.from_table else "fallback: linear modules in blocks"
    lines = [
        f"{model}: {layout.model_class} ({layout.model_type or '?'}; {source})",
        f"{layout.num_layers} layers under {layout.layers_prefix} x {len(kinds)} kinds"
        f" = {total} candidate modules",
        "",
        f"{'kind':<8} {'module in each layer':<28} in x out",
    ]
    for kind in kinds:
        d_in, d_out = layout.shapes[kind]
        lines.append(f"{kind:<8} {layout.kinds[kind]:<28} {d_in} x {d_out}")
    widths = [max(len(k), 1) for k in kinds]
    lines += ["", "layer  " + "  ".join(k.ljust(w) for k, w in zip(kinds, widths, strict=True))]
    for layer in range(layout.num_layers):
        marks = "  ".join("x".ljust(w) for w in widths)
        lines.append(f"{layer:>5}  {marks}".rstrip())
    return "\n".join(lines)


def run(args) -> int:
    layout = layout_from_config(load_config(args.model))
    if args.json:
        print(json.dumps(layout.to_dict(), indent=2))
    else:
        print(format_layout(layout, args.model))
    return 0
