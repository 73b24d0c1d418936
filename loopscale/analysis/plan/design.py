"""The grid as plan sees it: one row per run with what the law and the cost need (parameters, r, tokens,
FLOPs, budget); the baseline (probe none) and per-probe tables; the FitData the fit reads of a table and the
units its bootstrap resamples."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from loopscale.analysis.bootstrap import unit_labels
from loopscale.analysis.law import FitData
from loopscale.counting import baseline_arch, n_once, n_rec


def design_table(specs) -> pd.DataFrame:
    """Run specs (loopscale.grid.RunSpec) → one row per run with what the law and the cost need:
    n_once, n_rec (parameters), r, tokens (D), flops_per_token, flops (= tokens·flops_per_token),
    budget_flops (NaN for token budgets), width, probe, seed, run_id."""
    rows = [dict(run_id=s.run_id, budget_flops=np.nan if s.budget_flops is None else float(s.budget_flops),
                 width=s.d_model, r=s.r, probe=s.probe, seed=s.seed, n_once=float(s.n_once),
                 n_rec=float(s.n_rec), tokens=float(s.tokens), flops_per_token=float(s.flops_per_token),
                 flops=float(s.flops_per_token) * float(s.tokens)) for s in specs]
    return pd.DataFrame(rows)


def run_row(cfg, run_id: str, budget) -> dict:
    """One design row from a RunConfig (for runs the grid does not list)."""
    f, t = cfg.flops_per_token(), cfg.tokens()
    return dict(run_id=run_id, budget_flops=np.nan if budget is None else float(budget), width=cfg.model.d_model,
                r=cfg.model.r, probe=cfg.model.probe, seed=cfg.train.seed, n_once=float(n_once(cfg.model)),
                n_rec=float(n_rec(cfg.model)), tokens=float(t), flops_per_token=float(f), flops=float(f) * float(t))


def _plain(cfg):
    """The probe-none version of a run (same width, r, budget, seed)."""
    return dataclasses.replace(cfg, model=baseline_arch(cfg.model))


def baseline_and_probes(grid) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], int]:
    """Split a grid into the baseline table (probe none) and one table per probe.

    A probe's table holds its own runs plus the r = 1 runs (no loop to change: shared with the
    baseline, as `fit --probe` reuses them). The baseline holds the grid's probe-none runs plus the
    probe-none counterpart of every probe run the grid lacks (built from the run's settings).
    Returns (baseline, {probe: table}, number of counterparts built)."""
    specs = list(grid.runs)
    plain = [s for s in specs if s.probe == "none"]
    base = design_table(plain)
    keys = {(s.budget_flops, s.config.train.tokens, s.d_model, s.r, s.seed) for s in plain}
    built = []
    for s in specs:
        key = (s.budget_flops, s.config.train.tokens, s.d_model, s.r, s.seed)
        if s.probe != "none" and key not in keys:
            keys.add(key)
            built.append(run_row(_plain(s.config), f"{s.run_id}~none", s.budget_flops))
    if built:
        base = pd.concat([base, pd.DataFrame(built)], ignore_index=True)
    probes = {}
    for name in sorted({s.probe for s in specs if s.probe != "none"}):
        own = [s for s in specs if s.probe == name or (s.r == 1 and s.probe == "none")]
        probes[name] = design_table(own)
    return base, probes, len(built)


def fit_data(design: pd.DataFrame, loss=None) -> FitData:
    loss = np.ones(len(design)) if loss is None else loss
    return FitData.from_arrays(design["n_once"], design["n_rec"], design["r"], design["tokens"], loss)


def bootstrap_units(design: pd.DataFrame) -> np.ndarray:
    """Bootstrap units as `fit` draws them: (budget × r) cells; runs when budgets are in tokens
    (named by their design point, so that a probe's run pairs with its baseline run)."""
    if design["budget_flops"].notna().all():
        return unit_labels(design, "cells")
    return np.array([f"D{t:.6g}|r{r:g}|d{w:g}|s{s:g}" for t, r, w, s in
                     zip(design["tokens"], design["r"], design["width"], design["seed"])])
