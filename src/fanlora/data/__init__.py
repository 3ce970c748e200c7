"""Data: registered datasets (the BIG-bench sources in the paper's roles), a user's own
files, and formatting. Importing the package registers the BIG-bench tasks."""

from fanlora.data import builders  # noqa: F401  (registers the BIG-bench tasks)
from fanlora.data.example import Example
from fanlora.data.registry import TASKS, load_split, register_task, split_counts

__all__ = ["TASKS", "Example", "load_split", "register_task", "split_counts"]
