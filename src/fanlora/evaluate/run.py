"""``evaluate(cfg, out)``: a model (with or without an adapter) on one task's split.

Writes ``OUT/predictions.jsonl`` (one line per example: what the model answered, what was
right, the example's metric values) and then ``OUT/metrics.json`` (the mean of each metric
and where it came from), both atomically, so every reported number traces to its examples.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from fanlora.config import require_positive
from fanlora.data.registry import load_sample, task_max_length, task_metric
from fanlora.evaluate.choice import option_loglik
from fanlora.evaluate.generate import generate, prompt_ids, references_kept
from fanlora.evaluate.metrics import score_generated
from fanlora.models.adapters import adapter_hash, load_with_adapter
from fanlora.models.loading import DTYPE_NAMES
from fanlora.utils.devices import DeviceOptions
from fanlora.utils.io import atomic_write_json, atomic_write_text
from fanlora.utils.versions import versions

METRICS = ("accuracy", "f1_em", "sql_em", "number_acc")
DEFAULT_NEW_TOKENS = {"f1_em": 32, "sql_em": 128, "number_acc": 24}


@dataclass
class EvalConfig(DeviceOptions):
    """Options of ``fanlora eval``."""

    model: str = field(default="tiny-random-llama", metadata={"help": "the base model"})
    adapter: str | None = field(
        default=None, metadata={"help": "PEFT adapter folder (none: the base model)"}
    )
    task: str = field(
        default="boolq", metadata={"help": "dataset name, data file, folder, .yaml spec or Hub id"}
    )
    split: str = field(
        default="test", metadata={"help": "split to evaluate", "choices": ("train", "dev", "test")}
    )
    limit: int | None = field(default=None, metadata={"help": "a seeded draw of N examples"})
    stratified: bool = field(
        default=False,
        metadata={"help": "with --limit: keep each right answer's share of the split"},
    )
    metric: str | None = field(
        default=None, metadata={"help": "default: the task's (A.2)", "choices": METRICS}
    )
    batch_size: int = field(default=8, metadata={"help": "sequences per forward pass"})
    max_length: int | None = field(
        default=None,
        metadata={
            "help": "tokens per sequence (prompt cut in the middle); default: the "
            "task's, chosen so >= 90% of test answers survive (SQuAD 256), else 512"
        },
    )
    max_new_tokens: int | None = field(
        default=None,
        metadata={"help": "generated tokens at most (default: 32 SQuAD, 128 SQL, 24 math)"},
    )
    num_beams: int = field(default=1, metadata={"help": "1: greedy; paper: 3"})
    dtype: str = field(
        default="float32", metadata={"help": "dtype the weights load in", "choices": DTYPE_NAMES}
    )
    seed: int = field(default=0, metadata={"help": "seed of the example draw"})

    def __post_init__(self) -> None:
        self.runtime()  # a device this machine lacks, or fp16 on a CPU, is refused here
        require_positive(self, "batch_size", "num_beams", "limit", "max_new_tokens", "max_length")


def choice_records(examples, loglik, loglik_no_eos) -> list[dict]:
    """Per example: options' log-likelihoods, the chosen index, the label, correctness by
    ``accuracy`` (argmax of log p with eos) and ``acc_norm`` (argmax of log p without eos
    over the option's length in characters, as lm-evaluation-harness)."""
    records = []
    for example, scores, plain in zip(examples, loglik, loglik_no_eos, strict=True):
        chosen = max(range(len(scores)), key=scores.__getitem__)
        normed = [ll / max(len(c), 1) for ll, c in zip(plain, example.choices, strict=True)]
        chosen_norm = max(range(len(normed)), key=normed.__getitem__)
        records.append(
            {
                "uid": example.uid,
                "prediction": example.choices[chosen],
                "chosen": chosen,
                "chosen_norm": chosen_norm,
                "label": example.label,
                "loglik": scores,
                "loglik_no_eos": plain,
                "values": {
                    "accuracy": float(chosen == example.label),
                    "acc_norm": float(chosen_norm == example.label),
                },
            }
        )
    return records


def generated_records(examples, texts, metric: str, kept=None) -> list[dict]:
    """Per example: the answer, the references, the metric values and whether a reference
    survived the prompt's truncation (``reference_in_prompt``, None when none could)."""
    records = []
    kept = kept or [None] * len(examples)
    for example, text, in_prompt in zip(examples, texts, kept, strict=True):
        refs = list(example.references) or [example.response]
        records.append(
            {
                "uid": example.uid,
                "prediction": text,
                "references": refs,
                "reference_in_prompt": in_prompt,
                "values": score_generated(metric, text, refs),
            }
        )
    return records


def answers_in_prompt(records: list[dict]) -> dict | None:
    """Share (percent) of the examples whose prompt held a reference that still hold one
    after truncation; None when no prompt held a reference."""
    flags = [r["reference_in_prompt"] for r in records if r.get("reference_in_prompt") is not None]
    if not flags:
        return None
    return {"share": 100 * sum(flags) / len(flags), "examples": len(flags)}


def summarize(records: list[dict], metric: str) -> dict[str, float]:
    """Mean of each per-example value, in percent; ``metric`` is the headline one."""
    names = records[0]["values"].keys()
    means = {k: 100 * sum(r["values"][k] for r in records) / len(records) for k in names}
    return {"value": means[metric], **means}


def predict(cfg: EvalConfig, model, tokenizer, examples, metric: str, progress=None):
    """Per-example records for ``examples`` under ``metric``."""
    if metric == "accuracy":
        if progress is not None:
            progress.reset(total=sum(len(e.choices) for e in examples))
        loglik, plain = option_loglik(
            model, tokenizer, examples, cfg.max_length, cfg.batch_size, progress
        )
        return choice_records(examples, loglik, plain)

    new = cfg.max_new_tokens or DEFAULT_NEW_TOKENS[metric]
    prompts = prompt_ids(tokenizer, examples, cfg.max_length - new)
    texts = generate(model, tokenizer, prompts, cfg.batch_size, new, cfg.num_beams, progress)
    return generated_records(examples, texts, metric, references_kept(tokenizer, examples, prompts))


def evaluate(
    cfg: EvalConfig,
    out: str | Path,
    log=print,
    model=None,
    tokenizer=None,
    allow_other_model: bool = False,
) -> dict:
    """Evaluate and write ``out``/predictions.jsonl and ``out``/metrics.json; return the
    metrics. ``model``/``tokenizer`` may be passed in to skip loading them again."""
    started = time.time()
    examples = load_sample(cfg.task, cfg.split, cfg.limit, cfg.seed, cfg.stratified)
    if cfg.max_length is None:
        cfg = replace(cfg, max_length=task_max_length(cfg.task))
    metric = cfg.metric or task_metric(cfg.task, examples)
    runtime = cfg.runtime()
    if model is None:
        model, tokenizer = load_with_adapter(cfg.model, cfg.adapter, cfg.dtype, allow_other_model)
    model.to(runtime.device)
    what = f"{cfg.adapter or cfg.model} on {cfg.task}/{cfg.split}"
    with tqdm(total=len(examples), desc=f"eval {cfg.task}", unit="seq") as bar, runtime.autocast():
        records = predict(cfg, model, tokenizer, examples, metric, bar)
    out = Path(out)
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    atomic_write_text(out / "predictions.jsonl", lines)
    doc = {
        "format": "fanlora-eval",
        "task": cfg.task,
        "split": cfg.split,
        "metric": metric,
        **summarize(records, metric),
        "examples": len(records),
        "config": asdict(cfg),
        "answer_in_prompt": answers_in_prompt(records),
        "adapter_sha256": adapter_hash(cfg.adapter) if cfg.adapter else None,
        "runtime": runtime.describe(),
        "predictions": "predictions.jsonl",
        "wall_time_s": time.time() - started,
        "versions": versions(),
    }
    atomic_write_json(out / "metrics.json", doc)
    log(
        f"{what}: {metric} {doc['value']:.2f} over {len(records)} examples "
        f"({doc['wall_time_s']:.1f} s); wrote {out}/metrics.json"
    )
    return doc
