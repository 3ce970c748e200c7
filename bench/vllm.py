"""vLLM serving speed: base, all-module LoRA, FanLoRA unrestricted and restricted.

SmolLM2-135M in vLLM's build for this machine (``make vllm``), bf16, adapters of rank 12
with seeded random weights: all-module LoRA (210 modules) and FanLoRA on a setting (the
demo run's, or a seeded random 2 per layer). Batches of 1, 8 and 32 requests, each request
with its own adapter (distinct tenants), a 128-token prompt and 32 new tokens; tokens/s is
the median over ``--repeats`` timed batches after a warm-up. Variants:

- base: LoRA off;
- lora: all-module adapters, vLLM wrapping every module;
- fanlora: FanLoRA adapters, vLLM wrapping every module (no ``lora_target_modules``);
- fanlora-restricted: FanLoRA adapters, ``lora_target_modules`` = the setting's packed modules
  (``fanlora export vllm``).

Goal (issue 18): fanlora-restricted >= 1.4x lora at 8 and at 32 tenants.

    python bench/vllm.py --setting docs/demo-run/3-setting/setting.json \
        --out bench/results/vllm.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from fanlora.models import load_model, resolve_model
from fanlora.modules import discover_layout
from fanlora.select import FanLoRASetting
from fanlora.serve.adapters import method_config, write_tenants
from fanlora.serve.bench import prompt_texts
from fanlora.serve.decode import fixed_prompt
from fanlora.serve.vllm_export import runtime_modules
from fanlora.serve.vllm_run import vllm_generate
from fanlora.train.methods import random_setting
from fanlora.utils.io import atomic_write_json, atomic_write_text, md_table
from fanlora.utils.versions import versions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--setting", help="setting JSON (default: seeded random 2 per layer)")
    parser.add_argument("--tenants", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--out", default="bench/results/vllm.json")
    args = parser.parse_args()
    base, tokenizer = load_model(args.model)
    layout = discover_layout(base)
    if args.setting:
        setting = FanLoRASetting.load(args.setting)
    else:
        two = FanLoRASetting(args.model, 2, layout, [list(layout.kinds)[:2]] * layout.num_layers)
        setting = random_setting(two, seed=0)
    prompt = fixed_prompt(tokenizer, prompt_texts(), args.prompt_tokens)
    count = max(args.tenants)
    common = {"enable_lora": True, "max_lora_rank": 16, "max_loras": count, "max_cpu_loras": count}
    common |= {"dtype": args.dtype, "max_model_len": args.prompt_tokens + args.new_tokens + 8}
    restricted = runtime_modules(setting.layout, setting.layers)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folders = {
            kind: write_tenants(
                base, method_config(kind, layout, setting, 12), Path(tmp) / kind, count
            )
            for kind in ("lora", "fanlora")
        }
        variants = {
            "base": ({"dtype": args.dtype, "max_model_len": common["max_model_len"]}, []),
            "lora": (common, folders["lora"]),
            "fanlora": (common, folders["fanlora"]),
            "fanlora-restricted": (
                {**common, "lora_target_modules": restricted},
                folders["fanlora"],
            ),
        }
        for name, (kwargs, paths) in variants.items():
            adapters = {f"t{i}": str(p) for i, p in enumerate(paths)}
            out = vllm_generate(
                str(resolve_model(args.model)),
                kwargs,
                [prompt],
                adapters,
                args.new_tokens,
                repeats=args.repeats,
                batches=args.tenants,
                tokens=False,
            )
            for tenants, seconds in out["seconds"].items():
                speed = int(tenants) * args.new_tokens / statistics.median(seconds)
                rows.append({"variant": name, "tenants": int(tenants), "tokens_per_s": speed})
                print(f"{name:<20} {tenants:>3} tenants {speed:7.1f} tok/s", flush=True)
    speed = {(r["variant"], r["tenants"]): r["tokens_per_s"] for r in rows}
    ratios = {
        str(t): {
            "restricted_vs_lora": speed["fanlora-restricted", t] / speed["lora", t],
            "unrestricted_vs_lora": speed["fanlora", t] / speed["lora", t],
            "lora_vs_base": speed["lora", t] / speed["base", t],
        }
        for t in args.tenants
    }
    goal = {t: ratios[str(t)]["restricted_vs_lora"] >= 1.4 for t in args.tenants if t in (8, 32)}
    record = {
        "benchmark": "vllm",
        "model": args.model,
        "setting": args.setting or "random 2 per layer (seed 0)",
        "wrapped_modules": len(restricted),
        "args": vars(args),
        "rows": rows,
        "ratios": ratios,
        "goal": "fanlora-restricted >= 1.4x lora at 8 and 32 tenants",
        "goal_met": goal,
        "versions": versions(),
    }
    atomic_write_json(args.out, record)
    table = md_table(
        ["tenants", "base", "lora", "fanlora", "fanlora-restricted", "restricted / lora"],
        [
            [
                t,
                *(f"{speed[v, t]:.1f}" for v in ("base", "lora", "fanlora", "fanlora-restricted")),
                f"{ratios[str(t)]['restricted_vs_lora']:.2f}x",
            ]
            for t in args.tenants
        ],
    )
    atomic_write_text(Path(args.out).with_suffix(".md"), table + "\n")
    print(table)
    print(f"goal met: {goal}; wrote {args.out}")


if __name__ == "__main__":
    main()
