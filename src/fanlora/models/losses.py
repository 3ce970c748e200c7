"""The losses every stage shares: response-token cross-entropy from logits, and AdaLoRA's
orthogonality penalty as its own number.

Training, dev loss, scoring and option log-likelihoods all take the cross-entropy from the
logits here, never from ``outputs.loss``: PEFT's ``AdaLoraModel.forward`` adds its penalty
to ``outputs.loss`` whenever labels are passed (in eval mode too), which would make
AdaLoRA's losses incomparable with every other method's.
"""

from __future__ import annotations

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
