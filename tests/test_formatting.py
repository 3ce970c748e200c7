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
)
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


def test_the_padding_benchmark_counts_what_micro_batches_feed_beyond_the_real_tokens():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from padding import padding_share

    # one group of 4 sorted longest first: micro-batches [4, 3] and [3, 2] feed 8 + 6 tokens
    assert padding_share([4, 2, 3, 3], batch=4, micro=2) == {
        "real_tokens": 12,
        "fed_tokens": 14,
        "padding_share": pytest.approx(1 / 7),
    }
    assert padding_share([5, 5, 5, 5], batch=4, micro=4)["padding_share"] == 0


def test_a_short_schedule_replaces_each_row_too_long_by_another(tiny_llama):
    import random

    from fanlora.data.formatting import encode_all, encode_reached

    _, tok = tiny_llama
    examples = [
        Example(f"r{i}", f"q{i}", "a" * (200 if i % 3 == 0 else 5)) for i in range(60)
    ]  # every third response is too long for 64 tokens
    kept, dropped = encode_reached(tok, examples, 20, 64, seed=1)
    assert len(kept) == 20 and dropped > 0  # 20 distinct rows that fit, not 20 - dropped
    assert len({tuple(r["input_ids"]) for r in kept}) == 20
    assert all(len(r["input_ids"]) <= 64 for r in kept)
    # with nothing too long, the rows are the seeded draw of before, in its order
    short = [Example(f"s{i}", f"q{i}", "a" * (i % 7 + 1)) for i in range(60)]
    want, _ = encode_all(tok, random.Random(1).sample(short, 20), 64)
    assert encode_reached(tok, short, 20, 64, seed=1) == (want, 0)
    with pytest.raises(FanLoRAError, match="no example fits"):
        encode_reached(tok, examples[::3], 5, 64, seed=1)


def test_collate_pads_right_and_masks_labels():
    rows = [{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    batch = collate(rows, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert batch["input_ids"].dtype == torch.long


# --- truncation around the answer (issue 15, item 3) --------------------------------

SQUADLIKE = Example(
    "sq1",
    "Answer with a span.\n\nPassage: "
    + "filler words here. " * 30
    + "The capital is Zorbania. "
    + "more filler text. " * 30
    + "\n\nQuestion: What is the capital?",
    "Zorbania",
    references=("Zorbania", "Zorbania city"),
)


def test_fit_prompt_keeps_an_anchor_with_the_head_and_the_tail():
    ids = list(range(200))
    plain = fit_prompt(ids, 40, [-1])
    assert 100 not in plain  # the middle cut drops what sits in the middle
    cut = fit_prompt(ids, 40, [-1], anchor=(98, 103))
    assert len(cut) == 40 and set(range(98, 103)) <= set(cut)
    assert cut[:9] == list(range(9)) and cut[-9:] == list(range(191, 200))  # a quarter each
    assert cut.count(-1) == 2
    # an anchor already inside the kept halves changes nothing
    assert fit_prompt(ids, 40, [-1], anchor=(2, 5)) == plain


def test_training_keeps_the_answer_in_the_prompt_when_cutting(tok):
    (row,), _ = encode_all(tok, [SQUADLIKE], max_length=160)
    prompt = [t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab == IGNORE]
    text = tok.decode(prompt)
    assert len(row["input_ids"]) == 160 and "Zorbania" in text
    assert "Answer with a span" in text and "What is the capital?" in text
    single = encode_example(tok, PromptFrame.of(tok), SQUADLIKE, 160)
    assert single == row  # the one-example path cuts the same way


def test_choice_examples_are_never_anchored(tok):
    example = Example(
        "c", "Is it yes? " + "filler " * 80 + " yes indeed", "yes", choices=("yes", "no"), label=0
    )
    (row,), _ = encode_all(tok, [example], max_length=90)
    plain = encode_example(tok, PromptFrame.of(tok), Example("c", example.prompt, "yes"), 90)
    assert row == plain


def test_evaluation_records_whether_a_reference_survives(tok):
    from fanlora.evaluate.generate import prompt_ids, references_kept
    from fanlora.evaluate.run import answers_in_prompt, generated_records

    never = Example("sql", "Question: names?", "SELECT name FROM t")
    short = Example("s2", "Passage: Zorbania is big.\n\nQuestion: Which?", "Zorbania")
    examples = [SQUADLIKE, never, short]
    prompts = prompt_ids(tok, examples, 120)
    kept = references_kept(tok, examples, prompts)
    assert kept == [False, None, True]  # the middle cut lost SQUADLIKE's answer
    records = generated_records(examples, ["x", "y", "Zorbania"], "f1_em", kept)
    assert [r["reference_in_prompt"] for r in records] == kept
    assert answers_in_prompt(records) == {"share": 50.0, "examples": 2}
