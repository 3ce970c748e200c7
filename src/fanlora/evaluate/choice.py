"""Choice tasks: each option's log-likelihood as the response; the highest one is chosen."""

from __future__ import annotations

import torch

from fanlora.data.example import Example
from fanlora.data.formatting import IGNORE, PromptFrame, collate, encode_example
from fanlora.errors import FanLoRAError
from fanlora.models.losses import sequence_losses


def option_rows(tokenizer, examples: list[Example], max_length: int):
    """(rows, owners): one encoded sequence per (example, option); options too long for
    ``max_length`` are an error, since dropping them would change the question."""
    frame = PromptFrame.of(tokenizer)
    rows, owners = [], []
    for e, example in enumerate(examples):
        if not example.choices:
            raise FanLoRAError(f"example {example.uid} has no options; this task is not a "
                               "choice task")  # fmt: skip
        for j, option in enumerate(example.choices):
            row = encode_example(tokenizer, frame, example, max_length, response=option)
            if row is None or all(t == IGNORE for t in row["labels"]):
                raise FanLoRAError(f"option {j} of example {example.uid} does not fit in "
                                   f"max length {max_length}; raise --max-length")  # fmt: skip
            rows.append(row)
            owners.append((e, j))
    return rows, owners


@torch.no_grad()
def option_loglik(model, tokenizer, examples: list[Example], max_length: int, batch_size: int,
                  progress=None) -> list[list[float]]:  # fmt: skip
    """Per example, the summed log-probability of each option's tokens (and eos) after the
    prompt: ``log p(option | prompt) = -sum_t CE_t``. Sequences are batched by length."""
    rows, owners = option_rows(tokenizer, examples, max_length)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]))
    loglik = [[0.0] * len(e.choices) for e in examples]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = collate([rows[i] for i in chunk], pad)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       use_cache=False).logits  # fmt: skip
        for i, (loss, _) in zip(chunk, sequence_losses(logits, batch["labels"]).tolist(),
                                strict=True):  # fmt: skip
            e, j = owners[i]
            loglik[e][j] = -loss
        if progress is not None:
            progress.update(len(chunk))
    return loglik
