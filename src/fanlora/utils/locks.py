"""Exclusive locks (``flock``) so that two fanlora processes never write one output.

The kernel drops a lock when its holder exits, killed or not, so a stale lock never
blocks. Written by hand: ``fcntl.flock`` is a few lines, and the ``filelock`` package
would add a dependency for the same call.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from fanlora.errors import FanLoRAError


def try_lock(path: Path):
    """The open, locked file ``path`` (holding this process's pid and command), or the
    text its holder wrote when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 (held open while locked)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "pid ?"
        handle.close()
        return holder
    handle.truncate(0)
    handle.write(f"pid {os.getpid()}: {' '.join(sys.argv[:1] + sys.argv[1:3])}")
    handle.flush()
    return handle


def lock_file(target: str | Path) -> Path:
    """Where the lock of output ``target`` lives: the machine's temporary folder (locks are
    per machine), keyed by the absolute path, so no file appears beside the user's output
    or in their cache."""
    key = hashlib.sha256(str(Path(target).expanduser().resolve()).encode()).hexdigest()[:24]
    return Path(tempfile.gettempdir()) / f"fanlora-locks-{os.getuid()}" / f"{key}.lock"


@contextmanager
def output_lock(target: str | Path):
    """Hold the lock of output ``target`` (a folder or file) while the block runs; another
    process holding it is a clear error, and nothing is touched."""
    handle = try_lock(lock_file(target))
    if isinstance(handle, str):
        raise FanLoRAError(
            f"{target} is being written by another fanlora process ({handle}); wait for "
            "it to finish, or write to another --out"
        )
    try:
        yield
    finally:
        handle.close()
