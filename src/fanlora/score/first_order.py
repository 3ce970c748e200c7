"""AB-score to first order: two backward passes instead of 2N + 2 evaluations.

Eq. 3's two differences, in a continuous gate g_m that scales module m's LoRA path
(:meth:`~fanlora.score.gates.Gates.differentiable`), are first-order expansions::

    S(all) - S(all without m)  ~  dS/dg_m at g = 1 (every gate open)
    S(only m) - S(none)        ~  dS/dg_m at g = 0 (every gate closed)

so ``V1(m) = dS/dg_m|g=1 + dS/dg_m|g=0``, with ``S = -L`` (the negative mean response-token
loss over the validation set), scores every module, with its sign, from one forward and
backward pass per batch at each end. It equals the exact AB-score when the loss is linear
in each gate; how far a trained adapter is from that is what ``bench/`` measures.
"""

from __future__ import annotations

from fanlora.score.gates import Gates, Key
from fanlora.score.scorer import Context, Scorer, module_key, register_scorer
from fanlora.score.sensitivity import gate_gradients, response_tokens

ENDS = (1, 0)  # g = 1 (M_all) and g = 0 (M_null)


def score_gradients(model, gates: Gates, batch: dict, total: float, value: float) -> dict:
    """dS_b/dg = -dL_b/dg of every gate at g = ``value``, by journal key."""
    grads = gate_gradients(model, gates, batch, total, value)
    return {module_key(k): -v for k, v in grads.items()}


class FirstOrder(Scorer):
    """Units ``grad<end>:b<i>``: the gate gradients of batch i at g = end."""

    def prepare(self, ctx: Context, log) -> None:
        ctx.notes["response_tokens"] = response_tokens(ctx.valset)  # no gated evaluator

    def units(self, ctx: Context) -> list[str]:
        return [f"grad{end}:b{i}" for end in ENDS for i in range(len(ctx.valset.batches))]

    def compute(self, ctx: Context, key: str) -> dict:
        end, batch = key.removeprefix("grad").split(":b")
        grads = score_gradients(
            ctx.model,
            ctx.gates,
            ctx.valset.batches[int(batch)],
            ctx.notes["response_tokens"],
            float(end),
        )
        return {"grads": grads}

    def records(self, ctx: Context) -> list[dict]:
        sums = {end: dict.fromkeys(ctx.gates.keys, 0.0) for end in ENDS}
        for end in ENDS:
            for i in range(len(ctx.valset.batches)):
                entry = ctx.journal.get(f"grad{end}:b{i}")["grads"]
                for k in ctx.gates.keys:
                    sums[end][k] += entry[module_key(k)]
        return [record(k, sums[1][k], sums[0][k]) for k in ctx.gates.keys]


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
