"""``fanlora bench decode`` and ``fanlora bench tenants``: serving speed, side by side.

decode (the paper's table 3, appendix B): the base model and one adapter per method, each
unmerged through standard PEFT on its own copy of the base; tokens/s and peak memory at
beam 1 and 3, a 276-token prompt, 32 new tokens, runs interleaved after a warm-up. It also
sets the base model against this machine's limit: decoding one token at batch 1 reads
every weight once, so tokens/s <= memory bandwidth / weight bytes.

tenants: a batch whose requests name different adapters, served by PEFT's
``generate(adapter_names=...)`` and by :class:`~fanlora.serve.multitenant.TenantServer`,
for 1..N distinct tenants per batch and for FanLoRA and all-module LoRA adapters.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from tqdm.auto import tqdm

from fanlora.data.registry import load_sample
from fanlora.models import load_model
from fanlora.modules import discover_layout
from fanlora.serve.adapters import method_config, write_tenants
from fanlora.serve.decode import Variant, fixed_prompt, measure, unmerged_variants
from fanlora.serve.multitenant import TenantServer
from fanlora.utils.devices import resolve_device
from fanlora.utils.plotting import tenant_curves


def memory_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes per second of a large tensor copy (read + write), the median of ``repeats``."""
    src = torch.ones(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    return 2 * src.numel() * 4 / statistics.median(times[1:])


def weight_bytes(model) -> int:
    """Bytes of distinct parameter tensors (tied embeddings counted once)."""
    seen = {p.data_ptr(): p.numel() * p.element_size() for p in model.parameters()}
    return sum(seen.values())


def prompt_texts(count: int = 32) -> list[str]:
    """Real prompts when the data is prepared, else a fixed sentence."""
    try:
        return [e.prompt for e in load_sample("instruct", "test", count, 0)]
    except Exception:  # the benchmark must run without prepared data too
        return ["The quick brown fox jumps over the lazy dog."]


@dataclass(frozen=True)
class Backbone:
    """The base model a benchmark loads: its name, the dtype of its weights, its device."""

    name: str
    dtype: str = "float32"
    device: str = "auto"

    def load(self):
        """(model on the device, tokenizer)."""
        model, tokenizer = load_model(self.name, self.dtype)
        return model.to(resolve_device(self.device)), tokenizer


def decode_variants(backbone: Backbone, setting, methods: list[str], rank: int, folder: Path):
    """The base model and one PEFT-wrapped copy per method (adapters written to folder)."""
    base, tok = backbone.load()
    layout = discover_layout(base)
    paths = {
        m: write_tenants(base, method_config(m, layout, setting, rank), folder / m, 1)[0]
        for m in methods
    }
    variants = unmerged_variants(base, backbone.name, paths)
    return variants, tok, base


def bench_decode(
    backbone: Backbone,
    setting,
    methods: list[str],
    rank: int,
    beams: list[int],
    runs: int,
    new_tokens: int,
    prompt_tokens: int,
    log=print,
) -> dict:
    """Table 3 on this machine; returns the JSON document."""
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        variants, tok, base = decode_variants(backbone, setting, methods, rank, Path(tmp))
        prompt = fixed_prompt(tok, prompt_texts(), prompt_tokens)
        rows = []
        with tqdm(total=len(beams) * (runs + 1) * len(variants), desc="decode") as bar:
            for b in beams:
                rows += measure(variants, prompt, new_tokens, b, runs, progress=bar)
        bandwidth = memory_bandwidth()
        wbytes = weight_bytes(base)
    limit = bandwidth / wbytes
    base_row = next(r for r in rows if r["variant"] == "base" and r["beams"] == 1)
    for r in rows:
        ref = next(x for x in rows if x["variant"] == "base" and x["beams"] == r["beams"])
        r["speed_vs_base"] = r["tokens_per_s_median"] / ref["tokens_per_s_median"]
        log(
            f"{r['variant']:<8} beams {r['beams']}: {r['tokens_per_s_median']:6.1f} tok/s "
            f"(p90 {r['tokens_per_s_p90']:.1f}) {100 * r['speed_vs_base']:5.1f}% of base, "
            f"adapter {r['adapter_params']:,} params"
        )
    physical = {
        "memory_bandwidth_gb_s": bandwidth / 1e9,
        "weight_bytes": wbytes,
        "limit_tokens_per_s_batch1": limit,
        "base_share_of_limit": base_row["tokens_per_s_median"] / limit,
    }
    log(
        f"base model: {base_row['tokens_per_s_median']:.1f} tok/s at beam 1 vs a limit of "
        f"{limit:.1f} ({bandwidth / 1e9:.1f} GB/s / {wbytes / 1e6:.0f} MB of weights): "
        f"{100 * physical['base_share_of_limit']:.0f}%"
    )
    return {"rows": rows, "physical": physical}


class BoundPath:
    """A serving path bound to a batch's adapter names, shaped like a model for measure()."""

    def __init__(self, model, generate):
        self.model, self._generate = model, generate

    def generate(self, **kwargs):
        return self._generate(**kwargs)

    def parameters(self):
        return self.model.parameters()


def tenant_paths(backbone: Backbone, tenants: list[Path]):
    """(PEFT model with every tenant loaded as t0, t1, ..., TenantServer with the same)."""
    base, _ = backbone.load()
    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), str(tenants[0]), adapter_name="t0")
    for i, path in enumerate(tenants[1:], 1):
        peft_model.load_adapter(str(path), adapter_name=f"t{i}")
    server = TenantServer(base)
    for i, path in enumerate(tenants):
        server.register(f"t{i}", path)
    return peft_model.eval(), server


def bound_variants(peft_model, server, names: list[str], label: str) -> list[Variant]:
    """PEFT (adapter_names) and the batched path, both serving rows named ``names``."""

    def peft_generate(**kw):
        return peft_model.generate(**kw, adapter_names=names)

    def ours_generate(input_ids, attention_mask, **kw):
        return server.generate(input_ids, attention_mask, names, **kw)

    return [
        Variant(f"peft/{label}", BoundPath(peft_model, peft_generate)),
        Variant(f"batched/{label}", BoundPath(server.model, ours_generate)),
    ]


def write_kind(backbone: Backbone, kind: str, setting, count: int, rank: int, folder: Path):
    base, tok = backbone.load()
    config = method_config(kind, discover_layout(base), setting, rank)
    return write_tenants(base, config, folder / kind, count), tok


def bench_goals(
    backbone: Backbone,
    setting,
    rank: int,
    runs: int,
    new_tokens: int,
    prompt_tokens: int,
    sizes=(16, 64),
    log=print,
) -> dict:
    """Batch of B requests from B distinct FanLoRA tenants: PEFT vs batched, against the
    same batch served by one adapter, and the base model."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        paths, tok = write_kind(backbone, "fanlora", setting, max(sizes), rank, Path(tmp))
        peft_model, server = tenant_paths(backbone, paths)
        prompt = fixed_prompt(tok, prompt_texts(), prompt_tokens)
        for size in sizes:
            distinct = [f"t{i}" for i in range(size)]
            variants = [
                *bound_variants(peft_model, server, distinct, f"{size}-tenants"),
                *bound_variants(peft_model, server, ["t0"] * size, "1-tenant"),
            ]
            variants.append(Variant("base", server.model))  # no batch set: plain base
            with tqdm(total=(runs + 1) * len(variants), desc=f"tenants x{size}") as bar:
                rows = measure(variants, prompt, new_tokens, 1, runs, batch_size=size, progress=bar)
            speed = {r["variant"]: r["tokens_per_s_median"] for r in rows}
            ratios = {
                "batched_vs_peft": speed[f"batched/{size}-tenants"] / speed[f"peft/{size}-tenants"],
                "batched_distinct_vs_one_adapter": speed[f"batched/{size}-tenants"]
                / speed["batched/1-tenant"],
                "peft_distinct_vs_one_adapter": speed[f"peft/{size}-tenants"]
                / speed["peft/1-tenant"],
            }
            for r in rows:
                log(
                    f"batch {size:>2} {r['variant']:<22} {r['tokens_per_s_median']:7.1f} tok/s "
                    f"(p10 {r['tokens_per_s_p10']:.1f}, p90 {r['tokens_per_s_p90']:.1f})"
                )
            log(f"batch {size}: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
            out[str(size)] = {"rows": rows, "ratios": ratios}
    return out


def bench_sweep(
    backbone: Backbone,
    setting,
    kinds: list[str],
    counts: list[int],
    batch: int,
    rank: int,
    runs: int,
    new_tokens: int,
    prompt_tokens: int,
    log=print,
) -> list:
    """Throughput and latency against the number of distinct tenants in one batch."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for kind in kinds:
            paths, tok = write_kind(backbone, kind, setting, max(counts), rank, Path(tmp))
            peft_model, server = tenant_paths(backbone, paths)
            prompt = fixed_prompt(tok, prompt_texts(), prompt_tokens)
            for count in counts:
                names = [f"t{i % count}" for i in range(batch)]
                variants = bound_variants(peft_model, server, names, str(count))
                with tqdm(total=(runs + 1) * 2, desc=f"{kind} {count} tenants") as bar:
                    got = measure(
                        variants, prompt, new_tokens, 1, runs, batch_size=batch, progress=bar
                    )
                for r in got:
                    path = r["variant"].split("/")[0]
                    r.update(
                        kind=kind,
                        tenants=count,
                        path=path,
                        latency_s_median=batch * new_tokens / r["tokens_per_s_median"],
                    )
                    log(
                        f"{kind:<8} {count:>2} tenants {path:<8} "
                        f"{r['tokens_per_s_median']:7.1f} tok/s, "
                        f"{r['latency_s_median']:.2f} s per batch"
                    )
                rows += got
            del peft_model, server
    return rows


def plot_sweep(rows: list[dict], path: Path) -> Path:
    curves = [
        (
            f"{kind}, {p}",
            style,
            [
                (r["tenants"], r["tokens_per_s_median"])
                for r in rows
                if (r["kind"], r["path"]) == (kind, p)
            ],
        )
        for kind in sorted({r["kind"] for r in rows})
        for p, style in (("peft", "--o"), ("batched", "-s"))
    ]
    title = "mixed-tenant batch: PEFT adapter_names vs batched path"
    return tenant_curves(curves, path, "tokens / s", title)
