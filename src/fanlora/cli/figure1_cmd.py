"""``fanlora figure1 LABEL=SETTING ... --out PNG``: the paper's figure 1 for several models
side by side (kept modules by layer and kind, share of layers keeping each kind).

Example::

    fanlora figure1 SmolLM2-135M=runs/demo/3-setting/setting.json \\
        Qwen2.5-0.5B=runs/qwen/3-setting/setting.json --out results/figure1.png
"""

from __future__ import annotations

from pathlib import Path

from fanlora.errors import FanLoRAError
from fanlora.report.figures import draw_figure1
from fanlora.select import FanLoRASetting


def register(sub) -> None:
    p = sub.add_parser("figure1", help="kept modules by layer and kind, models side by side")
    p.add_argument("settings", nargs="+", metavar="LABEL=SETTING", help="a setting JSON")
    p.add_argument("--out", required=True, type=Path, help="the PNG to write")
    p.set_defaults(func=run)


def run(args) -> int:
    settings = {}
    for item in args.settings:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise FanLoRAError(f"{item!r}: give LABEL=SETTING (a setting JSON file)")
        settings[label] = FanLoRASetting.load(path)
    print(f"wrote {draw_figure1(settings, args.out)}")
    return 0
