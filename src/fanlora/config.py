"""Dataclass configs: YAML gives defaults, command-line flags override them.

Each field becomes ``--field-name`` with the type and ``metadata["help"]`` of the field.
A YAML file with an unknown key or a value of the wrong type is an error that names the
key and the file. Written by hand because argparse has no dataclass support and
``transformers.HfArgumentParser`` neither merges YAML with flags nor names the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from fanlora.errors import FanLoRAError


def _base_type(tp: Any) -> Any:
    """``int | None`` -> int; ``list[str]`` stays as is."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp


def field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def add_dataclass_args(parser: argparse.ArgumentParser, cls) -> None:
    """One ``--flag`` per field (not those marked ``cli=False`` in their metadata); defaults
    are SUPPRESSed so only given flags override."""
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True):
            continue
        tp = _base_type(field_types(cls)[f.name])
        flag = "--" + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {
            # argparse expands "%" in help text ("90% of" fails): a field's help is plain text
            "help": f.metadata.get("help", "").replace("%", "%%"),
            "dest": f.name,
            "default": argparse.SUPPRESS,
        }
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is list:
            kwargs.update(nargs="+", type=typing.get_args(tp)[0])
        else:
            kwargs["type"] = tp
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(flag, **kwargs)


def _check_value(cls, key: str, value: Any, source: str) -> Any:
    tp = field_types(cls)[key]
    optional = _base_type(tp) is not tp
    base = _base_type(tp)
    if value is None and optional:
        return None
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
        dict: isinstance(value, dict),
    }.get(base)
    if ok is None and typing.get_origin(base) is list:
        (item,) = typing.get_args(base)
        ok = isinstance(value, list) and all(
            isinstance(v, item) and not isinstance(v, bool) for v in value
        )
    if not ok:
        name = getattr(base, "__name__", str(base))
        raise FanLoRAError(f"{source}: key {key!r} must be {name}, got {value!r}")
    return float(value) if base is float else value


def require_positive(obj, *names: str, prefix: str = "") -> None:
    """Refuse any of ``obj``'s fields ``names`` below 1 (None, for an optional field, passes)."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and value < 1:
            raise FanLoRAError(f"{prefix}{name} must be >= 1, got {value}")


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise FanLoRAError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise FanLoRAError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise FanLoRAError(f"{path}: the top level must be a mapping of keys to values")
    return data


def from_mapping(cls, data: dict, source: str):
    """Build ``cls`` from a mapping, naming any unknown key or wrong type and ``source``."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise FanLoRAError(
            f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"known keys: {', '.join(sorted(names))}"
        )
    checked = {k: _check_value(cls, k, v, source) for k, v in data.items()}
    try:
        return cls(**checked)
    except (TypeError, FanLoRAError) as exc:
        raise FanLoRAError(f"{source}: {exc}") from None


def resolve(cls, args: argparse.Namespace, config_path: str | Path | None = None):
    """Defaults < YAML file < flags given on the command line."""
    data = load_yaml(config_path) if config_path else {}
    source = str(config_path) if config_path else "flags"
    names = {f.name for f in dataclasses.fields(cls)}
    data.update({k: v for k, v in vars(args).items() if k in names})
    return from_mapping(cls, data, source)
