"""Name -> object tables that methods, scorers and datasets register into."""

from __future__ import annotations

from typing import TypeVar

from fanlora.errors import FanLoRAError

T = TypeVar("T")


def add(table: dict[str, T], name: str, item: T, what: str) -> T:
    """Put ``item`` under ``name``; a name taken twice is an error."""
    if name in table:
        raise FanLoRAError(f"a {what} named {name!r} is already registered")
    table[name] = item
    return item


def lookup(table: dict[str, T], name: str, what: str) -> T:
    """``table[name]``, or an error listing the registered names."""
    if name not in table:
        raise FanLoRAError(f"unknown {what} {name!r}; choose one of {', '.join(table)}")
    return table[name]
