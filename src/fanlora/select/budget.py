"""Matched budgets: baselines with FanLoRA's trainable parameters, within +-5%.

LoRA of rank r on a module with input d_in and output d_out trains ``r (d_in + d_out)``
parameters, so FanLoRA at rank r1 trains ``P* = r1 sum_{kept (l, k)} (d_in_k + d_out_k)``.

- **LoRA on every module**: one rank for every module moves the count in steps of
  ``L sum_k (d_in_k + d_out_k)`` (12% of the target on SmolLM2 at r1 = 12), so the ranks are
  set per module *kind*: every kind at r or r + 1 with r = floor(P* / (L sum_k ...)), the
  kinds at r + 1 chosen by trying every subset (2^7 for LLaMA), closest to P*.
- **Random placement**: per layer as many modules as the setting keeps, of kinds drawn at
  random; draws whose count is outside +-5% of P* are redrawn (seeded), else the closest of
  ``tries`` draws is used at the common rank closest to P* (a setting of mostly MLP
  modules costs more per module than uniform kinds: on SmolLM2, FanLoRA's 60-module
  setting of a trained step 1 is 14% above every one of 2,000 uniform draws).
- **AdaLoRA**: its budget is a total of T singular triplets spread unevenly over the N
  modules, so only that total is matched, at the modules' mean cost per triplet:
  T = round(P* N / sum_all (d_in + d_out)), an average target rank T / N that may be a
  fraction (an integer average, PEFT's ``target_r``, misses P* by up to a third at small
  budgets: 1.49 on SmolLM2 at r1 = 4). It starts from 1.5x the rounded average (the paper's
  convention: start at 1.5-2x the target). What a trained adapter keeps is counted from its
  rank pattern: sum over modules of kept triplets x (d_in + d_out).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from fanlora.modules.discovery import ModuleLayout

TOLERANCE = 0.05
ADALORA_INIT_FACTOR = 1.5


@dataclass(frozen=True)
class Match:
    """A baseline's parameter count against the target, and whether it is within tolerance."""

    target: int
    got: int

    @property
    def ratio(self) -> float:
        return self.got / self.target if self.target else float("inf")

    @property
    def within(self) -> bool:
        return abs(self.ratio - 1) <= TOLERANCE

    def describe(self, what: str) -> str:
        side = "within" if self.within else "OUTSIDE"
        return (
            f"{what}: {self.got:,} trainable parameters against FanLoRA's {self.target:,} "
            f"({100 * (self.ratio - 1):+.1f}%, {side} +-{100 * TOLERANCE:.0f}%)"
        )

    def to_dict(self) -> dict:
        return {
            "target": self.target,
            "got": self.got,
            "ratio": self.ratio,
            "within_tolerance": self.within,
            "tolerance": TOLERANCE,
        }


def per_rank(layout: ModuleLayout, kind: str) -> int:
    """Parameters per unit of rank of ``kind`` summed over every layer: L (d_in + d_out)."""
    return layout.num_layers * sum(layout.shapes[kind])


def kinds_params(layout: ModuleLayout, kinds_per_layer: list[list[str]], rank: int) -> int:
    """LoRA parameters of ``kinds_per_layer`` at one rank: r sum (d_in + d_out)."""
    return rank * sum(sum(layout.shapes[k]) for kinds in kinds_per_layer for k in kinds)


def match_kind_ranks(layout: ModuleLayout, target: int) -> tuple[dict[str, int], Match]:
    """Per-kind ranks of LoRA on every module closest to ``target`` parameters (r or r + 1
    per kind; every subset tried)."""
    sizes = {k: per_rank(layout, k) for k in layout.kinds}
    base = max(1, target // sum(sizes.values()))
    best: tuple[int, dict[str, int]] | None = None
    for n_up in range(len(sizes) + 1):
        for up in itertools.combinations(sizes, n_up):
            ranks = {k: base + (k in up) for k in sizes}
            got = sum(ranks[k] * sizes[k] for k in sizes)
            if best is None or abs(got - target) < abs(best[0] - target):
                best = (got, ranks)
    assert best is not None
    return best[1], Match(target, best[0])


def draw_random_kinds(
    layout: ModuleLayout, kept: list[list[str]], seed: int, tries: int = 2000
) -> tuple[list[list[str]], Match]:
    """Per layer ``len(kept[l])`` kinds drawn uniformly (``random.Random(seed)``), redrawn
    until the parameter count is within tolerance of ``kept``'s (at any common rank)."""
    rng = random.Random(seed)
    kinds = list(layout.kinds)
    target = kinds_params(layout, kept, 1)
    best: tuple[list[list[str]], Match] | None = None
    for _ in range(tries):
        layers = [sorted(rng.sample(kinds, len(k)), key=kinds.index) for k in kept]
        match = Match(target, kinds_params(layout, layers, 1))
        if best is None or abs(match.ratio - 1) < abs(best[1].ratio - 1):
            best = (layers, match)
        if match.within:
            return layers, match
    assert best is not None
    return best


def common_rank(per_rank: int, target: int) -> tuple[int, Match]:
    """The one rank r whose ``r x per_rank`` parameters come closest to ``target``:
    r = max(1, round(target / per_rank)); the match says how close."""
    rank = max(1, round(target / per_rank))
    return rank, Match(target, rank * per_rank)


def adalora_ranks(layout: ModuleLayout, target: int) -> tuple[int, float, Match]:
    """(init rank, average target rank T / N, match of the target total): AdaLoRA's total of
    T = round(target N / sum_all (d_in + d_out)) triplets over the N modules, at their mean
    cost per triplet; init 1.5x the rounded average."""
    every = sum(per_rank(layout, k) for k in layout.kinds)
    modules = layout.num_layers * len(layout.kinds)
    triplets = max(1, round(target * modules / every))
    rank = max(1, round(triplets / modules))
    init = max(rank + 1, round(ADALORA_INIT_FACTOR * rank))
    return init, triplets / modules, Match(target, round(triplets * every / modules))


def adalora_kept_params(layout: ModuleLayout, rank_pattern: dict[str, list[bool]]) -> int:
    """LoRA-equivalent parameters an AdaLoRA adapter keeps: sum over modules of its kept
    triplets x (d_in + d_out); ``rank_pattern`` is PEFT's (``<module>.lora_E``: kept mask)."""
    return sum(
        sum(rank_pattern.get(f"{layout.name(layer, kind)}.lora_E", ())) * sum(shape)
        for layer in range(layout.num_layers)
        for kind, shape in layout.shapes.items()
    )
