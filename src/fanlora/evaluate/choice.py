"""Choice tasks: each option's log-likelihood as the response; the highest one is chosen.

Two accuracies, both reported: ``accuracy`` picks the highest log p(option + eos | prompt)
(fanlora's original rule; summing over more tokens favours short options), ``acc_norm``
picks the highest log p(option | prompt) / len(option) in characters, as
lm-evaluation-harness's ``acc_norm``.

The prompt is run once per example, not once per option: the options of an example share
its prompt tokens, and a causal model's states there do not depend on what follows, so the
prompt's key/value cache is computed once (a batch of prompts, left-padded) and copied to
each option's row, and only the option's tokens run again. For BoolQ (2 options of 2
tokens after a 200-token prompt) that is about half the work of a full pass per option;
for MMLU (4 options) a quarter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate.utils import send_to_device
from transformers import DynamicCache

from fanlora.data.example import Example
from fanlora.data.formatting import IGNORE, PromptFrame, collate, encode_options
from fanlora.evaluate.generate import left_pad
from fanlora.models.losses import forward_accepts, last_labelled, token_losses


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


@dataclass
class Shared:
    """One prompt run once (``prefix``: every token before the last one ahead of the first
    scored token) and the option rows continuing it (``rows``, indices into the rows)."""

    prefix: list[int]
    rows: list[int]


def shared_prompts(
    rows: list[dict], owners: list[tuple[int, int]]
) -> tuple[list[Shared], list[int]]:
    """(groups, alone): the rows of one example whose prefixes are equal form a group (all
    of them, unless a long option cut its prompt shorter); a row whose prefix is empty (a
    one-token prompt) has nothing to share and is run whole (``alone``)."""
    groups: dict[tuple, Shared] = {}
    alone = []
    for i, row in enumerate(rows):
        start = next(t for t, label in enumerate(row["labels"]) if label != IGNORE)
        prefix = row["input_ids"][: start - 1]
        if not prefix:
            alone.append(i)
            continue
        key = (owners[i][0], tuple(prefix))
        groups.setdefault(key, Shared(prefix, [])).rows.append(i)
    return sorted(groups.values(), key=lambda g: -len(g.prefix)), alone


def row_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per row: (sum of the scored tokens' cross-entropy, that of the last one, its eos)."""
    losses = token_losses(logits, labels)  # one cross-entropy pass for both
    return losses.sum(1).tolist(), last_labelled(losses, labels).tolist()


def cache_keyword(model) -> str:
    """The forward's name for a key/value cache: ``cache`` in recent transformers (5.25),
    ``past_key_values`` in older ones (5.25 warns it goes in 5.40)."""
    return "cache" if forward_accepts(model, "cache") else "past_key_values"


def prompt_cache(model, prefixes: list[list[int]], pad: int):
    """(cache, mask [G, P]) of the prompts, left-padded, position ids counted from each
    prompt's first real token. No logit of the prompt is scored, so the output layer runs
    on its last position only where the model allows (``logits_to_keep``; for Gemma-3's
    262k-word vocabulary that layer is most of a forward pass)."""
    padded = send_to_device(left_pad(prefixes, pad), model.device)
    ids, mask = padded["input_ids"], padded["attention_mask"]
    cache = DynamicCache(config=model.config)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    keep = {"logits_to_keep": 1} if forward_accepts(model, "logits_to_keep") else {}
    model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        **{cache_keyword(model): cache},
        **keep,
    )
    return cache, mask


def continuation_losses(model, groups: list[Shared], rows: list[dict], pad: int):
    """(total, eos) losses of each group's rows, in the order of the groups' rows: their
    prompts once, their continuations (from the prompt's last token on) batched on copies
    of the prompts' cache."""
    cache, prefix_mask = prompt_cache(model, [g.prefix for g in groups], pad)
    owner = [g for g, group in enumerate(groups) for _ in group.rows]
    tails = [
        {k: rows[i][k][len(group.prefix) :] for k in ("input_ids", "labels")}
        for group in groups
        for i in group.rows
    ]
    batch = send_to_device(collate(tails, pad), model.device)
    index = torch.tensor(owner, device=prefix_mask.device)
    cache.reorder_cache(index)  # one copy of the prompt's cache per option row
    before = prefix_mask.index_select(0, index)
    width = batch["input_ids"].shape[1]
    positions = before.sum(1, keepdim=True) + torch.arange(width, device=before.device)
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=torch.cat([before, batch["attention_mask"]], 1),
        position_ids=positions,
        use_cache=True,
        **{cache_keyword(model): cache},
    ).logits
    return row_losses(logits, batch["labels"])


def full_losses(model, rows: list[dict], pad: int):
    """(total, eos) losses of whole rows, each its own full pass (right-padded)."""
    batch = send_to_device(collate(rows, pad), model.device)
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).logits
    return row_losses(logits, batch["labels"])


def batches_of(groups: list[Shared], size: int):
    """Consecutive groups holding at most ``size`` option rows (at least one group)."""
    batch, count = [], 0
    for group in groups:
        if batch and count + len(group.rows) > size:
            yield batch
            batch, count = [], 0
        batch.append(group)
        count += len(group.rows)
    if batch:
        yield batch


@torch.no_grad()
def option_loglik(
    model,
    tokenizer,
    examples: list[Example],
    max_length: int,
    batch_size: int,
    progress=None,
    share_prompts: bool = True,
) -> tuple[list[list[float]], list[list[float]]]:
    """Per example and option, ``log p(option + eos | prompt) = -sum_t CE_t`` and the same
    without the eos term (the option's own tokens, as lm-evaluation-harness scores them).
    ``batch_size`` option rows share one forward pass; prompts are run once (module doc),
    or with ``share_prompts=False`` every option row whole (the slower path it replaced,
    kept as the reference the tests and ``bench/choice_eval.py`` compare against)."""
    rows, owners = option_rows(tokenizer, examples, max_length)
    with_eos = [[0.0] * len(e.choices) for e in examples]
    without_eos = [[0.0] * len(e.choices) for e in examples]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    groups, alone = shared_prompts(rows, owners) if share_prompts else ([], list(range(len(rows))))
    alone.sort(key=lambda i: -len(rows[i]["input_ids"]))  # batched by length
    work = [([i for g in b for i in g.rows], b) for b in batches_of(groups, batch_size)]
    work += [(alone[s : s + batch_size], None) for s in range(0, len(alone), batch_size)]
    for chunk, shared in work:
        if shared:
            total, eos = continuation_losses(model, shared, rows, pad)
        else:
            total, eos = full_losses(model, [rows[i] for i in chunk], pad)
        for i, loss, eos_loss in zip(chunk, total, eos, strict=True):
            e, j = owners[i]
            with_eos[e][j], without_eos[e][j] = -loss, -(loss - eos_loss)
        if progress is not None:
            progress.update(len(chunk))
    return with_eos, without_eos
