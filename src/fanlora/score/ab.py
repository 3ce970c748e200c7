"""AB-score (paper eq. 3): V_{m,l} = S(M_all) - S(M_without m,l) + S(M_only m,l) - S(M_null).

Two ways to the same numbers: ``straightforward`` runs the full model for each of the
2 N_mod L + 2 gate settings; ``fast`` (default) reuses cached layer inputs and computes
logits only at response positions (see :mod:`fanlora.score.evaluator`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fanlora.score.evaluator import PrefixCache, ValSet, full_eval, score_of
from fanlora.score.gates import Gates, Key
from fanlora.score.journal import Journal

# (open gates, layer, "on"/"off"[, batch indices]) -> per-sequence stats
Evaluate = Callable[..., torch.Tensor]


def straightforward(model, gates: Gates, valset: ValSet) -> Evaluate:
    def evaluate(open_keys: set, layer: int, base: str) -> torch.Tensor:
        gates.set_open(open_keys)
        return full_eval(model, valset)

    return evaluate


def fast(model, gates: Gates, valset: ValSet) -> Evaluate:
    cache = PrefixCache(model, valset)
    gates.all_open()
    prefixes = {"on": cache.capture()}
    gates.set_open(())
    prefixes["off"] = cache.capture()

    def evaluate(open_keys: set, layer: int, base: str, batches=None) -> torch.Tensor:
        gates.set_open(open_keys)
        return cache.tail(prefixes[base], layer, batches)

    return evaluate


def journalled(journal: Journal, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    if key not in journal:
        journal.write(key, stats=compute().tolist())
    return torch.tensor(journal.get(key)["stats"])


def ab_scores(
    evaluate: Evaluate,
    gates: Gates,
    valset: ValSet,
    metric: str,
    journal: Journal,
    keys: list[Key],
    progress=None,
) -> None:
    """Journal S(all), S(none) and, for each of ``keys``, S(without) and S(only)."""
    every = set(gates.keys)
    last = max(layer for layer, _ in gates.keys)
    journalled(journal, "all", lambda: evaluate(every, last, "on"))
    journalled(journal, "none", lambda: evaluate(set(), last, "off"))
    for layer, kind in keys:
        name = f"{layer}:{kind}"
        if f"without:{name}" not in journal or f"only:{name}" not in journal:
            key = (layer, kind)
            journalled(journal, f"without:{name}", lambda k=key: evaluate(every - {k}, k[0], "on"))
            journalled(journal, f"only:{name}", lambda k=key: evaluate({k}, k[0], "off"))
        if progress is not None:
            progress.update(1)


def ab_records(journal: Journal, gates: Gates, valset: ValSet, metric: str) -> list[dict]:
    """Score records (eq. 3) from a complete journal, with every term kept."""
    s = {
        name: score_of(torch.tensor(journal.get(name)["stats"]), valset, metric)
        for name in ("all", "none")
    }
    records = []
    for layer, kind in gates.keys:
        without = score_of(
            torch.tensor(journal.get(f"without:{layer}:{kind}")["stats"]), valset, metric
        )
        only = score_of(torch.tensor(journal.get(f"only:{layer}:{kind}")["stats"]), valset, metric)
        records.append(
            {
                "layer": layer,
                "module": kind,
                "score": s["all"] - without + only - s["none"],
                "s_all": s["all"],
                "s_none": s["none"],
                "s_without": without,
                "s_only": only,
            }
        )
    return records
