"""``fanlora bench decode|tenants|vllm``: serving speed on this machine.

Examples::

    fanlora bench decode --setting S.json --out bench/results/decode.json
    fanlora bench tenants --setting S.json --out bench/results/tenants.json
    fanlora bench vllm --setting S.json --engine-setting V.json --out bench/results/vllm.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from fanlora.errors import FanLoRAError
from fanlora.models import load_config
from fanlora.models.loading import DTYPE_NAMES
from fanlora.modules.discovery import layout_from_config
from fanlora.select import FanLoRASetting
from fanlora.serve.bench import Backbone, bench_decode, bench_goals, bench_sweep, plot_sweep
from fanlora.serve.vllm_bench import bench_vllm, plot
from fanlora.serve.vllm_bench import markdown as vllm_markdown
from fanlora.serve.vllm_export import runtime_modules
from fanlora.serve.vllm_run import vllm_python
from fanlora.train.methods import check_setting_matches, random_setting
from fanlora.utils.devices import Runtime, native_bf16, resolve_device
from fanlora.utils.io import atomic_write_json, atomic_write_text, md_table
from fanlora.utils.versions import versions


def _common(p) -> None:
    p.add_argument("--model", default="smollm2-135m", help="the base model")
    p.add_argument(
        "--setting",
        help="FanLoRA setting JSON (default: a seeded random placement of 2 modules per layer)",
    )
    p.add_argument("--rank", type=int, default=12, help="LoRA rank of every adapter")
    p.add_argument("--out", required=True, help="JSON to write (a .md table lands beside it)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=[*DTYPE_NAMES, "auto"],
        help="weights dtype (auto: bfloat16 where the device computes it natively)",
    )


def weights_dtype(args) -> str:
    """``--dtype``, with auto: bfloat16 where the device computes it natively, else float32;
    a device this machine lacks is refused here, before any work."""
    device = resolve_device(args.device)
    if args.dtype != "auto":
        return args.dtype
    return "bfloat16" if native_bf16(device) else "float32"


def backbone(args) -> Backbone:
    """The benchmark's base model (see :func:`weights_dtype`)."""
    return Backbone(args.model, weights_dtype(args), args.device)


def register(sub) -> None:
    p = sub.add_parser("bench", help="serving benchmarks: decoding speed, mixed-tenant batches")
    bench = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    d = bench.add_parser("decode", help="table 3: unmerged PEFT adapters, beam 1 and 3")
    _common(d)
    d.add_argument("--methods", nargs="+", default=["fanlora", "lora", "adalora", "ia3"])
    d.add_argument("--beams", type=int, nargs="+", default=[1, 3])
    d.add_argument("--runs", type=int, default=5, help="timed runs per variant")
    d.add_argument("--new-tokens", type=int, default=32)
    d.add_argument("--prompt-tokens", type=int, default=276)
    d.set_defaults(func=run_decode)
    t = bench.add_parser("tenants", help="mixed-tenant batches: PEFT vs the batched path")
    _common(t)
    t.add_argument("--kinds", nargs="+", default=["fanlora", "lora"])
    t.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    t.add_argument("--batch", type=int, default=32, help="requests per batch in the sweep")
    t.add_argument("--runs", type=int, default=2, help="timed runs per point of the sweep")
    t.add_argument("--new-tokens", type=int, default=16)
    t.add_argument("--prompt-tokens", type=int, default=64)
    t.add_argument(
        "--goal-sizes",
        type=int,
        nargs="*",
        default=[16, 64],
        help="batches of this many distinct FanLoRA tenants (the goals)",
    )
    t.add_argument("--goal-runs", type=int, default=3)
    t.add_argument("--goal-new-tokens", type=int, default=32)
    t.add_argument("--goal-prompt-tokens", type=int, default=128)
    t.set_defaults(func=run_tenants)
    v = bench.add_parser("vllm", help="vLLM: base, all-module LoRA, FanLoRA (un)restricted")
    _common(v)
    v.set_defaults(dtype="auto")
    v.add_argument(
        "--engine-setting", help="an engine-aware setting (fanlora select --engine vllm) to add"
    )
    v.add_argument("--tenants", type=int, nargs="+", default=[1, 8, 32])
    v.add_argument("--repeats", type=int, default=3, help="timed batches after a warm-up")
    v.add_argument("--new-tokens", type=int, default=32)
    v.add_argument("--prompt-tokens", type=int, default=128)
    v.add_argument(
        "--hf",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also PEFT and fanlora's batched path on the same batches",
    )
    v.set_defaults(func=run_vllm)


def load_setting(args):
    if args.setting:
        return FanLoRASetting.load(args.setting), args.setting
    layout = layout_from_config(load_config(args.model))
    two = FanLoRASetting(args.model, 2, layout, [list(layout.kinds)[:2]] * layout.num_layers)
    return random_setting(two, seed=0), "random 2 per layer (seed 0)"


def envelope(args, kind: str, started: float, setting_source: str, body: dict) -> dict:
    return {
        "benchmark": kind,
        "model": args.model,
        "setting": setting_source,
        "rank": args.rank,
        "args": {k: v for k, v in vars(args).items() if k != "func"},
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "device": Runtime.of(args.device).describe(precision=False),
        "dtype": args.dtype,
        "wall_time_s": time.time() - started,
        "versions": versions(),
        **body,
    }


def write(out: str, doc: dict, table: str) -> None:
    atomic_write_json(out, json.loads(json.dumps(doc, default=float)))
    atomic_write_text(Path(out).with_suffix(".md"), table)
    print(table)
    print(f"wrote {out} and {Path(out).with_suffix('.md')}")


def run_decode(args) -> int:
    if args.runs < 1 or args.new_tokens < 1 or args.prompt_tokens < 1:
        raise FanLoRAError("--runs, --new-tokens and --prompt-tokens must be >= 1")
    started = time.time()
    base = backbone(args)
    setting, source = load_setting(args)
    body = bench_decode(
        base,
        setting,
        args.methods,
        args.rank,
        args.beams,
        args.runs,
        args.new_tokens,
        args.prompt_tokens,
    )
    rows = [
        [
            r["variant"],
            r["beams"],
            f"{r['tokens_per_s_median']:.1f}",
            f"{r['tokens_per_s_p90']:.1f}",
            f"{100 * r['speed_vs_base']:.1f}%",
            f"{r['adapter_params']:,}",
            f"{r['peak_extra_mb_median']:.1f}",
        ]
        for r in body["rows"]
    ]
    ph = body["physical"]
    table = md_table(
        [
            "variant",
            "beams",
            "tok/s median",
            "tok/s p90",
            "vs base",
            "adapter params",
            "peak extra MB",
        ],
        rows,
    ) + (
        f"\n\nBase model at beam 1: {100 * ph['base_share_of_limit']:.0f}% of the bandwidth "
        f"limit ({ph['limit_tokens_per_s_batch1']:.1f} tok/s = "
        f"{ph['memory_bandwidth_gb_s']:.1f} GB/s / {ph['weight_bytes'] / 1e6:.0f} MB).\n"
    )
    write(args.out, envelope(args, "decode", started, source, body), table)
    return 0


def run_tenants(args) -> int:
    started = time.time()
    base = backbone(args)
    setting, source = load_setting(args)
    goals = {}
    if args.goal_sizes:
        goals = bench_goals(
            base,
            setting,
            args.rank,
            args.goal_runs,
            args.goal_new_tokens,
            args.goal_prompt_tokens,
            args.goal_sizes,
        )
    sweep = (
        bench_sweep(
            base,
            setting,
            args.kinds,
            args.counts,
            args.batch,
            args.rank,
            args.runs,
            args.new_tokens,
            args.prompt_tokens,
        )
        if args.counts
        else []
    )
    doc = envelope(args, "tenants", started, source, {"goals": goals, "sweep": sweep})
    if sweep:
        plot_sweep(sweep, Path(args.out).with_suffix(".png"))
    rows = [
        [
            r["kind"],
            r["tenants"],
            r["path"],
            f"{r['tokens_per_s_median']:.1f}",
            f"{r['latency_s_median']:.2f}",
        ]
        for r in sweep
    ]
    table = md_table(["adapters", "tenants", "path", "tok/s", "s per batch"], rows) + "\n"
    write(args.out, doc, table)
    return 0


def run_vllm(args) -> int:
    if min(args.tenants) < 1 or args.repeats < 1 or args.new_tokens < 1:
        raise FanLoRAError("--tenants, --repeats and --new-tokens must be >= 1")
    started = time.time()
    vllm_python()  # not installed: the error says how, before any work
    dtype = weights_dtype(args)
    setting, source = load_setting(args)
    other = FanLoRASetting.load(args.engine_setting) if args.engine_setting else None
    layout = layout_from_config(load_config(args.model))
    for s in (setting, other):
        if s is not None:
            check_setting_matches(s, layout)  # made for another model: refused
            runtime_modules(s.layout, s.layers)  # an architecture vLLM lacks: refused
    body = bench_vllm(
        args.model,
        setting,
        other,
        args.tenants,
        args.repeats,
        args.prompt_tokens,
        args.new_tokens,
        dtype,
        args.rank,
        args.hf,
    )
    doc = envelope(args, "vllm", started, source, body) | {"dtype": dtype}
    doc["engine_setting"] = args.engine_setting
    plot(doc, Path(args.out).with_suffix(".png"))
    write(args.out, doc, vllm_markdown(doc))
    return 0
