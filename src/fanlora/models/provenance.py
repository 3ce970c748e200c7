"""Which model an artifact was made for, checked wherever an artifact meets a model.

An adapter, a scores file or a setting records the model it was made for: its id
(``run.json``'s ``config.model``, PEFT's ``base_model_name_or_path``, the file's
``model``) and, where fanlora wrote it, the model's module layout (architecture, layer
count, module shapes). Used with another model it would run, on the modules the two
share, and give wrong numbers silently (a 2-layer adapter scores 14 of a 4-layer model's
28 modules): so a difference in any of these is an error naming both models, unless the
user says ``--allow-other-model``.

Ids are compared after :func:`canonical_model`: a preset and its cache folder are one
model, as are a Hub id and its snapshot folder.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fanlora.errors import FanLoRAError
from fanlora.models.loading import DTYPE_NAMES, PRESETS
from fanlora.modules.discovery import ModuleLayout
from fanlora.utils.io import read_json

ALLOW_FLAG = "--allow-other-model"
_HUB_SNAPSHOT = re.compile(r"models--([^/]+)--([^/]+)/snapshots/")


@dataclass(frozen=True)
class MadeFor:
    """What an artifact says of its model: ``what`` names the artifact in messages."""

    what: str
    model: str | None = None
    layout: dict | None = None


def canonical_model(name: str) -> str:
    """A model id to compare: a preset's cache folder (any dtype) is the preset, a Hub
    snapshot folder its Hub id, another folder its absolute path, anything else itself."""
    if name in PRESETS:
        return name
    snapshot = _HUB_SNAPSHOT.search(str(name))
    if snapshot:
        return f"{snapshot.group(1)}/{snapshot.group(2)}"
    path = Path(name).expanduser()
    if path.parent.name == "models":
        for preset in PRESETS:
            if path.name in {preset, *(f"{preset}-{d}" for d in DTYPE_NAMES)}:
                return preset
    if path.is_dir() or path.is_absolute() or name.startswith("."):
        return str(path.resolve())
    return name


def layout_differences(recorded: dict, layout: ModuleLayout) -> list[str]:
    """How a recorded layout (``ModuleLayout.to_dict()``) differs from ``layout``."""
    checks = (
        ("architecture", recorded.get("model_class"), layout.model_class),
        ("layers", recorded.get("num_layers"), layout.num_layers),
        ("module kinds", list(recorded.get("kinds") or {}), list(layout.kinds)),
        ("module shapes", recorded.get("shapes"), layout.shapes),
    )
    return [f"{name} {a} vs {b}" for name, a, b in checks if a is not None and a != b]


def check_made_for(
    made: MadeFor, model: str, layout: ModuleLayout, allow: bool = False, log: Callable = print
) -> None:
    """Refuse ``made`` for ``model`` (whose layout is ``layout``) when its recorded id or
    layout differs; with ``allow`` print a warning instead."""
    diffs = []
    if made.model and canonical_model(made.model) != canonical_model(model):
        diffs.append(f"model {made.model!r} vs {model!r}")
    if made.layout:
        diffs += layout_differences(made.layout, layout)
    if not diffs:
        return
    message = (
        f"{made.what} was made for another model than --model {model!r} "
        f"({'; '.join(diffs)}, recorded vs given)"
    )
    if allow:
        log(f"warning: {message}; used anyway ({ALLOW_FLAG})")
        return
    raise FanLoRAError(f"{message}; pass {ALLOW_FLAG} to use it anyway")


def adapter_made_for(folder: str | Path) -> MadeFor:
    """An adapter folder's model: fanlora's ``run.json`` beside it when there is one
    (model id and layout), else PEFT's ``base_model_name_or_path``."""
    folder = Path(folder)
    what = f"the adapter {folder}"
    run = folder / "run.json"
    record = read_json(run, "run.json") if run.is_file() else None
    if isinstance(record, dict) and isinstance(record.get("config"), dict):
        return MadeFor(what, record["config"].get("model"), record.get("model_layout"))
    config = read_json(folder / "adapter_config.json", "adapter config")
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    return MadeFor(what, base or None)


def document_made_for(doc: dict, what: str) -> MadeFor:
    """A scores file's or setting's model: its ``model`` and ``layout`` keys."""
    layout = doc.get("layout") if isinstance(doc.get("layout"), dict) else None
    return MadeFor(what, doc.get("model") or None, layout)
