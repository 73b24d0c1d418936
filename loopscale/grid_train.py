"""A grid's train section, the keys resolved per run at expansion and never in a RunConfig: ``lr_rule`` (fixed, or
the paper's lr transfer: ``loopscale.lr_transfer``), ``lr_batch_exponent`` and ``micro_batch_rows`` given per width.
``train_rules`` splits them off the section (the rest is TrainConfig's) and checks them (``GridError``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from loopscale.config import TrainConfig
from loopscale.lr_transfer import LR_KEYS
from loopscale.validate import GridError, show

GRID_TRAIN_KEYS = ("lr_rule", "lr_batch_exponent")  # train keys resolved per run at expansion
LR_RULES = ("fixed", "paper")


@dataclass(frozen=True)
class TrainRules:
    """The grid's per-run train settings, resolved away at expansion (never in a RunConfig)."""

    lr_rule: str = "fixed"
    lr_batch_exponent: float = 0.0
    micro_batch_rows: tuple[tuple[int, int], ...] | None = None  # ((widest d_model, rows), ...) ascending

    def micro_rows(self, d_model: int, default: int, where: str) -> int:
        if self.micro_batch_rows is None:
            return default
        for widest, rows in self.micro_batch_rows:
            if d_model <= widest:
                return rows
        raise GridError(f"{where}: train.micro_batch_rows: no entry for d_model {d_model} (keys are the widest "
                        f"d_model each value applies to; the largest is {self.micro_batch_rows[-1][0]})")


def train_rules(train_raw: dict[str, Any], where: str, reserved=()) -> tuple[dict[str, Any], TrainRules]:
    """Split the grid-level keys (lr_rule, lr_batch_exponent, a per-width micro_batch_rows) off the
    train section and check them; the rest is TrainConfig's."""
    names = {f.name for f in dataclasses.fields(TrainConfig)} - set(reserved)
    unknown = sorted(set(train_raw) - names - set(GRID_TRAIN_KEYS))
    if unknown:
        allowed = ", ".join(sorted(names | set(GRID_TRAIN_KEYS)))
        raise GridError(f"{where}: train: unknown key {unknown[0]!r} (allowed: {allowed})")
    train_raw = dict(train_raw)
    rule = train_raw.pop("lr_rule", "fixed")
    if rule not in LR_RULES:
        raise GridError(f"{where}: train.lr_rule: unknown rule {show(rule)}; choose one of {', '.join(LR_RULES)}")
    exponent = 0.0
    if "lr_batch_exponent" in train_raw:
        v = train_raw.pop("lr_batch_exponent")
        if rule != "paper":
            raise GridError(f"{where}: train.lr_batch_exponent: applies only with lr_rule: paper")
        try:
            exponent = float(v) if not isinstance(v, bool) else float("nan")
        except (TypeError, ValueError):
            exponent = float("nan")
        if not -10 < exponent < 10:
            raise GridError(f"{where}: train.lr_batch_exponent: expected a number (the authors: 0.558), got {show(v)}")
    if rule == "paper":
        given = [k for k in LR_KEYS if k in train_raw]
        if given:
            raise GridError(f"{where}: train.{given[0]}: set per run by lr_rule: paper; remove it, or use "
                            "lr_rule: fixed to give the learning rates yourself")
    micro = None
    if isinstance(train_raw.get("micro_batch_rows"), dict):
        spec = train_raw.pop("micro_batch_rows")
        if not spec:
            raise GridError(f"{where}: train.micro_batch_rows: the mapping is empty")
        pairs = []
        for k, v in spec.items():
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise GridError(f"{where}: train.micro_batch_rows: keys are widths d_model (positive integers), "
                                f"got {show(k)}")
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise GridError(f"{where}: train.micro_batch_rows.{k}: expected a non-negative integer "
                                f"(0 = the whole batch), got {show(v)}")
            pairs.append((k, v))
        micro = tuple(sorted(pairs))
    return train_raw, TrainRules(rule, exponent, micro)
