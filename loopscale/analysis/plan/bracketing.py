"""Does the grid bracket each iso-FLOP cell's compute-optimal width under the prior law, without noise?
Fewer than 2/3 of the cells with ≥ 3 widths is plan's warning: the fit would see one side of each valley."""

from __future__ import annotations

import dataclasses

import numpy as np

from loopscale.analysis.cells import MIN_WIDTHS, cell_minima, cells_missed
from loopscale.analysis.law import Law
from loopscale.analysis.plan.design import design_table
from loopscale.analysis.regime import BRACKETED_SHARE


def bracketing(grid, law: Law, law_source: str = "paper", probe_delta: float = 0.0) -> dict:
    """The grid's iso-FLOP (budget, r, probe) cells under ``law`` without noise: the loss the law
    predicts at each design point (probe runs at φ + probe_delta, as they are simulated), and where
    each cell's minimum over N = N_once + N_rec lies (loopscale.analysis.cells.cell_minima). ``warning`` is
    set when fewer than 2/3 of the cells with ≥ 3 widths bracket it: the fit would see one side of
    each valley. Token-budget runs belong to no cell."""
    d = design_table(grid.runs)
    d = d[d["budget_flops"].notna()].drop_duplicates(["budget_flops", "r", "probe", "width"])
    probe_law = dataclasses.replace(law, phi=law.phi + probe_delta)
    loss = np.array([(law if p == "none" else probe_law).predict(a, b, r, t)
                     for p, a, b, r, t in zip(d["probe"], d["n_once"], d["n_rec"], d["r"], d["tokens"])], dtype=float)
    cells = cell_minima((d["n_once"] + d["n_rec"]).to_numpy(), loss, d["budget_flops"].to_numpy(), d["r"].to_numpy(),
                        d["probe"].to_numpy()) if len(d) else []
    judged = [c for c in cells if c.n_widths >= MIN_WIDTHS]
    k = int(sum(c.bracketed for c in judged))
    warning = None
    if judged and k < BRACKETED_SHARE * len(judged):
        warning = (f"under the {law_source} law only {k} of {len(judged)} iso-FLOP cells with ≥ {MIN_WIDTHS} widths "
                   f"bracket their compute-optimal width (fewer than {BRACKETED_SHARE:.0%}): "
                   f"{cells_missed(judged)}. The fit would see one side of each valley.")
    return {"law_source": law_source, "cells": [c.to_dict() for c in cells], "n_cells": len(judged),
            "n_cells_all": len(cells), "cells_bracketed": k, "bracketed_share_wanted": BRACKETED_SHARE,
            "warning": warning}
