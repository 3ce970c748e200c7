"""The pipeline's config: top-level choices plus one section per stage.

A YAML file looks like the embedded default (``fanlora run --print-default``)::

    model: smollm2-135m
    tasks: [boolq, copa]
    methods: [fanlora, lora]
    full_lora: {max_steps: 8, ...}     # step 1: any `fanlora train` option
    scoring: {adaptive: true, ...}     # step 2: any `fanlora score` option
    downstream: {max_steps: 6, ...}    # step 4: any `fanlora train` option
    evaluation: {limit: 64, ...}       # any `fanlora eval` option
    decoding: {runs: 3, ...}           # the short decoding-speed measurement

Keys the pipeline sets itself (the model, the method, the adapter, the data of each step)
are refused in the sections, as are unknown keys and wrong types; each error names the key,
the section and the file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from fanlora.config import from_mapping, load_yaml, require_positive
from fanlora.data.registry import DATA_FORMS, TASKS, is_data
from fanlora.engines import ENGINES
from fanlora.errors import FanLoRAError
from fanlora.evaluate.run import METRICS, EvalConfig
from fanlora.models.loading import DTYPE_NAMES
from fanlora.pipeline.stages import STAGES
from fanlora.score.run import ScoreConfig
from fanlora.train.config import TrainConfig
from fanlora.train.methods import METHODS as TRAIN_METHODS
from fanlora.utils.devices import DeviceOptions


def downstream_methods() -> list[str]:
    """The registered methods a pipeline can tune in step 4 (read when a config is checked,
    so a method registered by the user's code counts)."""
    return [name for name, method in TRAIN_METHODS.items() if method.downstream]


BUDGETS = ("matched", "as-configured")


@dataclass
class DecodeConfig:
    """The pipeline's short decoding-speed measurement (table 3's protocol, fewer runs)."""

    runs: int = field(default=3, metadata={"help": "timed runs per variant (after 1 warm-up)"})
    new_tokens: int = field(default=32, metadata={"help": "tokens generated per run"})
    prompt_tokens: int = field(default=276, metadata={"help": "prompt length (paper: 276)"})
    beams: list[int] = field(default_factory=lambda: [1], metadata={"help": "beam sizes"})
    batch_size: int = field(default=1, metadata={"help": "prompts per generate call"})
    dtype: str = field(
        default="float32",
        metadata={
            "help": "weights dtype while decoding (autocast would cast every weight at every "
            "token, so --precision does not apply here)",
            "choices": DTYPE_NAMES,
        },
    )

    def __post_init__(self) -> None:
        require_positive(
            self, "runs", "new_tokens", "prompt_tokens", "batch_size", prefix="decoding."
        )
        if not self.beams or min(self.beams) < 1:
            raise FanLoRAError(f"decoding.beams must be beam sizes >= 1, got {self.beams}")


# section name -> (dataclass, keys the pipeline sets itself)
# the device is set once at the top level, for every stage; the top-level precision is every
# stage's too, unless a section sets its own (train in bf16, evaluate in fp32: bf16 changes
# the chosen option of some rows, bench/choice_eval.py)
PLACED = ("device",)
SECTIONS = {
    "full_lora": (TrainConfig, ("model", "method", "setting", "seed", *PLACED)),
    "scoring": (ScoreConfig, ("model", "adapter", "k_max", "seed", *PLACED)),
    # downstream.seed: step 4's own seed, over the top-level one (step 1 once, step 4 replicated)
    "downstream": (TrainConfig, ("model", "method", "data", "setting", *PLACED)),
    "evaluation": (EvalConfig, ("model", "adapter", "task", "split", "seed", *PLACED)),
    "decoding": (DecodeConfig, ()),
}


@dataclass
class RunConfig(DeviceOptions):
    """What ``fanlora run`` does; ``sections`` hold each stage's validated overrides.
    ``device`` applies to every stage, ``precision`` to every stage whose section does not
    set its own."""

    model: str = field(default="smollm2-135m", metadata={"help": "the backbone"})
    seed: int = field(default=0, metadata={"help": "seed of every stage"})
    k_max: int = field(default=2, metadata={"help": "K_max: modules kept per layer at most"})
    tasks: list[str] = field(
        default_factory=lambda: ["boolq", "copa"], metadata={"help": "downstream tasks (step 4)"}
    )
    methods: list[str] = field(
        default_factory=lambda: ["fanlora", "lora"], metadata={"help": "methods tuned per task"}
    )
    engine: str | None = field(
        default=None,
        metadata={
            "help": "select the setting for this serving engine's cost: the best scores under "
            "packed_budget wrapped runtime modules per layer (default: the paper's top K_max)",
            "choices": list(ENGINES),
        },
    )
    packed_budget: int | None = field(
        default=None, metadata={"help": "wrapped runtime modules per layer with engine (1)"}
    )
    method_lr: dict | None = field(
        default=None,
        metadata={
            "help": "step 4's learning rate per method (method: lr), over downstream.lr: "
            "each method at the rate its own sweep on dev chose",
            "cli": False,
        },
    )
    task_metrics: dict | None = field(
        default=None,
        metadata={
            "help": "metric per task (task: metric), for a file task without options; a task "
            "not named uses its own metric, else evaluation.metric",
            "cli": False,
        },
    )
    budget: str = field(
        default="matched",
        metadata={
            "help": "matched: LoRA/AdaLoRA ranks set so their trainable parameters match FanLoRA's",
            "choices": BUDGETS,
        },
    )
    eval_base: bool = field(default=True, metadata={"help": "also evaluate the base model"})
    decode: bool = field(default=True, metadata={"help": "measure decoding speed"})
    until: str = field(
        default="report",
        metadata={"help": "stop after this stage (setting: steps 1-3 only)", "choices": STAGES},
    )
    sections: dict = field(
        default_factory=dict, metadata={"help": "per-stage overrides", "cli": False}
    )

    def __post_init__(self) -> None:
        self.runtime()  # a device this machine lacks, or fp16 on a CPU, is refused here
        require_positive(self, "k_max", "packed_budget")
        if self.engine is not None and self.engine not in ENGINES:
            raise FanLoRAError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.packed_budget is not None and self.engine is None:
            raise FanLoRAError("packed_budget needs engine (whose runtime modules it counts)")
        bad = [m for m in self.methods if m not in downstream_methods()]
        if bad or not self.methods:
            raise FanLoRAError(
                f"unknown downstream method(s) {bad or '(none given)'}; choose "
                f"from {', '.join(downstream_methods())}"
            )
        bad = [t for t in self.tasks if not is_data(t)]
        if bad or not self.tasks:
            raise FanLoRAError(
                f"unknown task(s) {bad or '(none given)'}; known: {', '.join(TASKS)}, or "
                f"{DATA_FORMS}"
            )
        lrs = self.method_lr or {}
        bad = [m for m, lr in lrs.items() if m not in self.methods or not isinstance(lr, float)]
        if bad:
            raise FanLoRAError(
                f"method_lr: {bad} are not methods of this run with a float learning rate"
            )
        bad = {
            t: m
            for t, m in (self.task_metrics or {}).items()
            if t not in self.tasks or m not in METRICS
        }
        if bad:
            raise FanLoRAError(
                f"task_metrics: {bad} must map tasks of this run to one of {', '.join(METRICS)}"
            )
        if self.until not in STAGES:
            raise FanLoRAError(f"until must be one of {', '.join(STAGES)}, got {self.until!r}")
        if self.budget not in BUDGETS:
            raise FanLoRAError(f"budget must be one of {BUDGETS}, got {self.budget!r}")

    def section(self, name: str) -> dict:
        return dict(self.sections.get(name, {}))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_sections(data: dict, source: str) -> dict[str, dict]:
    """Pop and check every section of ``data``: a mapping of known, not pipeline-set keys
    that builds its dataclass (the pipeline's own keys left at their defaults)."""
    sections = {}
    for name, (cls, reserved) in SECTIONS.items():
        section = data.pop(name, None) or {}
        where = f"{source}: section {name!r}"
        if not isinstance(section, dict):
            raise FanLoRAError(f"{where} must be a mapping of keys to values")
        taken = sorted(set(section) & set(reserved))
        if taken:
            keys = ", ".join(map(repr, taken))
            raise FanLoRAError(
                f"{where}: key(s) {keys} are set by the pipeline itself; "
                "set model, seed, k_max and device at the top level"
            )
        from_mapping(cls, section, where)  # validates keys and types
        sections[name] = section
    return sections


def run_config_from(data: dict, source: str, overrides: dict | None = None) -> RunConfig:
    """A RunConfig from a YAML mapping; ``overrides`` (flags) replace top-level keys."""
    data = dict(data)
    sections = parse_sections(data, source)
    data.update(overrides or {})
    if "sections" in data:
        raise FanLoRAError(f"{source}: unknown key 'sections'")
    return from_mapping(RunConfig, {**data, "sections": sections}, source)


DEFAULT_CONFIG = "default.yaml"


def default_config_path() -> Path:
    """The embedded default shipped inside the package."""
    return Path(str(resources.files("fanlora") / "configs" / DEFAULT_CONFIG))


def load_run_config(path: str | Path | None, overrides: dict | None = None) -> RunConfig:
    """The config at ``path`` (None: the embedded default), with top-level ``overrides``.
    An empty file is an error, never a silent default."""
    path = Path(path) if path else default_config_path()
    data = load_yaml(path)
    if not data:
        raise FanLoRAError(
            f"{path} is empty: write the keys to change (`fanlora run --print-default` shows "
            "them all), or give no config file to run the embedded default"
        )
    return run_config_from(data, str(path), overrides)
