"""The pilot and the candidate space of an adaptive sweep, from an iso-FLOP grid and its optional `adaptive:`
section (loopscale.grid: Grid.adaptive).

The space is one table, the *universe*: the pilot's runs (the grid's probe-none runs at the pilot budgets, its
seed repeats included) and one candidate run per (budget, width, r) of the space that the pilot does not hold.
Budgets: the section's (default: the grid's) and, unless ``midpoints: false``, the geometric midpoint between
each pair of neighbours; widths: every width the grid trains (or the section's); r: the grid's (or the
section's). A candidate is kept when its tokens per parameter stay within the grid's own range (as plan's
suggestions: budgets and widths are not extrapolated). A design is a boolean mask over the universe, so that
every replicate of a simulation and every round of a sweep refits the same rows with 0/1 weights."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from loopscale.analysis.plan.design import design_table, fit_data, run_row
from loopscale.counting import ArchError, probe_arch, split_arch
from loopscale.errors import UserError


@dataclass
class Space:
    """The universe of runs (``table``: design rows as analysis.plan.design makes them, plus ``pilot`` and
    ``cell``), the pilot's mask, the space's budgets, widths and r, and the fixed grid's own baseline runs."""

    table: pd.DataFrame
    pilot: np.ndarray  # bool (n,)
    budgets: np.ndarray  # sorted FLOP budgets of the space
    widths: list[int]
    r_values: list[int]
    fixed: pd.DataFrame  # the grid's probe-none runs (what the fixed grid trains for φ)
    source: str  # "adaptive section" | "grid"

    @property
    def flops(self) -> np.ndarray:
        return self.table["flops"].to_numpy(dtype=float)

    @property
    def end_budgets(self) -> tuple[float, float]:
        return float(self.budgets[0]), float(self.budgets[-1])

    @property
    def pilot_flops(self) -> float:
        return float(self.flops[self.pilot].sum())

    @property
    def fixed_flops(self) -> float:
        return float(self.fixed["flops"].sum())

    def data(self):
        """The universe as FitData (unit losses: callers pass their own log-losses and weights)."""
        return fit_data(self.table)

    def cell_codes(self) -> np.ndarray:
        """An integer per (budget, r) cell of each row (the cell bootstrap's unit)."""
        return pd.factorize(self.table["cell"])[0]


def midpoints(budgets) -> list[float]:
    """The budgets with the geometric midpoint between each pair of neighbours added, sorted."""
    b = sorted(float(v) for v in budgets)
    mids = [float(np.sqrt(lo * hi)) for lo, hi in zip(b, b[1:])]
    return sorted(set(b) | set(mids))


def check_iso_flop(grid) -> None:
    """Refuse a grid an adaptive sweep cannot run on (UserError): token budgets, or no looped run."""
    if not grid.runs or any(s.budget_flops is None for s in grid.runs):
        raise UserError(f"{grid.name}: an adaptive sweep needs a grid of FLOP budgets (`flops:`); this grid trains "
                        "token budgets (or a run list without budget_flops)")
    if not any(s.r > 1 and s.probe == "none" for s in grid.runs):
        raise UserError(f"{grid.name}: no probe-none run loops a block (all r = 1): phi cannot be measured")


def build_space(grid) -> Space:
    """The pilot and the candidate space of ``grid`` (see the module docstring)."""
    check_iso_flop(grid)
    plain = [s for s in grid.runs if s.probe == "none"]
    own = sorted({float(s.budget_flops) for s in plain})
    sec = grid.adaptive
    if sec is None:
        sec = {"pilot": own[:2], "budgets": own, "midpoints": True, "widths": sorted({s.d_model for s in plain}),
               "r": sorted({s.r for s in plain})}
        source = "grid"
    else:
        source = "adaptive section"
    budgets = midpoints(sec["budgets"]) if sec["midpoints"] else sorted(sec["budgets"])
    fixed = design_table(plain)
    pilot_rows = fixed[fixed["budget_flops"].isin(sec["pilot"])].copy()
    tpp = fixed["tokens"] / (fixed["n_once"] + fixed["n_rec"])
    lo, hi = float(tpp.min()) * (1 - 1e-9), float(tpp.max()) * (1 + 1e-9)
    have = set(zip(pilot_rows["budget_flops"], pilot_rows["width"], pilot_rows["r"]))
    rows = []
    for r in sec["r"]:
        same_r = [s.config for s in plain if s.r == r] or [s.config for s in plain if s.r > 1] or [plain[0].config]
        template = same_r[0]
        shape = split_arch(template.model)[0]
        for c in budgets:
            for w in sec["widths"]:
                if (c, w, r) in have:
                    continue
                try:
                    model = probe_arch({**shape, "d_model": int(w), "r": int(r)}, "none", {})
                except ArchError:
                    continue
                train = dataclasses.replace(template.train, budget_flops=float(c), tokens=None, seed=0)
                cfg = dataclasses.replace(template, model=model, train=train)
                if cfg.iterations() < 1:
                    continue
                row = run_row(cfg, f"cand-{c:.4g}-d{w}-r{r}", c)
                if lo <= row["tokens"] / (row["n_once"] + row["n_rec"]) <= hi:
                    rows.append(row)
    table = pd.concat([pilot_rows.assign(pilot=True), pd.DataFrame(rows).assign(pilot=False)], ignore_index=True)
    table["cell"] = [f"C{c:.6g}|r{r:g}" for c, r in zip(table["budget_flops"], table["r"])]
    return Space(table=table, pilot=table["pilot"].to_numpy(dtype=bool), budgets=np.array(budgets, dtype=float),
                 widths=[int(w) for w in sec["widths"]], r_values=[int(r) for r in sec["r"]], fixed=fixed,
                 source=source)
