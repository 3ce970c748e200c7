"""fanlora on a GPU: random-weight LLaMA models of real shapes, built from config.

No download: each shape is built from its config with random weights in bf16 and saved
to a temporary folder with fanlora's byte-level test tokenizer (the vocabulary of the
shape is kept, so the embedding and the head cost what they cost). Three measurements:

1. train: tokens/s of fanlora's engine against a bare PEFT loop, LoRA rank 12 on every
   module, bf16 weights, bf16 autocast, micro-batches of 4 x 256 tokens, steps interleaved.
   Goal: the engine's step within 5% of bare PEFT's.
2. score: exact fast AB-scores of every module on 64 x 256 validation tokens: wall time and
   ``torch.cuda.max_memory_allocated``. Goal: the 7B shape's 224 modules in under 10 minutes.
3. decode: the paper's table 3 protocol (batch 1, beam 1 and 3, a 276-token prompt, 32 new
   tokens, adapters unmerged) for base, FanLoRA, LoRA, AdaLoRA and (IA)3, with peak memory;
   the paper's 7B figures at beam 1 are FanLoRA 31.8 and AdaLoRA 25.1 tokens/s.

    python bench/gpu.py --shapes 1b 7b --out bench/results/gpu.json
    python bench/gpu.py --shapes tiny --device cpu --out /tmp/gpu-tiny.json  # a CPU dry run
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig

from fanlora.data.formatting import collate
from fanlora.models.tiny import make_byte_tokenizer
from fanlora.modules import discover_layout
from fanlora.modules.discovery import layout_from_config
from fanlora.score.run import ScoreConfig, score
from fanlora.select import FanLoRASetting
from fanlora.serve.bench import Backbone, bench_decode
from fanlora.train import TrainConfig, build_peft_config
from fanlora.train.engine import Batches, Trainer
from fanlora.train.methods import random_setting
from fanlora.train.outputs import RunFolder
from fanlora.utils.devices import PRECISION_CHOICES, Runtime
from fanlora.utils.io import atomic_write_json
from fanlora.utils.versions import versions

# LLaMA shapes: 1B is Llama-3.2-1B's, 7B is LLaMA-2-7B's (the paper's model)
SHAPES = {
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
    ),
    "1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=True,
    ),
    "7b": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
    ),
}
PAPER_7B_BEAM1 = {"fanlora": 31.8, "adalora": 25.1}
WORDS = [
    "the",
    "model",
    "reads",
    "every",
    "weight",
    "once",
    "per",
    "token",
    "so",
    "adapters",
    "cost",
    "time",
]


def build_folder(shape: str, folder: Path, runtime: Runtime) -> str:
    """A random-weight LLaMA of ``shape`` in bf16, saved with the byte-level tokenizer."""
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=1024)
    with torch.device(runtime.device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    make_byte_tokenizer().save_pretrained(folder)
    del model
    return str(folder)


def synthetic_rows(n: int, length: int, vocab: int, seed: int = 0) -> list[dict]:
    """Rows of ``length`` random tokens, the loss on their second half."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        ids = torch.randint(4, vocab, (length,), generator=gen).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * (length // 2) + ids[length // 2 :]})
    return rows


def bench_train(model: str, runtime: Runtime, steps: int, vocab: int) -> dict:
    """Engine step against a bare PEFT loop on the same micro-batch, interleaved."""
    cfg = TrainConfig(
        model=model,
        method="full-lora",
        rank=12,
        dropout=0.0,
        micro_batch_size=4,
        dtype="bfloat16",
        precision=runtime.precision,
        device=str(runtime.device),
    )
    rows = synthetic_rows(4, 256, vocab)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, RunFolder(Path(tmp) / "run"), log=lambda _: None)
        base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16)
        layout = discover_layout(base)
        data = Batches(rows, rows, 4, steps_per_epoch=1, total_steps=10**6, dropped=0)
        trainer.setup(
            base, make_byte_tokenizer(), build_peft_config(cfg, layout, 10**6, None), data
        )
        bare_base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16)
        bare = get_peft_model(bare_base, build_peft_config(cfg, layout, 10**6, None))
        bare.to(runtime.device)
        optimizer = torch.optim.AdamW([p for p in bare.parameters() if p.requires_grad], lr=1e-4)
        batch = runtime.place(collate(rows, 0))

        def bare_step() -> None:
            with runtime.autocast():
                loss = bare(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(bare.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        times: dict[str, list[float]] = {"bare": [], "engine": []}
        for step in range(steps + 1):  # step 0 warms both up
            for name in ("bare", "engine") if step % 2 == 0 else ("engine", "bare"):
                synchronize(runtime)
                started = time.perf_counter()
                bare_step() if name == "bare" else trainer.train_step(list(range(4)))
                synchronize(runtime)
                if step:
                    times[name].append(time.perf_counter() - started)
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = 4 * 256
    return {
        "tokens_per_step": tokens,
        "median_s": med,
        "tokens_per_s": {k: tokens / v for k, v in med.items()},
        "engine_over_bare": med["engine"] / med["bare"],
        "goal_met": med["engine"] / med["bare"] <= 1.05,
    }


def bench_score(model: str, runtime: Runtime, tmp: Path, examples: int) -> dict:
    """Exact fast AB-scores of every module on ``examples`` x 256 validation tokens."""
    base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16)
    layout = discover_layout(base)
    config = LoraConfig(r=12, lora_alpha=24, target_modules=layout.all_names())
    peft_model = get_peft_model(base, config)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.01)  # a trained-looking adapter, not zeros
    peft_model.save_pretrained(tmp / "adapter")
    del peft_model, base
    words = " ".join(WORDS * 40)
    rows = [
        {"instruction": f"{i} {words}", "output": words[:64], "split": "dev"}
        for i in range(examples)
    ]
    data = tmp / "val.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = ScoreConfig(
        model=model,
        adapter=str(tmp / "adapter"),
        data=str(data),
        val_examples=examples,
        max_length=256,
        batch_size=8,
        dtype="bfloat16",
        device=str(runtime.device),
        precision=runtime.precision,
    )
    if runtime.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    doc = score(cfg, tmp / "scores.json")
    wall = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() if runtime.device.type == "cuda" else None
    return {
        "modules": len(doc["scores"]),
        "validation_tokens": examples * 256,
        "wall_s": wall,
        "peak_bytes": peak,
        "goal_met": wall < 600,
    }


def bench_table3(model: str, runtime: Runtime, runs: int) -> dict:
    """The paper's table 3 protocol, through ``fanlora bench decode``'s code."""
    layout = layout_from_config(LlamaConfig.from_pretrained(model))
    two = FanLoRASetting(model, 2, layout, [list(layout.kinds)[:2]] * layout.num_layers)
    body = bench_decode(
        Backbone(model, "bfloat16", str(runtime.device)),
        random_setting(two, seed=0),
        ["fanlora", "lora", "adalora", "ia3"],
        12,
        [1, 3],
        runs,
        32,
        276,
    )
    return {"rows": body["rows"], "paper_7b_beam1_tokens_per_s": PAPER_7B_BEAM1}


def synchronize(runtime: Runtime) -> None:
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["1b", "7b"], choices=SHAPES)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="bf16", choices=PRECISION_CHOICES)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--val-examples", type=int, default=64)
    parser.add_argument("--decode-runs", type=int, default=3)
    parser.add_argument("--skip", nargs="*", default=[], choices=("train", "score", "decode"))
    parser.add_argument("--out", default="bench/results/gpu.json")
    args = parser.parse_args()
    runtime = Runtime.of(args.device, args.precision)
    record = {
        "benchmark": "gpu",
        "device": runtime.describe(),
        "machine": platform.machine(),
        "versions": versions(),
        "shapes": {},
    }
    for shape in args.shapes:
        with tempfile.TemporaryDirectory() as tmp:
            model = build_folder(shape, Path(tmp) / "model", runtime)
            result: dict = {"config": SHAPES[shape]}
            vocab = SHAPES[shape]["vocab_size"]
            if "train" not in args.skip:
                result["train"] = bench_train(model, runtime, args.train_steps, vocab)
                print(shape, "train", result["train"]["tokens_per_s"], flush=True)
            if "score" not in args.skip:
                result["score"] = bench_score(model, runtime, Path(tmp), args.val_examples)
                print(shape, "score", result["score"], flush=True)
            if "decode" not in args.skip:
                result["decode"] = bench_table3(model, runtime, args.decode_runs)
            record["shapes"][shape] = result
            atomic_write_json(args.out, record)  # what is done so far survives a crash
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
