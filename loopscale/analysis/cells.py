"""Iso-FLOP cells: where each (budget, r[, probe]) cell's loss minimum over N lies (torch-free).

One implementation for the regime diagnostics, `optimal` (the report's compute-optimal figures) and `plan`:

- :func:`cell_minima` — per iso-FLOP cell (budget × r × probe), a parabola L = a + b·x + c·x² in
  x = log N (N = N_once + N_rec, repeats of one width averaged first) and where its vertex lies
  relative to the widths trained: ``inside`` (bracketed), ``below`` the smallest, ``above`` the
  largest, ``flat`` (no positive curvature) or ``few`` (< MIN_WIDTHS widths);
- :func:`table_cells` — the same for a runs table;
- :func:`cells_missed` — where the cells that miss their optimum miss it, and what to train instead.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

MIN_WIDTHS = 3  # widths a cell needs for a parabola


@dataclass(frozen=True)
class CellMinimum:
    """One (budget, r[, probe]) iso-FLOP cell and where its loss minimum over N lies."""

    budget: float  # FLOP budget C of the cell
    r: int
    probe: str
    n_widths: int  # distinct N values trained in the cell
    n_min: float  # smallest / largest N = N_once + N_rec trained
    n_max: float
    n_star: float | None  # parabola vertex in log N (None: < 3 widths or curvature <= 0)
    loss_star: float | None  # parabola value at the vertex
    curvature: float | None  # c of L = a + b·log N + c·log² N (None: < 3 widths)
    bracketed: bool  # vertex strictly inside (log n_min, log n_max) and curvature > 0
    where: str  # inside | below | above | flat | few
    n_runs: int = 0  # runs in the cell (repeats included)

    def to_dict(self) -> dict:
        return asdict(self)


def width_means(n, loss) -> tuple[np.ndarray, np.ndarray]:
    """The distinct N of a cell, sorted, and the mean loss at each (seed repeats averaged)."""
    widths, inverse = np.unique(np.asarray(n, dtype=float), return_inverse=True)
    return widths, np.bincount(inverse, weights=np.asarray(loss, dtype=float)) / np.bincount(inverse)


def parabola(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Least-squares parabola through (x, y) with x centred for conditioning: (x0, [c, b, a]) for
    y = a + b·(x − x0) + c·(x − x0)² (np.polyval order)."""
    x0 = float(np.mean(x))
    return x0, np.polyfit(x - x0, y, 2)


def _vertex(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least-squares parabola y = a + b·x + c·x² (:func:`parabola`): (c, x*, y*) with x* = −b/(2c) (NaN
    when c <= 0)."""
    x0, (c, b, a) = parabola(x, y)
    if not c > 0:
        return float(c), math.nan, math.nan
    xs = -b / (2 * c)
    return float(c), float(xs + x0), float(a + b * xs + c * xs * xs)


def one_cell(n, loss, budget: float, r: int, probe: str = "none") -> CellMinimum:
    """The minimum of one cell from its runs' N and losses (repeats of an N averaged)."""
    n = np.asarray(n, dtype=float)
    widths, mean = width_means(n, loss)
    base = dict(budget=float(budget), r=int(r), probe=str(probe), n_widths=len(widths),
                n_min=float(widths[0]), n_max=float(widths[-1]), n_runs=len(n))
    if len(widths) < MIN_WIDTHS:
        return CellMinimum(**base, n_star=None, loss_star=None, curvature=None, bracketed=False, where="few")
    x = np.log(widths)
    c, xs, ys = _vertex(x, mean)
    if not np.isfinite(xs):
        return CellMinimum(**base, n_star=None, loss_star=None, curvature=c, bracketed=False, where="flat")
    where = "inside" if x[0] < xs < x[-1] else "below" if xs <= x[0] else "above"
    return CellMinimum(**base, n_star=float(np.exp(xs)), loss_star=ys, curvature=c, bracketed=where == "inside",
                       where=where)


def cell_minima(n, loss, budget, r, probe=None) -> list[CellMinimum]:
    """Minima of every (budget, r, probe) cell; arrays of equal length. N is unique non-embedding
    parameters N_once + N_rec. Rows with a NaN budget or loss (token-budget runs, unfinished runs)
    belong to no cell. Sorted by probe, budget, r."""
    n, loss = np.asarray(n, dtype=float), np.asarray(loss, dtype=float)
    budget, r = np.asarray(budget, dtype=float), np.asarray(r, dtype=float)
    probe = np.full(len(n), "none", dtype=object) if probe is None else \
        np.array(["none" if p is None or (isinstance(p, float) and math.isnan(p)) else str(p) for p in probe], dtype=object)
    if not (len(n) == len(loss) == len(budget) == len(r) == len(probe)):
        raise ValueError("cell_minima: n, loss, budget, r and probe must have equal lengths")
    ok = np.isfinite(n) & (n > 0) & np.isfinite(loss) & np.isfinite(budget) & np.isfinite(r)
    keys = sorted({(probe[i], budget[i], r[i]) for i in np.flatnonzero(ok)})
    out = []
    for p, c, rr in keys:
        m = ok & (probe == p) & (budget == c) & (r == rr)
        out.append(one_cell(n[m], loss[m], c, int(rr), p))
    return out


def table_cells(table: pd.DataFrame) -> list[CellMinimum]:
    """:func:`cell_minima` of a runs table (n_once, n_rec, r, loss, budget_flops[, probe])."""
    if "budget_flops" not in table:
        return []
    return cell_minima(table["n_once"] + table["n_rec"], table["loss"], table["budget_flops"], table["r"],
                       table["probe"] if "probe" in table else None)


def cells_missed(judged: list[CellMinimum]) -> str:
    """Where the cells that do not bracket their optimum miss it, and what to train instead, in one
    clause ("" when every cell brackets it). Shared by the fit's verdict and plan's warning."""
    where = {w: sum(c.where == w for c in judged) for w in ("below", "above", "flat")}
    parts = []
    if where["below"]:
        parts.append(f"the compute-optimal width lies below the smallest width trained in {_cells(where['below'])} "
                     "(train narrower models or larger budgets)")
    if where["above"]:
        parts.append(f"the compute-optimal width lies above the largest width trained in {_cells(where['above'])} "
                     "(train wider models or smaller budgets)")
    if where["flat"]:
        parts.append(f"{_cells(where['flat'])} show no minimum (loss not convex in log N)")
    return "; ".join(parts)


def _cells(k: int) -> str:
    return "1 cell" if k == 1 else f"{k} cells"
