"""Evaluation: the metrics of the paper's appendix A.2 on a task's split."""

from fanlora.evaluate.run import EvalConfig, evaluate

__all__ = ["EvalConfig", "evaluate"]
