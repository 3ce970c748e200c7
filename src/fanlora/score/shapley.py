"""Shapley values of the LoRA modules (the paper's reference point for AB-score).

phi_m = sum over coalitions S not containing m of |S|! (n-|S|-1)! / n! (v(S + m) - v(S)),
with v(S) = S_val when exactly the gates in S are open.

- ``scope="layer"``: exact, over the modules of one layer (2^7 coalitions for LLaMA), the
  other layers' gates open; efficiency: sum_m phi_m = v(layer all open) - v(layer closed).
- ``scope="model"``: Monte Carlo over permutations of all modules (Castro et al. 2009):
  each permutation adds the modules one by one from M_null and credits each with its
  marginal gain; phi is the mean over ``budget`` permutations (with its standard error).
  Each permutation is a unit of work, so they are shared out across processes.
"""

from __future__ import annotations

import math
import random

from fanlora.errors import FanLoRAError
from fanlora.score.evaluator import Evaluate, ValSet, journalled, score_of
from fanlora.score.gates import Gates
from fanlora.score.journal import Journal
from fanlora.score.scorer import Context, Scorer, register_scorer


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


def permutation(keys: list, seed: int, p: int) -> list:
    """The ``p``-th permutation of ``keys`` (``random.Random(seed * 7919 + p)``)."""
    order = list(keys)
    random.Random(seed * 7919 + p).shuffle(order)
    return order


def permutation_gains(
    evaluate: Evaluate, order: list, valset: ValSet, metric: str, v_null: float
) -> list[float]:
    """Marginal gain of each module of ``order`` as the modules are opened one by one."""
    opened, previous, gains = set(), v_null, []
    for key in order:
        opened.add(key)
        current = score_of(evaluate(opened, 0, "on"), valset, metric)
        gains.append(current - previous)
        previous = current
    return gains


def mean_and_stderr(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)
    return mean, math.sqrt(var / len(values))


def scored_layers(cfg, gates: Gates) -> list[int]:
    """``cfg.layers`` (checked against the model), or every layer."""
    if not cfg.layers:
        return list(gates.layers)
    missing = sorted(set(cfg.layers) - set(gates.layers))
    if missing:
        raise FanLoRAError(
            f"--layers {missing}: {cfg.model} has layers {gates.layers[0]}-{gates.layers[-1]}"
        )
    return sorted(cfg.layers)


class Shapley(Scorer):
    """Exact per-layer values (``--scope layer``, a unit per layer) or Monte Carlo over the
    whole model (``--scope model``, a unit per permutation, shared out like the rest)."""

    def check(self, cfg, gates: Gates) -> None:
        if cfg.scope == "layer":
            scored_layers(cfg, gates)
        elif cfg.budget < 1:
            raise FanLoRAError(
                f"the Shapley sample budget must be >= 1 permutation, got {cfg.budget}"
            )

    def units(self, ctx: Context) -> list[str]:
        cfg = ctx.cfg
        if cfg.scope == "layer":
            return [f"phi:{layer}" for layer in scored_layers(cfg, ctx.gates)]
        return ["none", *(f"perm:{p}" for p in range(cfg.budget))]

    def compute(self, ctx: Context, key: str) -> dict:
        cfg, evaluate = ctx.cfg, ctx.evaluate
        if key.startswith("phi:"):
            layer = int(key.split(":")[1])
            return {
                "phi": exact_layer(evaluate, ctx.gates, ctx.valset, cfg.metric, ctx.journal, layer)
            }
        if key == "none":
            return {"stats": evaluate(set(), 0, "on").tolist()}
        none = journalled(ctx.journal, "none", lambda: evaluate(set(), 0, "on"))
        v_null = score_of(none, ctx.valset, cfg.metric)
        order = permutation(ctx.gates.keys, cfg.seed, int(key.split(":")[1]))
        return {"gains": permutation_gains(evaluate, order, ctx.valset, cfg.metric, v_null)}

    def records(self, ctx: Context) -> list[dict]:
        cfg, journal = ctx.cfg, ctx.journal
        if cfg.scope == "layer":
            return [
                {"layer": layer, "module": kind, "score": value}
                for layer in scored_layers(cfg, ctx.gates)
                for kind, value in journal.get(f"phi:{layer}")["phi"].items()
            ]
        draws: dict = {key: [] for key in ctx.gates.keys}
        for p in range(cfg.budget):
            order = permutation(ctx.gates.keys, cfg.seed, p)
            for key, gain in zip(order, journal.get(f"perm:{p}")["gains"], strict=True):
                draws[key].append(gain)
        return [
            {"layer": k[0], "module": k[1], "score": m, "stderr": se}
            for k, (m, se) in ((k, mean_and_stderr(v)) for k, v in draws.items())
        ]


register_scorer(Shapley("shapley", "Shapley values: exact per layer or Monte Carlo", "unit"))
