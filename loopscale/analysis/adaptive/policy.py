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

from loopscale.analysis.adaptive.rule import check_rule, half_needs, halves, near_optimum, rule_deficits, width_room
from loopscale.analysis.defaults import HUBER_DELTA
from loopscale.analysis.law import Law, log_prediction, params_of
from loopscale.analysis.plan.sandwich import Z95, information, sandwich_phi
from loopscale.analysis.regime import MAX_PHI_CI_WIDTH, MIN_R2

EXISTING_CELL_FACTOR = 0.5  # a run in a cell the design has narrows the cell-bootstrap CI this share of the sandwich's
WINDOW = 2  # widths within this many places of a cell's fitted optimum (5 per cell)
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


def _objective(A, B, half, split: bool) -> np.ndarray:
    """The sd the score lowers, for stacks of information matrices: φ's sandwich sd, or with ``split`` the sd
    of φ_low − φ_high (each half's sandwich variance, summed); ``half``: (A_low, B_low, A_high, B_high)."""
    if not split:
        return np.sqrt(sandwich_phi(A, B))
    return np.sqrt(sandwich_phi(half[0], half[1]) + sandwich_phi(half[2], half[3]))


def go_on(space, data, design_mask: np.ndarray, theta: np.ndarray, noise: float, width: float, k: int,
          flops_left: float, *, r2: float, bounds_ok: bool, split_ok: bool, mode: str = "score",
          rng=None) -> tuple[Choice, str | None]:
    """A look that does not stop on target (the simulation's replicates and a real round alike): the runs it
    chooses (:func:`choose`), or why it stops instead: ``budget`` (a wanted run did not fit in the cap) or
    ``no_help`` (none is expected to narrow the CI). The fit places widths once its R² passes, no parameter is on
    a bound and its CI is finite."""
    trust = bool(r2 >= MIN_R2 and bounds_ok and math.isfinite(width))
    ch = choose(space, data, design_mask, theta, noise, width, k, flops_left, trust_fit=trust,
                split_failed=not split_ok, mode=mode, rng=rng)
    return ch, (None if ch.picks else "budget" if ch.blocked_by_budget else "no_help")


def choose(space, data, mask: np.ndarray, theta: np.ndarray, noise: float, width_now: float, k: int,
           flops_left: float, *, trust_fit: bool = True, split_failed: bool = False, mode: str = "score", rng=None,
           delta: float = HUBER_DELTA) -> Choice:
    """The next ``k`` runs for design ``mask`` under the fit θ and ``noise`` (nats); see the module docstring.
    ``split_failed``: the last look's split-half check failed, so the score lowers the sd of φ_low − φ_high
    instead of φ's; widths are placed within WINDOW places of each cell's fitted optimum."""
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
    outer = np.einsum("ci,cj->cij", J, J)
    c = space.table["budget_flops"].to_numpy(dtype=float)
    low_top = halves(c[mask])[0].max(initial=-np.inf)
    in_low = c <= low_top
    A = np.einsum("c,cij->ij", a * taken, outer)
    B = np.einsum("c,cij->ij", b * taken, outer)
    half = [np.einsum("c,cij->ij", v * taken * side, outer) for side in (in_low, ~in_low) for v in (a, b)]
    sd0 = float(_objective(A[None], B[None], [h[None] for h in half], False)[0])
    sandwich_width = 2 * Z95 * sd0
    scale = width_now / sandwich_width if math.isfinite(width_now) and sandwich_width > 0 else 1.0
    chosen.width_before = width_now if math.isfinite(width_now) else None
    cells = space.table["cell"].to_numpy()
    allowed = near_optimum(space, predictions(space, data, theta), WINDOW) if trust_fit else np.ones(len(c), bool)
    sd_pred = full_sd = sd0
    while len(chosen.picks) < k:
        free = np.flatnonzero(~taken & allowed & width_room(space, taken) & (flops <= left * (1 + 1e-12)))
        if free.size == 0:
            chosen.blocked_by_budget = bool((~taken & allowed).any())
            break
        need = half_needs(space, taken)
        if need.size:
            free = np.intersect1d(free, need)
            if free.size == 0:
                chosen.blocked_by_budget = True
                break
        now = float(_objective(A[None], B[None], [h[None] for h in half], split_failed)[0])
        Af, Bf = A[None] + a[free, None, None] * outer[free], B[None] + b[free, None, None] * outer[free]
        lo = in_low[free][:, None, None]
        hf = [h[None] + np.where(lo == (i < 2), v[free, None, None] * outer[free], 0.0)
              for i, (h, v) in enumerate(zip(half, (a, b, a, b)))]
        after = _objective(Af, Bf, hf, split_failed)
        fall = np.where(np.isfinite(after), (now - after) if math.isfinite(now) else 1.0, 0.0)
        fall = np.where(np.isin(cells[free], cells[taken]), EXISTING_CELL_FACTOR * fall, fall)
        helps = fall > MIN_RELATIVE_FALL * (now if math.isfinite(now) else 1.0)
        if need.size:
            helps[:] = True
        if not helps.any():
            break
        if mode == "random" and not need.size:
            j = int(rng.choice(np.flatnonzero(helps)))
            why = "random"
        else:
            j = int(np.argmax(np.where(helps, fall / flops[free], -np.inf)))
            why = "halves: a budget for the split-half check" if need.size else "score"
        row = int(free[j])
        full_after = float(_objective(Af[j:j + 1], Bf[j:j + 1], None, False)[0])
        factor = EXISTING_CELL_FACTOR if cells[row] in set(cells[taken]) else 1.0
        take(row, why)
        A, B = Af[j], Bf[j]
        half = [h[j] for h in hf]
        sd_pred = max(sd_pred - factor * (full_sd - full_after), 0.0)
        full_sd = full_after
        chosen.picks[-1].width_after = scale * 2 * Z95 * sd_pred
    return chosen


def rule_now(space, data, mask: np.ndarray, theta: np.ndarray):
    """The rule on ``mask`` under the fit θ (analysis.adaptive.rule.check_rule)."""
    return check_rule(space, mask, predictions(space, data, theta))
