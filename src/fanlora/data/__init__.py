"""Data: registered datasets (one file per source package under ``sources/``), a user's
own files, and formatting. Importing the package registers every source's tasks."""

from fanlora.data import sources  # noqa: F401  (registers every source's tasks)
from fanlora.data.example import Example
from fanlora.data.registry import TASKS, load_split, register_task, split_counts

__all__ = ["TASKS", "Example", "load_split", "register_task", "split_counts"]
