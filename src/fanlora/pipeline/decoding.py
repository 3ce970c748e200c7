"""The pipeline's decoding table: the base model and each method's adapter, unmerged."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from fanlora.data.registry import load_sample
from fanlora.models.adapters import load_with_adapter
from fanlora.pipeline.config import DecodeConfig
from fanlora.serve.decode import fixed_prompt, measure, unmerged_variants
from fanlora.utils.devices import Runtime
from fanlora.utils.io import atomic_write_json
from fanlora.utils.versions import versions


def decode_variants(
    model_name: str, adapters: dict[str, Path], params: dict, out: Path, log=print
) -> dict:
    """Time generation for the base and for each adapter, unmerged; write ``out`` and
    return it."""
    dc = DecodeConfig(**{k: v for k, v in params.items() if k in DecodeConfig.__annotations__})
    runtime = Runtime.of(params.get("device", "auto"))
    base, tokenizer = load_with_adapter(model_name, None, dc.dtype)
    base.to(runtime.device)
    variants = unmerged_variants(base, model_name, adapters)
    texts = [e.prompt for e in load_sample(params["task"], "test", 32, 0)]
    prompt = fixed_prompt(tokenizer, texts, dc.prompt_tokens)
    rows = []
    total = len(dc.beams) * (dc.runs + 1) * len(variants)
    with tqdm(total=total, desc="decode", unit="run") as bar:
        for beams in dc.beams:
            rows += measure(
                variants, prompt, dc.new_tokens, beams, dc.runs, dc.batch_size, progress=bar
            )
    for row in rows:
        log(
            f"  {row['variant']:<8} beams {row['beams']}: "
            f"{row['tokens_per_s_median']:.1f} tok/s (p90 {row['tokens_per_s_p90']:.1f}), "
            f"adapter {row['adapter_params']:,} params"
        )
    doc = {
        "format": "fanlora-decode",
        "model": model_name,
        "device": runtime.describe(precision=False),
        "threads": torch.get_num_threads(),
        "config": params,
        "rows": rows,
        "versions": versions(),
    }
    atomic_write_json(out, doc)
    return doc
