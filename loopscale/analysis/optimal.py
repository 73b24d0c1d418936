"""Compute-optimal points, measured and predicted (method.md §5, §7).

- :func:`cell_parabolas` — per iso-FLOP (budget, r) cell of a runs table: the runs' (N, loss), the
  parabola in log N through them (repeats of one N averaged, as cells.one_cell fits it) over the
  trained range, and the cell's minimum (cells.CellMinimum: vertex N*, L*, bracketed or not).
- :func:`measured_optima` and :func:`measured_gaps` — the cells' vertices as a table, and the loss
  gap L*(C, r) − L*(C, 1) between cells of one budget.
- :func:`run_costs` — per r, FLOPs per token F(N) and the prelude/coda share N_once/N as smooth
  functions of log N, fitted to the runs themselves (no architecture assumed).
- :func:`law_optimum` / :func:`law_optima` / :func:`law_gaps` — the fitted law's compute-optimal
  point: minimise L̂(N_once, N_rec, r, D) along the iso-FLOP constraint D = C / F(N).

N is unique non-embedding parameters N_once + N_rec throughout. Torch-free; nothing here draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

from loopscale.analysis.cells import MIN_WIDTHS, CellMinimum, one_cell, parabola, width_means
from loopscale.analysis.law import FitData, predict_loss

SEARCH_DECADES = 1.0  # the law's N* is searched this many decades beyond the N trained at that r
CURVE_POINTS = 60


# --- measured: iso-FLOP cells ------------------------------------------------------------------------

@dataclass(frozen=True)
class CellParabola:
    """One (budget, r) cell: its runs, the parabola through them, and where its minimum lies."""

    budget: float
    r: int
    n: np.ndarray  # N of each run (repeats kept)
    loss: np.ndarray
    curve_n: np.ndarray  # the parabola over the trained range of N (empty: < 3 widths)
    curve_loss: np.ndarray
    minimum: CellMinimum


def _numeric(table: pd.DataFrame, col: str) -> np.ndarray:
    if col not in table:
        return np.full(len(table), np.nan)
    return pd.to_numeric(table[col], errors="coerce").to_numpy(dtype=float)


def cell_parabolas(table: pd.DataFrame, points: int = CURVE_POINTS) -> list[CellParabola]:
    """The iso-FLOP cells of a runs table (n_once, n_rec, r, loss, budget_flops), sorted by budget
    then r. Rows without a finite budget or loss belong to no cell (token-budget runs, unfinished
    runs): a table without FLOP budgets has no cells. The parabola L = a + b·x + c·x², x = log N,
    is the least-squares fit through each width's mean loss, drawn from the smallest to the largest
    N trained."""
    n = _numeric(table, "n_once") + _numeric(table, "n_rec")
    loss, budget, r = _numeric(table, "loss"), _numeric(table, "budget_flops"), _numeric(table, "r")
    ok = np.isfinite(n) & (n > 0) & np.isfinite(loss) & np.isfinite(budget) & np.isfinite(r)
    out = []
    for c, rr in sorted({(budget[i], r[i]) for i in np.flatnonzero(ok)}):
        m = ok & (budget == c) & (r == rr)
        minimum = one_cell(n[m], loss[m], c, int(rr))
        widths, mean = width_means(n[m], loss[m])
        curve_n = curve_loss = np.empty(0)
        if len(widths) >= MIN_WIDTHS:
            x = np.log(widths)
            x0, coef = parabola(x, mean)  # the parabola whose vertex one_cell found
            xs = np.linspace(x[0], x[-1], points)
            curve_n, curve_loss = np.exp(xs), np.polyval(coef, xs - x0)
        out.append(CellParabola(float(c), int(rr), n[m], loss[m], curve_n, curve_loss, minimum))
    return out


OPTIMA_COLUMNS = ["budget", "r", "n_star", "loss_star", "bracketed", "where", "reach"]


def reach(m: CellMinimum) -> float:
    """How far a cell's vertex lies beyond the N trained, as a factor: 1 inside the range, 10 when
    N* is ten times below the smallest (or above the largest) N trained."""
    return max(1.0, m.n_min / m.n_star, m.n_star / m.n_max)


def measured_optima(cells: list[CellMinimum | CellParabola]) -> pd.DataFrame:
    """The cells' vertices: budget, r, n_star, loss_star, bracketed, where, reach (see :func:`reach`).
    Cells without a vertex are left out (fewer than 3 widths, or no positive curvature)."""
    rows = []
    for c in cells:
        m = c.minimum if isinstance(c, CellParabola) else c
        if m.n_star is not None:
            rows.append({"budget": m.budget, "r": m.r, "n_star": m.n_star, "loss_star": m.loss_star,
                         "bracketed": m.bracketed, "where": m.where, "reach": reach(m)})
    return pd.DataFrame(rows, columns=OPTIMA_COLUMNS)


def measured_gaps(optima: pd.DataFrame, reference_r: int = 1) -> pd.DataFrame:
    """L*(C, r) − L*(C, reference_r) for each budget C where both cells have a vertex; ``bracketed``
    is True only when both vertices are bracketed, ``reach`` the larger of the two (see :func:`reach`).
    Columns: budget, r, gap, bracketed, reach."""
    cols = ["budget", "r", "gap", "bracketed", "reach"]
    if optima.empty:
        return pd.DataFrame(columns=cols)
    ref = optima[optima["r"] == reference_r].set_index("budget")
    rows = []
    for _, o in optima[optima["r"] != reference_r].iterrows():
        if o["budget"] in ref.index:
            base = ref.loc[o["budget"]]
            rows.append({"budget": o["budget"], "r": int(o["r"]), "gap": o["loss_star"] - base["loss_star"],
                         "bracketed": bool(o["bracketed"] and base["bracketed"]),
                         "reach": max(o["reach"], base["reach"])})
    return pd.DataFrame(rows, columns=cols).sort_values(["r", "budget"], ignore_index=True)


# --- the law along the iso-FLOP constraint ---------------------------------------------------------------

@dataclass(frozen=True)
class RunCost:
    """What one N costs at one r, fitted to that r's runs: log F = poly(log N) (F = training FLOPs per
    token) and N_once / N = poly(log N), each of degree ≤ 2 (≤ the distinct N − 1)."""

    r: int
    n_min: float  # smallest / largest N trained at this r
    n_max: float
    log_fpt: np.ndarray  # polynomial coefficients in log N (np.polyval order)
    once_share: np.ndarray

    def flops_per_token(self, n) -> np.ndarray:
        return np.exp(np.polyval(self.log_fpt, np.log(np.asarray(n, dtype=float))))

    def n_once(self, n) -> np.ndarray:
        n = np.asarray(n, dtype=float)
        return np.clip(np.polyval(self.once_share, np.log(n)), 0.0, 1.0) * n


def run_costs(table: pd.DataFrame) -> dict[int, RunCost]:
    """Per r, F(N) and N_once(N) from the runs (flops_per_token, else flops_total / tokens); an r
    with fewer than two distinct N is left out (no slope to extrapolate along)."""
    n = _numeric(table, "n_once") + _numeric(table, "n_rec")
    fpt = _numeric(table, "flops_per_token")
    fpt = np.where(np.isfinite(fpt), fpt, _numeric(table, "flops_total") / _numeric(table, "tokens"))
    once, r = _numeric(table, "n_once"), _numeric(table, "r")
    ok = np.isfinite(n) & (n > 0) & np.isfinite(fpt) & (fpt > 0) & np.isfinite(r) & np.isfinite(once)
    out = {}
    for rr in sorted(set(r[ok])):
        m = ok & (r == rr)
        widths = np.unique(n[m])
        if len(widths) < 2:
            continue
        x = np.log(n[m])
        deg = min(2, len(widths) - 1)
        out[int(rr)] = RunCost(int(rr), float(widths[0]), float(widths[-1]), np.polyfit(x, np.log(fpt[m]), deg),
                               np.polyfit(x, once[m] / n[m], min(1, deg)))
    return out


def _law_loss(theta, cost: RunCost, budget: float, n: np.ndarray) -> np.ndarray:
    once = cost.n_once(n)
    tokens = budget / cost.flops_per_token(n)
    data = FitData.from_arrays(once, n - once, np.full(len(n), float(cost.r)), tokens, np.ones(len(n)))
    return predict_loss(theta, data)


@dataclass(frozen=True)
class LawOptimum:
    budget: float
    r: int
    n_star: float
    loss_star: float
    tokens: float  # D = C / F(N*)


def law_optimum(theta, cost: RunCost, budget: float, decades: float = SEARCH_DECADES) -> LawOptimum | None:
    """The law's compute-optimal point at budget C and r: argmin over N of L̂(N_once(N), N − N_once(N),
    r, C / F(N)), searched within ``decades`` decades beyond the N trained at r (F is extrapolated no
    further). None when the minimum lies on the edge of that range (not resolved by these runs)."""
    lo, hi = math.log(cost.n_min) - decades * math.log(10), math.log(cost.n_max) + decades * math.log(10)
    xs = np.linspace(lo, hi, 401)
    with np.errstate(over="ignore", invalid="ignore"):
        loss = _law_loss(theta, cost, budget, np.exp(xs))
    if not np.isfinite(loss).any():
        return None
    i = int(np.nanargmin(loss))
    if i in (0, len(xs) - 1):
        return None
    res = minimize_scalar(lambda x: float(_law_loss(theta, cost, budget, np.array([math.exp(x)]))[0]),
                          bounds=(xs[i - 1], xs[i + 1]), method="bounded", options={"xatol": 1e-9})
    n = math.exp(res.x)
    return LawOptimum(float(budget), cost.r, n, float(res.fun), float(budget / cost.flops_per_token(n)))


def law_optima(theta, costs: dict[int, RunCost], budgets) -> pd.DataFrame:
    """The law's optimum per r and budget: budget, r, n_star, loss_star, tokens (rows where it is
    not resolved in range are left out)."""
    rows = []
    for r, cost in costs.items():
        for c in budgets:
            o = law_optimum(theta, cost, float(c))
            if o is not None:
                rows.append(vars(o))
    return pd.DataFrame(rows, columns=["budget", "r", "n_star", "loss_star", "tokens"])


def law_gaps(optima: pd.DataFrame, reference_r: int = 1) -> pd.DataFrame:
    """L̂*(C, r) − L̂*(C, reference_r) of the law's optima (rows of the same budgets): budget, r, gap."""
    cols = ["budget", "r", "gap"]
    if optima.empty or reference_r not in set(optima["r"]):
        return pd.DataFrame(columns=cols)
    ref = optima[optima["r"] == reference_r].set_index("budget")["loss_star"]
    other = optima[(optima["r"] != reference_r) & optima["budget"].isin(ref.index)]
    return pd.DataFrame({"budget": other["budget"].to_numpy(), "r": other["r"].to_numpy(),
                         "gap": other["loss_star"].to_numpy() - ref.loc[other["budget"]].to_numpy()},
                        columns=cols).reset_index(drop=True)


def budget_grid(budgets, points: int = CURVE_POINTS, pad: float = 1.25) -> np.ndarray:
    """Budgets for the law's lines: log-spaced from the smallest to the largest budget, padded by ``pad``."""
    b = np.asarray([v for v in budgets if np.isfinite(v) and v > 0], dtype=float)
    if b.size == 0:
        return np.empty(0)
    return np.geomspace(b.min() / pad, b.max() * pad, points)


@dataclass
class Optima:
    """Everything the compute-optimal figures draw, from one runs table and (optionally) a fit."""

    cells: list[CellParabola]
    measured: pd.DataFrame  # measured_optima
    gaps: pd.DataFrame  # measured_gaps (to r = 1)
    law: pd.DataFrame  # law_optima over budget_grid (empty without a fit)
    law_gaps: pd.DataFrame
    reference_r: int = 1
    law_unresolved: list[int] = field(default_factory=list)  # r whose law optimum left the searched range


def optima(table: pd.DataFrame, theta=None, reference_r: int = 1) -> Optima:
    """The cells, their vertices and gaps to ``reference_r``; with the law's θ (fit.LawFit.theta) also
    the law's optima along a grid of budgets spanning the table's and their gaps."""
    cells = cell_parabolas(table)
    measured = measured_optima(cells)
    law = pd.DataFrame(columns=["budget", "r", "n_star", "loss_star", "tokens"])
    unresolved: list[int] = []
    if theta is not None and cells:
        grid = budget_grid([c.budget for c in cells])
        costs = run_costs(table)
        law = law_optima(np.asarray(theta, dtype=float), costs, grid)
        unresolved = sorted(set(costs) - set(law["r"]))
    return Optima(cells, measured, measured_gaps(measured, reference_r), law, law_gaps(law, reference_r),
                  reference_r, unresolved)
