"""Train-step time: fanlora's engine against a bare PEFT + torch loop, side by side.

All run the same micro-batch of the `instruct` train split on SmolLM2-135M (fp32, CPU),
for full LoRA (all 210 modules) and a 2-per-layer setting (v and down in every layer), at
rank 12: the bare loop (``model(**batch).loss``, logits at every position), the engine with
logits at every position (its overhead; goal: at most 5% over bare) and the engine as it
runs (logits only where a label is scored, :func:`fanlora.models.losses.labelled_logits`).
Steps rotate the order of the variants so that machine noise hits all alike; we report the
median and p90 per variant and the ratios of medians.

    python bench/train_step.py --steps 6 --max-length 256 --out bench/results/train_step.json
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from fanlora.data.formatting import collate, encode_all
from fanlora.data.registry import load_sample
from fanlora.models import load_model
from fanlora.models.losses import labelled_logits
from fanlora.modules import discover_layout
from fanlora.select import FanLoRASetting
from fanlora.train import TrainConfig, build_peft_config, engine
from fanlora.train.engine import Batches, Trainer
from fanlora.train.outputs import RunFolder
from fanlora.utils.io import atomic_write_json
from fanlora.utils.versions import versions


def bare_step(model, optimizer, batch) -> float:
    """The plain loop a user would write: forward, backward, clip, step."""
    model.train()
    loss = model(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def p90(values):
    return sorted(values)[max(0, round(0.9 * len(values)) - 1)]


def all_logits(model, base, batch):
    """The engine's logits before :func:`labelled_logits`: every position."""
    keep = torch.arange(batch["labels"].shape[1] - 1)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    return model(**inputs).logits[:, :-1], keep


def engine_step(trainer, indices, logits) -> None:
    """One engine step with ``logits`` as the engine's logit function."""
    original = engine.labelled_logits
    engine.labelled_logits = logits
    try:
        trainer.train_step(indices)
    finally:
        engine.labelled_logits = original
    trainer.state.step += 1


def run_pair(name, cfg, setting, rows, steps, tmp) -> dict:
    base_a, tok = load_model(cfg.model)
    base_b, _ = load_model(cfg.model)
    base_c, _ = load_model(cfg.model)
    layout = discover_layout(base_a)
    peft_config = build_peft_config(cfg, layout, steps, setting)
    from peft import get_peft_model

    torch.manual_seed(0)
    bare = get_peft_model(base_a, peft_config)
    optimizer = torch.optim.AdamW([p for p in bare.parameters() if p.requires_grad], lr=1e-4)
    data = Batches(
        rows, rows[:4], batch_size=len(rows), steps_per_epoch=1, total_steps=steps, dropped=0
    )
    trainers = {}
    for variant, base in (("engine", base_b), ("engine, all logits", base_c)):
        trainers[variant] = Trainer(cfg, RunFolder(f"{tmp}-{len(trainers)}"), log=lambda _: None)
        trainers[variant].setup(base, tok, build_peft_config(cfg, layout, steps, setting), data)
    indices = list(range(len(rows)))
    batch = collate(rows, tok.pad_token_id)
    order = ["bare", "engine, all logits", "engine"]
    times = {v: [] for v in order}
    for step in range(steps + 1):  # step 0 warms every variant up and is not counted
        for variant in order[step % 3 :] + order[: step % 3]:
            started = time.perf_counter()
            if variant == "bare":
                bare_step(bare, optimizer, batch)
            else:
                logits = all_logits if variant == "engine, all logits" else labelled_logits
                engine_step(trainers[variant], indices, logits)
            if step > 0:
                times[variant].append(time.perf_counter() - started)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "config": name,
        "trainable_params": trainers["engine"].trainable,
        "steps": steps,
        "median_s": med,
        "p90_s": {k: p90(v) for k, v in times.items()},
        "times_s": times,
        "engine_all_logits_over_bare": med["engine, all logits"] / med["bare"],
        "engine_over_bare": med["engine"] / med["bare"],
        "labelled_logits_speedup": med["engine, all logits"] / med["engine"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--out", default="bench/results/train_step.json")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    _, tok = load_model(args.model)
    examples = load_sample("instruct", "train", args.batch, seed=0)
    rows, _ = encode_all(tok, examples, args.max_length)
    cfg = TrainConfig(
        model=args.model, method="full-lora", rank=12, dropout=0.0, micro_batch_size=args.batch
    )
    results = [run_pair("full-lora (210 modules)", cfg, None, rows, args.steps, "/tmp/bench-a")]
    layout = discover_layout(load_model(args.model)[0])
    setting = FanLoRASetting(args.model, 2, layout, [["v", "down"]] * layout.num_layers)
    setting_path = str(setting.save("/tmp/bench-b-setting.json"))
    cfg2 = TrainConfig(**{**cfg.to_dict(), "method": "fanlora", "setting": setting_path})
    results.append(
        run_pair(
            "2 per layer (v, down; 60 modules)", cfg2, setting, rows, args.steps, "/tmp/bench-b"
        )
    )
    record = {
        "benchmark": "train_step",
        "model": args.model,
        "batch": args.batch,
        "tokens_per_step": sum(len(r["input_ids"]) for r in rows),
        "max_length": args.max_length,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "versions": versions(),
        "results": results,
        "goal": "the engine adds at most 5% to the same work (engine_all_logits_over_bare <= 1.05)",
        "goal_met": all(r["engine_all_logits_over_bare"] <= 1.05 for r in results),
    }
    atomic_write_json(args.out, record)
    for r in results:
        m = r["median_s"]
        print(
            f"{r['config']:<36} bare {m['bare']:.3f}s, engine all logits "
            f"{m['engine, all logits']:.3f}s ({r['engine_all_logits_over_bare']:.3f}x), engine "
            f"{m['engine']:.3f}s: labelled logits {r['labelled_logits_speedup']:.2f}x faster"
        )
    print(f"goal met: {record['goal_met']}; wrote {args.out}")


if __name__ == "__main__":
    main()
