"""An append-only journal of finished evaluations, so a killed run recomputes nothing.

A folder ``<SCORES>.journal/`` with one JSONL file per process (``rank-<r>.jsonl``); each
file starts with the run's identity (adapter hash, data, method, metric, ...). A journal
with another identity is refused, never mixed. Every line is flushed and fsynced; a line
cut short by a kill is ignored on reading.

Each process holds an exclusive lock (``flock``) on ``rank-<r>.lock`` while its journal is
open, so a second scoring run writing the same output is refused instead of appending to
the same file (the kernel drops the lock when the holder exits, killed or not).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fanlora.errors import FanLoRAError
from fanlora.utils.locks import try_lock


class Journal:
    def __init__(self, folder: str | Path, identity: dict, rank: int = 0):
        self.folder = Path(folder)
        self.identity = identity
        self.path = self.folder / f"rank-{rank}.jsonl"
        self.entries: dict[str, dict] = {}
        self._lock = self._acquire(rank)
        self._load()

    def _acquire(self, rank: int):
        handle = try_lock(self.folder / f"rank-{rank}.lock")
        if isinstance(handle, str):
            raise FanLoRAError(
                f"{self.folder} is being written by another scoring process ({handle}); "
                "wait for it to finish, or score into another --out"
            )
        return handle

    def close(self) -> None:
        """Release the lock (also released when the process exits)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _load(self) -> None:
        for path in sorted(self.folder.glob("rank-*.jsonl")):
            lines = path.read_text(encoding="utf-8").splitlines()
            for n, line in enumerate(lines):
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the last line of a killed run
                if n == 0:
                    if entry.get("identity") != self.identity:
                        raise FanLoRAError(
                            f"{path} was written by a different scoring run "
                            f"({entry.get('identity')}); it is kept as it is. Use another "
                            "--out, or delete that journal to start over"
                        )
                    continue
                self.entries[entry["key"]] = entry

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def get(self, key: str) -> dict:
        return self.entries[key]

    def write(self, key: str, **values) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.is_file()
        with open(self.path, "a", encoding="utf-8") as handle:
            if fresh:
                handle.write(json.dumps({"identity": self.identity}) + "\n")
            entry = {"key": key, **values}
            handle.write(json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.entries[key] = entry

    def reload(self) -> None:
        """Read every process's file again (after the others finished)."""
        self.entries = {}
        self._load()
