"""Flags that several commands share."""

from __future__ import annotations

from pathlib import Path

from fanlora.models.provenance import ALLOW_FLAG


def add_allow_other_model(parser) -> None:
    """``--allow-other-model``: use an adapter, scores file or setting made for another model
    (another id, architecture, layer count or module shapes) with a warning, not an error."""
    parser.add_argument(
        ALLOW_FLAG,
        action="store_true",
        dest="allow_other_model",
        help="use an adapter, scores file or setting recorded for another model (a warning, "
        "not an error)",
    )


def add_wheel_flag(parser) -> None:
    """``--wheel PATH`` (repeatable): pinned wheels copied by hand, files or folders."""
    parser.add_argument(
        "--wheel",
        type=Path,
        action="append",
        default=[],
        metavar="PATH",
        help="a pinned wheel copied by hand, or a folder of them (repeatable)",
    )
