"""Train-step time: fanlora's engine against a bare PEFT + torch loop, side by side.

Both run the same micro-batches of the `instruct` train split on SmolLM2-135M (fp32, CPU),
for full LoRA (all 210 modules) and a 2-per-layer setting (v and down in every layer), at
rank 12. Steps alternate between the two so that machine noise hits both alike; we report
the median and p90 per variant and the ratio of medians.

    python bench/train_step.py --steps 6 --out bench/results/train_step.json
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
from fanlora.modules import discover_layout
from fanlora.select import FanLoRASetting
from fanlora.train import TrainConfig, build_peft_config
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


def run_pair(name, cfg, setting, rows, steps, tmp) -> dict:
    base_a, tok = load_model(cfg.model)
    base_b, _ = load_model(cfg.model)
    layout = discover_layout(base_a)
    peft_config = build_peft_config(cfg, layout, steps, setting)
    from peft import get_peft_model

    torch.manual_seed(0)
    bare = get_peft_model(base_a, peft_config)
    optimizer = torch.optim.AdamW([p for p in bare.parameters() if p.requires_grad], lr=1e-4)
    data = Batches(
        rows, rows[:4], batch_size=len(rows), steps_per_epoch=1, total_steps=steps, dropped=0
    )
    trainer = Trainer(cfg, RunFolder(tmp), log=lambda _: None)
    trainer.setup(base_b, tok, build_peft_config(cfg, layout, steps, setting), data)
    indices = list(range(len(rows)))
    batch = collate(rows, tok.pad_token_id)
    times = {"bare": [], "engine": []}
    for step in range(steps + 1):  # step 0 warms both up and is not counted
        for variant in ("bare", "engine") if step % 2 == 0 else ("engine", "bare"):
            started = time.perf_counter()
            if variant == "bare":
                bare_step(bare, optimizer, batch)
            else:
                trainer.train_step(indices)
                trainer.state.step += 1
            if step > 0:
                times[variant].append(time.perf_counter() - started)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "config": name,
        "trainable_params": trainer.trainable,
        "steps": steps,
        "median_s": med,
        "p90_s": {k: p90(v) for k, v in times.items()},
        "times_s": times,
        "engine_over_bare": med["engine"] / med["bare"],
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
        "goal": "engine adds at most 5% (engine_over_bare <= 1.05)",
        "goal_met": all(r["engine_over_bare"] <= 1.05 for r in results),
    }
    atomic_write_json(args.out, record)
    for r in results:
        print(
            f"{r['config']:<36} bare {r['median_s']['bare']:.3f}s  engine "
            f"{r['median_s']['engine']:.3f}s  ratio {r['engine_over_bare']:.3f}"
        )
    print(f"goal met: {record['goal_met']}; wrote {args.out}")


if __name__ == "__main__":
    main()
