"""An append-only journal of finished evaluations, so a killed run recomputes nothing.

A folder ``<SCORES>.journal/`` with one JSONL file per process and run identity
(``rank-<r>.<digest>.jsonl``; ``rank-<r>.jsonl`` from before the digest is read too); each
file starts with the run's identity (adapter hash, data, method, metric, the precision the
passes ran in, ...). A file of another identity is kept as it is and never mixed in: its
units are another run's (another machine's precision, say), there for that run to resume.
Every line is flushed and fsynced; a line cut short by a kill is ignored on reading.

Each process holds an exclusive lock (``flock``) on ``rank-<r>.lock`` while its journal is
open, so a second scoring run writing the same output is refused instead of appending to
the same file (the kernel drops the lock when the holder exits, killed or not).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from fanlora.errors import FanLoRAError
from fanlora.utils.locks import try_lock


class Journal:
    def __init__(self, folder: str | Path, identity: dict, rank: int = 0):
        self.folder = Path(folder)
        self.identity = identity
        self.rank = rank
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        self.path = self.folder / f"rank-{rank}.{digest[:12]}.jsonl"
        self.entries: dict[str, dict] = {}
        self.aside: dict[Path, tuple[int, dict]] = {}  # another run's file: (units, identity)
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
        """This identity's entries from every process's files; other files counted aside."""
        for path in sorted(self.folder.glob("rank-*.jsonl")):
            entries = read_entries(path)
            theirs = entries[0].get("identity") if entries else self.identity
            if theirs != self.identity:
                self.aside[path] = (len(entries) - 1, theirs)
                continue
            if path.name == f"rank-{self.rank}.jsonl":
                self.path = path  # a file from before the digest: go on appending to it
            self.entries.update((e["key"], e) for e in entries[1:])

    def describe_aside(self) -> str | None:
        """A line naming the units of other runs this one does not use, if there are any."""
        if not self.aside:
            return None
        units = sum(n for n, _ in self.aside.values())
        names = ", ".join(p.name for p in self.aside)
        different = {
            key
            for _, theirs in self.aside.values()
            for key in theirs.keys() | self.identity.keys()
            if theirs.get(key) != self.identity.get(key)
        }
        return (
            f"{units} journalled units of another scoring run ({names} in {self.folder}; "
            f"it differs in {', '.join(sorted(different))}) are kept as they are and not used"
        )

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
            elif torn(self.path):
                handle.write("\n")  # end a killed run's cut line, or it swallows this one
            entry = {"key": key, **values}
            handle.write(json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.entries[key] = entry

    def reload(self) -> None:
        """Read every process's file again (after the others finished)."""
        self.entries, self.aside = {}, {}
        self._load()


def torn(path: Path) -> bool:
    """Whether ``path`` ends in a line a kill cut short (no newline after it)."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() == 0:
            return False
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) != b"\n"


def read_entries(path: Path) -> list[dict]:
    """The entries of one journal file; a line cut short by a kill is skipped."""
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the last line of a killed run
    return entries
