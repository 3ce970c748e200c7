"""``score(cfg)``: load the model and full-LoRA adapter, score every module, write the file."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from fanlora.config import require_positive
from fanlora.data.registry import load_sample
from fanlora.errors import FanLoRAError
from fanlora.models import load_config, load_model, load_tokenizer
from fanlora.models.adapters import adapter_hash, attach_adapter, check_adapter_folder
from fanlora.models.loading import DTYPE_NAMES, DTYPES, parameter_count
from fanlora.modules import discover_layout
from fanlora.score import ab, first_order, sensitivity, shapley  # noqa: F401  (registrations)
from fanlora.score.evaluator import build_valset
from fanlora.score.gates import Gates
from fanlora.score.heatmap import draw_heatmap
from fanlora.score.journal import Journal
from fanlora.score.memory import MemoryPlan, cache_bytes, free_bytes, plan_memory
from fanlora.score.scorer import SCORERS, Context, Scorer, get_scorer
from fanlora.select.scores import ScoreRecord
from fanlora.utils.devices import DeviceOptions, Runtime, process_state
from fanlora.utils.io import atomic_write_json
from fanlora.utils.stopping import Stopped, stop_on_signals

# The layout of the journal's entries; a journal of another layout is another run.
JOURNAL_FORMAT = 2


@dataclass
class ScoreConfig(DeviceOptions):
    """Options of ``fanlora score``."""

    model: str = field(default="tiny-random-llama", metadata={"help": "the base model"})
    adapter: str = field(default="", metadata={"help": "full-LoRA adapter folder (step 1)"})
    data: str = field(default="instruct", metadata={"help": "validation data: dataset or file"})
    split: str = field(default="dev", metadata={"help": "split used as D_val"})
    val_examples: int = field(default=64, metadata={"help": "examples drawn from the split"})
    max_length: int = field(default=256, metadata={"help": "tokens per sequence"})
    batch_size: int = field(default=8, metadata={"help": "sequences per forward pass"})
    method: str = field(
        default="ab", metadata={"help": "scoring method (registered)", "choices": SCORERS}
    )
    metric: str = field(
        default="loss",
        metadata={"help": "S_val: loss or accuracy", "choices": ("loss", "accuracy")},
    )
    mode: str = field(
        default="fast",
        metadata={
            "help": "AB evaluation: fast or straightforward",
            "choices": ("fast", "straightforward"),
        },
    )
    scope: str = field(
        default="model",
        metadata={
            "help": "Shapley: model (Monte Carlo) or layer (exact)",
            "choices": ("model", "layer"),
        },
    )
    budget: int = field(default=4, metadata={"help": "Shapley permutations (scope model)"})
    layers: list[int] = field(
        default_factory=list,
        metadata={"help": "Shapley scope layer: only these layers (default: every layer)"},
    )
    k_max: int = field(default=2, metadata={"help": "K_max (adaptive races, heatmap marks)"})
    adaptive: bool = field(
        default=False,
        metadata={
            "help": "AB-score by racing: stop each module once its place in the setting is settled"
        },
    )
    alpha: float = field(
        default=0.05,
        metadata={
            "help": "adaptive: chance that any module is settled on the wrong side (Bonferroni "
            "over every module and look, Student's t)"
        },
    )
    min_sequences: int = field(
        default=8, metadata={"help": "adaptive: sequences seen before a module may stop"}
    )
    refine: bool = field(
        default=False,
        metadata={
            "help": "first-order: recompute exact (fast) AB-scores of the modules that can "
            "change the setting, those near their layer's K_max-th place or near 0"
        },
    )
    refine_margin: float = field(
        # 0.1: on grid 1's seed-0 step-1 adapter, |first order - exact| was at most 0.066
        # of the layer's largest |score| in 99% of modules (median 0.004, results/README.md)
        default=0.1,
        metadata={
            "help": "refine: a module is recomputed when its first-order score lies within "
            "this share of its layer's largest |score| of the K_max boundary, or of 0 for "
            "the layer's K_max best"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of the example draw and permutations"})
    dtype: str = field(
        default="float32",
        metadata={
            "help": "dtype the weights load in (and the layer cache is held in)",
            "choices": DTYPE_NAMES,
        },
    )
    device_map: str | None = field(
        default=None,
        metadata={"help": "auto: spread a model larger than one GPU over GPUs and CPU memory"},
    )

    def __post_init__(self) -> None:
        self.runtime()  # a device this machine lacks, or fp16 on a CPU, is refused here
        if self.device_map not in (None, "auto"):
            raise FanLoRAError(f"--device-map takes auto only, got {self.device_map!r}")
        scorer = get_scorer(self.method)  # an unknown name is an error listing the registered
        if self.metric not in scorer.metrics:
            raise FanLoRAError(
                f"--method {self.method} scores the {' or '.join(scorer.metrics)} metric only"
            )
        if self.method == "shapley" and self.scope == "model" and self.budget < 1:
            raise FanLoRAError(f"--budget must be >= 1 permutation, got {self.budget}")
        if self.refine and self.method != "first-order":
            raise FanLoRAError("--refine refines first-order scores: use --method first-order")
        if self.refine_margin < 0:
            raise FanLoRAError(f"--refine-margin must be >= 0, got {self.refine_margin}")
        if self.adaptive and (self.method != "ab" or self.metric != "loss"):
            raise FanLoRAError("--adaptive races the AB-score with the loss metric only")
        if self.layers and not (self.method == "shapley" and self.scope == "layer"):
            raise FanLoRAError(
                "--layers restricts the exact per-layer Shapley values only "
                "(--method shapley --scope layer)"
            )
        if any(layer < 0 for layer in self.layers) or len(set(self.layers)) < len(self.layers):
            raise FanLoRAError(f"--layers must be distinct layer indices >= 0, got {self.layers}")
        if not 0 < self.alpha < 1:
            raise FanLoRAError(f"alpha must be in (0, 1), got {self.alpha}")
        require_positive(self, "val_examples", "max_length", "batch_size", "k_max", "min_sequences")


def load_adapter(cfg: ScoreConfig, runtime: Runtime, allow_other_model: bool = False):
    """(peft model on ``runtime``'s device, layout); a clear error when the adapter is
    missing or does not fit. (Checked here, not in the config: a pipeline config leaves it
    to step 1.)"""
    check_adapter(cfg)
    base, _ = load_model(cfg.model, cfg.dtype, cfg.device_map)
    layout = discover_layout(base)
    model = attach_adapter(base, cfg.adapter, cfg.model, allow_other=allow_other_model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.device_map is None:
        model.to(runtime.device)
    return model, layout


def check_adapter(cfg: ScoreConfig) -> None:
    if not cfg.adapter:
        raise FanLoRAError("--adapter is required: the full-LoRA folder from step 1")
    check_adapter_folder(cfg.adapter)


def draw_examples(cfg: ScoreConfig):
    return load_sample(cfg.data, cfg.split, cfg.val_examples, cfg.seed)


def identity(cfg: ScoreConfig, precision: str | None = None) -> dict:
    """What a journal must share with this run to be resumed by it. ``precision`` is the
    one the forward passes run in (``auto`` resolved for this machine): a bf16 S(all) less
    an fp32 S(all without m) would be the precisions' difference, not the module's."""
    keys = (
        "model",
        "data",
        "split",
        "val_examples",
        "max_length",
        "batch_size",
        "method",
        "metric",
        "mode",
        "scope",
        "budget",
        "seed",
        "adaptive",
        "alpha",
        "min_sequences",
        "k_max",
        "dtype",
    )
    # not ``layers``: journal entries are per layer, so runs on other layers share them
    return {
        **{k: getattr(cfg, k) for k in keys},
        "precision": precision or cfg.runtime().precision,
        "adapter_sha256": adapter_hash(cfg.adapter),
        "journal_format": JOURNAL_FORMAT,
    }


def validation_set(cfg: ScoreConfig):
    """D_val, encoded from the tokenizer alone (no weights loaded yet)."""
    tokenizer = load_tokenizer(cfg.model, cfg.dtype)
    return build_valset(tokenizer, draw_examples(cfg), cfg.max_length, cfg.batch_size, cfg.metric)


def memory_plan(cfg: ScoreConfig, scorer: Scorer, runtime: Runtime, valset) -> MemoryPlan:
    """:func:`~fanlora.score.memory.plan_memory` from the model's config and the adapter's
    file, before any weight is read."""
    config = load_config(cfg.model)
    element = DTYPES[cfg.dtype].itemsize
    adapter = (Path(cfg.adapter) / "adapter_model.safetensors").stat().st_size
    weights = parameter_count(config) * element + adapter
    cached = scorer.needs_cache(cfg)
    layers, hidden = config.num_hidden_layers, config.hidden_size
    cache = cache_bytes(layers, valset.num_tokens, hidden, element) if cached else 0
    return plan_memory(runtime.device, weights, cache, *free_bytes(runtime.device), cfg.device_map)


def build_and_gate(
    cfg: ScoreConfig, runtime: Runtime | None = None, valset=None, allow_other_model=False
):
    """(peft model, gates, validation set) for ``cfg``, on ``runtime``'s device."""
    runtime = runtime or cfg.runtime()
    valset = valset or validation_set(cfg)
    model, layout = load_adapter(cfg, runtime, allow_other_model)
    return model, Gates(model, layout), valset.on(runtime.device)


def score(
    cfg: ScoreConfig, out: str | Path, log=print, allow_other_model: bool = False
) -> dict | None:
    """Score every LoRA module with ``cfg.method``'s scorer; write ``out`` (JSON) and its
    heatmap (PNG) on the main process. Units of work are shared out across processes and
    journalled next to ``out``, so a killed run resumes where it stopped. The memory plan
    is printed, and checked, before any weight is loaded."""
    started = time.time()
    state, runtime = process_state(cfg.runtime())
    scorer = get_scorer(cfg.method)
    check_adapter(cfg)
    valset = validation_set(cfg)
    plan = memory_plan(cfg, scorer, runtime, valset)
    if state.is_main_process:
        log(f"scoring on {runtime.describe()}; {plan.describe()}")
    model, gates, valset = build_and_gate(cfg, runtime, valset, allow_other_model)
    scorer.check(cfg, gates)  # refuse before the journal is opened
    out = Path(out)
    journal = Journal(
        out.with_name(out.name + ".journal"), identity(cfg, runtime.precision), state.process_index
    )
    if state.is_main_process and (aside := journal.describe_aside()):
        log(aside)
    try:
        ctx = Context(cfg, model, gates, valset, journal, store=plan.store(runtime.device))
        ctx.notes.update(runtime=runtime.describe(), memory_plan=plan.describe())
        with runtime.autocast():
            scorer.prepare(ctx, log)
            run_units(scorer, ctx, state)
        if not state.is_main_process:
            return None
        journal.reload()
        records = scorer.records(ctx)
        return write_scores(ctx, scorer.label(ctx), out, records, time.time() - started, log)
    finally:
        journal.close()


def run_units(scorer: Scorer, ctx: Context, state) -> None:
    """This process's share of the scorer's units; each finished one is journalled. A
    scorer whose units depend on earlier ones (first order, refined) lists more once those
    are journalled: every process reloads the journal and asks again, until none are new.
    On SIGTERM or SIGINT the unit under way finishes and is journalled, then
    :class:`Stopped` (each process on its own signal: their units are independent)."""
    units: list[str] = []
    with stop_on_signals() as stop:
        while len(listed := scorer.units(ctx)) > len(units):
            mine = listed[len(units) :][state.process_index :: state.num_processes]
            run_share(scorer, ctx, mine, stop, state.is_main_process)
            state.wait_for_everyone()
            ctx.journal.reload()
            units = listed


def run_share(scorer: Scorer, ctx: Context, keys: list[str], stop, show: bool) -> None:
    """Compute and journal each of ``keys`` the journal lacks; after a unit, honour a stop."""
    desc = f"score {scorer.name} ({ctx.cfg.mode})"
    with tqdm(total=len(keys), unit=scorer.unit, desc=desc, disable=not show) as bar:
        for key in keys:
            if key not in ctx.journal:
                started = time.perf_counter()
                values = scorer.compute(ctx, key)
                ctx.journal.write(key, **values, seconds=time.perf_counter() - started)
            bar.update(1)
            if stop.requested:
                raise Stopped(
                    f"stopped on {stop.name} after {len(ctx.journal.entries)} scoring units: "
                    f"they are journalled in {ctx.journal.folder}; the same command resumes "
                    "from them"
                )


def write_scores(ctx: Context, method: str, out: Path, records, wall, log) -> dict:
    cfg, layout, valset = ctx.cfg, ctx.gates.layout, ctx.valset
    doc = {
        "format": "fanlora-scores",
        "model": cfg.model,
        "adapter": cfg.adapter,
        "method": method,
        "metric": cfg.metric,
        "mode": cfg.mode,
        "scope": cfg.scope,
        **ctx.notes,
        "validation": {
            "data": cfg.data,
            "split": cfg.split,
            "examples": cfg.val_examples,
            "sequences": valset.num_sequences,
        },
        "seed": cfg.seed,
        "wall_time_s": wall,
        "compute": compute_cost(ctx.journal, ctx.capture_s),
        "config": asdict(cfg),
        "layout": layout.to_dict(),
        "scores": records,
    }
    atomic_write_json(out, doc)
    plain = [ScoreRecord(r["layer"], r["module"], r["score"]) for r in records]
    png = draw_heatmap(
        plain,
        layout,
        cfg.k_max,
        out.with_suffix(".png"),
        title=f"{cfg.method} scores of {cfg.model}",
    )
    log(f"scored {len(records)} modules in {wall:.1f} s; wrote {out} and {png}")
    return doc


def compute_cost(journal: Journal, capture_s: float | None = None) -> dict:
    """What the journalled units took, summed over every sitting of a resumed run (the
    wall time covers the last one only): ``unit_seconds`` in all; ``capture_seconds``, the
    fast evaluator's two capture passes (``capture_s``, None when it was not built), which
    the scorer pays once besides its units; and ``full_evaluation_s``, the time of one
    evaluation of the whole validation set, from which a straightforward AB-score's
    ``2N + 2`` evaluations are costed: half the captures when the fast evaluator was built
    (its own ``all`` and ``none`` run only the last layers), else the median of the
    straightforward units ``all`` and ``none``. Units journalled before timing was
    recorded are counted in ``untimed_units``."""
    entries = list(journal.entries.values())
    timed = [e["seconds"] for e in entries if "seconds" in e]
    full = [e["seconds"] for k in ("all", "none") if "seconds" in (e := journal.entries.get(k, {}))]
    full_pass_s = capture_s / 2 if capture_s else None
    if full_pass_s is None and full:
        full_pass_s = statistics.median(full)
    return {
        "units": len(entries),
        "untimed_units": len(entries) - len(timed),
        "unit_seconds": sum(timed),
        "capture_seconds": capture_s,
        "full_evaluation_s": full_pass_s,
    }
