"""Michel et al. (2019) sensitivity: I_m = sum over batches b of |dL_b / dg_m| at g = 1.

L_b is batch b's share of the mean response-token loss (so sum_b L_b is the mean loss
over the validation set); every gate's derivative comes from one backward pass per batch.
"""

from __future__ import annotations

import torch

from fanlora.models.losses import sequence_losses
from fanlora.score.evaluator import ValSet
from fanlora.score.gates import Gates, Key


def sensitivity(model, gates: Gates, valset: ValSet) -> dict[Key, float]:
    """|dL/dg| summed over batches, for every gate."""
    total_tokens = sum(float((b["labels"][:, 1:] != -100).sum()) for b in valset.batches)
    scores = dict.fromkeys(gates.keys, 0.0)
    for batch in valset.batches:
        # fresh gate tensors per batch: the gate x scaling products are graph nodes, and a
        # backward pass frees them, so they cannot serve a second batch
        with gates.differentiable() as g:
            logits = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                use_cache=False,
            ).logits
            loss = sequence_losses(logits, batch["labels"])[:, 0].sum() / total_tokens
            grads = torch.autograd.grad(loss, [g[k] for k in gates.keys])
        for key, grad in zip(gates.keys, grads, strict=True):
            scores[key] += abs(float(grad))
    return scores
