"""Examples -> token ids: chat template, response-only loss, truncation, length-grouped batches.

A training sequence is ``pre + prompt + post + response + eos`` where ``pre``/``post`` are
the chat template's text around the user message (``<|im_start|>user\\n`` ...
``<|im_end|>\\n<|im_start|>assistant\\n`` for ChatML). Labels are -100 everywhere but the
response and eos tokens. When the sequence exceeds ``max_length`` the prompt loses tokens
from its middle (its beginning holds the instruction and its end the question); the
response is never cut.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from fanlora.data.example import Example
from fanlora.errors import FanLoRAError

IGNORE = -100
PLACEHOLDER = "\x00FANLORA_PROMPT\x00"
ELLIPSIS = " ... "


@dataclass(frozen=True)
class PromptFrame:
    """Token ids the chat template puts before and after the user message."""

    pre: list[int]
    post: list[int]
    eos: int

    @classmethod
    def of(cls, tokenizer) -> PromptFrame:
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": PLACEHOLDER}], tokenize=False,
                add_generation_prompt=True,
            )  # fmt: skip
            before, _, after = text.partition(PLACEHOLDER)
        else:  # plain LM: "prompt\n" then the response
            before, after = "", "\n"
        ids = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"] if s else []  # noqa: E731
        if tokenizer.eos_token_id is None:
            raise FanLoRAError("the tokenizer has no eos token; set one before training")
        return cls(pre=ids(before), post=ids(after), eos=tokenizer.eos_token_id)


def fit_prompt(prompt_ids: list[int], budget: int, ellipsis: list[int]) -> list[int]:
    """``prompt_ids`` cut to ``budget`` tokens by removing the middle (marked by ellipsis)."""
    if len(prompt_ids) <= budget:
        return prompt_ids
    keep = budget - len(ellipsis)
    if keep < 2:
        return prompt_ids[: max(budget, 0)]
    head = keep // 2
    return prompt_ids[:head] + ellipsis + prompt_ids[len(prompt_ids) - (keep - head) :]


def encode_prompt(tokenizer, frame: PromptFrame, prompt: str, budget: int) -> list[int]:
    """Template-wrapped prompt ids using at most ``budget`` tokens in all."""
    room = budget - len(frame.pre) - len(frame.post)
    if room < 1:
        raise FanLoRAError(f"max length leaves no room for the prompt: the chat template alone "
                           f"takes {len(frame.pre) + len(frame.post)} tokens")  # fmt: skip
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ellipsis = tokenizer(ELLIPSIS, add_special_tokens=False)["input_ids"]
    return frame.pre + fit_prompt(ids, room, ellipsis) + frame.post


def encode_example(tokenizer, frame: PromptFrame, example: Example, max_length: int,
                   response: str | None = None) -> dict | None:  # fmt: skip
    """input_ids and labels (response tokens only) or None when the response cannot fit."""
    answer = example.response if response is None else response
    response_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [frame.eos]
    budget = max_length - len(response_ids)
    if budget < len(frame.pre) + len(frame.post) + 1:
        return None
    prompt_ids = encode_prompt(tokenizer, frame, example.prompt, budget)
    return {
        "input_ids": prompt_ids + response_ids,
        "labels": [IGNORE] * len(prompt_ids) + response_ids,
    }


def encode_all(tokenizer, examples: list[Example], max_length: int) -> tuple[list[dict], int]:
    """Encode ``examples``; return (encoded, number dropped because the response is too long)."""
    frame = PromptFrame.of(tokenizer)
    encoded = [encode_example(tokenizer, frame, e, max_length) for e in examples]
    kept = [e for e in encoded if e is not None]
    if not kept:
        raise FanLoRAError(f"no example fits in max length {max_length}: every response is "
                           "longer; raise --max-length")  # fmt: skip
    return kept, len(encoded) - len(kept)


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int,
                           group: int = 50) -> list[list[int]]:  # fmt: skip
    """Shuffled batches of indices whose lengths are close, so padding stays low.

    Shuffle with ``seed``, cut into groups of ``group * batch_size``, sort each group by
    length (longest first), cut into batches, and shuffle the batches (same seed).
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    span = group * batch_size
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: input_ids, attention_mask and labels (-100 on padding)."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        ids[i, :n] = torch.tensor(row["input_ids"])
        labels[i, :n] = torch.tensor(row["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
