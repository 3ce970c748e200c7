"""AB-score to first order: two backward passes instead of 2N + 2 evaluations.

Eq. 3's two differences, in a continuous gate g_m that scales module m's LoRA path
(:meth:`~fanlora.score.gates.Gates.differentiable`), are first-order expansions::

    S(all) - S(all without m)  ~  dS/dg_m at g = 1 (every gate open)
    S(only m) - S(none)        ~  dS/dg_m at g = 0 (every gate closed)

so ``V1(m) = dS/dg_m|g=1 + dS/dg_m|g=0``, with ``S = -L`` (the negative mean response-token
loss over the validation set), scores every module, with its sign, from one forward and
backward pass per batch at each end. It equals the exact AB-score when the loss is linear
in each gate; how far a trained adapter is from that is what ``bench/`` measures.

With ``--refine`` only the modules whose first-order score could change the setting get
their exact (fast) AB-score: per layer, with ``s`` the V1 scores, ``M = max |s|`` and ``b``
the midpoint between the K_max-th and the next score, module m is recomputed when
``|s_m - b| <= margin M`` (near the boundary, where the rank decides) or when m is among
the layer's K_max best and ``|s_m| <= margin M`` (near 0, where the sign decides whether it
is kept). A module below the K_max-th place that is near 0 but far from ``b`` cannot enter
the setting whatever its sign, so it is not recomputed. Their records carry the exact terms
and ``refined: true``.
"""

from __future__ import annotations

from fanlora.score.ab import exact_records, exact_unit
from fanlora.score.gates import Gates, Key
from fanlora.score.scorer import Context, Scorer, gated_evaluator, module_key, register_scorer
from fanlora.score.sensitivity import gate_gradients, response_tokens

ENDS = (1, 0)  # g = 1 (M_all) and g = 0 (M_null)


def score_gradients(model, gates: Gates, batch: dict, total: float, value: float) -> dict:
    """dS_b/dg = -dL_b/dg of every gate at g = ``value``, by journal key."""
    grads = gate_gradients(model, gates, batch, total, value)
    return {module_key(k): -v for k, v in grads.items()}


def uncertain(scores: dict[Key, float], k_max: int, margin: float) -> list[Key]:
    """The modules near their layer's K_max boundary or near 0 (module docstring; pure)."""
    layers: dict[int, list[Key]] = {}
    for key in scores:
        layers.setdefault(key[0], []).append(key)
    picked = []
    for keys in layers.values():
        ranked = sorted(keys, key=lambda k: scores[k], reverse=True)
        top = max(abs(scores[k]) for k in keys) or 1.0
        edge = None
        if len(keys) > k_max:
            edge = (scores[ranked[k_max - 1]] + scores[ranked[k_max]]) / 2
        for place, k in enumerate(ranked):
            near_zero = place < k_max and abs(scores[k]) <= margin * top
            near_edge = edge is not None and abs(scores[k] - edge) <= margin * top
            if near_zero or near_edge:
                picked.append(k)
    return picked


class FirstOrder(Scorer):
    """Units ``grad<end>:b<i>``: the gate gradients of batch i at g = end; with ``refine``,
    then ``all``, ``none`` and ``module:<layer>:<kind>`` (exact AB) of the uncertain ones."""

    def needs_cache(self, cfg) -> bool:
        return bool(cfg.refine)

    def prepare(self, ctx: Context, log) -> None:
        ctx.notes["response_tokens"] = response_tokens(ctx.valset)
        if ctx.cfg.refine:  # the fast exact evaluator, for the refined modules
            ctx.evaluate = gated_evaluator(ctx, True)

    def gradient_units(self, ctx: Context) -> list[str]:
        return [f"grad{end}:b{i}" for end in ENDS for i in range(len(ctx.valset.batches))]

    def units(self, ctx: Context) -> list[str]:
        first = self.gradient_units(ctx)
        if not ctx.cfg.refine or any(u not in ctx.journal for u in first):
            return first
        return [*first, "all", "none", *(module_key(k) for k in self.refined(ctx))]

    def refined(self, ctx: Context) -> list[Key]:
        scores = {k: r["score"] for k, r in self.first_order(ctx).items()}
        return uncertain(scores, ctx.cfg.k_max, ctx.cfg.refine_margin)

    def compute(self, ctx: Context, key: str) -> dict:
        if not key.startswith("grad"):
            return exact_unit(ctx, key)
        end, batch = key.removeprefix("grad").split(":b")
        grads = score_gradients(
            ctx.model,
            ctx.gates,
            ctx.valset.batches[int(batch)],
            ctx.notes["response_tokens"],
            float(end),
        )
        return {"grads": grads}

    def first_order(self, ctx: Context) -> dict[Key, dict]:
        sums = {end: dict.fromkeys(ctx.gates.keys, 0.0) for end in ENDS}
        for end in ENDS:
            for i in range(len(ctx.valset.batches)):
                entry = ctx.journal.get(f"grad{end}:b{i}")["grads"]
                for k in ctx.gates.keys:
                    sums[end][k] += entry[module_key(k)]
        return {k: record(k, sums[1][k], sums[0][k]) for k in ctx.gates.keys}

    def records(self, ctx: Context) -> list[dict]:
        out = self.first_order(ctx)
        if ctx.cfg.refine:
            refined = self.refined(ctx)
            for exact in exact_records(ctx, refined):
                key = (exact["layer"], exact["module"])
                out[key] = {**out[key], **exact, "first_order": out[key]["score"], "refined": True}
            ctx.notes["refined_modules"] = len(refined)
        return list(out.values())

    def label(self, ctx: Context) -> str:
        return "first-order-refined" if ctx.cfg.refine else self.name


def record(key: Key, at_all: float, at_none: float) -> dict:
    """V1 with its two terms (dS/dg at g = 1 and at g = 0)."""
    return {
        "layer": key[0],
        "module": key[1],
        "score": at_all + at_none,
        "ds_dg_all": at_all,
        "ds_dg_none": at_none,
    }


register_scorer(
    FirstOrder(
        "first-order",
        "AB-score to first order: dS/dg at g = 1 plus at g = 0 (two backward passes)",
        "batch",
        uses_cache=False,
        metrics=("loss",),
    )
)
