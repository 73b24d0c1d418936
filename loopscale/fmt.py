"""Numbers for people: rounded on screen and in reports only; the JSON files keep every digit. And
nested settings as dotted keys (``flatten``). And the one timestamp format of every record (``timestamp``)."""

from __future__ import annotations

import math
import time
from typing import Any

TIMESTAMP = "%Y-%m-%dT%H:%M:%S%z"  # every time a record carries: started, finished, submitted, cancelled, failed


def timestamp(t: float | None = None) -> str:
    """Local time (now, or the epoch seconds ``t``) as the records write it: 2026-12-06T19:51:37+0000."""
    return time.strftime(TIMESTAMP, time.localtime(t))


def finite(v) -> float | None:
    """``v`` as a float; None when it is missing, not a number, NaN or ±inf."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def si(x: float | None, unit: str = "") -> str:
    """1234567 → '1.23M'."""
    if x is None:
        return "-"
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}{unit}"
    return f"{x:.3g}{unit}"


def sci(x: float | None) -> str:
    """4.64e+17 → '4.64e17'."""
    return "-" if x is None else f"{x:.3g}".replace("e+", "e")


def num(v, digits: int = 4, spec: str = "f", sign: str = "") -> str:
    """A fitted value: ``digits`` decimals (general format from 1e5 up); None → '—'; non-floats as str."""
    if v is None:
        return "—"
    if not isinstance(v, float):
        return str(v)
    if spec == "f" and abs(v) >= 1e5:
        spec = "g"
    return f"{v:{sign}.{digits}{spec}}"


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings → {"a.b": value}; lists stay values, an empty mapping is a value (for tables
    and diffs: the runs table's columns, a grid's changed keys)."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(flatten(v, key) if isinstance(v, dict) and v else {key: v})
    return out
