"""Conversations trained as conversations: the loss on every assistant turn, whole earlier
exchanges dropped when too long, on ChatML and on another template."""

import copy
import json

import pytest

from fanlora.data.conversation import IGNORE, encode_conversation, exchanges
from fanlora.data.example import Example
from fanlora.data.formatting import PromptFrame, encode_all, encode_example
from fanlora.data.user_files import load_user_file
from fanlora.errors import FanLoRAError
from fanlora.models import load_tokenizer

ZEPHYR = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
NO_SYSTEM = (
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
NOT_INCREMENTAL = "{{ messages | length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"


def turns(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


CHAT = turns(("user", "hi"), ("assistant", "hello there"), ("user", "more"), ("assistant", "ok"))


@pytest.fixture(scope="module")
def chatml():
    return load_tokenizer("tiny-random-llama")


@pytest.fixture(scope="module")
def zephyr(chatml):
    tokenizer = copy.deepcopy(chatml)
    tokenizer.chat_template = ZEPHYR
    return tokenizer


def trained_text(tokenizer, row) -> str:
    return tokenizer.decode(
        [t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != IGNORE]
    )


@pytest.mark.parametrize(
    "name, expected",
    [("chatml", "hello there<|im_end|>\nok<|im_end|>\n"), ("zephyr", "hello there</s>\nok</s>\n")],
)
def test_every_assistant_turn_is_trained_on_and_nothing_else(name, expected, request):
    tokenizer = request.getfixturevalue(name)
    row = encode_conversation(tokenizer, CHAT, 512)
    assert trained_text(tokenizer, row) == expected
    rendered = tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert tokenizer.decode(row["input_ids"]) == rendered  # the template's text, whole


def test_a_long_dialogue_loses_whole_earlier_exchanges(chatml):
    system, middle = turns(("system", "be brief")), turns(("user", "x" * 200), ("assistant", "y"))
    chat = [*system, *CHAT[:2], *middle, *CHAT[2:]]
    full = encode_conversation(chatml, chat, 4096)
    cut = encode_conversation(chatml, chat, len(full["input_ids"]) - 1)
    text = chatml.decode(cut["input_ids"])
    assert text.startswith("<|im_start|>system\nbe brief") and "x" * 200 in text
    assert "hello there" not in text  # the first exchange went first, whole
    assert trained_text(chatml, cut) == "y<|im_end|>\nok<|im_end|>\n"
    shortest = encode_conversation(chatml, [*system, *CHAT[2:]], 4096)
    assert encode_conversation(chatml, chat, len(shortest["input_ids"])) == shortest
    assert encode_conversation(chatml, chat, len(shortest["input_ids"]) - 1) is None


def test_exchanges_group_turns_up_to_each_answer():
    chat = turns(
        ("system", "s"),
        ("user", "a"),
        ("user", "b"),
        ("assistant", "c"),
        ("user", "d"),
        ("assistant", "e"),
    )
    assert exchanges(chat) == [[0], [1, 2, 3], [4, 5]]


def test_a_template_that_cannot_render_the_roles_is_a_clear_error(chatml):
    tokenizer = copy.deepcopy(chatml)
    tokenizer.chat_template = NO_SYSTEM
    with pytest.raises(FanLoRAError, match=r"cannot render these turns.*System role not supported"):
        encode_conversation(tokenizer, turns(("system", "s"), *CHAT), 512)
    assert encode_conversation(tokenizer, CHAT, 512) is not None
    tokenizer.chat_template = NOT_INCREMENTAL
    with pytest.raises(FanLoRAError, match="not incremental"):
        encode_conversation(tokenizer, CHAT, 512)


def test_training_and_scoring_read_the_same_masks(chatml):
    example = Example("c", "more", "ok", messages=tuple(CHAT))
    (batched,), dropped = encode_all(chatml, [example], 512)
    assert dropped == 0 and batched == encode_example(chatml, None, example, 512)
    assert batched == encode_conversation(chatml, CHAT, 512)


def test_a_user_file_keeps_conversations_whole(tmp_path, chatml):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": CHAT, "split": "train"}))
    (example,) = load_user_file(path, "train")
    assert [m["role"] for m in example.messages] == ["user", "assistant"] * 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": turns(("user", "q"), ("user", "again"))}))
    with pytest.raises(FanLoRAError, match="must end with an assistant turn"):
        load_user_file(bad, "train")
    bad.write_text(json.dumps({"messages": [{"role": "robot", "content": "x"}]}))
    with pytest.raises(FanLoRAError, match="turn 0 must have a role"):
        load_user_file(bad, "train")


def test_a_conversation_longer_than_the_model_is_cut_without_the_tokenizers_warning(chatml):
    """Whole dialogues are tokenized before they are cut to ``max_length``: the tokenizer's
    "longer than the specified maximum" warning would be noise (it is flagged in
    ``deprecation_warnings`` when given, so the check can fail)."""
    tok = copy.deepcopy(chatml)
    tok.model_max_length = 16
    flag = "sequence-length-is-longer-than-the-specified-maximum"
    chat = turns(("user", "word " * 20), ("assistant", "a short answer"))
    long_prompt = Example(uid="p", prompt="word " * 40, response="yes")
    assert encode_conversation(tok, chat, 256) is not None
    encode_example(tok, PromptFrame.of(tok), long_prompt, 64)
    encode_all(tok, [long_prompt], 64)
    assert flag not in tok.deprecation_warnings
    tok(chat[0]["content"])
    assert tok.deprecation_warnings[flag]
