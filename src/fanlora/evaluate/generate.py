"""Batched generation with left padding: prompt in the chat template, greedy or beams."""

from __future__ import annotations

import torch
from accelerate.utils import send_to_device

from fanlora.data.example import Example
from fanlora.data.formatting import ELLIPSIS, PromptFrame, fit_prompt


def prompt_ids(tokenizer, examples: list[Example], max_prompt: int) -> list[list[int]]:
    """Template + prompt (cut in the middle to ``max_prompt`` tokens in all) per example."""
    frame = PromptFrame.of(tokenizer)
    raw = tokenizer([e.prompt for e in examples], add_special_tokens=False)["input_ids"]
    ellipsis = tokenizer(ELLIPSIS, add_special_tokens=False)["input_ids"]
    room = max(max_prompt - len(frame.pre) - len(frame.post), 1)
    return [frame.pre + fit_prompt(ids, room, ellipsis) + frame.post for ids in raw]


def references_kept(tokenizer, examples: list[Example], prompts: list[list[int]]) -> list:
    """Per example, whether a reference answer still occurs in the cut prompt; None when the
    whole prompt holds none (nothing to lose: a SQL query, say, is never in its prompt)."""
    kept = []
    for example, ids in zip(examples, prompts, strict=True):
        refs = [r for r in (example.references or (example.response,)) if r]
        if not any(r in example.prompt for r in refs):
            kept.append(None)
            continue
        text = tokenizer.decode(ids)
        kept.append(any(r in text for r in refs))
    return kept


def left_pad(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask, padded on the left so every row ends at the last column."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return {"input_ids": ids, "attention_mask": mask}


@torch.no_grad()
def generate_ids(
    model,
    tokenizer,
    prompts: list[list[int]],
    batch_size: int,
    max_new_tokens: int,
    num_beams: int = 1,
    progress=None,
) -> list[list[int]]:
    """New token ids after each of ``prompts``, in order, up to and excluding eos. Rows
    are batched by length so little padding is spent."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out_ids: list[list[int]] = [[] for _ in prompts]
    eos = PromptFrame.of(tokenizer).eos
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = send_to_device(left_pad([prompts[i] for i in chunk], pad), model.device)
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=pad,
        )
        for i, row in zip(chunk, out[:, batch["input_ids"].shape[1] :].tolist(), strict=True):
            out_ids[i] = row[: row.index(eos)] if eos in row else row
        if progress is not None:
            progress.update(len(chunk))
    return out_ids


def generate(
    model,
    tokenizer,
    prompts: list[list[int]],
    batch_size: int,
    max_new_tokens: int,
    num_beams: int = 1,
    progress=None,
) -> list[str]:
    """Decoded continuations of ``prompts`` (see :func:`generate_ids`)."""
    ids = generate_ids(model, tokenizer, prompts, batch_size, max_new_tokens, num_beams, progress)
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]
