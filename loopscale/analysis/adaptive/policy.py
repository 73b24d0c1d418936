"""One round of an adaptive sweep: stop, or choose the next K runs. The same code for a simulation (plan
--adaptive, with simulated losses) and for a sweep (with real ones).

The stop (:func:`stop_reason`), in this order:

- ``target``: φ's CI is at most W wide (below MAX_PHI_CI_WIDTH when W asks for more: "until trustworthy"),
  every other check of the verdict passes (split-half, R², cells, bounds: analysis.adaptive.assess), and the
  design keeps the rule (analysis.adaptive.rule) under the current fit;
- ``budget``: no run that the round would choose fits in what is left of the cap;
- ``no_help``: no candidate is expected to narrow the CI and the rule needs nothing more.

The choice (:func:`choose`): first the runs the rule still needs (the end cells' widths around the current
fit's optimum; the grid's own widths there when the fit cannot be trusted yet), then, while the split halves lack
budgets, the best-scored run at a budget that fixes that, then the best-scored runs. A run's score is the
expected fall of the reported CI width per FLOP: the fall of φ's sandwich variance (analysis.plan.sandwich,
at the current fit and noise), each pick made on top of the picks already in the batch, scaled to the width the
cell bootstrap reports now (its ratio to the sandwich width), and for a run in a cell the design already has,
times EXISTING_CELL_FACTOR (the cell bootstrap draws cells, so such a run narrows it less than the sandwich
says). ``mode="random"`` replaces the scored picks by a uniform draw from the same candidates (the rule's runs
are the same), the baseline a simulation compares with."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from loopscale.analysis.adaptive.rule import check_rule, half_needs, rule_deficits
from loopscale.analysis.defaults import HUBER_DELTA
from loopscale.analysis.law import Law, log_prediction, params_of
from loopscale.analysis.plan.sandwich import Z95, information, sandwich_phi
from loopscale.analysis.regime import MAX_PHI_CI_WIDTH

EXISTING_CELL_FACTOR = 0.5  # a run in a cell the design has narrows the cell-bootstrap CI this share of the sandwich's
MIN_RELATIVE_FALL = 1e-3  # a run expected to narrow the CI by less than this share "does not help"
STOP_WORDS = {"target": "target met and trustworthy", "budget": "budget spent",
              "no_help": "no candidate expected to help"}


@dataclass
class Pick:
    row: int  # universe row
    why: str  # "rule: ..." | "halves: ..." | "score" | "random"
    width_after: float | None = None  # predicted reported CI width after this pick (and those before it)


@dataclass
class Choice:
    picks: list[Pick] = field(default_factory=list)
    width_before: float | None = None
    blocked_by_budget: bool = False  # a wanted run did not fit in the cap

    @property
    def rows(self) -> list[int]:
        return [p.row for p in self.picks]


def target_width(w: float) -> float:
    """The width a stop needs: W, or just under MAX_PHI_CI_WIDTH for W ≥ it ("until trustworthy")."""
    return min(float(w), MAX_PHI_CI_WIDTH * (1 - 1e-9))


def stop_reason(width: float, target: float, trustworthy_but_width: bool, rule_held: bool) -> str | None:
    """``target`` when this look may stop; None otherwise (the budget and help stops come from :func:`choose`)."""
    if math.isfinite(width) and width <= target_width(target) and trustworthy_but_width and rule_held:
        return "target"
    return None


def predictions(space, data, theta: np.ndarray) -> np.ndarray:
    """The fit's noise-free losses on the whole universe (n,)."""
    return np.exp(log_prediction(theta[None], data)[0])


def choose(space, data, mask: np.ndarray, theta: np.ndarray, noise: float, width_now: float, k: int,
           flops_left: float, *, trust_fit: bool = True, mode: str = "score", rng=None,
           delta: float = HUBER_DELTA) -> Choice:
    """The next ``k`` runs for design ``mask`` under the fit θ and ``noise`` (nats); see the module docstring."""
    flops = space.flops
    chosen = Choice()
    taken = mask.copy()
    left = float(flops_left)

    def take(row: int, why: str) -> bool:
        nonlocal left
        if flops[row] > left * (1 + 1e-12):
            chosen.blocked_by_budget = True
            return False
        chosen.picks.append(Pick(int(row), why))
        taken[row] = True
        left -= flops[row]
        return True

    pred = predictions(space, data, theta)
    for row, why in rule_deficits(space, mask, pred, trust_fit):
        if len(chosen.picks) >= k:
            return chosen
        take(row, why)

    law = Law(**params_of(theta))
    J, a, b = information(space.table, law, noise, delta)
    A = (J[mask] * a[mask, None]).T @ J[mask]
    B = (J[mask] * b[mask, None]).T @ J[mask]
    for p in chosen.picks:
        A, B = A + a[p.row] * np.outer(J[p.row], J[p.row]), B + b[p.row] * np.outer(J[p.row], J[p.row])
    var0 = float(sandwich_phi(A[None], B[None])[0])
    sandwich_width = 2 * Z95 * math.sqrt(var0) if math.isfinite(var0) else math.nan
    scale = width_now / sandwich_width if math.isfinite(width_now) and sandwich_width > 0 else 1.0
    chosen.width_before = width_now if math.isfinite(width_now) else None
    cells = space.table["cell"].to_numpy()
    outer = np.einsum("ci,cj->cij", J, J)
    var, sd_pred = var0, math.sqrt(var0)
    while len(chosen.picks) < k:
        free = np.flatnonzero(~taken & (flops <= left * (1 + 1e-12)))
        if free.size == 0:
            chosen.blocked_by_budget = bool((~taken).any())
            break
        need = half_needs(space, taken)
        if need.size:
            free = np.intersect1d(free, need)
            if free.size == 0:
                chosen.blocked_by_budget = True
                break
        v = sandwich_phi(A[None] + a[free, None, None] * outer[free], B[None] + b[free, None, None] * outer[free])
        fall = np.sqrt(var) - np.sqrt(v)  # fall of the sandwich sd
        in_cell = np.isin(cells[free], cells[taken])
        fall = np.where(in_cell, EXISTING_CELL_FACTOR * fall, fall)
        if mode == "random":
            j = int(rng.integers(free.size)) if not need.size else int(np.argmax(fall / flops[free]))
            why = "random"
        else:
            j = int(np.argmax(fall / flops[free]))
            why = "score"
        if not need.size and mode != "random" and not fall[j] > MIN_RELATIVE_FALL * math.sqrt(var):
            break
        row = int(free[j])
        if need.size:
            why = "halves: a budget for the split-half check"
        take(row, why)
        A, B = A + a[row] * outer[row], B + b[row] * outer[row]
        var = float(sandwich_phi(A[None], B[None])[0])
        sd_pred = max(sd_pred - float(fall[j]), 0.0)
        chosen.picks[-1].width_after = scale * 2 * Z95 * sd_pred
    return chosen


def rule_now(space, data, mask: np.ndarray, theta: np.ndarray):
    """The rule on ``mask`` under the fit θ (analysis.adaptive.rule.check_rule)."""
    return check_rule(space, mask, predictions(space, data, theta))
