"""Checks of the plain values a grid file (YAML) holds, and the error they raise: ``GridError``.

Each check takes ``where`` (the file and key, for the message) and returns the value in the type it must
have, or raises ``GridError`` naming the key and the reason. Nothing here knows what a grid means: the
grid's own checks (``loopscale.grid``) and the executor section's (``loopscale.executor_config``) use these.
"""

from __future__ import annotations

from typing import Any

from loopscale.errors import UserError


class GridError(UserError, ValueError):
    """A grid file that cannot be expanded; the message names the file, the key and the reason."""


def show(v: Any) -> str:
    """``repr(v)``, cut to 60 characters, for an error message."""
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def mapping(raw: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    """A copy of the mapping under ``key`` (empty when absent or null)."""
    v = raw.get(key) or {}
    if not isinstance(v, dict):
        raise GridError(f"{where}: {key}: expected a mapping, got {show(v)}")
    return dict(v)


def number(v: Any, where: str, integer: bool) -> float | int:
    """A positive number; YAML reads 1e18 (no dot) as a string, so numeric strings are accepted."""
    x = v
    if isinstance(v, str):
        try:
            x = float(v.replace("_", ""))
        except ValueError:
            raise GridError(f"{where}: expected a number, got {show(v)}") from None
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise GridError(f"{where}: expected a number, got {show(v)}")
    if not x > 0 or x != x or x == float("inf"):
        raise GridError(f"{where}: must be a positive finite number, got {show(v)}")
    if integer:
        if float(x) != int(x):
            raise GridError(f"{where}: expected a whole number, got {show(v)}")
        return int(x)
    return float(x)


def as_list(v: Any, where: str) -> list[Any]:
    """A list as it is (never empty); a scalar means a one-element list."""
    if isinstance(v, (list, tuple)):
        if not v:
            raise GridError(f"{where}: the list is empty")
        return list(v)
    return [v]


def number_list(v: Any, where: str, integer: bool) -> list:
    """Positive numbers (``number``), duplicates dropped, in the order given."""
    out = [number(x, where, integer) for x in as_list(v, where)]
    return list(dict.fromkeys(out))


def int_list(raw: dict, key: str, where: str, default: list[int], minimum: int = 1) -> list[int]:
    """The integers (at least ``minimum``) under ``key``, duplicates dropped; ``default`` when absent."""
    if key not in raw:
        return default
    out = []
    for v in as_list(raw[key], f"{where}: {key}"):
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            kind = "positive" if minimum == 1 else "non-negative"
            raise GridError(f"{where}: {key}: expected {kind} integers, got {show(v)}")
        out.append(v)
    return list(dict.fromkeys(out))
