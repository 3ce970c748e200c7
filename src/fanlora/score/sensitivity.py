"""Michel et al. (2019) sensitivity: I_m = sum over batches b of |dL_b / dg_m| at g = 1.

L_b is batch b's share of the mean response-token loss (so sum_b L_b is the mean loss
over the validation set); every gate's derivative comes from one backward pass per batch.
A validation batch is a unit of work (``grad:b<i>``: |dL_b/dg| of every gate), journalled
and shared out across processes like every scorer's units.
"""

from __future__ import annotations

import torch

from fanlora.models.losses import sequence_losses
from fanlora.score.evaluator import ValSet
from fanlora.score.gates import Gates, Key
from fanlora.score.scorer import Context, Scorer, module_key, register_scorer


def response_tokens(valset: ValSet) -> float:
    return sum(float((b["labels"][:, 1:] != -100).sum()) for b in valset.batches)


def gate_gradients(model, gates: Gates, batch: dict, total: float, value: float = 1.0):
    """dL_b/dg of every gate at g = ``value``, L_b = the batch's summed token losses /
    ``total`` (so the batches' gradients add up to the whole set's)."""
    # fresh gate tensors per batch: the gate x scaling products are graph nodes, and a
    # backward pass frees them, so they cannot serve a second batch
    with gates.differentiable(value) as g:
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).logits
        loss = sequence_losses(logits, batch["labels"])[:, 0].sum() / total
        grads = torch.autograd.grad(loss, [g[k] for k in gates.keys])
    return {key: float(grad) for key, grad in zip(gates.keys, grads, strict=True)}


def batch_sensitivity(model, gates: Gates, batch: dict, total_tokens: float) -> dict[Key, float]:
    """|dL_b/dg| of every gate for one batch at g = 1."""
    return {k: abs(v) for k, v in gate_gradients(model, gates, batch, total_tokens).items()}


def sensitivity(model, gates: Gates, valset: ValSet) -> dict[Key, float]:
    """|dL/dg| summed over batches, for every gate."""
    total = response_tokens(valset)
    scores = dict.fromkeys(gates.keys, 0.0)
    for batch in valset.batches:
        for key, value in batch_sensitivity(model, gates, batch, total).items():
            scores[key] += value
    return scores


class Sensitivity(Scorer):
    def prepare(self, ctx: Context, log) -> None:
        ctx.notes["response_tokens"] = response_tokens(ctx.valset)  # no gated evaluator

    def units(self, ctx: Context) -> list[str]:
        return [f"grad:b{i}" for i in range(len(ctx.valset.batches))]

    def compute(self, ctx: Context, key: str) -> dict:
        batch = ctx.valset.batches[int(key.split(":b")[1])]
        values = batch_sensitivity(ctx.model, ctx.gates, batch, ctx.notes["response_tokens"])
        return {"grads": {module_key(k): v for k, v in values.items()}}

    def records(self, ctx: Context) -> list[dict]:
        entries = [ctx.journal.get(key)["grads"] for key in self.units(ctx)]
        return [
            {"layer": k[0], "module": k[1], "score": sum(e[module_key(k)] for e in entries)}
            for k in ctx.gates.keys
        ]


register_scorer(
    Sensitivity(
        "sensitivity", "Michel et al.'s |dL/dg| summed over batches", "batch", uses_cache=False
    )
)
