"""Examples -> token ids: chat template, response-only loss, truncation, length-grouped batches.

A training sequence is ``pre + prompt + post + response + eos`` where ``pre``/``post`` are
the chat template's text around the user message (``<|im_start|>user\\n`` ...
``<|im_end|>\\n<|im_start|>assistant\\n`` for ChatML). Labels are -100 everywhere but the
response and eos tokens. The response is never cut. When the sequence exceeds
``max_length`` the prompt is cut (:func:`fit_prompt`):

- by default in its middle: the beginning holds the instruction and the end the question;
- around the answer, when training on a generated-answer example whose answer occurs in
  the prompt (a SQuAD span): the instruction's first quarter of the budget, the question's
  last quarter, and a window centred on the answer, so the model never learns to answer
  from a passage that lost its answer. Evaluation cannot know the answer: it keeps the
  middle cut and records per example whether a reference still occurs in the prompt.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from fanlora.data.conversation import IGNORE, encode_conversation, token_ids
from fanlora.data.example import Example
from fanlora.errors import FanLoRAError

__all__ = ["IGNORE"]
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
                [{"role": "user", "content": PLACEHOLDER}],
                tokenize=False,
                add_generation_prompt=True,
            )
            before, _, after = text.partition(PLACEHOLDER)
        else:  # plain LM: "prompt\n" then the response
            before, after = "", "\n"
        if tokenizer.eos_token_id is None:
            raise FanLoRAError("the tokenizer has no eos token; set one before training")
        pre, post = token_ids(tokenizer, before), token_ids(tokenizer, after)
        return cls(pre=pre, post=post, eos=tokenizer.eos_token_id)


def fit_prompt(
    prompt_ids: list[int], budget: int, ellipsis: list[int], anchor: tuple[int, int] | None = None
) -> list[int]:
    """``prompt_ids`` cut to ``budget`` tokens, the cuts marked by ``ellipsis``.

    Without ``anchor``: the middle goes (head and tail halves kept). With ``anchor`` (a token
    span [start, end) that must survive) not inside those halves: head = tail = a quarter of
    the room, and the rest a window centred on the anchor (head ... window ... tail).
    """
    if len(prompt_ids) <= budget:
        return prompt_ids
    keep = budget - len(ellipsis)
    if keep < 2:
        return prompt_ids[: max(budget, 0)]
    head = keep // 2
    cut = prompt_ids[:head] + ellipsis + prompt_ids[len(prompt_ids) - (keep - head) :]
    if anchor is None or anchor[1] <= head or anchor[0] >= len(prompt_ids) - (keep - head):
        return cut
    room = budget - 2 * len(ellipsis)
    edge = room // 4
    window = room - 2 * edge
    if anchor[1] - anchor[0] > window:
        return cut  # the answer alone is longer than the window: nothing better to do
    centre = (anchor[0] + anchor[1]) // 2
    start = min(max(centre - window // 2, edge), len(prompt_ids) - edge - window)
    return (
        prompt_ids[:edge]
        + ellipsis
        + prompt_ids[start : start + window]
        + ellipsis
        + prompt_ids[len(prompt_ids) - edge :]
    )


def answer_anchor(example: Example, offsets: list[tuple[int, int]]) -> tuple[int, int] | None:
    """Token span of the first answer (response, then references) found in the prompt, for
    generated-answer examples; None for choice examples or when no answer occurs."""
    if example.choices:
        return None
    for answer in (example.response, *example.references):
        at = example.prompt.find(answer) if answer else -1
        if at >= 0:
            inside = [i for i, (a, b) in enumerate(offsets) if a < at + len(answer) and b > at]
            return (inside[0], inside[-1] + 1) if inside else None
    return None


def assemble(
    frame: PromptFrame,
    prompt_ids: list[int],
    response_ids: list[int],
    max_length: int,
    ellipsis: list[int],
    anchor: tuple[int, int] | None = None,
) -> dict | None:
    """Template + prompt (cut to fit, around ``anchor`` if given) + response + eos; labels on
    the response and eos only. None when the response alone leaves no room for the prompt."""
    answer = [*response_ids, frame.eos]
    room = max_length - len(answer) - len(frame.pre) - len(frame.post)
    if room < 1:
        return None
    prompt = frame.pre + fit_prompt(prompt_ids, room, ellipsis, anchor) + frame.post
    return {"input_ids": prompt + answer, "labels": [IGNORE] * len(prompt) + answer}


def encode_prompt(tokenizer, example: Example) -> tuple[list[int], tuple[int, int] | None]:
    """The prompt's token ids and the answer's token span in them (see :func:`answer_anchor`)."""
    enc = tokenizer(
        example.prompt,
        add_special_tokens=False,
        return_offsets_mapping=tokenizer.is_fast,
        verbose=False,  # a long prompt is cut to fit (fit_prompt): no warning about its length
    )
    offsets = enc.get("offset_mapping")
    return enc["input_ids"], answer_anchor(example, offsets) if offsets is not None else None


def encode_example(
    tokenizer, frame: PromptFrame, example: Example, max_length: int, response: str | None = None
) -> dict | None:
    """input_ids and labels (response tokens only; every assistant turn of a conversation)
    or None when the response cannot fit."""
    if example.messages and response is None:
        return encode_conversation(tokenizer, example.messages, max_length)
    answer = example.response if response is None else response
    prompt, anchor = encode_prompt(tokenizer, example)
    ellipsis = token_ids(tokenizer, ELLIPSIS)
    return assemble(frame, prompt, token_ids(tokenizer, answer), max_length, ellipsis, anchor)


def encode_options(tokenizer, frame: PromptFrame, example: Example, max_length: int) -> list[dict]:
    """One encoded sequence per option of a choice example (the option as the response).

    The one encoder of options, for scoring (metric accuracy) and evaluation alike: an option
    that does not fit in ``max_length`` is an error naming the example, never dropped,
    since dropping an option changes the question.
    """
    if not example.choices:
        raise FanLoRAError(f"example {example.uid} has no options; this task is not a choice task")
    prompt, anchor = encode_prompt(tokenizer, example)  # once, for every option
    ellipsis = token_ids(tokenizer, ELLIPSIS)
    rows = []
    for j, option in enumerate(example.choices):
        row = assemble(frame, prompt, token_ids(tokenizer, option), max_length, ellipsis, anchor)
        if row is None or all(t == IGNORE for t in row["labels"][1:]):
            raise FanLoRAError(
                f"option {j} of example {example.uid} does not fit in max length "
                f"{max_length}; raise --max-length"
            )
        rows.append(row)
    return rows


def encode_all(tokenizer, examples: list[Example], max_length: int) -> tuple[list[dict], int]:
    """Encode ``examples`` (two batched tokenizer calls, fast on 10^5 rows; a conversation
    through :func:`~fanlora.data.conversation.encode_conversation`); return (encoded,
    number dropped because the response, or a conversation's last exchange, is too long)."""
    encoded = encode_or_none(tokenizer, examples, max_length)
    kept = [e for e in encoded if e is not None]
    if not kept:
        raise FanLoRAError(
            f"no example fits in max length {max_length}: every response is "
            "longer; raise --max-length"
        )
    return kept, len(encoded) - len(kept)


def encode_or_none(tokenizer, examples: list[Example], max_length: int) -> list[dict | None]:
    """Each example encoded, or None where it does not fit (:func:`encode_all`)."""
    frame = PromptFrame.of(tokenizer)
    enc = tokenizer(
        [e.prompt for e in examples],
        add_special_tokens=False,
        return_offsets_mapping=tokenizer.is_fast,
        verbose=False,  # long prompts are cut to fit (fit_prompt)
    )
    offsets = enc.get("offset_mapping") or [None] * len(examples)
    anchors = [
        answer_anchor(e, o) if o is not None else None
        for e, o in zip(examples, offsets, strict=True)
    ]
    answers = tokenizer([e.response for e in examples], add_special_tokens=False)["input_ids"]
    ellipsis = token_ids(tokenizer, ELLIPSIS)
    rows = zip(examples, enc["input_ids"], answers, anchors, strict=True)
    return [
        encode_conversation(tokenizer, e.messages, max_length)
        if e.messages
        else assemble(frame, p, a, max_length, ellipsis, anchor)
        for e, p, a, anchor in rows
    ]


def encode_reached(
    tokenizer, examples: list[Example], reach: int, max_length: int, seed: int
) -> tuple[list[dict], int]:
    """(``reach`` encoded rows that fit, the number dropped on the way) for a schedule that
    sees at most ``reach`` rows: a seeded draw of ``reach`` examples, each one that does not
    fit replaced by the next of the others in a seeded order, so a schedule of 400 x 16 on
    dialogues a third of which are too long still sees 6,400 distinct rows. Encodes only
    what it draws (tokenizing 10^5 dialogues to keep 10^3 takes minutes)."""
    drawn = random.Random(seed).sample(range(len(examples)), reach)
    chosen = set(drawn)
    rest = [i for i in range(len(examples)) if i not in chosen]
    random.Random(seed).shuffle(rest)
    kept, dropped, queue = [], 0, drawn
    while queue and len(kept) < reach:
        encoded = encode_or_none(tokenizer, [examples[i] for i in queue], max_length)
        for row in encoded:
            if len(kept) == reach:
                break
            if row is None:
                dropped += 1
            else:
                kept.append(row)
        missing = reach - len(kept)  # about twice as many: a third may not fit again
        queue, rest = rest[: 2 * missing], rest[2 * missing :]
    if not kept:
        raise FanLoRAError(
            f"no example fits in max length {max_length}: every response is "
            "longer; raise --max-length"
        )
    return kept, dropped


def length_grouped_batches(
    lengths: list[int], batch_size: int, seed: int, group: int = 50
) -> list[list[int]]:
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
