"""Golden values: numbers of the tiny preset under fixed seeds, pinned so that a silent
numerical drift fails (the invariant tests elsewhere, such as resume == uninterrupted and
fast == straightforward, pass under a drift that keeps the invariants).

The values were produced by this code on torch 2.13 (CPU, fp32, an AVX2 host) and are
compared with a relative tolerance of 1e-4 (the AB-scores, differences of losses, with an
absolute one: see below). A change that alters them on purpose (a fix to training or
scoring) updates them here and bumps RESULTS_VERSION (fanlora/pipeline/stages.py).
"""

import json

import pytest

from fanlora.score.run import ScoreConfig, score
from fanlora.train import TrainConfig
from fanlora.train.run import train
from test_score import WORDS, make_adapter

TRAIN_LOSSES = {
    "full-lora": [5.546156, 5.581001, 5.503722, 5.3124, 5.206259, 5.229755],
    "adalora": [5.546156, 5.581001, 5.608461, 5.514253, 5.480423, 5.547952],
}
DEV_LOSSES = {"full-lora": [5.151236, 5.074121], "adalora": [5.298415, 5.2845]}
ADALORA_PENALTY = 1.681685  # orth_reg_weight 0.5 x R at step 1
AB_SCORES = {  # V of eq. 3 on the scoring tests' adapter and data
    (0, "q"): -0.013962745666503906,
    (0, "down"): 0.02480792999267578,
    (2, "up"): -0.024062633514404297,
    (3, "o"): -0.005718231201171875,
}
S_ALL, S_NONE = -5.5258331298828125, -5.51357889175415


@pytest.fixture(scope="module")
def words(tmp_path_factory):
    path = tmp_path_factory.mktemp("golden") / "w.jsonl"
    rows = [
        {
            "instruction": f"Repeat the word {w}",
            "output": w,
            "split": "dev" if i % 8 == 0 else "train",
        }
        for i, w in enumerate(WORDS * 8)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


@pytest.mark.parametrize("method", ["full-lora", "adalora"])
def test_losses_of_the_tiny_preset_after_six_steps(tmp_path, words, method):
    cfg = TrainConfig(
        data=words,
        method=method,
        rank=4,
        lr=1e-2,
        batch_size=8,
        micro_batch_size=4,
        max_steps=6,
        eval_every=3,
        max_length=64,
        seed=1,
    )
    train(cfg, tmp_path / method, log=lambda _: None)
    lines = [json.loads(x) for x in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    assert [x["loss"] for x in lines] == pytest.approx(TRAIN_LOSSES[method], rel=1e-4)
    dev = [x["dev_loss"] for x in lines if "dev_loss" in x]
    assert dev == pytest.approx(DEV_LOSSES[method], rel=1e-4)
    if method == "adalora":
        assert lines[0]["orth_penalty"] == pytest.approx(ADALORA_PENALTY, rel=1e-4)


def test_ab_scores_of_the_tiny_preset(tmp_path):
    rows = [
        {"instruction": f"Repeat {w} {i}", "output": f"{w} {w}", "split": "dev"}
        for i, w in enumerate(WORDS * 2)
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    adapter = make_adapter(tmp_path / "a", zero=[(1, "v")])
    cfg = ScoreConfig(
        adapter=adapter, data=str(tmp_path / "d.jsonl"), val_examples=16, batch_size=16
    )
    doc = score(cfg, tmp_path / "s.json", log=lambda _: None)
    by = {(r["layer"], r["module"]): r for r in doc["scores"]}
    # V is a sum of four losses near 5.5, so its rounding error is a few float32 ulps of
    # those losses (4.8e-7 each), whatever V's size: an AVX512 host gave (3, "o") 9.5e-7
    # from the AVX2 host's value, 1.7e-4 of V. Hence an absolute tolerance at that scale.
    for key, value in AB_SCORES.items():
        assert by[key]["score"] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    assert by[(0, "q")]["s_all"] == pytest.approx(S_ALL, rel=1e-5)
    assert by[(0, "q")]["s_none"] == pytest.approx(S_NONE, rel=1e-5)
