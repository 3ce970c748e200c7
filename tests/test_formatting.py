import pytest
import torch

from fanlora.data.example import Example
from fanlora.data.formatting import (
    IGNORE,
    PromptFrame,
    collate,
    encode_all,
    encode_example,
    fit_prompt,
    length_grouped_batches,
)  # fmt: skip
from fanlora.errors import FanLoRAError


@pytest.fixture(scope="module")
def tok(tiny_llama):
    return tiny_llama[1]


def test_loss_covers_only_the_response(tok):
    frame = PromptFrame.of(tok)
    row = encode_example(tok, frame, Example("u", "What is 2+2?", "4"), max_length=128)
    labelled = [t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != IGNORE]
    assert tok.decode(labelled) == "4<|im_end|>"
    assert tok.decode(row["input_ids"]).startswith("<|im_start|>user\nWhat is 2+2?<|im_end|>")
    assert "<|im_start|>assistant\n4<|im_end|>" in tok.decode(row["input_ids"])


def test_long_prompt_loses_its_middle_and_keeps_the_response(tok):
    frame = PromptFrame.of(tok)
    prompt = "BEGIN " + "filler " * 100 + "QUESTION?"
    row = encode_example(tok, frame, Example("u", prompt, "the answer"), max_length=80)
    assert len(row["input_ids"]) == 80
    text = tok.decode(row["input_ids"])
    assert "BEGIN" in text and "QUESTION?" in text and " ... " in text
    assert text.endswith("the answer<|im_end|>")


def test_response_longer_than_max_length_is_dropped_and_counted(tok):
    examples = [Example("a", "q", "short"), Example("b", "q", "long " * 50)]
    kept, dropped = encode_all(tok, examples, max_length=64)
    assert len(kept) == 1 and dropped == 1
    with pytest.raises(FanLoRAError, match="raise --max-length"):
        encode_all(tok, examples[1:], max_length=64)


def test_fit_prompt_exact_budget():
    ids = list(range(100))
    cut = fit_prompt(ids, 20, [-1])
    assert len(cut) == 20 and cut[:9] == list(range(9)) and cut[-10:] == list(range(90, 100))
    assert fit_prompt(ids, 200, [-1]) == ids


def test_length_grouped_batches_cover_everything_and_cut_padding():
    lengths = [(i * 37) % 200 + 1 for i in range(1000)]
    batches = length_grouped_batches(lengths, batch_size=16, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert batches == length_grouped_batches(lengths, batch_size=16, seed=3)

    def padding(bs):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)

    naive = [list(range(i, min(i + 16, 1000))) for i in range(0, 1000, 16)]
    assert padding(batches) < 0.2 * padding(naive)


def test_collate_pads_right_and_masks_labels():
    rows = [{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    batch = collate(rows, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert batch["input_ids"].dtype == torch.long
