"""``fanlora bench vllm``: multi-tenant decoding speed in vLLM, setting by setting.

Every request of a batch names its own adapter (distinct tenants), prompts of
``prompt_tokens``, ``new_tokens`` generated greedily; tokens/s = tenants x new tokens / the
median wall time of ``repeats`` batches after a warm-up batch. vLLM's prefix cache is off so
that every timed batch pays its prefill, as the HF paths do. Variants:

- ``base``: LoRA off;
- ``lora``: all-module adapters, every module wrapped;
- ``fanlora``: FanLoRA adapters, every module wrapped (no ``lora_target_modules``);
- ``fanlora-restricted``: FanLoRA adapters, ``lora_target_modules`` = the setting's packed
  modules (what ``fanlora export vllm`` deploys);
- ``engine-restricted``: adapters on the engine-aware setting (``fanlora select --engine
  vllm``), restricted likewise, when one is given.

Adapters carry seeded random weights of rank ``rank`` (speed depends on where LoRA is, not
on its values). With ``hf=True`` the same prompts and tenant counts go through PEFT's
``generate(adapter_names=...)`` and fanlora's batched path, for comparison.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from fanlora.engines import engine_cost
from fanlora.models import load_model, resolve_model
from fanlora.modules import discover_layout
from fanlora.serve.adapters import method_config, write_tenants
from fanlora.serve.bench import Backbone, bench_sweep, prompt_texts
from fanlora.serve.decode import fixed_prompt
from fanlora.serve.vllm_export import runtime_modules
from fanlora.serve.vllm_run import vllm_generate
from fanlora.utils.plotting import tenant_curves

VLLM_RANKS = (8, 16, 32, 64)  # max_lora_rank values vLLM accepts that a benchmark may need


def variants(setting, engine_setting, common: dict, plain: dict) -> dict:
    """Variant name -> (LLM kwargs, which adapters: lora, fanlora, engine or none)."""
    out = {
        "base": (plain, None),
        "lora": (common, "lora"),
        "fanlora": (common, "fanlora"),
        "fanlora-restricted": (
            {**common, "lora_target_modules": runtime_modules(setting.layout, setting.layers)},
            "fanlora",
        ),
    }
    if engine_setting is not None:
        targets = runtime_modules(engine_setting.layout, engine_setting.layers)
        out["engine-restricted"] = ({**common, "lora_target_modules": targets}, "engine")
    return out


def tenant_folders(base, layout, setting, engine_setting, rank, count, tmp: Path) -> dict:
    """``count`` seeded adapters each of all-module LoRA, FanLoRA on ``setting`` and, when
    given, FanLoRA on ``engine_setting``, as PEFT folders."""
    kinds = {"lora": ("lora", setting), "fanlora": ("fanlora", setting)}
    if engine_setting is not None:
        kinds["engine"] = ("fanlora", engine_setting)
    return {
        name: write_tenants(base, method_config(method, layout, s, rank), tmp / name, count)
        for name, (method, s) in kinds.items()
    }


def vllm_rows(model, name, kwargs, paths, prompt, new_tokens, repeats, tenants, log) -> list:
    """One vLLM variant's tokens/s at each tenant count (batches of distinct tenants)."""
    out = vllm_generate(
        str(resolve_model(model)),
        kwargs,
        [prompt],
        {f"t{i}": str(p) for i, p in enumerate(paths)},
        new_tokens,
        repeats=repeats,
        batches=list(tenants),
        tokens=False,
        timeout=7200,
    )
    rows = []
    for n, seconds in out["seconds"].items():
        speed = int(n) * new_tokens / statistics.median(seconds)
        rows.append({"engine": "vllm", "variant": name, "tenants": int(n), "tokens_per_s": speed})
        log(f"vllm {name:<20} {n:>3} tenants {speed:7.1f} tok/s")
    return rows


def bench_vllm(
    model: str,
    setting,
    engine_setting=None,
    tenants=(1, 8, 32),
    repeats: int = 3,
    prompt_tokens: int = 128,
    new_tokens: int = 32,
    dtype: str = "float32",
    rank: int = 12,
    hf: bool = True,
    log=print,
) -> dict:
    """Tokens/s of every variant at every tenant count; the JSON document (without the
    versions, which the caller adds)."""
    base, tokenizer = load_model(model)
    layout = discover_layout(base)
    prompt = fixed_prompt(tokenizer, prompt_texts(), prompt_tokens)
    count = max(tenants)
    plain = {
        "dtype": dtype,
        "max_model_len": prompt_tokens + new_tokens + 8,
        "enable_prefix_caching": False,
    }
    lora_rank = next(r for r in VLLM_RANKS if r >= rank)
    common = {**plain, "enable_lora": True, "max_lora_rank": lora_rank, "max_loras": count}
    common["max_cpu_loras"] = count
    engine_kwargs = variants(setting, engine_setting, common, plain)
    with tempfile.TemporaryDirectory() as tmp:
        folders = tenant_folders(base, layout, setting, engine_setting, rank, count, Path(tmp))
        rows = [
            row
            for name, (kwargs, kind) in engine_kwargs.items()
            for row in vllm_rows(
                model,
                name,
                kwargs,
                folders.get(kind, []),
                prompt,
                new_tokens,
                repeats,
                tenants,
                log,
            )
        ]
    if hf:
        rows += hf_rows(
            model, setting, list(tenants), rank, repeats, new_tokens, prompt_tokens, log
        )
    return {
        "rows": rows,
        "ratios": ratios(rows, list(tenants)),
        "wrapped_modules": {
            "lora": engine_cost(layout, [list(layout.kinds)] * layout.num_layers)["vllm"],
            "fanlora": engine_cost(layout, setting.layers)["vllm"],
            **(
                {"engine": engine_cost(layout, engine_setting.layers)["vllm"]}
                if engine_setting is not None
                else {}
            ),
        },
    }


def hf_rows(model, setting, tenants, rank, repeats, new_tokens, prompt_tokens, log) -> list:
    """PEFT's adapter_names and fanlora's batched path on the same batches (fp32 weights,
    this process's device)."""
    rows = []
    for n in tenants:
        for r in bench_sweep(
            Backbone(model, "float32", "auto"),
            setting,
            ["lora", "fanlora"],
            [n],
            n,
            rank,
            repeats,
            new_tokens,
            prompt_tokens,
            log=lambda _: None,
        ):
            name = f"{r['path']}/{r['kind']}"
            rows.append(
                {
                    "engine": r["path"],
                    "variant": r["kind"],
                    "tenants": n,
                    "tokens_per_s": r["tokens_per_s_median"],
                }
            )
            log(f"{name:<25} {n:>3} tenants {r['tokens_per_s_median']:7.1f} tok/s")
    return rows


def ratios(rows: list[dict], tenants: list[int]) -> dict:
    """Per tenant count: each vLLM variant against vLLM's all-module LoRA and the base."""
    speed = {(r["engine"], r["variant"], r["tenants"]): r["tokens_per_s"] for r in rows}
    out = {}
    for n in tenants:
        lora, base = speed[("vllm", "lora", n)], speed[("vllm", "base", n)]
        out[str(n)] = {
            f"{v}_vs_lora": speed[("vllm", v, n)] / lora
            for v in ("fanlora", "fanlora-restricted", "engine-restricted")
            if ("vllm", v, n) in speed
        } | {"lora_vs_base": lora / base}
    return out


def markdown(doc: dict) -> str:
    """One row per (engine, variant), one column per tenant count."""
    tenants = sorted({r["tenants"] for r in doc["rows"]})
    speed = {(r["engine"], r["variant"], r["tenants"]): r["tokens_per_s"] for r in doc["rows"]}
    lines = ["| engine | variant | " + " | ".join(f"{n} tenants" for n in tenants) + " |"]
    lines.append("| --- | --- |" + " ---: |" * len(tenants))
    for engine, variant in dict.fromkeys((r["engine"], r["variant"]) for r in doc["rows"]):
        cells = []
        for n in tenants:
            value = speed.get((engine, variant, n))
            ratio = doc["ratios"][str(n)].get(f"{variant}_vs_lora") if engine == "vllm" else None
            text = "" if value is None else f"{value:.1f}"
            cells.append(text + (f" ({ratio:.2f}x)" if ratio else ""))
        lines.append(f"| {engine} | {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nIn brackets: tokens/s against vLLM's all-module LoRA.\n"


def plot(doc: dict, path: Path) -> Path:
    curves = {}
    for r in doc["rows"]:
        label = f"{r['engine']}: {r['variant']}"
        style = "-o" if r["engine"] == "vllm" else "--s"
        curves.setdefault(label, (label, style, []))[2].append((r["tenants"], r["tokens_per_s"]))
    title = "multi-tenant decoding, adapters unmerged"
    return tenant_curves(list(curves.values()), path, "generated tokens / s", title)
