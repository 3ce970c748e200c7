"""AB-scoring speed: straightforward vs fast exact vs adaptive, side by side in one run.

SmolLM2-135M with a full-LoRA adapter trained on `instruct`, the same validation batches
for all three. Sampled layers spread evenly over the model; whole-model times are
projected: straightforward = (2 + 2 N) full evaluations; fast = 2 capture passes + the
measured tail time per module, interpolated over layers by depth; adaptive = 2 captures +
the measured race time per sampled layer, scaled to all layers.

    python bench/score.py --adapter runs/smollm2-full-lora --out bench/results/score.json
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time

import torch

from fanlora.score import ab
from fanlora.score.adaptive import adaptive_scores
from fanlora.score.evaluator import full_eval, score_of
from fanlora.score.journal import Journal
from fanlora.score.run import ScoreConfig, build_and_gate
from fanlora.select import ScoreRecord, top_modules
from fanlora.utils.io import atomic_write_json
from fanlora.utils.versions import versions


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--val-examples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 7, 15, 22, 29])
    parser.add_argument("--out", default="bench/results/score.json")
    parser.add_argument("--goal-fast", type=float, default=2.0, help="fast vs straightforward")
    parser.add_argument(
        "--goal-adaptive", type=float, default=8.0, help="adaptive vs straightforward"
    )
    args = parser.parse_args()
    cfg = ScoreConfig(
        model=args.model,
        adapter=args.adapter,
        val_examples=args.val_examples,
        batch_size=args.batch_size,
        max_length=args.max_length,
    )
    model, gates, valset = build_and_gate(cfg)
    layout, kinds = gates.layout, list(gates.layout.kinds)
    num_layers, every = layout.num_layers, set(gates.keys)
    # one module per sampled layer for the two exact methods (kinds rotate)
    sample = [(layer, kinds[i % len(kinds)]) for i, layer in enumerate(args.layers)]

    # straightforward: two full evaluations per module
    gates.all_open()
    full_eval(model, valset)  # warm-up
    plain, t_plain = {}, []
    for key in sample:
        (w, o), t = timed(
            lambda k=key: (
                ab.straightforward(model, gates, valset)(every - {k}, 0, "on"),
                ab.straightforward(model, gates, valset)({k}, 0, "off"),
            )
        )
        plain[key], _ = (w, o), t_plain.append(t)
    t_full = statistics.median(t_plain) / 2

    # fast exact: capture twice, then a tail per module
    fast_eval, t_capture = timed(lambda: ab.fast(model, gates, valset))
    fast, t_fast = {}, {}
    for key in sample:
        (w, o), t = timed(
            lambda k=key: (fast_eval(every - {k}, k[0], "on"), fast_eval({k}, k[0], "off"))
        )
        fast[key], t_fast[key[0]] = (w, o), t
    # exactness on the scores themselves: V from each method's own S_all and S_null
    gates.set_open(())
    plain_none = score_of(full_eval(model, valset), valset, "loss")
    gates.all_open()
    plain_all = score_of(full_eval(model, valset), valset, "loss")
    fast_all = score_of(fast_eval(every, num_layers - 1, "on"), valset, "loss")
    fast_none = score_of(fast_eval(set(), num_layers - 1, "off"), valset, "loss")

    def v_of(pair, s_all, s_none):
        return (
            s_all - score_of(pair[0], valset, "loss") + score_of(pair[1], valset, "loss") - s_none
        )

    max_diff = max(
        abs(v_of(plain[k], plain_all, plain_none) - v_of(fast[k], fast_all, fast_none))
        for k in sample
    )

    # per-layer tail cost grows with depth (L - l): fit t = a + b (L - l) on the samples
    xs = [num_layers - k[0] for k in sample]
    ys = [t_fast[k[0]] for k in sample]
    b = statistics.covariance(xs, ys) / statistics.variance(xs)
    a = statistics.mean(ys) - b * statistics.mean(xs)
    n_kinds = len(kinds)
    projected = {
        "straightforward": (2 + 2 * num_layers * n_kinds) * t_full,
        "fast": t_capture + n_kinds * sum(a + b * (num_layers - i) for i in range(num_layers)),
    }

    # adaptive: race the sampled layers (all kinds) with a throwaway journal
    with tempfile.TemporaryDirectory() as tmp:
        journal = Journal(tmp, {"bench": True})
        records, t_adaptive = timed(
            lambda: adaptive_scores(fast_eval, gates, valset, journal, 2, layers=list(args.layers))
        )
        exact_records = []
        for layer in args.layers:  # exact scores of every kind in the sampled layers
            for kind in kinds:
                key = (layer, kind)
                w = score_of(fast_eval(every - {key}, layer, "on"), valset, "loss")
                o = score_of(fast_eval({key}, layer, "off"), valset, "loss")
                exact_records.append((key, w, o))
    exact_scores = [
        ScoreRecord(k[0], k[1], fast_all - w + o - fast_none) for k, w, o in exact_records
    ]
    adaptive = [ScoreRecord(r["layer"], r["module"], r["score"]) for r in records]
    kept_exact = top_modules(exact_scores, layout, 2)
    kept_adaptive = top_modules(adaptive, layout, 2)
    agree = [set(kept_exact[i]) == set(kept_adaptive[i]) for i in args.layers]
    t_race_per_layer = t_adaptive / len(args.layers)  # reuses the fast evaluator's capture
    projected["adaptive"] = t_capture + t_race_per_layer * num_layers
    spent = [r["sequences_spent"] for r in records]
    record = {
        "benchmark": "score",
        "model": args.model,
        "adapter": args.adapter,
        "validation": {
            "examples": args.val_examples,
            "sequences": valset.num_sequences,
            "batches": len(valset.batches),
            "max_length": args.max_length,
        },
        "sampled_layers": args.layers,
        "sampled_modules": [list(k) for k in sample],
        "seconds": {
            "full_eval": t_full,
            "capture_two_passes": t_capture,
            "fast_tail_per_sampled_module": {str(k): v for k, v in t_fast.items()},
            "adaptive_sampled_layers": t_adaptive,
        },
        "projected_whole_model_s": projected,
        "speedup_vs_straightforward": {
            k: projected["straightforward"] / v for k, v in projected.items()
        },
        "fast_max_abs_diff_vs_straightforward": max_diff,
        "adaptive": {
            "setting_agreement_sampled_layers": sum(agree) / len(agree),
            "sequences_spent_per_module": {
                "median": statistics.median(spent),
                "min": min(spent),
                "max": max(spent),
                "of": valset.num_sequences,
            },
        },
        "goals": {
            f"fast >= {args.goal_fast}x": projected["straightforward"] / projected["fast"]
            >= args.goal_fast,
            f"adaptive >= {args.goal_adaptive}x": projected["straightforward"]
            / projected["adaptive"]
            >= args.goal_adaptive,
            "fast exact (<= 1e-4)": max_diff <= 1e-4,
        },
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "versions": versions(),
    }
    atomic_write_json(args.out, record)
    for k, v in projected.items():
        print(
            f"{k:<16} projected {v / 60:7.1f} min  "
            f"speed-up {projected['straightforward'] / v:5.2f}x"
        )
    print(
        f"fast max |diff| {max_diff:.2e}; adaptive agreement {sum(agree)}/{len(agree)} layers; "
        f"sequences spent median {statistics.median(spent)} of {valset.num_sequences}"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
