"""Suggestions: the cells a researcher could add, a greedy search ranking them by the fall of φ's sandwich
variance per training FLOP, the runs carrying least information per FLOP, and the simulation check of the top
pick."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from loopscale.analysis.defaults import HUBER_DELTA
from loopscale.analysis.law import I_PHI, Law, theta_of
from loopscale.analysis.plan.design import fit_data, run_row
from loopscale.analysis.plan.refit import refit_many
from loopscale.analysis.plan.sandwich import Z95, information, phi_variance, sandwich_phi
from loopscale.analysis.plan.settings import CHECK_REPLICATES
from loopscale.analysis.plan.simulate import simulate_losses
from loopscale.counting import ArchError, probe_arch, split_arch


def candidate_cells(grid, base: pd.DataFrame, probe: str = "none") -> pd.DataFrame:
    """Cells (budget × width × r, one probe-none run each) a researcher could add: every budget of
    the grid × every width it trains (at any budget) × every r the architecture allows up to
    2·max r, kept when tokens per parameter stay within the grid's own range. Budgets and widths
    are not extrapolated (the prior law is only trusted where the grid is). Existing cells are
    candidates too: another seed there. Looped candidates (r > 1) carry ``probe``; r = 1 ones none."""
    looped = [s.config for s in grid.runs if s.r > 1 and s.probe == probe]
    template = (looped or [grid.runs[0].config])[0]
    shape, own, settings = split_arch(template.model)
    settings = settings if own == probe else {}
    iso_flop = base["budget_flops"].notna().all()
    levels = sorted(set(base["budget_flops"] if iso_flop else base["tokens"]))
    widths = sorted(set(int(w) for w in base["width"]))
    r_max = 2 * int(base["r"].max())
    tpp = base["tokens"] / (base["n_once"] + base["n_rec"])
    tpp_lo, tpp_hi = float(tpp.min()), float(tpp.max())
    rows = []
    for level in levels:
        for w in widths:
            for r in range(1, r_max + 1):
                try:  # the template's shape and probe settings at this width and r (r = 1: the plain run)
                    model = probe_arch({**shape, "d_model": int(w), "r": r}, probe, settings)
                except ArchError:
                    continue
                train = dataclasses.replace(template.train, budget_flops=level if iso_flop else None,
                                            tokens=None if iso_flop else int(level), seed=0)
                cfg = dataclasses.replace(template, model=model, train=train)
                if cfg.iterations() < 1:
                    continue
                row = run_row(cfg, f"cand-{level:.3g}-d{w}-r{r}", level if iso_flop else None)
                if tpp_lo * (1 - 1e-9) <= row["tokens"] / (row["n_once"] + row["n_rec"]) <= tpp_hi * (1 + 1e-9):
                    rows.append(row)
    cand = pd.DataFrame(rows)
    if len(cand):
        key = ["budget_flops", "width", "r"] if iso_flop else ["tokens", "width", "r"]
        have = set(map(tuple, base[key].to_numpy().tolist()))
        cand["exists"] = [tuple(v) in have for v in cand[key].to_numpy().tolist()]
        cand["new_r"] = ~cand["r"].isin(set(base["r"]))
    return cand


def greedy_suggestions(base: pd.DataFrame, cand: pd.DataFrame, law: Law, noise: float, k: int = 5,
                       delta: float = HUBER_DELTA) -> list[dict]:
    """Add k cells one at a time, each the candidate that most lowers the sandwich variance of φ̂
    per training FLOP. Each pick records the predicted (Fisher) 95% CI width after it."""
    if k <= 0 or len(cand) == 0:
        return []
    J, a, b = information(base, law, noise, delta)
    Jc, ac, bc = information(cand, law, noise, delta)
    A = (J * a[:, None]).T @ J
    B = (J * b[:, None]).T @ J
    var = float(sandwich_phi(A[None], B[None])[0])
    outer = np.einsum("ci,cj->cij", Jc, Jc)
    picks = []
    for _ in range(k):
        v = sandwich_phi(A[None] + ac[:, None, None] * outer, B[None] + bc[:, None, None] * outer)
        gain = (var - v) / cand["flops"].to_numpy()
        j = int(np.argmax(gain))
        if not gain[j] > 0:
            break
        A, B = A + ac[j] * outer[j], B + bc[j] * outer[j]
        row = cand.iloc[j]
        picks.append({
            "budget_flops": None if np.isnan(row["budget_flops"]) else float(row["budget_flops"]),
            "tokens": float(row["tokens"]), "width": int(row["width"]), "r": int(row["r"]),
            "flops": float(row["flops"]), "exists": bool(row["exists"]), "new_r": bool(row["new_r"]),
            "fisher_width_before": 2 * Z95 * math.sqrt(var), "fisher_width_after": 2 * Z95 * math.sqrt(v[j]),
            "n_once": float(row["n_once"]), "n_rec": float(row["n_rec"]),
        })
        var = float(v[j])
    return picks


def low_information_runs(base: pd.DataFrame, law: Law, noise: float, k: int = 5,
                         delta: float = HUBER_DELTA, among=None) -> list[dict]:
    """The k runs whose removal widens the φ CI least per FLOP they cost (sandwich variance, leave
    one out); ``among``: run ids that may be listed (default: all)."""
    J, a, b = information(base, law, noise, delta)
    n = len(base)
    full = phi_variance(J, a, b)
    W = 1.0 - np.eye(n)
    A = np.einsum("pn,ni,nj->pij", W * a, J, J)
    B = np.einsum("pn,ni,nj->pij", W * b, J, J)
    v = sandwich_phi(A, B)
    widen = np.sqrt(v / full) - 1.0  # relative CI widening when the run is dropped
    per_flop = widen / base["flops"].to_numpy()
    out = []
    allowed = np.ones(n, dtype=bool) if among is None else base["run_id"].isin(set(among)).to_numpy()
    for i in [i for i in np.argsort(per_flop, kind="stable") if allowed[i]][:k]:
        row = base.iloc[i]
        out.append({"run_id": str(row["run_id"]),
                    "budget_flops": None if np.isnan(row["budget_flops"]) else float(row["budget_flops"]),
                    "tokens": float(row["tokens"]), "width": int(row["width"]), "r": int(row["r"]),
                    "flops": float(row["flops"]), "ci_widening": float(widen[i])})
    return out


def check_pick(design: pd.DataFrame, pick: dict, law: Law, noise: float, seed, replicates: int = CHECK_REPLICATES,
               delta: float = HUBER_DELTA) -> dict:
    """Simulate ``replicates`` fresh replicates of ``design`` with and without the picked run (the
    same noise on the shared runs) and compare the sd of φ̂: the check of the sandwich prediction.
    Each replicate is refitted by :func:`refit_many` from the true θ (cheap enough for the
    thousand replicates a few-percent effect needs)."""
    row = {c: pick[c] for c in ("n_once", "n_rec", "r", "tokens", "width")}
    row.update(budget_flops=np.nan if pick["budget_flops"] is None else pick["budget_flops"], run_id="suggested")
    grown = pd.concat([design, pd.DataFrame([row])], ignore_index=True)
    losses = simulate_losses(grown, law, noise, replicates, [seed, 3])
    truth = np.repeat(theta_of(law)[None], replicates, axis=0)
    phis = []
    for d, loss in ((design, losses[:, :-1]), (grown, losses)):
        with np.errstate(invalid="ignore", divide="ignore"):
            x, _ = refit_many(truth, fit_data(d), np.log(loss), np.ones_like(loss), delta)
        phis.append(x[:, I_PHI])
    good = np.isfinite(phis[0]) & np.isfinite(phis[1])
    before, after = phis[0][good], phis[1][good]
    sd0, sd1 = float(np.std(before, ddof=1)), float(np.std(after, ddof=1))
    # Its Monte-Carlo error: the same ratio over replicates drawn with replacement.
    rng = np.random.default_rng([int(np.ravel(seed)[0]), 4])
    idx = rng.integers(0, len(before), (400, len(before)))
    ratios = np.std(after[idx], axis=1, ddof=1) / np.std(before[idx], axis=1, ddof=1)
    return {"replicates": int(good.sum()), "phi_sd_before": sd0, "phi_sd_after": sd1, "sd_ratio": sd1 / sd0,
            "sd_ratio_se": float(np.std(ratios, ddof=1)),
            "fisher_ratio": pick["fisher_width_after"] / pick["fisher_width_before"]}
