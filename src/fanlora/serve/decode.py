"""Decoding speed and memory of unmerged adapters (the paper's table 3 and appendix B).

Each variant (the base model, or the base with one adapter left unmerged, as in
multi-tenant serving) generates exactly ``new_tokens`` tokens after a fixed prompt. Runs
are interleaved across variants (variant order within a round alternates) so drifts of
a shared, noisy machine hit every variant alike; medians and p90 are reported. Tokens per
second counts generated tokens per sequence (beam search keeps ``beams`` hypotheses but
yields one sequence). Memory: on a GPU, ``torch.cuda.max_memory_allocated``; on a CPU, the
peak resident set during the run above the resident set before it, sampled every 2 ms
(psutil), plus the variant's adapter weights.
"""

from __future__ import annotations

import copy
import itertools
import statistics
import threading
import time
from dataclasses import dataclass

import numpy as np
import psutil
import torch

from fanlora.models.adapters import attach_adapter


@dataclass
class Variant:
    """A model to time; ``adapter_params`` is what its adapter adds to the base."""

    name: str
    model: object
    adapter_params: int = 0
    adapter_bytes: int = 0

    @classmethod
    def of(cls, name: str, model) -> Variant:
        """Count the adapter's weights: every parameter whose name is a PEFT one."""
        extra = [p for n, p in model.named_parameters() if "lora_" in n or "ia3_" in n]
        return cls(
            name,
            model,
            sum(p.numel() for p in extra),
            sum(p.numel() * p.element_size() for p in extra),
        )


def unmerged_variants(base, model_name: str, adapters: dict) -> list[Variant]:
    """The base model and, per named adapter folder, a PEFT-wrapped copy of the base (so no
    variant pays for another's wrapped modules), all in eval mode."""
    variants = [Variant.of("base", base.eval())]
    for name, folder in adapters.items():
        model = attach_adapter(copy.deepcopy(base), folder, model_name).eval()
        variants.append(Variant.of(name, model))
    return variants


def fixed_prompt(tokenizer, texts: list[str], n_tokens: int) -> list[int]:
    """Exactly ``n_tokens`` token ids cut from the concatenated ``texts`` (repeated if short)."""
    pieces = [
        tokenizer(t + "\n\n", add_special_tokens=False, verbose=False)["input_ids"] for t in texts
    ]
    pieces = [p for p in pieces if p] or [tokenizer("The quick brown fox.")["input_ids"]]
    ids: list[int] = []
    for piece in itertools.cycle(pieces):
        if len(ids) >= n_tokens:
            break
        ids += piece
    return ids[:n_tokens]


class PeakRSS:
    """Context manager: the peak resident memory above the start, sampled every 2 ms."""

    def __enter__(self):
        self.proc = psutil.Process()
        self.start = self.peak = self.proc.memory_info().rss
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop.wait(0.002):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.extra = max(self.peak, self.proc.memory_info().rss) - self.start


@torch.no_grad()
def time_generate(model, input_ids: torch.Tensor, new_tokens: int, beams: int) -> dict:
    """One generate call forced to ``new_tokens`` tokens: seconds, tokens/s, peak memory."""
    mask = torch.ones_like(input_ids)
    cuda = input_ids.is_cuda
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as rss:
        start = time.perf_counter()
        out = model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            do_sample=False,
            num_beams=beams,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=0,
        )
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    made = out.shape[1] - input_ids.shape[1]
    peak = torch.cuda.max_memory_allocated() if cuda else rss.extra
    return {
        "seconds": seconds,
        "tokens": made * input_ids.shape[0],
        "tokens_per_s": made * input_ids.shape[0] / seconds,
        "peak_bytes": peak,
    }


def percentile(values: list[float], q: float) -> float:
    """The q-quantile by linear interpolation (numpy's default)."""
    return float(np.percentile(values, 100 * q))


def measure(
    variants: list[Variant],
    prompt: list[int],
    new_tokens: int,
    beams: int,
    runs: int,
    batch_size: int = 1,
    warmup: int = 1,
    progress=None,
) -> list[dict]:
    """Interleaved timing of every variant; one summary row per variant."""
    ids = torch.tensor([prompt] * batch_size)
    samples: dict[str, list[dict]] = {v.name: [] for v in variants}
    for round_ in range(warmup + runs):
        order = variants if round_ % 2 == 0 else variants[::-1]
        for v in order:
            result = time_generate(
                v.model, ids.to(next(v.model.parameters()).device), new_tokens, beams
            )
            if round_ >= warmup:
                samples[v.name].append(result)
            if progress is not None:
                progress.update(1)
    rows = []
    for v in variants:
        tps = [s["tokens_per_s"] for s in samples[v.name]]
        peaks = [s["peak_bytes"] for s in samples[v.name]]
        rows.append(
            {
                "variant": v.name,
                "beams": beams,
                "batch_size": batch_size,
                "prompt_tokens": len(prompt),
                "new_tokens": new_tokens,
                "runs": runs,
                "tokens_per_s_median": statistics.median(tps),
                "tokens_per_s_p90": percentile(tps, 0.9),
                "tokens_per_s_p10": percentile(tps, 0.1),
                "peak_extra_mb_median": statistics.median(peaks) / 2**20,
                "adapter_params": v.adapter_params,
                "adapter_mb": v.adapter_bytes / 2**20,
                "samples": tps,
            }
        )
    return rows
