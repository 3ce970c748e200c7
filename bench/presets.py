"""The real presets side by side: load time and peak memory, training tokens/s of the
engine against a bare PEFT loop in fp32 and bf16 autocast, scoring time for every module
(exact fast AB and first order), and decoding tokens/s of the base model, a FanLoRA adapter
(2 modules per layer: v and down) and all-module LoRA, unmerged through PEFT.

Each preset runs in its own child process, so its peak resident memory is its own. Train
steps alternate bare and engine after a warm-up; fp32 runs before bf16, since accelerate's
autocast state is process-wide and the last Accelerator made sets it.

    python bench/presets.py --out bench/results/presets.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from fanlora.data.formatting import collate, encode_all
from fanlora.data.registry import load_sample
from fanlora.models import load_model
from fanlora.models.losses import labelled_logits
from fanlora.modules import discover_layout
from fanlora.score.run import ScoreConfig, score
from fanlora.select import FanLoRASetting
from fanlora.serve.bench import Backbone, bench_decode
from fanlora.train import TrainConfig, build_peft_config
from fanlora.train.engine import Batches, Trainer
from fanlora.train.outputs import RunFolder
from fanlora.utils.devices import cpu_has_native_bf16
from fanlora.utils.io import atomic_write_json
from fanlora.utils.versions import versions
from train_step import bare_step, engine_step, p90

PRESETS = ["smollm2-135m", "qwen2.5-0.5b", "gemma3-270m"]
PARTS = ["train", "score", "decode"]  # loading is always measured


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def load_times(name: str, repeats: int = 3) -> dict:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        load_model(name)
        times.append(time.perf_counter() - started)
    return {"load_s_median": statistics.median(times), "load_s": times, "load_peak_gib": peak_gib()}


def train_speed(name: str, rows: list, precision: str, steps: int, tmp: str) -> dict:
    """Median seconds per step, bare PEFT vs the engine, full LoRA rank 12."""
    cfg = TrainConfig(model=name, method="full-lora", rank=12, dropout=0.0, precision=precision)
    cfg = TrainConfig(**{**cfg.to_dict(), "micro_batch_size": len(rows)})
    base, tok = load_model(name)
    layout = discover_layout(base)
    bare = get_peft_model(base, build_peft_config(cfg, layout, steps, None))
    optimizer = torch.optim.AdamW([p for p in bare.parameters() if p.requires_grad], lr=1e-4)
    data = Batches(rows, rows[:2], len(rows), steps_per_epoch=1, total_steps=steps, dropped=0)
    trainer = Trainer(cfg, RunFolder(f"{tmp}/{precision}"), log=lambda _: None)
    trainer.setup(load_model(name)[0], tok, build_peft_config(cfg, layout, steps, None), data)
    batch = collate(rows, tok.pad_token_id)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    times = {"bare": [], "engine": []}
    for step in range(steps + 1):  # step 0 warms up and is not counted
        for variant in ("bare", "engine") if step % 2 else ("engine", "bare"):
            started = time.perf_counter()
            if variant == "bare":
                with autocast:
                    bare_step(bare, optimizer, batch)
            else:
                engine_step(trainer, list(range(len(rows))), labelled_logits)
            if step:
                times[variant].append(time.perf_counter() - started)
    tokens = sum(len(r["input_ids"]) for r in rows)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "precision": precision,
        "tokens_per_step": tokens,
        "median_s": med,
        "p90_s": {k: p90(v) for k, v in times.items()},
        "tokens_per_s": {k: tokens / v for k, v in med.items()},
        "engine_over_bare": med["engine"] / med["bare"],
        "trainable_params": trainer.trainable,
    }


def scoring_times(name: str, folder: Path, data: str, examples: int, max_length: int) -> dict:
    """Exact fast AB and first order on every module of a random full-LoRA adapter, on
    ``examples`` dev rows of ``data`` (BoolQ by default: every row keeps its answer at 256
    tokens, where most ShareGPT dialogues do not), in batches of 4."""
    base, _ = load_model(name)
    layout = discover_layout(base)
    torch.manual_seed(0)
    lora = LoraConfig(r=12, target_modules=layout.all_names(), init_lora_weights=False)
    model = get_peft_model(base, lora)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "lora_B" in pname:
                p.mul_(0.01)
    model.save_pretrained(folder / "adapter")
    out = {"modules": len(layout.all_names()), "data": data, "val_examples": examples}
    out["max_length"] = max_length
    for method in ("ab", "first-order"):
        options = dict(method=method, val_examples=examples, batch_size=4)
        options |= dict(max_length=max_length, precision="auto")
        cfg = ScoreConfig(model=name, adapter=str(folder / "adapter"), data=data, **options)
        started = time.perf_counter()
        doc = score(cfg, folder / f"{method}.json", log=lambda _: None)
        out[f"{method}_s"] = time.perf_counter() - started
        out[f"{method}_scores"] = len(doc["scores"])
    out["ab_over_first_order"] = out["ab_s"] / out["first-order_s"]
    return out


def decode_speed(name: str, runs: int) -> dict:
    layout = discover_layout(load_model(name)[0])
    setting = FanLoRASetting(name, 2, layout, [["v", "down"]] * layout.num_layers)
    doc = bench_decode(Backbone(name), setting, ["fanlora", "lora"], 12, [1], runs, 32, 128)
    return {r["variant"]: r["tokens_per_s_median"] for r in doc["rows"]} | {
        "rows": doc["rows"],
        "physical": doc["physical"],
    }


def one_preset(args) -> dict:
    name = args.preset
    torch.set_num_threads(max(1, torch.get_num_threads()))
    result = {"preset": name, **load_times(name)}
    _, tok = load_model(name)
    examples = load_sample(args.train_data, "train", args.batch, seed=0)
    rows, _ = encode_all(tok, examples, args.max_length)
    precisions = ["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"]
    with tempfile.TemporaryDirectory() as tmp:
        if "train" in args.parts:
            result["train"] = [train_speed(name, rows, p, args.steps, tmp) for p in precisions]
        if "score" in args.parts:
            result["score"] = scoring_times(
                name, Path(tmp), args.score_data, args.val_examples, args.score_length
            )
    if "decode" in args.parts:
        result["decode"] = decode_speed(name, args.decode_runs)
    result["peak_gib"] = peak_gib()  # the child's whole run: loads, two copies training
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=PRESETS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)  # the child's own preset
    parser.add_argument("--parts", nargs="+", default=PARTS, choices=PARTS)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--train-data", default="boolq")  # rows that fill --max-length
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--score-data", default="boolq")
    parser.add_argument("--val-examples", type=int, default=8)
    parser.add_argument("--score-length", type=int, default=256)
    parser.add_argument("--decode-runs", type=int, default=3)
    parser.add_argument("--out", default="bench/results/presets.json")
    args = parser.parse_args()
    if args.preset:
        print(json.dumps(one_preset(args)))
        return
    results = []
    for name in args.presets:
        command = [sys.executable, __file__, *sys.argv[1:], "--preset", name]
        proc = subprocess.run(command, capture_output=True, text=True, check=False)
        if proc.returncode:
            sys.exit(f"{name}: {proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(summary(results[-1]), flush=True)
    record = {
        "benchmark": "presets",
        "command": " ".join(["python", "bench/presets.py", *sys.argv[1:]]),
        "train_data": args.train_data,
        "batch": args.batch,
        "max_length": args.max_length,
        "threads": torch.get_num_threads(),
        "native_bf16": cpu_has_native_bf16(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "versions": versions(),
        "results": results,
    }
    atomic_write_json(args.out, record)
    print(f"wrote {args.out}")


def summary(r: dict) -> str:
    parts = [f"{r['preset']}: load {r['load_s_median']:.1f} s, peak {r['peak_gib']:.1f} GiB"]
    parts += [
        f"{t['precision']} {t['tokens_per_step']} tokens/step: engine "
        f"{t['tokens_per_s']['engine']:.0f} tok/s, bare {t['tokens_per_s']['bare']:.0f} "
        f"({t['engine_over_bare']:.2f}x time)"
        for t in r.get("train", [])
    ]
    if s := r.get("score"):
        parts.append(
            f"scoring {s['modules']} modules: AB {s['ab_s']:.0f} s, first order "
            f"{s['first-order_s']:.0f} s"
        )
    if d := r.get("decode"):
        parts.append(
            f"decode base {d['base']:.1f}, FanLoRA {d['fanlora']:.1f}, LoRA {d['lora']:.1f} tok/s"
        )
    return "; ".join(parts)


if __name__ == "__main__":
    main()
