"""Shapley values of the LoRA modules (the paper's reference point for AB-score).

phi_m = sum over coalitions S not containing m of |S|! (n-|S|-1)! / n! (v(S + m) - v(S)),
with v(S) = S_val when exactly the gates in S are open.

- ``scope="layer"``: exact, over the modules of one layer (2^7 coalitions for LLaMA), the
  other layers' gates open; efficiency: sum_m phi_m = v(layer all open) - v(layer closed).
- ``scope="model"``: Monte Carlo over permutations of all modules (Castro et al. 2009):
  each permutation adds the modules one by one from M_null and credits each with its
  marginal gain; phi is the mean over ``budget`` permutations (with its standard error).
"""

from __future__ import annotations

import math
import random

from fanlora.errors import FanLoRAError
from fanlora.score.ab import Evaluate, journalled
from fanlora.score.evaluator import ValSet, score_of
from fanlora.score.gates import Gates
from fanlora.score.journal import Journal


def exact_layer(
    evaluate: Evaluate, gates: Gates, valset: ValSet, metric: str, journal: Journal, layer: int
) -> dict[str, float]:
    """Exact Shapley values of ``layer``'s modules; the other layers' gates stay open."""
    players = [kind for l_, kind in gates.keys if l_ == layer]
    others = {key for key in gates.keys if key[0] != layer}
    n = len(players)
    value = {}
    for mask in range(2**n):
        members = {(layer, players[i]) for i in range(n) if mask >> i & 1}
        stats = journalled(
            journal, f"layer:{layer}:{mask}", lambda m=members: evaluate(others | m, layer, "on")
        )
        value[mask] = score_of(stats, valset, metric)
    phi = {}
    for i, kind in enumerate(players):
        total = 0.0
        for mask in range(2**n):
            if mask >> i & 1:
                continue
            size = bin(mask).count("1")
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            total += weight * (value[mask | 1 << i] - value[mask])
        phi[kind] = total
    return phi


def monte_carlo(
    evaluate: Evaluate,
    gates: Gates,
    valset: ValSet,
    metric: str,
    journal: Journal,
    budget: int,
    seed: int,
    progress=None,
):
    """(mean marginal gain, standard error) per module over ``budget`` permutations."""
    if budget < 1:
        raise FanLoRAError(f"the Shapley sample budget must be >= 1 permutation, got {budget}")
    keys = gates.keys
    v_null = score_of(journalled(journal, "none", lambda: evaluate(set(), 0, "on")), valset, metric)
    draws: dict = {key: [] for key in keys}
    for p in range(budget):
        order = keys[:]
        random.Random(seed * 7919 + p).shuffle(order)
        if f"perm:{p}" not in journal:
            opened, previous, gains = set(), v_null, []
            for key in order:
                opened.add(key)
                current = score_of(evaluate(opened, 0, "on"), valset, metric)
                gains.append(current - previous)
                previous = current
            journal.write(f"perm:{p}", gains=gains)
        for key, gain in zip(order, journal.get(f"perm:{p}")["gains"], strict=True):
            draws[key].append(gain)
        if progress is not None:
            progress.update(1)
    result = {}
    for key, values in draws.items():
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)
        result[key] = (mean, math.sqrt(var / len(values)))
    return result
