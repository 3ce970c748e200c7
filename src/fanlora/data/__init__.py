"""Data: BIG-bench tasks in the paper's roles, a user's own files, and formatting."""

from fanlora.data.example import Example
from fanlora.data.registry import TASKS, load_split, split_counts

__all__ = ["TASKS", "Example", "load_split", "split_counts"]
