"""Where fanlora keeps its cache: ``$FANLORA_HOME`` (default ``~/.cache/fanlora``)."""

from __future__ import annotations

import os
from pathlib import Path


def fanlora_home() -> Path:
    """The cache root: converted models under ``models/``, prepared data under ``data/``."""
    return Path(os.environ.get("FANLORA_HOME", "~/.cache/fanlora")).expanduser()
