"""Adaptive AB-score: spend validation batches only where they change the setting.

With the loss metric, V_{m,l} = sum_i d_i / sum_i n_i over sequences i, where
d_i = loss_i(without) - loss_i(all) + loss_i(none) - loss_i(only) and n_i is the
sequence's response-token count. Batches are added one at a time (racing): after each,
V is estimated on the batches seen (a ratio estimator with its standard error) and a
module stops once its place is settled at ``z`` standard errors:

- a kept module (among its layer's top K_max by estimate, and >= 0) is settled when its
  lower bound is above 0 and above the upper bound of every module not kept;
- a dropped module is settled when its upper bound is below 0, or below the lower bound of
  every kept module while the layer keeps K_max.

The setting needs nothing more; a module never settled uses every batch.
"""

from __future__ import annotations

import math

import torch

from fanlora.errors import FanLoRAError
from fanlora.score.ab import Evaluate, journalled
from fanlora.score.evaluator import ValSet
from fanlora.score.gates import Gates, Key
from fanlora.score.journal import Journal


def estimate(d: torch.Tensor, n: torch.Tensor) -> tuple[float, float]:
    """Ratio estimate sum(d)/sum(n) and its standard error (delta method)."""
    v = float(d.sum() / n.sum())
    m = len(d)
    if m < 2:
        return v, math.inf
    resid = (d - v * n) / n.mean()
    return v, float(resid.std(unbiased=True) / math.sqrt(m))


def settled(stats: dict[Key, tuple[float, float]], k_max: int, z: float) -> set[Key]:
    """Modules of one layer whose membership in the setting is decided (see module doc)."""
    ranked = sorted(stats, key=lambda k: -stats[k][0])
    kept = [k for k in ranked if stats[k][0] >= 0][:k_max]
    out_ = [k for k in ranked if k not in kept]
    low = {k: stats[k][0] - z * stats[k][1] for k in stats}
    high = {k: stats[k][0] + z * stats[k][1] for k in stats}
    done = set()
    for k in kept:
        if low[k] > 0 and all(low[k] > high[j] for j in out_):
            done.add(k)
    for k in out_:
        if high[k] < 0 or (len(kept) == k_max and all(high[k] < low[j] for j in kept)):
            done.add(k)
    return done


class Racer:
    """Per-batch, journalled d_i and n_i on top of the fast evaluator (:func:`ab.fast`)."""

    def __init__(self, evaluate: Evaluate, gates: Gates, journal: Journal):
        self.evaluate, self.gates, self.journal = evaluate, gates, journal
        self.last = gates.layers[-1]

    def stats(self, name: str, open_keys: set, layer: int, base: str, batch: int):
        return journalled(self.journal, f"{name}:b{batch}",
                          lambda: self.evaluate(open_keys, layer, base, [batch]))  # fmt: skip

    def diffs(self, key: Key, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sequence d_i and n_i of ``key`` on one batch."""
        every = set(self.gates.keys)
        all_ = self.stats("all", every, self.last, "on", batch)
        none = self.stats("none", set(), self.last, "off", batch)
        name = f"{key[0]}:{key[1]}"
        without = self.stats(f"without:{name}", every - {key}, key[0], "on", batch)
        only = self.stats(f"only:{name}", {key}, key[0], "off", batch)
        d = without[:, 0] - all_[:, 0] + none[:, 0] - only[:, 0]
        return d, all_[:, 1]


def adaptive_scores(evaluate: Evaluate, gates: Gates, valset: ValSet, journal: Journal,
                    k_max: int, z: float = 2.0, min_batches: int = 2, progress=None,
                    layers: list[int] | None = None) -> list[dict]:  # fmt: skip
    """Race each of ``layers`` (default all); return records with V, its standard error
    and the batches spent (journalled, so a second call recomputes nothing)."""
    per_layer = len({kind for _, kind in gates.keys})
    if k_max > per_layer:
        raise FanLoRAError(f"--adaptive with K_max {k_max} exceeds the {per_layer} modules "
                           "per layer: nothing to decide")  # fmt: skip
    racer = Racer(evaluate, gates, journal)
    if layers is None:
        layers = gates.layers
    records = []
    for layer in layers:
        keys = [k for k in gates.keys if k[0] == layer]
        data = {k: ([], []) for k in keys}
        active = set(keys)
        for batch in range(len(valset.batches)):
            for key in sorted(active, key=keys.index):
                d, n = racer.diffs(key, batch)
                data[key][0].append(d)
                data[key][1].append(n)
            stats = {k: estimate(torch.cat(data[k][0]), torch.cat(data[k][1])) for k in keys}
            if batch + 1 >= min_batches:
                active -= settled(stats, k_max, z)
            if not active:
                break
        for key in keys:
            v, se = estimate(torch.cat(data[key][0]), torch.cat(data[key][1]))
            records.append({"layer": key[0], "module": key[1], "score": v, "stderr": se,
                            "batches_spent": len(data[key][0]),
                            "sequences_spent": int(sum(len(x) for x in data[key][0]))})  # fmt: skip
        if progress is not None:
            progress.update(len(keys))
    return records
