"""Choice tasks: each option's log-likelihood as the response; the highest one is chosen.

Two accuracies, both reported: ``accuracy`` picks the highest log p(option + eos | prompt)
(fanlora's original rule; summing over more tokens favours short options), ``acc_norm``
picks the highest log p(option | prompt) / len(option) in characters, as
lm-evaluation-harness's ``acc_norm``.
"""

from __future__ import annotations

import torch
from accelerate.utils import send_to_device

from fanlora.data.example import Example
from fanlora.data.formatting import PromptFrame, collate, encode_options
from fanlora.models.losses import last_labelled, token_losses


def option_rows(tokenizer, examples: list[Example], max_length: int):
    """(rows, owners): one encoded sequence per (example, option), by
    :func:`~fanlora.data.formatting.encode_options` (an option that does not fit is an error)."""
    frame = PromptFrame.of(tokenizer)
    rows, owners = [], []
    for e, example in enumerate(examples):
        for j, row in enumerate(encode_options(tokenizer, frame, example, max_length)):
            rows.append(row)
            owners.append((e, j))
    return rows, owners


@torch.no_grad()
def option_loglik(
    model, tokenizer, examples: list[Example], max_length: int, batch_size: int, progress=None
) -> tuple[list[list[float]], list[list[float]]]:
    """Per example and option, ``log p(option + eos | prompt) = -sum_t CE_t`` and the same
    without the eos term (the option's own tokens, as lm-evaluation-harness scores them).
    Sequences are batched by length."""
    rows, owners = option_rows(tokenizer, examples, max_length)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]))
    with_eos = [[0.0] * len(e.choices) for e in examples]
    without_eos = [[0.0] * len(e.choices) for e in examples]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = send_to_device(collate([rows[i] for i in chunk], pad), model.device)
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).logits
        losses = token_losses(logits, batch["labels"])  # one cross-entropy pass for both
        total = losses.sum(1).tolist()
        eos = last_labelled(losses, batch["labels"]).tolist()
        for i, loss, eos_loss in zip(chunk, total, eos, strict=True):
            e, j = owners[i]
            with_eos[e][j], without_eos[e][j] = -loss, -(loss - eos_loss)
        if progress is not None:
            progress.update(len(chunk))
    return with_eos, without_eos
