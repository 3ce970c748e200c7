"""Step 2 on the tiny preset: AB-score (fast = straightforward), Shapley, sensitivity."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import free_port
from fanlora.errors import FanLoRAError
from fanlora.score.run import ScoreConfig, score
from fanlora.utils.stopping import Stopped

WORDS = ["apple", "pear", "plum", "fig", "kiwi", "lime", "date", "sloe"]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("d") / "words.jsonl"
    rows = [
        {"instruction": f"Repeat {w} {i}", "output": f"{w} {w}", "split": "dev"}
        for i, w in enumerate(WORDS * 2)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


def make_adapter(folder, zero=(), seed=0, num_layers=None):
    """A LoRA adapter on every module with random, non-zero A and B (B of ``zero`` set to 0)."""
    from peft import LoraConfig, get_peft_model

    from fanlora.models import load_model
    from fanlora.modules import discover_layout

    if num_layers is None:
        base, _ = load_model("tiny-random-llama")
    else:
        from conftest import build_tiny

        base = build_tiny("llama", vocab_size=260, num_hidden_layers=num_layers)
    layout = discover_layout(base)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=layout.all_names(), init_lora_weights=False
    )
    model = get_peft_model(base, config)
    for layer, kind in zero:
        module = model.base_model.model.get_submodule(layout.name(layer, kind))
        torch.nn.init.zeros_(module.lora_B["default"].weight)
    model.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    return make_adapter(tmp_path_factory.mktemp("a"), zero=[(1, "v")])


def run_score(tmp_path, adapter, data_file, name="s.json", **kw):
    cfg = ScoreConfig(
        **{"adapter": adapter, "data": data_file, "val_examples": 16, "batch_size": 16, **kw}
    )
    return score(cfg, tmp_path / name, log=lambda _: None)


def journal_file(folder, rank=0):
    """The one journal file of ``rank`` in ``folder`` (named by its run's identity)."""
    (path,) = Path(folder).glob(f"rank-{rank}.*.jsonl")
    return path


def by_key(doc):
    return {(r["layer"], r["module"]): r for r in doc["scores"]}


def test_fast_equals_straightforward(tmp_path, adapter, data_file):
    fast = by_key(run_score(tmp_path, adapter, data_file, "fast.json", mode="fast"))
    plain = by_key(run_score(tmp_path, adapter, data_file, "plain.json", mode="straightforward"))
    assert fast.keys() == plain.keys() and len(fast) == 28
    assert max(abs(fast[k]["score"] - plain[k]["score"]) for k in fast) <= 1e-4
    assert any(abs(r["score"]) > 1e-3 for r in fast.values())  # the scores are not all ~0
    for r in fast.values():  # every term is kept and eq. 3 recomputes V
        assert r["score"] == pytest.approx(r["s_all"] - r["s_without"] + r["s_only"] - r["s_none"])


def test_zero_lora_module_scores_zero(tmp_path, adapter, data_file):
    doc = run_score(tmp_path, adapter, data_file)
    assert abs(by_key(doc)[(1, "v")]["score"]) < 1e-6
    assert doc["method"] == "ab" and doc["validation"]["examples"] == 16
    assert doc["wall_time_s"] > 0 and doc["seed"] == 0


def test_accuracy_metric_on_a_choice_task(tmp_path, adapter):
    path = tmp_path / "choice.jsonl"
    from fanlora.data.example import Example

    rows = [
        Example(f"c{i}", f"Pick {i}", "yes", choices=("yes", "no"), label=0).to_dict()
        for i in range(6)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    from fanlora.models import load_tokenizer
    from fanlora.score.evaluator import build_valset, score_of

    valset = build_valset(
        load_tokenizer("tiny-random-llama"), [Example.from_dict(r) for r in rows], 64, 4, "accuracy"
    )
    assert valset.num_sequences == 12 and valset.labels == [0] * 6
    stats = torch.tensor([[1.0, 2.0], [2.0, 2.0]] * 6)  # option 0 has the lower loss
    assert score_of(stats, valset, "accuracy") == 1.0
    assert score_of(torch.tensor([[3.0, 2.0], [2.0, 2.0]] * 6), valset, "accuracy") == 0.0


def test_exact_layer_shapley_is_efficient(tmp_path, adapter, data_file):
    from fanlora.score.ab import straightforward
    from fanlora.score.evaluator import score_of
    from fanlora.score.run import build_and_gate

    doc = run_score(
        tmp_path, adapter, data_file, method="shapley", scope="layer", mode="straightforward"
    )
    model, gates, valset = build_and_gate(
        ScoreConfig(adapter=adapter, data=data_file, val_examples=16, batch_size=16)
    )
    evaluate = straightforward(model, gates, valset)
    every = set(gates.keys)
    s_all = score_of(evaluate(every, 0, "on"), valset, "loss")
    for layer in range(4):
        phi = sum(r["score"] for r in doc["scores"] if r["layer"] == layer)
        closed = {k for k in every if k[0] != layer}
        s_closed = score_of(evaluate(closed, 0, "on"), valset, "loss")
        assert phi == pytest.approx(s_all - s_closed, abs=1e-5)
    # --layers: the same exact values, for the chosen layers only
    some = run_score(
        tmp_path,
        adapter,
        data_file,
        "some.json",
        method="shapley",
        scope="layer",
        mode="straightforward",
        layers=[3, 1],
    )
    full = {(r["layer"], r["module"]): r["score"] for r in doc["scores"]}
    part = {(r["layer"], r["module"]): r["score"] for r in some["scores"]}
    assert {k[0] for k in part} == {1, 3}
    assert part == pytest.approx({k: full[k] for k in part}, abs=1e-6)


def test_monte_carlo_shapley_sums_to_all_minus_none(tmp_path, adapter, data_file):
    doc = run_score(tmp_path, adapter, data_file, method="shapley", budget=2)
    ab = run_score(tmp_path, adapter, data_file, "ab.json")
    s = ab["scores"][0]
    total = sum(r["score"] for r in doc["scores"])  # each permutation telescopes
    assert total == pytest.approx(s["s_all"] - s["s_none"], abs=1e-4)
    assert all("stderr" in r for r in doc["scores"])


def test_sensitivity_matches_finite_differences(tmp_path, adapter, data_file):
    from fanlora.score.evaluator import full_eval, score_of
    from fanlora.score.run import build_and_gate

    doc = run_score(tmp_path, adapter, data_file, method="sensitivity")
    model, gates, valset = build_and_gate(
        ScoreConfig(adapter=adapter, data=data_file, val_examples=16, batch_size=16)
    )
    assert len(valset.batches) == 1  # one batch: the sum of |grad| is |grad|
    key = (2, "o")
    module = gates.modules[key]
    s0, h = module.scaling["default"], 1e-2
    gates.all_open()
    losses = []
    for g in (1 + h, 1 - h):
        module.scaling["default"] = s0 * g
        losses.append(-score_of(full_eval(model, valset), valset, "loss"))
    module.scaling["default"] = s0
    finite = abs(losses[0] - losses[1]) / (2 * h)
    assert by_key(doc)[key]["score"] == pytest.approx(finite, rel=2e-2, abs=1e-5)
    assert all(r["score"] >= 0 for r in doc["scores"])


def test_sensitivity_sums_absolute_gradients_over_several_batches(tmp_path, adapter, data_file):
    one = by_key(run_score(tmp_path, adapter, data_file, "one.json", method="sensitivity"))
    four = by_key(
        run_score(tmp_path, adapter, data_file, "four.json", method="sensitivity", batch_size=4)
    )
    assert four.keys() == one.keys()
    # sum_b |dL_b/dg| >= |sum_b dL_b/dg| = the one-batch score, strictly for some module
    assert all(four[k]["score"] >= one[k]["score"] - 1e-6 for k in one)
    assert any(four[k]["score"] > one[k]["score"] + 1e-6 for k in one)


def test_resume_recomputes_nothing_finished(tmp_path, adapter, data_file, monkeypatch):
    from fanlora.score import scorer

    straight = run_score(tmp_path, adapter, data_file, "straight.json")
    calls = {"n": 0}
    original = scorer.fast

    def counting_fast(model, gates, valset, store=None):
        # as if the two full passes of the captures took 3 s: a margin over a fast
        # `all`/`none` unit that a loaded machine does not eat (with 1 s, a half of 0.51 s
        # lost to a 0.58 s unit while another job shared the 2 cores)
        time.sleep(3.0)
        inner = original(model, gates, valset, store)

        def evaluate(open_keys, layer, base):
            calls["n"] += 1
            if calls["n"] == 20 and calls.get("kill"):
                raise KeyboardInterrupt
            return inner(open_keys, layer, base)

        return evaluate

    monkeypatch.setattr(scorer, "fast", counting_fast)
    calls["kill"] = True
    with pytest.raises(KeyboardInterrupt):
        run_score(tmp_path, adapter, data_file, "killed.json")
    lines = journal_file(tmp_path / "killed.json.journal").read_text().splitlines()
    keys = [json.loads(line)["key"] for line in lines[1:]]
    assert keys[:2] == ["all", "none"] and len(keys) == 2 + 8  # module 9 was cut short
    calls.update(n=0, kill=False)
    resumed = run_score(tmp_path, adapter, data_file, "killed.json")
    assert calls["n"] == 2 * (28 - 8)  # only the modules the journal lacked, two models each
    assert [r["score"] for r in resumed["scores"]] == [r["score"] for r in straight["scores"]]
    # the cost counts the units of both sittings, not the resumed one's wall time only
    cost, entries = resumed["compute"], [json.loads(line) for line in lines[1:]]
    assert cost["units"] == 2 + 28 and cost["untimed_units"] == 0
    assert cost["unit_seconds"] > sum(e["seconds"] for e in entries) > 0
    # one full pass is half the captures' time (at least the 3 s slept), not a fast
    # `all`/`none` unit, which reruns only the last layer
    assert cost["capture_seconds"] >= 3.0
    assert cost["full_evaluation_s"] == pytest.approx(cost["capture_seconds"] / 2, rel=1e-12)
    assert cost["full_evaluation_s"] > max(e["seconds"] for e in entries[:2])


def test_scoring_stops_cleanly_on_sigterm_and_resumes_to_the_same_scores(
    tmp_path, adapter, data_file, monkeypatch
):
    """SIGTERM during the 5th unit: that unit finishes and is journalled, then Stopped
    (the handler put back); the same command computes only the rest, to the same scores."""
    from fanlora.score import scorer

    straight = run_score(tmp_path, adapter, data_file, "straight.json")
    original, calls = scorer.fast, {"n": 0, "kill": True}

    def signalling_fast(model, gates, valset, store=None):
        inner = original(model, gates, valset, store)

        def evaluate(open_keys, layer, base):
            calls["n"] += 1
            # all and none take a call each, a module two: call 7 is module 3's first
            if calls["n"] == 7 and calls["kill"]:
                os.kill(os.getpid(), signal.SIGTERM)
            return inner(open_keys, layer, base)

        return evaluate

    monkeypatch.setattr(scorer, "fast", signalling_fast)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stopped, match="stopped on SIGTERM after 5 scoring units"):
        run_score(tmp_path, adapter, data_file, "stopped.json")
    assert signal.getsignal(signal.SIGTERM) is before
    lines = journal_file(tmp_path / "stopped.json.journal").read_text().splitlines()
    assert len(lines) == 1 + 5 and not (tmp_path / "stopped.json").exists()
    calls.update(n=0, kill=False)
    resumed = run_score(tmp_path, adapter, data_file, "stopped.json")
    assert calls["n"] == 2 * (28 - 3)  # the modules the journal lacked, two models each
    assert [r["score"] for r in resumed["scores"]] == [r["score"] for r in straight["scores"]]


def test_journal_of_another_run_is_kept_aside_not_mixed(tmp_path, adapter, data_file):
    """A second run with another identity into the same output leaves the first run's file
    as it was, uses none of its units (it gives what it gives alone) and says so."""
    run_score(tmp_path, adapter, data_file, "s.json")
    first = journal_file(tmp_path / "s.json.journal")
    before = first.read_text()
    lines = []
    cfg = ScoreConfig(adapter=adapter, data=data_file, val_examples=16, batch_size=16, seed=5)
    other = score(cfg, tmp_path / "s.json", log=lines.append)
    alone = score(cfg, tmp_path / "alone.json", log=lambda _: None)
    assert first.read_text() == before
    assert len(list((tmp_path / "s.json.journal").glob("rank-0.*.jsonl"))) == 2
    assert other["scores"] == alone["scores"]
    assert any(
        "30 journalled units of another scoring run" in x and "differs in seed)" in x for x in lines
    )


def test_journal_keeps_each_precision_apart(tmp_path):
    """Units journalled in bf16 are not used by an fp32 run (eq. 3 subtracts S's: mixed, V
    would hold the precisions' difference); each run finds its own again. A file from before
    the identity digest (``rank-0.jsonl``) is read and appended to."""
    from fanlora.score.journal import Journal

    folder = tmp_path / "s.json.journal"
    bf16, fp32 = {"seed": 0, "precision": "bf16"}, {"seed": 0, "precision": "fp32"}
    folder.mkdir()
    legacy = folder / "rank-0.jsonl"
    legacy.write_text(json.dumps({"identity": bf16}) + '\n{"key": "all", "s": 1.0}\n{"key')
    journal = Journal(folder, fp32)
    assert "all" not in journal and "differs in precision" in journal.describe_aside()
    journal.write("all", s=2.0)
    journal.close()
    journal = Journal(folder, bf16)
    assert journal.get("all")["s"] == 1.0 and journal.path == legacy
    journal.write("none", s=0.5)
    journal.close()
    journal = Journal(folder, fp32)
    assert journal.get("all")["s"] == 2.0 and "none" not in journal
    assert journal.aside == {legacy: (2, bf16)}


def test_journal_identity_holds_the_precision_passes_run_in(adapter, data_file):
    from fanlora.score.run import identity
    from fanlora.utils.devices import native_bf16

    cfg = ScoreConfig(adapter=adapter, data=data_file, precision="auto")
    native = native_bf16(torch.device("cpu"))
    assert identity(cfg)["precision"] == ("bf16" if native else "fp32")
    assert identity(cfg, "bf16")["precision"] == "bf16"


def test_a_second_scoring_process_on_the_same_output_is_refused(tmp_path, adapter, data_file):
    """While one run holds the journal, another (here: a child process) is refused before it
    evaluates anything, and the first run's journal is untouched."""
    from fanlora.score.journal import Journal
    from fanlora.score.run import identity

    cfg = ScoreConfig(adapter=adapter, data=data_file, val_examples=16, batch_size=16)
    holder = Journal(tmp_path / "s.json.journal", identity(cfg))
    holder.write("all", stats=[[1.0, 2.0]])
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "fanlora.cli.main",
                "score",
                "--adapter",
                adapter,
                "--data",
                data_file,
                "--val-examples",
                "16",
                "--batch-size",
                "16",
                "--out",
                str(tmp_path / "s.json"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        holder.close()
    assert proc.returncode == 2 and "another scoring process" in proc.stderr, proc.stderr
    lines = journal_file(tmp_path / "s.json.journal").read_text().splitlines()
    assert len(lines) == 2 and not (tmp_path / "s.json").exists()


def test_heatmap_is_a_png_of_the_right_shape(tmp_path, adapter, data_file):
    import matplotlib.image

    run_score(tmp_path, adapter, data_file, "h.json")
    png = tmp_path / "h.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, channels = matplotlib.image.imread(png).shape
    assert channels == 4 and width > 300 and height > 100


def test_bad_inputs(tmp_path, data_file):
    wrong = make_adapter(tmp_path / "wrong", num_layers=6)
    with pytest.raises(FanLoRAError, match="does not match"):
        run_score(tmp_path, wrong, data_file)
    with pytest.raises(FanLoRAError, match="not a PEFT adapter"):
        run_score(tmp_path, str(tmp_path), data_file)
    with pytest.raises(FanLoRAError, match="budget"):
        ScoreConfig(adapter="x", method="shapley", budget=0)
    with pytest.raises(FanLoRAError, match="--layers restricts"):
        ScoreConfig(adapter="x", layers=[0])
    with pytest.raises(FanLoRAError, match=r"--layers \[9\]: tiny-random-llama has layers 0-3"):
        run_score(
            tmp_path,
            make_adapter(tmp_path / "ok"),
            data_file,
            method="shapley",
            scope="layer",
            layers=[1, 9],
        )


def test_ia3_adapter_has_no_lora_modules(tmp_path, data_file):
    from peft import IA3Config, get_peft_model

    from fanlora.models import load_model

    base, _ = load_model("tiny-random-llama")
    get_peft_model(
        base, IA3Config(target_modules=["k_proj"], feedforward_modules=[])
    ).save_pretrained(tmp_path / "ia3")
    with pytest.raises(FanLoRAError, match="no LoRA modules"):
        run_score(tmp_path, str(tmp_path / "ia3"), data_file)


def test_validation_without_response_tokens(tmp_path, adapter, data_file):
    with pytest.raises(FanLoRAError, match="no response tokens"):
        run_score(tmp_path, adapter, data_file, max_length=8)


def test_compare_identical_and_reversed():
    from fanlora.modules.discovery import ModuleLayout
    from fanlora.score.compare import compare
    from fanlora.select import ScoreRecord

    layout = ModuleLayout("M", "llama", "model.layers", 2, {"q": "q", "k": "k", "v": "v"})
    a = [
        ScoreRecord(l_, k, float(i))
        for i, (l_, k) in enumerate((l_, k) for l_ in range(2) for k in "qkv")
    ]
    b = [ScoreRecord(r.layer, r.module, -r.score) for r in a]
    out = compare({"a": a, "b": b, "a2": a}, layout, 1)
    assert out["spearman"]["a"]["a2"] == pytest.approx(1.0)
    assert out["spearman"]["a"]["b"] == pytest.approx(-1.0)
    assert out["kendall"]["a"]["b"] == pytest.approx(-1.0)
    assert out["topk_agreement"]["a"]["a2"] == 1.0
    assert out["within_layer_spearman"]["a"]["b"] == pytest.approx(-1.0)
    # a file scoring layer 1 only (exact Shapley on chosen layers): compared on layer 1
    part = [ScoreRecord(1, k, s) for k, s in zip("qkv", (0.0, 2.0, 1.0), strict=True)]
    out = compare({"a": a, "part": part}, layout, 1)
    assert out["spearman"]["a"]["part"] == pytest.approx(0.5)
    assert out["topk_agreement"]["a"]["part"] == 0.0  # a keeps v, part keeps k
    assert out["topk_agreement"]["part"]["part"] == 1.0


def test_agreement_heatmap_labels_every_cell(tmp_path, monkeypatch):
    from fanlora.score import compare as compare_module
    from fanlora.utils import plotting

    result = {
        "files": ["a", "b"],
        "k": 2,
        "spearman": {"a": {"a": 1.0, "b": 0.25}, "b": {"a": 0.25, "b": 1.0}},
        "topk_agreement": {"a": {"a": 1.0, "b": 0.5}, "b": {"a": 0.5, "b": 1.0}},
    }
    seen = {}
    original = plotting.save_figure

    def spy(fig, path, **kw):
        seen["cells"] = [[t.get_text() for t in ax.texts] for ax in fig.axes]
        seen["titles"] = [ax.get_title() for ax in fig.axes]
        return original(fig, path, **kw)

    monkeypatch.setattr(compare_module, "save_figure", spy)
    path = compare_module.plot_agreement(result, tmp_path / "a.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert seen["cells"] == [["1.00", "0.25", "0.25", "1.00"], ["1.00", "0.50", "0.50", "1.00"]]
    assert seen["titles"] == ["spearman", "same kept set (top 2)"]


def test_agreement_heatmap_numbers_long_names_with_a_key(tmp_path, monkeypatch):
    """Grid run names share most of their text: the axes show what differs, and numbers
    with a key below when that is still long; the layout fits (no tight-layout warning)."""
    import warnings

    from fanlora.score import compare as compare_module
    from fanlora.utils import plotting

    grid = "scoring.method+scoring.refine=ab+False"
    assert compare_module.plot_labels([f"seed=0,{grid}", f"seed=1,{grid}"]) == [
        "seed=0",
        "seed=1",
    ]
    assert compare_module.plot_labels(["a/s.json", "a/s.json"]) == ["a/s.json", "a/s.json"]
    names = [f"seed=0,{grid}/2-scores/s.json", f"seed=0,full_lora.max_steps=40+{grid}/s.json"]
    matrix = {x: {y: 1.0 if x == y else 0.5 for y in names} for x in names}
    result = {"files": names, "k": 2, "spearman": matrix, "topk_agreement": matrix}
    seen = {}
    original = plotting.save_figure

    def spy(fig, path, **kw):
        seen["ticks"] = [t.get_text() for t in fig.axes[0].get_xticklabels()]
        seen["texts"] = [t.get_text() for t in fig.texts]
        return original(fig, path, **kw)

    monkeypatch.setattr(compare_module, "save_figure", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compare_module.plot_agreement(result, tmp_path / "a.png")
    assert seen["ticks"] == ["1", "2"]
    assert seen["texts"] == [f"1: {grid}/2-scores\n2: full_lora.max_steps=40+{grid}"]


def test_compare_names_files_by_the_shortest_distinct_path():
    from fanlora.cli.compare_cmd import short_names

    assert short_names(["r/a/s.json", "r/b/s.json"]) == ["a/s.json", "b/s.json"]
    assert short_names(["x.json", "y.json"]) == ["x.json", "y.json"]
    assert short_names(["x.json", "x.json"]) == ["x.json#1", "x.json#2"]


def test_cli_score_then_select_and_compare(tmp_path, adapter, data_file):
    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "fanlora.cli.main", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=300,
        )

    proc = cli(
        "score",
        "--adapter",
        adapter,
        "--data",
        data_file,
        "--val-examples",
        "8",
        "--out",
        tmp_path / "s.json",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = cli("select", "--scores", tmp_path / "s.json", "--out", tmp_path / "set.json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "set.json").read_text())["num_modules"] <= 8
    proc = cli("compare", tmp_path / "s.json", tmp_path / "s.json", "--out", tmp_path / "c.json")
    assert proc.returncode == 0 and "spearman" in proc.stdout
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["spearman"]["s.json#1"]["s.json#2"] == pytest.approx(1.0)
    assert "| s.json#1 | 1.000 | 1.000 |" in (tmp_path / "c.md").read_text()
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    proc = cli("score", "--adapter", tmp_path / "nope", "--out", tmp_path / "x.json")
    assert proc.returncode == 2 and "not a PEFT adapter" in proc.stderr


def test_adaptive_racing_matches_the_exact_setting(tmp_path, adapter, data_file):
    from fanlora.modules.discovery import ModuleLayout
    from fanlora.select import ScoreRecord, top_modules

    exact = run_score(tmp_path, adapter, data_file, "exact.json", batch_size=2)
    fast = run_score(
        tmp_path,
        adapter,
        data_file,
        "adaptive.json",
        batch_size=2,
        adaptive=True,
        alpha=0.5,
        min_sequences=4,
    )
    layout = ModuleLayout.from_dict(exact["layout"])

    def as_records(doc):
        return [ScoreRecord(r["layer"], r["module"], r["score"]) for r in doc["scores"]]

    kept_exact = top_modules(as_records(exact), layout, 2)
    kept_fast = top_modules(as_records(fast), layout, 2)
    exact_by = by_key(exact)
    for layer, (a, b) in enumerate(zip(kept_exact, kept_fast, strict=True)):
        if set(a) != set(b):  # a disagreement must be within the adaptive standard errors
            swapped = set(a) ^ set(b)
            values = [exact_by[(layer, k)]["score"] for k in swapped]
            ses = [by_key(fast)[(layer, k)]["stderr"] for k in swapped]
            assert max(values) - min(values) < 4 * max(ses)
    spent = [r["sequences_spent"] for r in fast["scores"]]
    assert all(4 <= s <= 16 for s in spent) and min(spent) < 16  # some stopped early
    assert fast["method"] == "ab-adaptive" and fast["racing_fallback"] is None


def test_racing_falls_back_to_exact_scores_when_it_cannot_stop_early(tmp_path, adapter, data_file):
    """The embedded default's shape: 8 sequences in batches of 2 and a minimum of 8 before a
    module may stop: racing would spend every batch on every module, so it is not used."""
    lines = []
    cfg = ScoreConfig(adapter=adapter, data=data_file, val_examples=8, batch_size=2, adaptive=True)
    doc = score(cfg, tmp_path / "s.json", log=lines.append)
    assert doc["method"] == "ab" and "cannot stop a module" in doc["racing_fallback"]
    assert any("scoring every module exactly" in line for line in lines)
    exact = run_score(tmp_path, adapter, data_file, "e.json", val_examples=8, batch_size=2)
    assert [r["score"] for r in doc["scores"]] == [r["score"] for r in exact["scores"]]


def test_adaptive_settles_only_decided_modules():
    from fanlora.score.adaptive import critical_value, estimate, settled

    n = torch.ones(40)
    noise = torch.linspace(-0.05, 0.05, 40)
    clear = {(0, "a"): 1.0 + noise, (0, "b"): 0.5 + noise.flip(0), (0, "c"): -0.5 + noise}
    crit = critical_value(0.05, looks=10, modules=3)
    assert settled(clear, n, 2, crit, min_sequences=8) == set(clear)
    # the same clear effect on 4 sequences: under the minimum sample nothing settles
    short = {k: v[:4] for k, v in clear.items()}
    assert settled(short, n, 2, crit, min_sequences=8) == set()
    # a and b close, with noise that is shared (paired): their difference is decided even
    # though their separate intervals overlap
    shared = torch.randn(40, generator=torch.Generator().manual_seed(0))
    paired = {(0, "a"): 1.0 + shared, (0, "b"): 0.9 + shared, (0, "c"): -5.0 + 0 * shared}
    done = settled(paired, n, 1, crit, min_sequences=8)
    assert {(0, "a"), (0, "b")} <= done
    v, se = estimate(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0]))
    assert v == 2.0 and se == pytest.approx(1.0)


def test_racing_intervals_use_t_quantiles_corrected_for_looks_and_modules():
    from scipy.stats import t

    from fanlora.score.adaptive import critical_value

    crit = critical_value(0.05, looks=4, modules=210)
    assert crit(4) == pytest.approx(t.ppf(1 - 0.05 / (4 * 210) / 2, 3))
    assert crit(4) > 20  # a z of 2 at 4 sequences had about 86% coverage for one look
    assert crit(1000) < 5 and crit(1) == float("inf")


def test_adaptive_needs_loss_metric_and_a_sane_k_max(tmp_path, adapter, data_file):
    with pytest.raises(FanLoRAError, match="loss metric"):
        ScoreConfig(adapter="x", adaptive=True, metric="accuracy")
    with pytest.raises(FanLoRAError, match="exceeds"):
        run_score(tmp_path, adapter, data_file, adaptive=True, k_max=9)


@pytest.mark.slow
def test_two_processes_shard_modules_with_the_same_scores(tmp_path, adapter, data_file):
    import os

    one = run_score(tmp_path, adapter, data_file, "one.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            "-m",
            "fanlora.cli.main",
            "score",
            "--adapter",
            adapter,
            "--data",
            data_file,
            "--val-examples",
            "16",
            "--batch-size",
            "16",
            "--out",
            str(tmp_path / "two.json"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    journals = sorted(p.name.split(".")[0] for p in (tmp_path / "two.json.journal").glob("*.jsonl"))
    assert journals == ["rank-0", "rank-1"]  # the work was shared
    two = json.loads((tmp_path / "two.json").read_text())
    assert [r["score"] for r in two["scores"]] == pytest.approx(
        [r["score"] for r in one["scores"]], abs=1e-6
    )


@pytest.mark.parametrize(
    "path",
    sorted((Path(__file__).resolve().parents[1] / "configs" / "scores").glob("*.yaml")),
    ids=lambda p: p.name,
)
def test_every_shipped_score_config_parses(path):
    from fanlora.config import from_mapping, load_yaml

    cfg = from_mapping(ScoreConfig, load_yaml(path), str(path))
    assert cfg.adapter and cfg.method in ("ab", "shapley", "sensitivity")


@pytest.mark.parametrize(
    "extra",
    [{"target": ["lm_head"]}, {"modules_to_save": ["lm_head"]}, {"target": ["embed_tokens"]}],
)
def test_an_adapter_with_modules_outside_the_gates_is_refused(tmp_path, data_file, extra):
    from peft import LoraConfig, get_peft_model

    from fanlora.models import load_model
    from fanlora.modules import discover_layout

    base, _ = load_model("tiny-random-llama")
    layout = discover_layout(base)
    config = LoraConfig(
        r=2,
        target_modules=layout.all_names() + extra.get("target", []),
        modules_to_save=extra.get("modules_to_save"),
    )
    get_peft_model(base, config).save_pretrained(tmp_path / "a")
    name = (extra.get("target") or extra["modules_to_save"])[0]
    with pytest.raises(FanLoRAError, match=f"cannot gate: .*{name}"):
        run_score(tmp_path, str(tmp_path / "a"), data_file)


@pytest.mark.parametrize("model_type", ["gpt2", "gpt_neox", "phi3", "gemma", "llama"])
def test_fast_equals_straightforward_on_every_architecture(model_type):
    """Eager attention takes its causal mask from the layer's arguments: GPT-2 passes it
    positionally, so replaying only args[0] scored a model attending to future tokens."""
    from peft import LoraConfig, get_peft_model

    from conftest import build_tiny
    from fanlora.data.example import Example
    from fanlora.models.tiny import make_byte_tokenizer
    from fanlora.modules import discover_layout
    from fanlora.score import ab
    from fanlora.score.evaluator import build_valset
    from fanlora.score.gates import Gates

    tok = make_byte_tokenizer()
    base = build_tiny(model_type, vocab_size=len(tok), attn_implementation="eager")
    layout = discover_layout(base)
    torch.manual_seed(0)
    model = get_peft_model(
        base, LoraConfig(r=4, target_modules=layout.all_names(), init_lora_weights=False)
    ).eval()
    examples = [Example(f"e{i}", "Say " + "ab" * i, "yes" * (1 + i % 3)) for i in range(6)]
    valset = build_valset(tok, examples, 64, 3, "loss")
    gates = Gates(model, layout)
    fast, plain = ab.fast(model, gates, valset), ab.straightforward(model, gates, valset)
    every, last = set(gates.keys), gates.layers[-1]
    checks = [(every, last, "on"), (set(), last, "off")]
    checks += [(every - {k}, k[0], "on") for k in gates.keys]
    checks += [({k}, k[0], "off") for k in gates.keys]
    for open_keys, layer, base_ in checks:
        a, b = fast(open_keys, layer, base_), plain(open_keys, layer, base_)
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4), (model_type, layer, base_)


def test_sensitivity_is_journalled_per_batch_and_resumes(tmp_path, adapter, data_file, monkeypatch):
    from fanlora.score import sensitivity as sens

    doc = run_score(tmp_path, adapter, data_file, "g.json", method="sensitivity", batch_size=4)
    lines = journal_file(tmp_path / "g.json.journal").read_text().splitlines()
    keys = [json.loads(line)["key"] for line in lines[1:]]
    assert keys == [f"grad:b{i}" for i in range(4)] and len(doc["scores"]) == 28
    calls = []
    monkeypatch.setattr(sens, "batch_sensitivity", lambda *a: calls.append(a))
    again = run_score(tmp_path, adapter, data_file, "g.json", method="sensitivity", batch_size=4)
    assert calls == [] and again["scores"] == doc["scores"]


@pytest.mark.slow
def test_two_processes_share_sensitivity_batches_with_the_same_scores(tmp_path, adapter, data_file):
    import os

    one = run_score(tmp_path, adapter, data_file, "one.json", method="sensitivity", batch_size=4)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            "-m",
            "fanlora.cli.main",
            "score",
            "--adapter",
            adapter,
            "--data",
            data_file,
            "--val-examples",
            "16",
            "--batch-size",
            "4",
            "--method",
            "sensitivity",
            "--out",
            str(tmp_path / "two.json"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank1 = journal_file(tmp_path / "two.json.journal", rank=1).read_text().splitlines()
    assert [json.loads(line)["key"] for line in rank1[1:]] == ["grad:b1", "grad:b3"]
    two = json.loads((tmp_path / "two.json").read_text())
    assert [r["score"] for r in two["scores"]] == pytest.approx(
        [r["score"] for r in one["scores"]], rel=1e-5
    )


def test_scoring_in_bf16_on_an_explicit_device_agrees_with_fp32(tmp_path, adapter, data_file):
    """bf16 autocast: fast still equals straightforward (to bf16 rounding) and the scores
    keep fp32's order (Spearman > 0.9)."""
    from scipy.stats import spearmanr

    kw = {"device": "cpu", "precision": "bf16"}
    fast = by_key(run_score(tmp_path, adapter, data_file, "f.json", mode="fast", **kw))
    plain = by_key(run_score(tmp_path, adapter, data_file, "p.json", mode="straightforward", **kw))
    fp32 = by_key(run_score(tmp_path, adapter, data_file, "32.json", device="cpu"))
    keys = sorted(fp32)
    assert max(abs(fast[k]["score"] - plain[k]["score"]) for k in keys) < 0.02
    rho = spearmanr([fast[k]["score"] for k in keys], [fp32[k]["score"] for k in keys])[0]
    assert rho > 0.9, rho


def test_an_offloaded_layer_cache_gives_the_same_scores(adapter, data_file):
    from fanlora.score.evaluator import fast
    from fanlora.score.run import build_and_gate

    cfg = ScoreConfig(adapter=adapter, data=data_file, val_examples=8, batch_size=4)
    model, gates, valset = build_and_gate(cfg)
    here = fast(model, gates, valset)
    offloaded = fast(model, gates, valset, store=torch.device("cpu"))
    for layer in (0, 3):
        open_keys = {k for k in gates.keys if k[0] != layer}
        assert torch.equal(here(open_keys, layer, "on"), offloaded(open_keys, layer, "on"))


def test_the_memory_plan_refuses_before_any_weight_is_loaded(
    tmp_path, adapter, data_file, monkeypatch
):
    from fanlora.score import run

    def no_load(*args, **kwargs):
        raise AssertionError("weights were loaded before the memory plan refused")

    monkeypatch.setattr(run, "free_bytes", lambda device: (10**6, 10**6))  # 1 MB free
    monkeypatch.setattr(run, "load_model", no_load)
    cfg = ScoreConfig(adapter=adapter, data=data_file, val_examples=8, batch_size=4)
    with pytest.raises(FanLoRAError, match="layer-input cache"):
        score(cfg, tmp_path / "s.json", log=lambda _: None)
    assert not list(tmp_path.iterdir())


def scaled_adapter(adapter, folder, factor):
    """A copy of ``adapter`` with every LoRA B matrix times ``factor``."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(adapter, folder)
    path = folder / "adapter_model.safetensors"
    weights = load_file(path)
    save_file({k: v * factor if "lora_B" in k else v for k, v in weights.items()}, path)
    return str(folder)


def test_first_order_ab_matches_exact_ab_where_the_loss_is_near_linear(
    tmp_path, adapter, data_file
):
    """With small LoRA paths the loss is near linear in each gate, so V1 = dS/dg|1 +
    dS/dg|0 approaches eq. 3's V; a module whose B is zero scores exactly 0."""
    small = scaled_adapter(adapter, tmp_path / "small", 0.03)
    exact = by_key(run_score(tmp_path, small, data_file, "ab.json"))
    first = by_key(run_score(tmp_path, small, data_file, "v1.json", method="first-order"))
    assert first.keys() == exact.keys() and len(first) == 28
    assert first[(1, "v")]["score"] == 0.0 and first[(1, "v")]["ds_dg_none"] == 0.0
    top = max(abs(r["score"]) for r in exact.values())
    assert top > 1e-4
    assert max(abs(first[k]["score"] - exact[k]["score"]) for k in exact) < 0.1 * top
    for k, r in first.items():  # each term approximates its own difference of eq. 3
        assert r["ds_dg_all"] == pytest.approx(
            exact[k]["s_all"] - exact[k]["s_without"], abs=0.1 * top
        )
        assert r["ds_dg_none"] == pytest.approx(
            exact[k]["s_only"] - exact[k]["s_none"], abs=0.1 * top
        )


def test_first_order_ab_refuses_the_accuracy_metric(tmp_path, adapter, data_file):
    with pytest.raises(FanLoRAError, match="scores the loss metric only"):
        run_score(tmp_path, adapter, data_file, method="first-order", metric="accuracy")


def test_refined_first_order_recomputes_exactly_the_uncertain_modules(tmp_path, adapter, data_file):
    """--refine: the modules near their layer's K_max boundary or near 0 get eq. 3's exact
    score (equal to `ab`'s), the others keep V1; a margin covering everything gives the
    exact scores of every module, a margin of 0 refines none but exact ties."""
    from fanlora.score.first_order import uncertain

    exact = by_key(run_score(tmp_path, adapter, data_file, "ab.json"))
    first_doc = run_score(tmp_path, adapter, data_file, "v1.json", method="first-order")
    first = by_key(first_doc)
    refined = run_score(
        tmp_path,
        adapter,
        data_file,
        "r.json",
        method="first-order",
        refine=True,
        k_max=2,
        refine_margin=0.25,
    )
    assert refined["method"] == "first-order-refined"
    # only the refined run builds the fast evaluator, and pays its captures
    assert first_doc["compute"]["capture_seconds"] is None
    assert refined["compute"]["capture_seconds"] > 0
    picked = uncertain({k: r["score"] for k, r in first.items()}, 2, 0.25)
    assert 0 < len(picked) < 28 and refined["refined_modules"] == len(picked)
    for key, r in by_key(refined).items():
        if key in picked:
            assert r["refined"] and r["score"] == pytest.approx(exact[key]["score"], abs=1e-6)
            assert r["first_order"] == pytest.approx(first[key]["score"], abs=1e-6)
        else:
            assert "refined" not in r and r["score"] == pytest.approx(first[key]["score"])
    everything = run_score(
        tmp_path,
        adapter,
        data_file,
        "all.json",
        method="first-order",
        refine=True,
        refine_margin=10.0,
    )
    assert everything["refined_modules"] == 28
    got = by_key(everything)
    assert max(abs(got[k]["score"] - exact[k]["score"]) for k in exact) <= 1e-6
    with pytest.raises(FanLoRAError, match="--refine refines first-order scores"):
        run_score(tmp_path, adapter, data_file, refine=True)


def test_uncertain_modules_are_those_near_the_boundary_or_zero():
    from fanlora.score.first_order import uncertain

    scores = {(0, "a"): 1.0, (0, "b"): 0.9, (0, "c"): 0.5, (0, "d"): -0.02, (0, "e"): -1.0}
    # K_max 2: boundary between 0.9 and 0.5 is 0.7; margin 0.25 x 1.0: [0.45, 0.95]. d is
    # near 0 but fourth: no sign of it can bring it into the top 2, so it is not refined
    assert sorted(uncertain(scores, 2, 0.25)) == [(0, "b"), (0, "c")]
    assert uncertain(scores, 2, 0.0) == []
    # layer 1: b is second and near 0 (its sign decides whether it is kept); the boundary
    # (0.1 - 0.5) / 2 = -0.2 is 0.3 from both b and c, outside the margin
    scores = {(1, "a"): 1.0, (1, "b"): 0.1, (1, "c"): -0.5, (1, "d"): -0.9}
    assert uncertain(scores, 2, 0.25) == [(1, "b")]
