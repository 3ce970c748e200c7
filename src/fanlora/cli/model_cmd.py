"""``fanlora model prepare`` and ``fanlora model list``: the model presets.

Examples::

    fanlora model list
    fanlora model prepare qwen2.5-0.5b                 # its packages from the index
    fanlora model prepare gemma3-270m --wheel ~/wheels/ # wheels copied by hand
    fanlora model prepare qwen2.5-0.5b --dtype bfloat16
    fanlora model download qwen2.5-0.5b --to wheels/  # for a machine without the index
"""

from __future__ import annotations

from pathlib import Path

from fanlora.cli.flags import add_wheel_flag
from fanlora.models.loading import DTYPE_NAMES, PRESETS, is_prepared, preset_dir, preset_path
from fanlora.models.packaged import PACKAGED, model_packages


def register(sub) -> None:
    p = sub.add_parser("model", help="prepare and list the model presets")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    prep = verbs.add_parser("prepare", help="fetch, check and convert a preset's weights once")
    prep.add_argument("name", choices=list(PRESETS), metavar="NAME", help="the preset")
    prep.add_argument("--dtype", choices=DTYPE_NAMES, default="float32")
    add_wheel_flag(prep)
    prep.set_defaults(func=prepare, writes=lambda a: str(preset_path(a.name, a.dtype)))
    down = verbs.add_parser(
        "download", help="fetch and hash-check presets' wheels into a folder, to copy by hand"
    )
    down.add_argument("names", nargs="+", choices=list(PACKAGED), metavar="NAME")
    down.add_argument("--to", type=Path, required=True, metavar="DIR", help="folder for wheels")
    down.set_defaults(func=download, writes=lambda a: str(a.to))
    lst = verbs.add_parser("list", help="the presets: what they are, sizes, licences, where")
    lst.set_defaults(func=list_presets)


def prepare(args) -> int:
    folder = preset_dir(args.name, args.dtype, args.wheel)
    print(f"{args.name} ({args.dtype}) is ready in {folder}")
    return 0


def download(args) -> int:
    for name in args.names:
        packages = model_packages(name, cache=args.to)
        for wheel in PACKAGED[name].wheels:
            packages.wheel(wheel)
    print(f"the wheels of {', '.join(args.names)} are in {args.to} (sha256 checked)")
    return 0


def _prepared(name: str) -> str:
    return ", ".join(d for d in DTYPE_NAMES if is_prepared(name, d)) or "not prepared"


def list_presets(args) -> int:
    for name, preset in PRESETS.items():
        print(f"{name:<20}{preset.what}")
        packaged = PACKAGED.get(name)
        if packaged is not None:
            wheels = packaged.wheels
            size = sum(w.megabytes for w in wheels)
            print(
                f"{'':<20}{packaged.parameters / 1e6:.0f}M parameters; {len(wheels)} packages "
                f"({size:.0f} MB), e.g. {wheels[0].spec}"
            )
        print(f"{'':<20}licence {preset.license}; {_prepared(name)}")
    return 0
