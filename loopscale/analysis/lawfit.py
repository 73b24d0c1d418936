"""One fit of the law to a set of runs (method.md §5): :func:`fit_law` runs the multistart
(analysis.multistart) on the objective of analysis.law and reports a :class:`LawFit`: coefficients, R²,
residuals per r, and what the starts said (convergence, ties, bounds). Restricted fits hold φ; the
Chinchilla form (no looped rows, or per-r fits) fixes N_eff = N_once + N_rec."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from loopscale.analysis.defaults import HUBER_DELTA, STARTS
from loopscale.analysis.law import I_PHI, FitData, Law, params_of, predict_loss
from loopscale.analysis.multistart import multistart
from loopscale.analysis.parallel import single_threaded_blas
from loopscale.errors import UserError


@dataclass
class LawFit:
    """The law fitted to one set of runs. Losses and residuals in nats."""

    theta: np.ndarray  # (e, a, α, b, β, φ)
    objective: float  # Huber objective at the optimum (log-loss residuals)
    r2: float  # on L, not log L
    converged: bool
    message: str
    n_runs: int
    n_starts: int
    n_at_best: int
    ties: list[np.ndarray]
    at_bounds: list[str]
    phi_fitted: bool  # φ was free (False: held, or the Chinchilla form)
    phi_fixed: float | None  # held value in a restricted fit
    residuals: dict[str, dict[str, float]]  # per r (and "all"): n, mean, max_abs, rmse of L − L̂

    @property
    def phi(self) -> float | None:
        """Fitted (or held) φ; None for the Chinchilla form (no looped rows, or a per-r fit)."""
        if self.phi_fixed is not None:
            return self.phi_fixed
        return float(self.theta[I_PHI]) if self.phi_fitted else None

    @property
    def params(self) -> dict[str, float | None]:
        return {**params_of(self.theta), "phi": self.phi}

    @property
    def law(self) -> Law:
        return Law.from_dict(self.params)

    def to_dict(self) -> dict:
        return {
            "params": self.params, "r2": self.r2, "objective": self.objective,
            "converged": self.converged, "optimizer_message": self.message, "n_runs": self.n_runs,
            "phi_fixed": self.phi_fixed, "n_starts": self.n_starts, "n_starts_at_best": self.n_at_best,
            "tied_optima": [params_of(t, self.phi_fitted) for t in self.ties],
            "at_bounds": self.at_bounds, "residuals": self.residuals,
        }


def as_fit_data(runs) -> FitData:
    return runs if isinstance(runs, FitData) else FitData.from_table(runs)


def fit_law(runs, rows=None, *, starts: int = STARTS, seed=0, huber_delta: float = HUBER_DELTA,
            phi: float | None = None, chinchilla: bool = False, warm=()) -> LawFit:
    """Fit the law to a runs table (DataFrame with n_once, n_rec, r, tokens, loss, or FitData).

    ``rows``: indices of the rows to use (repeats = multiplicities); ``phi``: hold φ at this value
    (restricted fit); ``chinchilla``: fit Chinchilla's L = E + A·N^−α + B·D^−β with
    N = N_once + N_rec (φ reported as None), which is also what happens when no row loops
    (φ cannot be identified); ``warm``: extra starting points θ; ``seed``: int or list of ints.
    """
    with single_threaded_blas():
        return fit_on_data(as_fit_data(runs), rows, starts, seed, huber_delta, phi, chinchilla, warm)


def fit_on_data(data: FitData, rows, starts, seed, huber_delta, phi, chinchilla, warm, max_polish=5,
                prune_after=20) -> LawFit:
    """:func:`fit_law` on FitData, with the BLAS threads left as they are (callers that run many fits
    limit them once); ``max_polish`` and ``prune_after``: see analysis.multistart.multistart."""
    if rows is not None:
        data = data.subset(rows)
    identifiable = data.phi_identifiable and not chinchilla
    fixed = {}
    if not identifiable:
        fixed[I_PHI] = 0.0  # N_eff = N_once + N_rec
        phi = None
    elif phi is not None:
        fixed[I_PHI] = float(phi)
    n_free = 6 - len(fixed)
    if len(data) < n_free:
        raise UserError(f"{len(data)} usable runs, fewer than the {n_free} parameters of the law")
    opt = multistart(data, starts, seed, huber_delta, fixed, extra=warm, max_polish=max_polish,
                     prune_after=prune_after)
    loss = np.exp(data.log_loss)
    resid = loss - predict_loss(opt.theta, data)
    w = data.weight
    ss_tot = np.sum(w * (loss - np.average(loss, weights=w)) ** 2)
    r2 = float(1.0 - np.sum(w * resid**2) / ss_tot) if ss_tot > 0 else float("nan")
    return LawFit(theta=opt.theta, objective=opt.objective, r2=r2, converged=opt.converged,
                  message=opt.message, n_runs=int(round(w.sum())), n_starts=opt.n_starts,
                  n_at_best=opt.n_at_best, ties=opt.ties, at_bounds=opt.at_bounds,
                  phi_fitted=identifiable and phi is None, phi_fixed=None if phi is None else float(phi),
                  residuals=residual_summary(resid, data.r, w))


def residual_summary(resid: np.ndarray, r: np.ndarray, weight: np.ndarray) -> dict[str, dict[str, float]]:
    """Mean, max |resid| and RMSE of L − L̂ (nats), per r and over all runs."""
    out = {}
    groups = [(str(int(v)) if float(v).is_integer() else str(v), r == v) for v in np.unique(r)]
    for key, m in groups + [("all", np.ones(len(r), dtype=bool))]:
        res, w = resid[m], weight[m]
        out[key] = {"n": int(round(w.sum())), "mean": float(np.average(res, weights=w)),
                    "max_abs": float(np.max(np.abs(res))), "rmse": float(np.sqrt(np.average(res**2, weights=w)))}
    return out
