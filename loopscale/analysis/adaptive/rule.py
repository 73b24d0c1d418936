"""The rule an adaptive design keeps, so that it measures φ over the range it is asked about, and the checks of
the verdict a round's stop needs (as `loopscale fit` judges them).

The rule, on a design (a mask over the space's universe, analysis.adaptive.space):

- for every r of the space (none dropped), a *bracketed* cell at the space's smallest and at its largest
  budget: ≥ MIN_WIDTHS widths whose parabola in log N (analysis.cells.one_cell) has its vertex strictly
  inside them, judged on a law's noise-free losses (the current fit in a round; the true law in simulation);
- enough budgets in each half, split as `fit` splits them (analysis.fit.split_half: the lower
  ⌊k/2⌋ budgets and the rest): MIN_HALF_BUDGETS each, so that the split-half check is real.

:func:`rule_deficits` lists the runs that would make the rule hold (the end cells' widths placed around the
fitted optimum); :func:`split_ok` is the split-half check of analysis.regime (a check that could not be
computed is not a pass)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from loopscale.analysis.cells import MIN_WIDTHS, one_cell
from loopscale.analysis.regime import SPLIT_HALF_FLOOR

MIN_HALF_BUDGETS = 2  # budgets each half of the split-half check needs
SPREAD = 2  # an end cell's widths: the fitted optimum and the candidate widths this many places to each side
# (adjacent widths around the optimum see a valley too shallow for 0.01-nat noise: the cell then fails fit's
# bracketing check on its real losses)
MAX_OTHER_WIDTHS = 3  # a cell neither of the pilot nor an end cell gets at most this many widths (3 measured
# better than 2 in a 6-replicate check on paper.yaml: 3 of 6 reached against 2 of 6)


def halves(budgets) -> tuple[np.ndarray, np.ndarray]:
    """The lower and the upper half of the sorted distinct budgets, as `fit` splits them (an odd middle
    budget goes to the upper half)."""
    b = np.unique(np.asarray(budgets, dtype=float))
    return b[: len(b) // 2], b[len(b) // 2:]


@dataclass
class RuleCheck:
    """Whether a design keeps the rule, and what it lacks."""

    held: bool
    end_cells: dict[str, str] = field(default_factory=dict)  # "C|r" → inside | below | above | flat | few
    half_budgets: tuple[int, int] = (0, 0)  # distinct budgets in the lower and the upper half
    missing: list[str] = field(default_factory=list)  # one line per failed part


def end_cell_keys(space) -> list[tuple[float, int]]:
    lo, hi = space.end_budgets
    return [(c, r) for c in (lo, hi) for r in space.r_values]


def check_rule(space, mask: np.ndarray, loss: np.ndarray) -> RuleCheck:
    """The rule on design ``mask`` with losses ``loss`` (n,) over the universe: a law's predictions (noise-free)."""
    t = space.table
    n = (t["n_once"] + t["n_rec"]).to_numpy(dtype=float)
    c, r = t["budget_flops"].to_numpy(dtype=float), t["r"].to_numpy()
    cells, missing = {}, []
    for budget, rr in end_cell_keys(space):
        m = mask & (c == budget) & (r == rr)
        key = f"{budget:.3g}|r{rr}"
        where = "few" if m.sum() == 0 else one_cell(n[m], loss[m], budget, rr).where
        cells[key] = where
        if where != "inside":
            missing.append(f"cell C {budget:.3g}, r = {rr}: {where} (a bracketed cell of ≥ {MIN_WIDTHS} widths wanted)")
    low, high = halves(c[mask])
    if min(len(low), len(high)) < MIN_HALF_BUDGETS:
        missing.append(f"budgets per half {len(low)} / {len(high)} (at least {MIN_HALF_BUDGETS} each for the "
                       "split-half check)")
    return RuleCheck(held=not missing, end_cells=cells, half_budgets=(len(low), len(high)), missing=missing)


def rule_deficits(space, mask: np.ndarray, pred: np.ndarray, trust_fit: bool) -> list[tuple[int, str]]:
    """Runs (universe rows, not in ``mask``) that the end cells still need, with why: per end cell that does not
    bracket the optimum of ``pred`` yet, the width
    nearest the optimum of ``pred`` (the current fit's noise-free losses) among the cell's candidate widths and
    one on each side of it. Without ``trust_fit`` (a pilot that fits poorly) the widths are the grid's own at
    that budget, else the middle three candidate widths. The budgets per half are left to the scored picks
    (:func:`half_needs`)."""
    t = space.table
    c, r, w = (t[k].to_numpy() for k in ("budget_flops", "r", "width"))
    fixed_widths = {(float(b), int(rr)): sorted(set(g["width"])) for (b, rr), g in
                    space.fixed.groupby(["budget_flops", "r"])}
    out = []
    for budget, rr in end_cell_keys(space):
        rows = np.flatnonzero((c == budget) & (r == rr))
        if rows.size == 0:
            continue
        rows = rows[np.argsort(w[rows], kind="stable")]
        inside = rows[mask[rows]]
        nn = (t["n_once"] + t["n_rec"]).to_numpy(dtype=float)
        if inside.size and one_cell(nn[inside], pred[inside], budget, rr).where == "inside":
            continue  # bracketed already (under the fit)
        widths = sorted(set(int(v) for v in w[rows]))
        if trust_fit:
            best = {}
            for i in rows:  # one prediction per width (seed repeats share it)
                best.setdefault(int(w[i]), pred[i])
            k = int(np.argmin([best[v] for v in widths]))  # the optimum and SPREAD places to each side
            k = min(max(k, SPREAD), len(widths) - 1 - SPREAD) if len(widths) > 2 * SPREAD else len(widths) // 2
            wanted = sorted({widths[max(k - SPREAD, 0)], widths[k], widths[min(k + SPREAD, len(widths) - 1)]})
        else:
            own = [v for v in fixed_widths.get((float(budget), int(rr)), []) if v in widths]
            mid = max(0, len(widths) // 2 - 1)
            wanted = own if len(own) >= MIN_WIDTHS else widths[mid: mid + MIN_WIDTHS]
        for v in wanted:
            have = rows[(w[rows] == v)]
            if not mask[have].any():
                out.append((int(have[0]), f"rule: end cell C {budget:.3g}, r = {rr}, d {v}"))
    return out


def half_needs(space, mask: np.ndarray) -> np.ndarray:
    """Rows at budgets the design lacks whose addition raises the smaller half's budget count, when a half has
    fewer than MIN_HALF_BUDGETS (empty otherwise)."""
    c = space.table["budget_flops"].to_numpy(dtype=float)
    low, high = halves(c[mask])
    if min(len(low), len(high)) >= MIN_HALF_BUDGETS:
        return np.zeros(0, dtype=int)
    now = min(len(low), len(high))
    have = set(c[mask])
    good = [b for b in space.budgets if b not in have
            and min(len(h) for h in halves(np.append(c[mask], b))) > now]
    return np.flatnonzero(np.isin(c, good) & ~mask)


def split_ok(phi_low: float | None, phi_high: float | None, ci_width: float | None) -> bool:
    """analysis.regime's split-half check: |φ_low − φ_high| ≤ √2·(CI width)/2, never tighter than
    SPLIT_HALF_FLOOR; False (not a pass) when a half or the CI could not be computed."""
    if phi_low is None or phi_high is None or ci_width is None:
        return False
    if not all(math.isfinite(v) for v in (phi_low, phi_high, ci_width)):
        return False
    return abs(phi_low - phi_high) <= max(math.sqrt(2) * ci_width / 2, SPLIT_HALF_FLOOR)


def near_optimum(space, pred: np.ndarray, window: int = 1) -> np.ndarray:
    """Rows whose width lies within ``window`` places of its (budget, r) cell's optimum under ``pred`` (the
    current fit's noise-free losses), among the cell's candidate widths: where the choice may place widths, so
    that a cell with ≥ MIN_WIDTHS widths brackets its optimum."""
    t = space.table
    out = np.zeros(len(t), dtype=bool)
    w = t["width"].to_numpy()
    for _, rows in t.groupby("cell").indices.items():
        widths = np.unique(w[rows])
        best = {int(w[i]): pred[i] for i in rows}
        k = int(np.argmin([best[int(v)] for v in widths]))
        keep = widths[max(k - window, 0): k + window + 1]
        out[rows] = np.isin(w[rows], keep)
    return out


def width_room(space, mask: np.ndarray) -> np.ndarray:
    """Rows the choice may still add without making a cell that is neither the pilot's nor an end cell hold
    more than MAX_OTHER_WIDTHS widths: such a cell would be judged by fit's bracketing check on a few noisy
    losses near its optimum."""
    t = space.table
    ends = {f"C{c:.6g}|r{r:g}" for c, r in end_cell_keys(space)}
    pilot_cells = set(t["cell"][space.pilot])
    counts = t["cell"][mask].value_counts()
    full = {c for c, k in counts.items() if k >= MAX_OTHER_WIDTHS and c not in ends and c not in pilot_cells}
    return ~t["cell"].isin(full).to_numpy()
