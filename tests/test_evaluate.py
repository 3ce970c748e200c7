"""Evaluation: the A.2 metrics as pure functions, and the batched model paths."""

import json

import pytest
import torch

from fanlora.cli.main import main
from fanlora.data.example import Example
from fanlora.data.registry import load_split, stratified_sample
from fanlora.errors import FanLoRAError
from fanlora.evaluate.choice import option_loglik
from fanlora.evaluate.generate import generate, generate_ids, prompt_ids
from fanlora.evaluate.metrics import (
    f1_em,
    number_acc,
    parse_number,
    sql_em,
    squad_f1,
    squad_normalize,
)
from fanlora.evaluate.run import EvalConfig, evaluate


def test_squad_normalisation_and_scores_follow_the_official_script():
    assert squad_normalize("The  Eiffel-Tower!") == "eiffeltower"
    assert squad_normalize("an apple a day") == "apple day"
    assert f1_em("the Nobel Prize", ["Nobel Prize"]) == {"f1": 1.0, "em": 1.0, "f1_em": 1.0}
    # prediction "nobel prize in physics" vs "nobel prize": P = 2/4, R = 1 -> F1 = 2/3
    assert squad_f1("Nobel Prize in physics", "Nobel Prize") == pytest.approx(2 / 3)
    scores = f1_em("in Paris, France", ["Paris", "France"])
    assert scores["em"] == 0.0 and scores["f1"] == pytest.approx(0.5)
    assert f1_em("London", ["Paris"])["f1_em"] == 0.0


def test_squad_f1_is_zero_when_both_answers_normalise_to_empty():
    # official v1.1: no shared token -> F1 0, even when both sides are empty; EM is 1
    assert squad_f1("the", "a") == 0.0
    assert f1_em("The.", ["an"]) == {"f1": 0.0, "em": 1.0, "f1_em": 0.5}


def test_sql_exact_match_ignores_case_spacing_and_quotes_only():
    ref = ["SELECT name FROM singer WHERE age > 'value' ORDER BY age DESC"]
    assert sql_em('select name from singer where age>"value" order by age desc;', ref)["sql_em"]
    assert sql_em("SELECT name FROM singer\nextra text", ["SELECT name FROM singer"])["sql_em"]
    assert not sql_em("SELECT age FROM singer", ["SELECT name FROM singer"])["sql_em"]
    assert sql_em("SELECT a FROM t WHERE x != 1", ["select a from t where x!=1"])["sql_em"]


@pytest.mark.parametrize(
    "text, value",
    [
        ("1 / 2", 0.5),
        ("The answer is 1,000.", 1000.0),
        ("-3.5 then 7", 7.0),
        ("x = -.25", -0.25),
        ("no number", None),
        ("3 / 0", None),
    ],
)
def test_final_number_parsing(text, value):
    assert parse_number(text) == value


def test_number_accuracy_compares_values_not_strings():
    assert number_acc("so the ratio is 0.5", ["1 / 2"])["number_acc"] == 1.0
    assert number_acc("42.0", ["42"])["number_acc"] == 1.0
    assert number_acc("41", ["42"])["number_acc"] == 0.0
    assert number_acc("", ["42"])["number_acc"] == 0.0


EXAMPLES = [
    Example(f"e{i}", "Is the sky " + "very " * i + "blue?", "Yes", ("Yes", "No maybe"), i % 2)
    for i in range(5)
]


@torch.no_grad()
def manual_loglik(model, tok, example, option, eos=True):
    """log p(option [+ eos] | prompt) computed one sequence at a time, without padding."""
    from fanlora.data.formatting import PromptFrame, encode_example

    row = encode_example(tok, PromptFrame.of(tok), example, 128, response=option)
    ids = torch.tensor([row["input_ids"]])
    logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    targets = torch.tensor(row["labels"][1:])
    keep = (targets != -100).nonzero()[:, 0]
    keep = keep if eos else keep[:-1]  # the eos is the last labelled token
    return float(logp[keep].gather(1, targets[keep, None]).sum())


def test_option_loglik_is_exact_and_independent_of_batching(tiny_llama):
    model, tok = tiny_llama
    batched, batched_plain = option_loglik(model, tok, EXAMPLES, 128, batch_size=4)
    single, _ = option_loglik(model, tok, EXAMPLES, 128, batch_size=1)
    for i, example in enumerate(EXAMPLES):
        want = [manual_loglik(model, tok, example, o) for o in example.choices]
        plain = [manual_loglik(model, tok, example, o, eos=False) for o in example.choices]
        assert batched[i] == pytest.approx(want, abs=1e-4)
        assert single[i] == pytest.approx(want, abs=1e-4)
        assert batched_plain[i] == pytest.approx(plain, abs=1e-4)


MIXED = [
    Example("m0", "Is the sky " + "very " * 12 + "blue?", "Yes", ("Yes", "No", "Maybe so"), 0),
    Example("m1", "Two?", "a", ("a", "b"), 1),
    Example("m2", "Pick one " * 3, "x", ("x", "y y", "z z z", "w"), 2),
    # the long option cuts this prompt shorter than the short option's: two prompts
    Example("m3", "word " * 30, "a", ("a", "b " * 20), 0),
]


@pytest.mark.parametrize("name", ["tiny-random-llama", "tiny-random-qwen2", "tiny-random-gemma3"])
def test_prompts_run_once_give_each_options_full_pass_log_likelihood(name):
    from fanlora.data.formatting import PromptFrame
    from fanlora.evaluate.choice import option_rows, shared_prompts
    from fanlora.models import load_model

    model, tok = load_model(name)
    rows, owners = option_rows(tok, MIXED, 128)
    groups, alone = shared_prompts(rows, owners)
    assert len(groups) == 5 and not alone  # m3's options do not share a prompt
    assert max(len(g.prefix) for g in groups) > 8 + len(PromptFrame.of(tok).pre)  # > window
    shared, plain = option_loglik(model, tok, MIXED, 128, batch_size=5)
    full, full_plain = option_loglik(model, tok, MIXED, 128, batch_size=3, share_prompts=False)
    for i, example in enumerate(MIXED):
        want = [manual_loglik(model, tok, example, o) for o in example.choices]
        assert shared[i] == pytest.approx(want, abs=1e-4)
        assert full[i] == pytest.approx(want, abs=1e-4)
        assert plain[i] == pytest.approx(full_plain[i], abs=1e-4)


def test_a_one_token_prompt_has_nothing_to_share_and_runs_whole(tiny_llama):
    from fanlora.evaluate.choice import option_rows, shared_prompts

    _, tok = tiny_llama
    example = Example("one", "Q", "a", ("a", "b"), 0)
    rows, owners = option_rows(tok, [example], 32)
    frame_free = [dict(r) for r in rows]
    for row in frame_free:  # as a tokenizer without a chat template would encode it
        first = next(t for t, label in enumerate(row["labels"]) if label != -100)
        row["input_ids"] = row["input_ids"][first - 1 :]
        row["labels"] = row["labels"][first - 1 :]
    groups, alone = shared_prompts(frame_free, owners)
    assert groups == [] and alone == [0, 1]


def test_acc_norm_divides_the_log_likelihood_without_eos_by_the_option_length():
    from fanlora.evaluate.run import choice_records, summarize

    example = Example("q", "p", "a", choices=("ab", "abcdefgh"), label=1)
    # with eos the short option wins (-3 > -5); per character without eos the long one
    # does (-4 / 8 = -0.5 > -2 / 2 = -1)
    (record,) = choice_records([example], [[-3.0, -5.0]], [[-2.0, -4.0]])
    assert record["values"] == {"accuracy": 0.0, "acc_norm": 1.0}
    assert summarize([record], "accuracy") == {"value": 0.0, "accuracy": 0.0, "acc_norm": 100.0}


def test_an_option_too_long_is_refused_by_scoring_and_evaluation_alike(tiny_llama):
    from fanlora.score.evaluator import build_valset

    model, tok = tiny_llama
    example = Example("long-1", "Pick", "a", choices=("a", "b" * 80), label=0)
    with pytest.raises(FanLoRAError, match="option 1 of example long-1 does not fit"):
        option_loglik(model, tok, [example], 48, 2)
    with pytest.raises(FanLoRAError, match="option 1 of example long-1 does not fit"):
        build_valset(tok, [example], 48, 2, "accuracy")


def test_left_padded_batched_generation_equals_one_at_a_time(tiny_llama):
    model, tok = tiny_llama
    prompts = prompt_ids(tok, EXAMPLES, 100)
    assert len({len(p) for p in prompts}) > 1  # the batch really is padded
    batched = generate_ids(model, tok, prompts, batch_size=5, max_new_tokens=6)
    alone = [generate_ids(model, tok, [p], batch_size=1, max_new_tokens=6)[0] for p in prompts]
    assert batched == alone
    assert all(batched)  # something was generated for every prompt
    texts = generate(model, tok, prompts, batch_size=5, max_new_tokens=6)
    assert texts == [tok.decode(r, skip_special_tokens=True).strip() for r in batched]


def test_evaluate_writes_metrics_that_trace_to_predictions(tasks_home, tmp_path):
    for task in ("yesno", "squad", "math"):
        doc = evaluate(
            EvalConfig(task=task, limit=6, max_new_tokens=4), tmp_path / task, log=lambda _: None
        )
        text = (tmp_path / task / "predictions.jsonl").read_text()
        lines = [json.loads(x) for x in text.splitlines()]
        assert len(lines) == doc["examples"] == 6
        mean = 100 * sum(x["values"][doc["metric"]] for x in lines) / len(lines)
        assert doc["value"] == pytest.approx(mean)
        saved = json.loads((tmp_path / task / "metrics.json").read_text())
        assert saved["value"] == doc["value"] and saved["metric"] == doc["metric"]
    assert json.loads((tmp_path / "squad" / "metrics.json").read_text())["metric"] == "f1_em"


def test_evaluate_draws_a_stratified_subset_when_asked(tasks_home, tmp_path):
    cfg = EvalConfig(task="yesno", limit=8, stratified=True)
    evaluate(cfg, tmp_path / "s", log=lambda _: None)
    rows = (tmp_path / "s" / "predictions.jsonl").read_text().splitlines()
    expected = stratified_sample(load_split("yesno", "test"), 8, seed=cfg.seed)
    assert [json.loads(r)["uid"] for r in rows] == [e.uid for e in expected]


def test_eval_cli_refuses_unknown_task_and_bad_adapter(tasks_home, tmp_path, capsys):
    assert main(["eval", "--task", "nosuch", "--out", str(tmp_path / "e")]) == 2
    assert "unknown dataset 'nosuch'" in capsys.readouterr().err
    (tmp_path / "adapter").mkdir()
    code = main(
        [
            "eval",
            "--task",
            "yesno",
            "--adapter",
            str(tmp_path / "adapter"),
            "--out",
            str(tmp_path / "e"),
        ]
    )
    assert code == 2 and "not a PEFT adapter folder" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_choice_eval_refuses_an_example_without_options(tiny_llama):
    model, tok = tiny_llama
    with pytest.raises(FanLoRAError, match="no options"):
        option_loglik(model, tok, [Example("x", "p", "r")], 64, 2)


def test_evaluation_in_bf16_on_an_explicit_device_matches_fp32(tasks_home, tmp_path):
    docs = {
        p: evaluate(
            EvalConfig(task="yesno", limit=8, device="cpu", precision=p),
            tmp_path / p,
            log=lambda _: None,
        )
        for p in ("fp32", "bf16")
    }
    assert docs["bf16"]["config"]["precision"] == "bf16"
    rows = {
        p: [json.loads(x) for x in (tmp_path / p / "predictions.jsonl").read_text().splitlines()]
        for p in docs
    }
    for a, b in zip(rows["fp32"], rows["bf16"], strict=True):
        assert a["loglik"] == pytest.approx(b["loglik"], abs=0.25)  # bf16's 8-bit mantissa
        assert a["loglik"] != b["loglik"]
