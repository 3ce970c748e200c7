"""A whole conversation -> token ids with the loss on every assistant turn.

As TRL's assistant-only loss: the tokenizer's chat template renders the conversation, and
the labels are -100 everywhere but the assistant turns' own text and the template's
end-of-turn tokens after it. The rendering is cut into one segment per turn by rendering
growing prefixes (turn k's text is ``render(turns[:k+1])`` minus ``render(turns[:k])``;
an assistant turn's header, ``render(turns[:k], add_generation_prompt=True)`` minus the
same, carries no loss), so a template that is not incremental (a later turn that rewrites
earlier text) is refused with a clear error rather than trained on misaligned labels.

A conversation longer than ``max_length`` loses whole exchanges from its start (a system
turn is kept); never half a turn, never its last answer. One whose last exchange alone does
not fit is dropped, as a single-answer example whose answer does not fit is.

A tokenizer without a chat template renders ``User: ...`` / ``Assistant: ...`` lines, with
eos after each answer.
"""

from __future__ import annotations

from fanlora.errors import FanLoRAError

IGNORE = -100  # the label of a token that carries no loss (PyTorch's cross-entropy default)
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "system": "system",
}


def check_turns(messages, where: str) -> None:
    """Roles known, contents text, at least one assistant turn, and the last turn one."""
    for i, turn in enumerate(messages):
        if not isinstance(turn, dict) or turn.get("role") not in ROLES:
            raise FanLoRAError(f"{where}: turn {i} must have a role among {', '.join(ROLES)}")
        if not isinstance(turn.get("content"), str):
            raise FanLoRAError(f"{where}: turn {i} has no text content")
    if not messages or messages[-1]["role"] != "assistant":
        raise FanLoRAError(f"{where}: a conversation must end with an assistant turn")


def _render(tokenizer, turns, generation: bool = False) -> str:
    if not turns:
        return ""
    if getattr(tokenizer, "chat_template", None):
        try:
            return tokenizer.apply_chat_template(
                list(turns), tokenize=False, add_generation_prompt=generation
            )
        except Exception as exc:  # jinja raises its own errors for roles it refuses
            raise FanLoRAError(
                f"the tokenizer's chat template cannot render these turns "
                f"({', '.join(t['role'] for t in turns)}): {exc}"
            ) from None
    text = "".join(f"{t['role'].capitalize()}: {t['content']}\n" for t in turns)
    return text + ("Assistant: " if generation else "")


def _tail(longer: str, shorter: str) -> str:
    if not longer.startswith(shorter):
        raise FanLoRAError(
            "the chat template is not incremental (rendering one more turn changed the text "
            "before it), so the assistant turns cannot be located; use another template"
        )
    return longer[len(shorter) :]


def segments(tokenizer, messages) -> list[tuple[int, str, bool]]:
    """(turn index, segment text, trained on) pieces of the rendered conversation."""
    pieces, before = [], ""
    plain = not getattr(tokenizer, "chat_template", None)
    for k, turn in enumerate(messages):
        full = _render(tokenizer, messages[: k + 1])
        if turn["role"] == "assistant":
            header = _render(tokenizer, messages[:k], generation=True)
            body = _tail(full, header)
            if plain:
                body = body.removesuffix("\n")
            pieces += [(k, _tail(header, before), False), (k, body, True)]
        else:
            pieces.append((k, _tail(full, before), False))
        before = full
    return pieces


def token_ids(tokenizer, text: str) -> list[int]:
    """``text``'s token ids, no special tokens added. Whole conversations are longer than
    the model's context before they are cut to ``max_length``: the tokenizer's warning
    about it is silenced (``verbose=False``)."""
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"] if text else []


def encode_conversation(tokenizer, messages, max_length: int) -> dict | None:
    """input_ids and labels (assistant turns only) for a whole conversation, cut from the
    front by whole exchanges to fit ``max_length`` (module docstring); None when even the
    last exchange does not fit."""
    plain = not getattr(tokenizer, "chat_template", None)
    turns: dict[int, list[tuple[list[int], bool]]] = {}
    for k, text, trained in segments(tokenizer, messages):
        ids = token_ids(tokenizer, text)
        if trained and plain:
            ids = [*ids, tokenizer.eos_token_id]
        turns.setdefault(k, []).append((ids, trained))
    groups = exchanges(messages)
    while groups:
        kept = [k for group in groups for k in group]
        row = _assemble([turns[k] for k in kept])
        if len(row["input_ids"]) <= max_length:
            return row
        groups = _drop_first_exchange(groups, messages)
    return None


def exchanges(messages) -> list[list[int]]:
    """Turn indices grouped into exchanges: the turns up to and including each assistant
    turn (a leading system turn is a group of its own)."""
    groups, current = [], []
    for k, turn in enumerate(messages):
        if k == 0 and turn["role"] == "system":
            groups.append([k])
            continue
        current.append(k)
        if turn["role"] == "assistant":
            groups.append(current)
            current = []
    return groups


def _drop_first_exchange(groups: list[list[int]], messages) -> list[list[int]]:
    system = groups[:1] if messages[groups[0][0]]["role"] == "system" else []
    rest = groups[len(system) :]
    return system + rest[1:] if len(rest) > 1 else []


def _assemble(turns: list[list[tuple[list[int], bool]]]) -> dict:
    ids, labels = [], []
    for pieces in turns:
        for piece, trained in pieces:
            ids += piece
            labels += piece if trained else [IGNORE] * len(piece)
    return {"input_ids": ids, "labels": labels}


def from_sharegpt(turns: list) -> list[dict]:
    """ShareGPT's ``{from, value}`` turns as {role, content}: roles mapped (human -> user,
    gpt/chatgpt/bing/bard -> assistant), empty turns dropped, one role's consecutive turns
    joined, the conversation starting with the user (after an optional system turn) and
    ending with an assistant answer."""
    out: list[dict] = []
    for turn in turns:
        role = (
            SHAREGPT_ROLES.get(str(turn.get("from", "")).lower())
            if isinstance(turn, dict)
            else None
        )
        content = str(turn.get("value") or "").strip() if role else ""
        if not content:
            continue
        if out and out[-1]["role"] == role:
            out[-1] = {"role": role, "content": out[-1]["content"] + "\n\n" + content}
        else:
            out.append({"role": role, "content": content})
    system = out[:1] if out and out[0]["role"] == "system" else []
    rest = [t for t in out[len(system) :] if t["role"] != "system"]
    while rest and rest[0]["role"] != "user":
        rest.pop(0)
    while rest and rest[-1]["role"] != "assistant":
        rest.pop()
    return system + rest if rest else []
