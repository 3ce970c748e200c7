"""``fanlora export vllm SETTING --out DIR``: a setting as a vLLM deployment.

Examples::

    fanlora export vllm runs/demo/3-setting/setting.json --out deploy/ \\
        --adapter boolq=runs/demo/4-downstream/boolq/fanlora
    sh deploy/serve.sh                       # vllm serve ... --lora-target-modules ...

Writes ``DIR/deployment.json`` (the runtime module names, ``LLM(...)`` keyword arguments,
the serve command and the setting's cost per engine) and ``DIR/serve.sh``. Adapters with
LoRA weights outside the deployment, or a rank above ``--max-lora-rank``, are refused
before anything is written.
"""

from __future__ import annotations

from pathlib import Path

from fanlora.cli.flags import add_allow_other_model
from fanlora.engines import describe_cost, engine_cost
from fanlora.models import resolve_model
from fanlora.select import FanLoRASetting
from fanlora.serve.vllm_export import deployment_for, parse_adapters
from fanlora.utils.io import atomic_write_json, atomic_write_text


def register(sub) -> None:
    p = sub.add_parser("export", help="a setting as a serving deployment (vLLM)")
    engines = p.add_subparsers(dest="engine", metavar="ENGINE", required=True)
    v = engines.add_parser("vllm", help="vLLM: lora_target_modules at its packed granularity")
    v.add_argument("setting", help="setting JSON (from `fanlora select` or a run's 3-setting)")
    v.add_argument("--out", required=True, help="folder for deployment.json and serve.sh")
    v.add_argument(
        "--adapter", action="append", default=[], metavar="NAME=DIR", help="an adapter to serve"
    )
    v.add_argument("--model", help="what vLLM loads (default: the setting's model, resolved)")
    v.add_argument("--max-loras", type=int, help="adapters in one batch (default: all given, 1+)")
    v.add_argument("--max-lora-rank", type=int, help="default: the smallest that fits")
    add_allow_other_model(v)
    v.set_defaults(func=run)


def run(args) -> int:
    setting = FanLoRASetting.load(args.setting)
    adapters = parse_adapters(args.adapter)
    model = args.model or str(resolve_model(setting.model))
    deployment = deployment_for(
        setting, adapters, model, args.max_loras, args.max_lora_rank, args.allow_other_model
    )
    targets = deployment.target_modules
    cost = engine_cost(setting.layout, setting.layers)
    out = Path(args.out)
    atomic_write_json(
        out / "deployment.json",
        {
            "format": "fanlora-vllm-deployment",
            "setting": str(args.setting),
            "llm_kwargs": deployment.llm_kwargs(),
            "serve_command": deployment.serve_command(),
            "adapters": adapters,
            "cost": cost,
        },
    )
    atomic_write_text(out / "serve.sh", deployment.serve_script())
    print(f"{len(targets)} vLLM modules wrapped ({describe_cost(cost)}); wrote {out}")
    return 0
