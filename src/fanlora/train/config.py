"""Training configuration; the defaults follow the paper's appendix C."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from fanlora.config import require_positive
from fanlora.errors import FanLoRAError
from fanlora.models.loading import DTYPE_NAMES
from fanlora.train.methods import METHODS, get_method
from fanlora.utils.devices import DeviceOptions


def _help(text: str, **extra) -> dict:
    return {"metadata": {"help": text, **extra}}


@dataclass
class TrainConfig(DeviceOptions):
    """Everything one fine-tuning run needs; a YAML file can hold any of it."""

    model: str = field(default="tiny-random-llama", **_help("preset, local folder or cached HF id"))
    data: str = field(
        default="instruct",
        **_help(
            "dataset name, a data file (.jsonl/.json/.csv/.parquet/.arrow), a save_to_disk "
            "folder, a .yaml data spec or a Hub id"
        ),
    )
    method: str = field(
        default="full-lora", **_help("what to train (registered methods)", choices=METHODS)
    )
    rank: int = field(default=12, **_help("LoRA rank (r0 for full-lora, r1 for fanlora)"))
    alpha: int | None = field(default=None, **_help("LoRA alpha (default 2 x rank)"))
    rank_pattern: dict | None = field(
        default=None,
        **_help(
            "lora: rank per module kind, e.g. {q: 3, v: 2} (matched budgets); alpha is "
            "2 x each kind's rank",
            cli=False,
        ),
    )
    dropout: float = field(default=0.05, **_help("LoRA dropout"))
    setting: str | None = field(default=None, **_help("setting JSON (fanlora, random)"))
    adalora_init_rank: int = field(default=12, **_help("AdaLoRA initial rank per module"))
    adalora_target_rank: float = field(
        default=8,
        **_help("AdaLoRA average target rank; a fraction keeps round(rank x modules) in all"),
    )
    ia3_kinds: list[str] = field(
        default_factory=lambda: ["q", "k", "up"],
        **_help("(IA)3 module kinds (paper: query, key, up)"),
    )
    lr: float = field(default=1e-4, **_help("AdamW learning rate"))
    weight_decay: float = field(default=0.0, **_help("AdamW weight decay"))
    warmup_ratio: float = field(default=0.06, **_help("linear warm-up share of the steps"))
    batch_size: int | None = field(
        default=None, **_help("examples per optimizer step (default 16 below 10k rows, else 128)")
    )
    micro_batch_size: int = field(default=8, **_help("examples per forward pass and process"))
    max_epochs: float = field(default=10.0, **_help("epochs at most"))
    max_steps: int | None = field(default=None, **_help("optimizer steps at most"))
    max_train_examples: int | None = field(default=None, **_help("use only this many rows"))
    max_length: int = field(default=512, **_help("tokens per sequence (prompt cut in the middle)"))
    eval_every: int = field(default=200, **_help("evaluate on dev every N steps"))
    eval_examples: int = field(default=256, **_help("dev rows used per evaluation"))
    patience: int = field(default=10, **_help("stop after N evaluations without improvement"))
    seed: int = field(default=0, **_help("seed of initialisation, data order and dropout"))
    dtype: str = field(
        default="float32",
        **_help("dtype the base weights load in (LoRA weights stay fp32)", choices=DTYPE_NAMES),
    )
    gradient_checkpointing: bool = field(
        default=False,
        **_help("recompute activations in backward: less memory, about a third more time"),
    )

    def __post_init__(self) -> None:
        get_method(self.method)  # an unknown name is an error listing the registered ones
        require_positive(
            self,
            "rank",
            "adalora_init_rank",
            "micro_batch_size",
            "max_length",
            "eval_every",
            "eval_examples",
            "patience",
            "batch_size",
            "max_steps",
            "max_train_examples",
            "alpha",
        )
        self._check_ranges()
        method = get_method(self.method)
        bad_rank = any(not isinstance(r, int) or r < 1 for r in (self.rank_pattern or {}).values())
        if self.rank_pattern is not None and (not method.kind_ranks or bad_rank):
            takes = ", ".join(n for n, m in METHODS.items() if m.kind_ranks)
            raise FanLoRAError(
                f"rank_pattern is for method(s) {takes}, as kind: rank >= 1; got "
                f"{self.rank_pattern} for {self.method}"
            )
        if method.needs_setting and not self.setting:
            raise FanLoRAError(f"method {self.method!r} needs --setting SETTING.json")
        self.runtime()  # a device this machine lacks, or fp16 on a CPU, is refused here
        if not 0 < self.adalora_target_rank <= self.adalora_init_rank:
            raise FanLoRAError(
                "adalora_target_rank must be above 0 and at most adalora_init_rank "
                f"({self.adalora_init_rank}), got {self.adalora_target_rank}"
            )
        if not 0 <= self.warmup_ratio < 1:
            raise FanLoRAError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")

    def _check_ranges(self) -> None:
        """Refuse values the optimizer or PEFT would reject only after the run has started
        (so a refused run touches nothing): lr > 0, dropout in [0, 1), ..."""
        checks = (
            ("lr", self.lr > 0, "> 0"),
            ("dropout", 0 <= self.dropout < 1, "in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("max_epochs", self.max_epochs > 0, "> 0"),
        )
        for name, ok, rule in checks:
            if not ok:
                raise FanLoRAError(f"{name} must be {rule}, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)

    def effective_batch_size(self, train_rows: int) -> int:
        """Paper: 16 for sets under 10k rows, else 128."""
        if self.batch_size is not None:
            return self.batch_size
        return 16 if train_rows < 10_000 else 128
