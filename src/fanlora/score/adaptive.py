"""Adaptive AB-score: spend validation batches only where they change the setting (racing).

With the loss metric, V_{m,l} = sum_i d_i / sum_i n_i over sequences i, where
d_i = loss_i(without) - loss_i(all) + loss_i(none) - loss_i(only) and n_i is the
sequence's response-token count (the same for every module). Batches are added one at a
time. At each look, for m sequences, a ratio estimate and its standard error (delta method)
give a two-sided interval ``V +- t_{1 - a/2, m-1} se`` with Student's t and a Bonferroni
level ``a = alpha / (looks x modules)``: the chance that any module of the model is settled
on the wrong side at any look is at most ``alpha``. No module settles before
``min_sequences`` sequences. Decisions use paired differences (the same sequences) at the
layer's K-th boundary:

- a kept module k (among its layer's top K_max by estimate, and >= 0) is settled when its
  interval is above 0 and, for every module j not kept, the interval of V_k - V_j is above 0;
- a dropped module j is settled when its interval is below 0, or when the layer keeps K_max
  and for every kept module k the interval of V_j - V_k is below 0.

The setting needs nothing more; a module never settled uses every batch. When the validation
set is too small for any module to stop before the last batch, racing only costs more than
exact fast scoring: :func:`racing_pays` says so and the caller scores exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from scipy.stats import t as student_t

from fanlora.errors import FanLoRAError
from fanlora.score.evaluator import Evaluate, ValSet, journalled
from fanlora.score.gates import Gates, Key
from fanlora.score.journal import Journal

Critical = Callable[[int], float]  # sequences seen -> interval half-width in standard errors


def estimate(d: torch.Tensor, n: torch.Tensor) -> tuple[float, float]:
    """Ratio estimate sum(d)/sum(n) and its standard error (delta method)."""
    v = float(d.sum() / n.sum())
    m = len(d)
    if m < 2:
        return v, math.inf
    resid = (d - v * n) / n.mean()
    return v, float(resid.std(unbiased=True) / math.sqrt(m))


def critical_value(alpha: float, looks: int, modules: int) -> Critical:
    """m -> t quantile 1 - a/2 with m - 1 degrees of freedom, a = alpha / (looks x modules)."""
    level = alpha / (max(looks, 1) * max(modules, 1))
    return lambda m: float(student_t.ppf(1 - level / 2, m - 1)) if m >= 2 else math.inf


def interval(d: torch.Tensor, n: torch.Tensor, crit: Critical) -> tuple[float, float]:
    v, se = estimate(d, n)
    half = crit(len(d)) * se
    return v - half, v + half


def settled(
    data: dict[Key, torch.Tensor],
    n: torch.Tensor,
    k_max: int,
    crit: Critical,
    min_sequences: int = 2,
) -> set[Key]:
    """Modules of one layer whose membership in the setting is decided (see module doc).

    ``data[key]``: the per-sequence d_i seen so far (a prefix of the batches); ``n``: n_i of
    the longest prefix. Paired differences use the sequences both modules have seen.
    """
    values = {k: estimate(d, n[: len(d)])[0] for k, d in data.items()}
    ranked = sorted(data, key=lambda k: -values[k])
    kept = [k for k in ranked if values[k] >= 0][:k_max]
    dropped = [k for k in ranked if k not in kept]

    def diff(a: Key, b: Key) -> tuple[float, float]:
        m = min(len(data[a]), len(data[b]))
        return interval(data[a][:m] - data[b][:m], n[:m], crit)

    done = set()
    for k in kept:
        if len(data[k]) < min_sequences:
            continue
        if interval(data[k], n[: len(data[k])], crit)[0] > 0 and all(
            diff(k, j)[0] > 0 for j in dropped
        ):
            done.add(k)
    for j in dropped:
        if len(data[j]) < min_sequences:
            continue
        below = interval(data[j], n[: len(data[j])], crit)[1] < 0
        beaten = len(kept) == k_max and all(diff(j, k)[1] < 0 for k in kept)
        if below or beaten:
            done.add(j)
    return done


def racing_pays(valset: ValSet, min_sequences: int) -> str | None:
    """None when a module can stop before the last validation batch, else why it cannot."""
    sizes = [len(b["input_ids"]) for b in valset.batches]
    seen = 0
    for size in sizes[:-1]:
        seen += size
        if seen >= min_sequences:
            return None
    return (
        f"racing cannot stop a module before the last of the {len(sizes)} validation "
        f"batches ({valset.num_sequences} sequences, at least {min_sequences} before a "
        "module may stop), so it would cost more than exact scoring"
    )


def check_k_max(gates: Gates, k_max: int) -> None:
    per_layer = len({kind for _, kind in gates.keys})
    if k_max > per_layer:
        raise FanLoRAError(
            f"--adaptive with K_max {k_max} exceeds the {per_layer} modules "
            "per layer: nothing to decide"
        )


class Racer:
    """Per-batch, journalled d_i and n_i on top of the fast evaluator (:func:`ab.fast`)."""

    def __init__(self, evaluate: Evaluate, gates: Gates, journal: Journal):
        self.evaluate, self.gates, self.journal = evaluate, gates, journal
        self.last = gates.layers[-1]

    def stats(self, name: str, open_keys: set, layer: int, base: str, batch: int):
        return journalled(
            self.journal, f"{name}:b{batch}", lambda: self.evaluate(open_keys, layer, base, [batch])
        )

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


def adaptive_scores(
    evaluate: Evaluate,
    gates: Gates,
    valset: ValSet,
    journal: Journal,
    k_max: int,
    alpha: float = 0.05,
    min_sequences: int = 8,
    progress=None,
    layers: list[int] | None = None,
) -> list[dict]:
    """Race each of ``layers`` (default all); return records with V, its standard error
    and the sequences spent (journalled, so a second call recomputes nothing)."""
    check_k_max(gates, k_max)
    racer = Racer(evaluate, gates, journal)
    crit = critical_value(alpha, len(valset.batches), len(gates.keys))
    records = []
    for layer in gates.layers if layers is None else layers:
        keys = [k for k in gates.keys if k[0] == layer]
        data = {k: torch.zeros(0) for k in keys}
        n = torch.zeros(0)
        active = set(keys)
        for batch in range(len(valset.batches)):
            for key in sorted(active, key=keys.index):
                d, n_batch = racer.diffs(key, batch)
                data[key] = torch.cat([data[key], d])
            n = torch.cat([n, n_batch])
            active -= settled(data, n, k_max, crit, min_sequences)
            if not active:
                break
        for key in keys:
            v, se = estimate(data[key], n[: len(data[key])])
            records.append(
                {
                    "layer": key[0],
                    "module": key[1],
                    "score": v,
                    "stderr": se,
                    "sequences_spent": len(data[key]),
                }
            )
        if progress is not None:
            progress.update(len(keys))
    return records
