"""What a scoring method is, and the registry of scoring methods.

A scorer splits its work into units, each a key of the run's journal: the units are shared
out across processes (``torchrun``), each finished unit is journalled (so a killed run
recomputes nothing), the progress bar counts units, and the records are read back from the
complete journal. Adding a scorer is one file with a :class:`Scorer` subclass and a
:func:`register_scorer` call, imported by :mod:`fanlora.score.run`'s registrations (or by
the user's code before the CLI parses its flags).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from fanlora.score.evaluator import Evaluate, fast, straightforward
from fanlora.utils.registry import add, lookup


@dataclass
class Context:
    """What a scorer works on: the config, the gated model, the validation set, the
    journal, and the gated evaluator once :meth:`Scorer.prepare` has built it."""

    cfg: Any  # ScoreConfig
    model: Any  # the PEFT model, gradients off
    gates: Any  # fanlora.score.gates.Gates
    valset: Any  # fanlora.score.evaluator.ValSet
    journal: Any  # fanlora.score.journal.Journal
    evaluate: Evaluate | None = None
    notes: dict = field(default_factory=dict)  # written into the scores file
    store: Any = None  # where the fast evaluator's layer cache lives (None: the device)
    capture_s: float | None = None  # the fast evaluator's two capture passes, timed


def gated_evaluator(ctx: Context, use_cache: bool) -> Evaluate:
    """The fast exact evaluator (layer inputs cached on ``ctx.store``) or the
    straightforward one. Building the fast one runs two full passes over the validation
    set (the ``on`` and ``off`` layer-input captures); their time is recorded as
    ``ctx.capture_s``, a cost of the scorer that is no journalled unit, and half of it is
    the time of one full evaluation (:func:`~fanlora.score.run.compute_cost`)."""
    if use_cache:
        start = time.perf_counter()
        evaluate = fast(ctx.model, ctx.gates, ctx.valset, ctx.store)
        ctx.capture_s = time.perf_counter() - start
        return evaluate
    return straightforward(ctx.model, ctx.gates, ctx.valset)


@dataclass(frozen=True)
class Scorer:
    """A scoring method. Subclasses define the units of work and how to compute them."""

    name: str
    help: str = ""
    unit: str = "module"  # what the progress bar counts
    uses_cache: bool = True  # whether the fast mode's layer-input cache is built (memory plan)
    metrics: tuple[str, ...] = ("loss", "accuracy")  # the S_val it can score

    def needs_cache(self, cfg) -> bool:
        """Whether this run builds the fast evaluator's layer-input cache (memory plan)."""
        return self.uses_cache and (cfg.mode == "fast" or cfg.adaptive)

    def check(self, cfg, gates) -> None:
        """Refuse a config that does not fit the model, before the journal is opened."""

    def prepare(self, ctx: Context, log) -> None:
        """Check the config against the model and build what the units need (default: the
        gated evaluator of ``cfg.mode``, fast exact or straightforward)."""
        ctx.evaluate = gated_evaluator(ctx, ctx.cfg.mode == "fast")

    def units(self, ctx: Context) -> list[str]:
        """The journal keys of the units of work, in order. Asked again once the listed
        ones are journalled: a scorer may then append units that depend on them."""
        raise NotImplementedError

    def compute(self, ctx: Context, key: str) -> dict:
        """The journal entry (JSON values) of one unit."""
        raise NotImplementedError

    def records(self, ctx: Context) -> list[dict]:
        """``{"layer", "module", "score", ...}`` per module, from the complete journal."""
        raise NotImplementedError

    def label(self, ctx: Context) -> str:
        """The scores file's ``method``."""
        return self.name


SCORERS: dict[str, Scorer] = {}


def register_scorer(scorer: Scorer) -> Scorer:
    """Make ``scorer`` known to ``fanlora score --method NAME`` and the pipeline."""
    return add(SCORERS, scorer.name, scorer, "scoring method")


def get_scorer(name: str) -> Scorer:
    return lookup(SCORERS, name, "scoring method")


def module_key(key: tuple[int, str]) -> str:
    """``"module:<layer>:<kind>"``: the journal key of a per-module unit."""
    return f"module:{key[0]}:{key[1]}"


def parse_module_key(text: str) -> tuple[int, str]:
    _, layer, kind = text.split(":", 2)
    return int(layer), kind
