"""One example of any task, and the deterministic split rule."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class Example:
    """A prompt and the response the model should give.

    ``choices``/``label``: for choice tasks, the candidate responses and the index of the
    right one (scored by log-likelihood). ``references``: for generated answers, every
    acceptable answer. ``group``: examples sharing a group land in the same split (SQuAD
    questions of one article, say); it defaults to ``uid``. ``meta["split"]``: a split the
    source fixes (BoolQ's official train set), over the hash rule. ``messages``: a whole
    conversation (every assistant turn is trained on); ``prompt``/``response`` then hold its
    first user turn and last answer, for what reads one exchange.
    """

    uid: str
    prompt: str
    response: str
    choices: tuple[str, ...] = ()
    label: int = -1
    references: tuple[str, ...] = ()
    group: str = ""
    meta: dict = field(default_factory=dict)
    messages: tuple[dict, ...] = ()  # a whole conversation: {"role", "content"} turns

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Example:
        return cls(
            **{
                **data,
                "choices": tuple(data.get("choices", ())),
                "references": tuple(data.get("references", ())),
                "messages": tuple(data.get("messages", ())),
            }
        )


def split_of(key: str, fractions: tuple[float, float, float], seed: int = 0) -> str:
    """Which split ``key`` falls in: u = sha256(f"{seed}:{key}") as a number in [0, 1);
    train if u < f_train, dev if u < f_train + f_dev, else test. Independent of file order."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < fractions[0]:
        return "train"
    return "dev" if u < fractions[0] + fractions[1] else "test"
