"""AB-score (paper eq. 3): V_{m,l} = S(M_all) - S(M_without m,l) + S(M_only m,l) - S(M_null).

Two ways to the same numbers: ``straightforward`` runs the full model for each of the
2 N_mod L + 2 gate settings; ``fast`` (default) reuses cached layer inputs and computes
logits only at response positions (see :mod:`fanlora.score.evaluator`). With ``--adaptive``
the modules of each layer are raced (:mod:`fanlora.score.adaptive`) when the validation set
is large enough for racing to stop a module early, and scored exactly otherwise.

Units of work: ``all`` and ``none`` (the two reference models), then one per module
(``module:<layer>:<kind>``: its S(without) and S(only) per-sequence statistics); racing
works per layer (``race:<layer>``).
"""

from __future__ import annotations

import torch

from fanlora.score.adaptive import adaptive_scores, check_k_max, racing_pays
from fanlora.score.evaluator import (  # noqa: F401  (re-exported: AB's two ways)
    Evaluate,
    ValSet,
    fast,
    journalled,
    score_of,
    straightforward,
)
from fanlora.score.scorer import (
    Context,
    Scorer,
    gated_evaluator,
    module_key,
    parse_module_key,
    register_scorer,
)


def stats_of(entry: dict) -> torch.Tensor:
    return torch.tensor(entry["stats"])


def ab_record(key, s_all: float, s_none: float, without: float, only: float) -> dict:
    """One module's record with every term of eq. 3 kept, so a reader can recompute V."""
    score = s_all - without + only - s_none
    return {
        "layer": key[0],
        "module": key[1],
        "score": score,
        "s_all": s_all,
        "s_none": s_none,
        "s_without": without,
        "s_only": only,
    }


def exact_unit(ctx: Context, key: str) -> dict:
    """The journal entry of an exact unit: ``all``, ``none`` (per-sequence statistics of
    M_all and M_null) or ``module:<layer>:<kind>`` (those of M_without and M_only)."""
    every, last, evaluate = set(ctx.gates.keys), ctx.gates.layers[-1], ctx.evaluate
    if key == "all":
        return {"stats": evaluate(every, last, "on").tolist()}
    if key == "none":
        return {"stats": evaluate(set(), last, "off").tolist()}
    module = parse_module_key(key)
    without = evaluate(every - {module}, module[0], "on")
    only = evaluate({module}, module[0], "off")
    return {"without": without.tolist(), "only": only.tolist()}


def exact_records(ctx: Context, keys) -> list[dict]:
    """Eq. 3's records of modules ``keys`` from the journalled exact units."""
    journal, valset, metric = ctx.journal, ctx.valset, ctx.cfg.metric
    s = {name: score_of(stats_of(journal.get(name)), valset, metric) for name in ("all", "none")}
    out = []
    for key in keys:
        entry = journal.get(module_key(key))
        without = score_of(torch.tensor(entry["without"]), valset, metric)
        only = score_of(torch.tensor(entry["only"]), valset, metric)
        out.append(ab_record(key, s["all"], s["none"], without, only))
    return out


class AB(Scorer):
    """Exact AB-scores (fast or straightforward), or raced ones with ``--adaptive``."""

    def check(self, cfg, gates) -> None:
        if cfg.adaptive:
            check_k_max(gates, cfg.k_max)

    def prepare(self, ctx: Context, log) -> None:
        cfg = ctx.cfg
        ctx.notes["racing_fallback"] = None
        if cfg.adaptive:
            reason = racing_pays(ctx.valset, cfg.min_sequences)
            if reason:
                log(f"--adaptive: {reason}; scoring every module exactly (fast mode) instead")
            ctx.notes["racing_fallback"] = reason
        ctx.notes["racing"] = cfg.adaptive and not ctx.notes["racing_fallback"]
        ctx.evaluate = gated_evaluator(ctx, cfg.mode == "fast" or ctx.notes["racing"])

    def units(self, ctx: Context) -> list[str]:
        if ctx.notes["racing"]:
            return [f"race:{layer}" for layer in ctx.gates.layers]
        return ["all", "none", *(module_key(k) for k in ctx.gates.keys)]

    def compute(self, ctx: Context, key: str) -> dict:
        if key.startswith("race:"):
            cfg = ctx.cfg
            records = adaptive_scores(
                ctx.evaluate,
                ctx.gates,
                ctx.valset,
                ctx.journal,
                cfg.k_max,
                cfg.alpha,
                cfg.min_sequences,
                layers=[int(key.split(":")[1])],
            )
            return {"records": records}
        return exact_unit(ctx, key)

    def records(self, ctx: Context) -> list[dict]:
        if ctx.notes["racing"]:
            return [r for key in self.units(ctx) for r in ctx.journal.get(key)["records"]]
        return exact_records(ctx, ctx.gates.keys)

    def label(self, ctx: Context) -> str:
        return "ab-adaptive" if ctx.notes["racing"] else "ab"


register_scorer(AB("ab", "AB-score, eq. 3 (fast exact by default; --adaptive races)", "unit"))
