"""The losses every stage shares: response-token cross-entropy from logits, and AdaLoRA's
orthogonality penalty as its own number.

Training, dev loss, scoring and option log-likelihoods all take the cross-entropy from the
logits here, never from ``outputs.loss``: PEFT's ``AdaLoraModel.forward`` adds its penalty
to ``outputs.loss`` whenever labels are passed (in eval mode too), which would make
AdaLoRA's losses incomparable with every other method's.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

IGNORE = -100


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B, T-1] in fp32: CE(logits_t, labels_{t+1}), 0 where the next label is -100."""
    targets = labels[:, 1:]
    losses = F.cross_entropy(
        logits[:, :-1].transpose(1, 2).float(), targets, ignore_index=IGNORE, reduction="none"
    )
    return losses * (targets != IGNORE)


def sequence_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B, 2] in fp32: per sequence, sum_t CE(logits_t, labels_{t+1}) over labelled
    positions (labels != -100 after the causal shift) and the count of those positions."""
    losses = token_losses(logits, labels)
    count = (labels[:, 1:] != IGNORE).sum(1).to(losses.dtype)
    return torch.stack([losses.sum(1), count], dim=1)


def labelled_positions(labels: torch.Tensor) -> torch.Tensor:
    """1-D positions t whose next label is scored in any row of the batch (the union over
    rows; at least one). Only the logits there enter a loss: on the instruction set 5% of
    tokens are labelled and the union over a micro-batch of 4 is 10% of its positions."""
    keep = (labels[:, 1:] != IGNORE).any(0).nonzero()[:, 0]
    return keep if keep.numel() else torch.zeros(1, dtype=torch.long, device=labels.device)


def forward_accepts(model, argument: str) -> bool:
    """Whether the transformers model under ``model`` (a PEFT wrapper or not) takes
    ``argument`` in its forward; PEFT passes unknown keywords through to it."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return argument in inspect.signature(base.forward).parameters


def labelled_logits(model, base, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [B, K, V] at :func:`labelled_positions`, those K positions) of ``model``'s
    forward on ``batch``. ``base`` (the unwrapped transformers model) says whether the
    forward takes ``logits_to_keep`` as positions, which spares the output layer and the
    softmax every other position; otherwise all logits are computed and the kept ones taken."""
    keep = labelled_positions(batch["labels"])
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if forward_accepts(base, "logits_to_keep"):
        return model(**inputs, logits_to_keep=keep).logits, keep
    return model(**inputs).logits.index_select(1, keep), keep


def kept_sequence_losses(
    logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor
) -> torch.Tensor:
    """:func:`sequence_losses` from logits taken at positions ``keep`` only (``logits[:, i]``
    is position ``keep[i]``, predicting label ``keep[i] + 1``): the same [B, 2]."""
    targets = labels[:, 1:].index_select(1, keep)
    losses = F.cross_entropy(
        logits.transpose(1, 2).float(), targets, ignore_index=IGNORE, reduction="none"
    )
    scored = targets != IGNORE
    return torch.stack([(losses * scored).sum(1), scored.sum(1).to(losses.dtype)], dim=1)


def last_labelled(losses: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B]: from :func:`token_losses`, each sequence's loss at its last labelled token (its
    eos, for a response)."""
    labelled = labels[:, 1:] != IGNORE
    positions = torch.arange(labelled.shape[1], device=labels.device).expand_as(labelled)
    last = torch.where(labelled, positions, -1).max(1).values.clamp(min=0)
    return losses.gather(1, last[:, None])[:, 0]


def orthogonal_penalty(peft_model, adapter: str = "default") -> torch.Tensor:
    """AdaLoRA's regulariser R = mean over its P and Q matrices of ||P P^T - I||_F (A) and
    ||Q^T Q - I||_F (B), unweighted.

    Written here because PEFT computes it only inside ``AdaLoraModel.forward``, added to the
    labelled loss of every call (so once per micro-batch); fanlora adds ``weight * R`` once
    per optimizer step and logs it apart from the cross-entropy. Same formula as PEFT 0.21.
    """
    terms = []
    for name, p in peft_model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and adapter in name and p.numel():
            cov = p @ p.T if "lora_A" in name else p.T @ p
            eye = torch.eye(*cov.shape, dtype=cov.dtype, device=cov.device)
            terms.append(torch.linalg.matrix_norm(cov - eye, ord="fro"))
    return torch.stack(terms).mean() if terms else torch.zeros(())
