"""Fitting the joint law (method.md §5): Chinchilla Approach 3 in log space.

Parameters are fitted in log form θ = (e, a, α, b, β, φ), E = exp(e), A = exp(a), B = exp(b),
minimising over the box of method.md §5

    Σ_i w_i · Huber_δ( LSE(a − α·log N_eff,i , b − β·log D_i , e) − log L_i ),   δ = 1e-3,

where N_eff = N_once + r^φ·N_rec (parameters), D is tokens, L the loss in nats, and w_i are row
multiplicities (1, or bootstrap counts).

Multistart in two stages:
1. every start (random in the box plus a small fixed grid) descends at once, vectorised over starts:
   projected Gauss–Newton steps with Huber's IRLS weights, analytic gradient, Armijo line search;
2. the best start, and one start per other tied optimum, are polished by scipy's L-BFGS-B with the
   analytic gradient and tight tolerances; its status is the reported ``converged``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from loopscale.analysis.law import FORMULA, PARAM_NAMES, Law
from loopscale.analysis.parallel import parallel_map, single_threaded_blas
from loopscale.atomic import json_safe
from loopscale.errors import UserError
from loopscale.runs_table import usable_rows
from loopscale.schedule import cpu_count

LOG_FITTED = ("E", "A", "B")  # fitted as their logs e, a, b: θ = (e, a, α, b, β, φ) in PARAM_NAMES order
I_PHI = PARAM_NAMES.index("phi")
LOWER = np.array([-3.0, -5.0, 0.0, -5.0, 0.0, -3.0])
UPPER = np.array([2.0, 35.0, 2.5, 35.0, 2.5, 3.0])
HUBER_DELTA = 1e-3
TIE_RTOL = 1e-6  # objectives within this relative distance of the best count as reaching it
DISTINCT = 1e-3  # optima further apart than this fraction of the box (any coordinate) are distinct


@dataclass(frozen=True)
class FitData:
    """A runs table in the form the objective reads. ``weight`` = row multiplicity."""

    n_once: np.ndarray
    n_rec: np.ndarray
    r: np.ndarray
    log_tokens: np.ndarray
    log_loss: np.ndarray
    weight: np.ndarray
    log_r: np.ndarray = field(init=False, repr=False)
    log_r_unique: np.ndarray = field(init=False, repr=False)  # log of each distinct r
    r_index: np.ndarray = field(init=False, repr=False)  # row → its distinct r

    def __post_init__(self) -> None:
        ok = np.isfinite(self.log_tokens) & np.isfinite(self.log_loss) & (self.r >= 1)
        ok &= (self.n_once >= 0) & (self.n_rec >= 0) & (self.n_once + self.n_rec > 0)
        if not ok.all():
            raise UserError(f"{int((~ok).sum())} runs with invalid n_once/n_rec/r/tokens/loss; "
                            "leave them out first (loopscale.runs_table.usable_rows)")
        unique, index = np.unique(self.r, return_inverse=True)
        object.__setattr__(self, "log_r", np.log(self.r))
        object.__setattr__(self, "log_r_unique", np.log(unique))
        object.__setattr__(self, "r_index", index)

    @classmethod
    def from_arrays(cls, n_once, n_rec, r, tokens, loss, weight=None) -> "FitData":
        cols = [np.asarray(v, dtype=float) for v in (n_once, n_rec, r, tokens, loss)]
        w = np.ones(len(cols[0])) if weight is None else np.asarray(weight, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):  # bad rows are refused just below
            return cls(cols[0], cols[1], cols[2], np.log(cols[3]), np.log(cols[4]), w)

    @classmethod
    def from_table(cls, df) -> "FitData":
        return cls.from_arrays(df["n_once"], df["n_rec"], df["r"], df["tokens"], df["loss"])

    def __len__(self) -> int:
        return len(self.log_loss)

    def subset(self, rows) -> "FitData":
        """Rows by index; repeated indices become multiplicities (bootstrap draws)."""
        counts = np.bincount(np.asarray(rows, dtype=int), minlength=len(self)).astype(float)
        keep = counts > 0
        return FitData(self.n_once[keep], self.n_rec[keep], self.r[keep], self.log_tokens[keep],
                       self.log_loss[keep], counts[keep] * self.weight[keep])

    @property
    def phi_identifiable(self) -> bool:
        """φ only matters through rows that loop (r > 1) a block with parameters (N_rec > 0)."""
        return bool(np.any((self.r > 1) & (self.n_rec > 0)))


def log_prediction(theta: np.ndarray, data: FitData, jacobian: bool = False):
    """log L̂ (S, n) for each row of θ (S, 6) = (e, a, α, b, β, φ); with ``jacobian`` also
    ∂ log L̂ / ∂θ (S, 6, n)."""
    theta = np.atleast_2d(theta)
    e, a, alpha, b, beta, phi = (theta[:, i : i + 1] for i in range(6))
    r_phi = np.exp(phi * data.log_r_unique)[:, data.r_index]  # r^φ, once per distinct r
    loop = r_phi * data.n_rec  # r^φ·N_rec
    n_eff = data.n_once + loop
    log_n_eff = np.log(n_eff)
    # LSE(t1, t2, e) = log(e^t1 + e^t2 + e^e): the box keeps every term within float range
    # (t ≤ 35), so the sum is formed directly.
    term_n = np.exp(a - alpha * log_n_eff)  # A·N_eff^−α
    term_d = np.exp(b - beta * data.log_tokens)  # B·D^−β
    floor = np.exp(e)  # E
    pred = term_n + term_d + floor
    if not jacobian:
        return np.log(pred)
    J = np.empty((theta.shape[0], 6, len(data)))
    np.divide(floor, pred, out=J[:, 0])
    np.divide(term_n, pred, out=J[:, 1])
    np.multiply(J[:, 1], -log_n_eff, out=J[:, 2])
    np.divide(term_d, pred, out=J[:, 3])
    np.multiply(J[:, 3], -data.log_tokens, out=J[:, 4])
    np.multiply(J[:, 1], -alpha * (loop / n_eff) * data.log_r, out=J[:, 5])
    return np.log(pred), J


def evaluate(theta: np.ndarray, data: FitData, delta: float = HUBER_DELTA, need: int = 1):
    """Objective of each row of θ (S, 6): f (S,); with need ≥ 1 also ∂f/∂θ (S, 6); with need = 2
    also the Gauss–Newton matrix Σ w·ψ(ρ)/ρ·J Jᵀ (S, 6, 6) of the log-loss residuals ρ."""
    if need == 0:
        log_pred, J = log_prediction(theta, data), None
    else:
        log_pred, J = log_prediction(theta, data, jacobian=True)
    res = log_pred - data.log_loss
    absr = np.abs(res)
    quad = absr <= delta
    f = np.where(quad, 0.5 * res * res, delta * (absr - 0.5 * delta)) @ data.weight
    if need == 0:
        return f
    psi = np.clip(res, -delta, delta) * data.weight
    g = np.matmul(J, psi[:, :, None])[:, :, 0]
    if need == 1:
        return f, g
    irls = data.weight * np.where(quad, 1.0, delta / np.maximum(absr, 1e-300))
    M = np.matmul(J * irls[:, None, :], J.transpose(0, 2, 1))
    return f, g, M


def objective(theta, data: FitData, delta: float = HUBER_DELTA, grad: bool = False):
    """The Huber objective at θ = (e, a, α, b, β, φ) (one vector or a batch); with ``grad`` also
    its gradient."""
    out = evaluate(np.asarray(theta, dtype=float), data, delta, need=1 if grad else 0)
    if np.ndim(theta) == 1:
        return (float(out[0][0]), out[1][0]) if grad else float(out[0])
    return out


def predict_loss(theta, data: FitData) -> np.ndarray:
    """Predicted loss L̂ per row, nats."""
    e, a, alpha, b, beta, phi = np.asarray(theta, dtype=float)
    n_eff = data.n_once + data.r**phi * data.n_rec
    return np.exp(e) + np.exp(a) * n_eff**-alpha + np.exp(b) * np.exp(-beta * data.log_tokens)


def descend(theta0: np.ndarray, data: FitData, free: np.ndarray, delta: float = HUBER_DELTA,
            max_iter: int = 100, ftol: float = 1e-10, warmup: int = 20):
    """Stage 1: all starts θ0 (S, 6) downhill together, projected Gauss–Newton/IRLS on the box.

    Variables where ``free`` is False keep their start value. A start stops when its objective
    stops falling (relative change ≤ ftol), or, after ``warmup`` iterations, when even three times
    its current rate of progress could not bring it down to the best start within ``max_iter``
    (a start stuck on a plateau far above the best). Returns (θ, f, converged) per start.
    """
    x = np.clip(np.array(theta0, dtype=float), LOWER, UPPER)
    S = len(x)
    f, g, M = evaluate(x, data, delta, need=2)
    live = np.ones(S, dtype=bool)
    converged = np.zeros(S, dtype=bool)
    step = np.ones(S)  # first trial step length, grown back towards 1 after each success
    eye = np.eye(6)
    for it in range(1, max_iter + 1):
        idx = np.flatnonzero(live)
        if idx.size == 0:
            break
        xi, fi, gi = x[idx], f[idx], g[idx]
        # Projected Newton: a variable at a bound with its gradient pushing outward is held.
        held = ((xi <= LOWER) & (gi > 0)) | ((xi >= UPPER) & (gi < 0)) | ~free
        F = (~held).astype(float)
        Mr = M[idx] * F[:, :, None] * F[:, None, :] + eye * (1.0 - F)[:, :, None]
        Mr += eye * (1e-12 * np.einsum("sii->s", Mr) + 1e-300)[:, None, None]
        d = -np.linalg.solve(Mr, (F * gi)[:, :, None])[:, :, 0] * F
        # One step may cross at most a quarter of the box.
        d *= np.minimum(1.0, 0.25 / np.max(np.abs(d) / (UPPER - LOWER), axis=1).clip(1e-300))[:, None]
        x_new, _, t = _armijo(xi, fi, gi, d, step[idx], data, delta)
        step[idx] = np.minimum(1.0, 4.0 * t)
        fn, gn, Mn = evaluate(x_new, data, delta, need=2)
        x[idx], f[idx], g[idx], M[idx] = x_new, fn, gn, Mn
        rate = (fi - fn) / np.abs(fi).clip(1e-300)  # an exact fit (f = 0) has converged, not NaN
        done = rate <= ftol
        converged[idx[done]] = True
        if it > warmup:
            best = f.min()
            hopeless = fn * (1.0 - np.minimum(1.0, 3.0 * rate)) ** (max_iter - it) > best * (1 + TIE_RTOL)
            done |= hopeless
        live[idx[done]] = False
    return x, f, converged


def _armijo(x, f, g, d, t0, data, delta, shrink=0.5, tries=40):
    """Backtracking from step t0 along the projected path clip(x + t·d) for each start.
    Returns the accepted points (x itself where nothing decreased), objectives and steps."""
    x_new, f_new = x.copy(), f.copy()
    t = np.array(t0, dtype=float)
    pending = np.arange(len(x))
    for _ in range(tries):
        if pending.size == 0:
            break
        xt = np.clip(x[pending] + t[pending, None] * d[pending], LOWER, UPPER)
        ft = evaluate(xt, data, delta, need=0)
        ok = ft <= f[pending] + 1e-4 * np.einsum("si,si->s", g[pending], xt - x[pending])
        x_new[pending[ok]], f_new[pending[ok]] = xt[ok], ft[ok]
        pending = pending[~ok]
        t[pending] *= shrink
    return x_new, f_new, t


@dataclass
class Polished:
    theta: np.ndarray
    objective: float
    converged: bool
    message: str


def polish(theta0: np.ndarray, data: FitData, free: np.ndarray, delta: float = HUBER_DELTA) -> Polished:
    """Stage 2: scipy L-BFGS-B from θ0 on the free variables, analytic gradient, tight tolerances.

    The objective is rescaled to ≈1 at θ0 so that scipy's tolerances are relative: Approach 3's
    objective is tiny (≈1e-4) and absolute tolerances would stop it early (Besiroglu et al. 2024).
    """
    theta0 = np.clip(np.asarray(theta0, dtype=float), LOWER, UPPER)
    scale = 1.0 / max(objective(theta0, data, delta), 1e-300)

    def fun(z):
        th = theta0.copy()
        th[free] = z
        f, g = objective(th, data, delta, grad=True)
        return f * scale, g[free] * scale

    res = minimize(fun, theta0[free], jac=True, method="L-BFGS-B",
                   bounds=list(zip(LOWER[free], UPPER[free])),
                   options=dict(ftol=1e-15, gtol=1e-11, maxiter=5000, maxcor=20, maxls=50))
    theta = theta0.copy()
    theta[free] = res.x
    f = objective(theta, data, delta)
    if f > objective(theta0, data, delta):  # never hand back something worse than the start
        theta, f = theta0, objective(theta0, data, delta)
    # L-BFGS-B may end in a failed line search at machine precision; that is converged when the
    # projected gradient (on the rescaled objective) is negligible.
    _, g = fun(theta[free])
    pg = np.max(np.abs(np.clip(theta[free] - g, LOWER[free], UPPER[free]) - theta[free]), initial=0.0)
    converged = bool(res.success or pg <= 1e-6)
    message = res.message if isinstance(res.message, str) else str(res.message)
    return Polished(theta, float(f), converged, message)


def draw_starts(data: FitData, n_random: int, seed, fixed: dict[int, float], extra=()) -> np.ndarray:
    """Starting points: a fixed grid of 24 scaled to the data (A·N^−α and B·D^−β ≈ 0.5 nats at the
    median run), the ``extra`` points (warm starts), then ``n_random`` uniform in the box (seeded).
    Fixed variables are set to their value."""
    rng = np.random.default_rng(seed)
    random = LOWER + rng.random((n_random, 6)) * (UPPER - LOWER)
    log_n = np.median(np.log(data.n_once + data.n_rec))
    log_d = np.median(data.log_tokens)
    grid = []
    for e in (0.0, 0.5):
        for alpha in (0.2, 0.5):
            for beta in (0.2, 0.5):
                for phi in (0.0, 0.5, 1.0):
                    grid.append([e, np.log(0.5) + alpha * log_n, alpha, np.log(0.5) + beta * log_d, beta, phi])
    starts = np.vstack([np.array(grid), np.reshape(np.asarray(extra, dtype=float), (-1, 6)), random])
    starts = np.clip(starts, LOWER, UPPER)
    for i, v in fixed.items():
        starts[:, i] = v
    return starts


@dataclass
class Optimum:
    """The best of a multistart and what the other starts say about it."""

    theta: np.ndarray  # (e, a, α, b, β, φ)
    objective: float
    converged: bool  # L-BFGS-B's verdict on the polished best
    message: str
    n_starts: int
    n_at_best: int  # starts whose stage-1 objective reached the best (relative TIE_RTOL)
    ties: list[np.ndarray] = field(default_factory=list)  # other distinct optima with the same objective
    at_bounds: list[str] = field(default_factory=list)

    @property
    def multimodal(self) -> bool:
        return bool(self.ties)


def _distinct(u: np.ndarray, v: np.ndarray) -> bool:
    return bool(np.any(np.abs(u - v) > DISTINCT * (UPPER - LOWER)))


def multistart(data: FitData, starts: int = 500, seed=0, delta: float = HUBER_DELTA,
               fixed: dict[int, float] | None = None, extra=(), max_polish: int = 5,
               prune_after: int = 20) -> Optimum:
    """Minimise the objective from many starts; ``fixed`` maps θ indices to held values,
    ``extra`` adds warm starts to the random ones; at most ``max_polish`` distinct near-best
    candidates are polished; ``prune_after``: see :func:`descend` (warmup)."""
    fixed = dict(fixed or {})
    free = np.ones(6, dtype=bool)
    free[list(fixed)] = False
    x0 = draw_starts(data, starts, seed, fixed, extra)
    x, f, _ = descend(x0, data, free, delta, warmup=prune_after)
    order = np.argsort(f, kind="stable")
    # Candidates for the best: the best stage-1 start and one per other distinct near-tie.
    candidates = [x[order[0]]]
    for i in order[1:]:
        if f[i] > f[order[0]] * (1 + 1e-3) or len(candidates) >= max_polish:
            break
        if all(_distinct(x[i], c) for c in candidates):
            candidates.append(x[i])
    polished = sorted((polish(c, data, free, delta) for c in candidates), key=lambda p: p.objective)
    best = polished[0]
    tol = TIE_RTOL * abs(best.objective) + 1e-300
    ties: list[np.ndarray] = []
    for p in polished[1:]:
        tied = p.objective <= best.objective + tol
        if tied and _distinct(p.theta, best.theta) and all(_distinct(p.theta, t) for t in ties):
            ties.append(p.theta)
    at_bounds = [PARAM_NAMES[i] for i in range(6) if free[i] and
                 (best.theta[i] <= LOWER[i] + 1e-9 or best.theta[i] >= UPPER[i] - 1e-9)]
    return Optimum(theta=best.theta, objective=best.objective, converged=best.converged,
                   message=best.message, n_starts=len(x0),
                   n_at_best=int(np.sum(f <= best.objective + tol)), ties=ties, at_bounds=at_bounds)


# ---------------------------------------------------------------------------------------------
# One fit of the law to a set of runs


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
        e, a, alpha, b, beta, _ = (float(v) for v in self.theta)
        return {"E": float(np.exp(e)), "A": float(np.exp(a)), "alpha": alpha, "B": float(np.exp(b)),
                "beta": beta, "phi": self.phi}

    @property
    def law(self) -> Law:
        return Law.from_dict(self.params)

    def to_dict(self) -> dict:
        return {
            "params": self.params, "r2": self.r2, "objective": self.objective,
            "converged": self.converged, "optimizer_message": self.message, "n_runs": self.n_runs,
            "phi_fixed": self.phi_fixed, "n_starts": self.n_starts, "n_starts_at_best": self.n_at_best,
            "tied_optima": [_params_of(t, self.phi_fitted) for t in self.ties],
            "at_bounds": self.at_bounds, "residuals": self.residuals,
        }


def _params_of(theta, with_phi: bool = True) -> dict[str, float | None]:
    e, a, alpha, b, beta, phi = (float(v) for v in theta)
    return {"E": float(np.exp(e)), "A": float(np.exp(a)), "alpha": alpha, "B": float(np.exp(b)),
            "beta": beta, "phi": phi if with_phi else None}


def as_fit_data(runs) -> FitData:
    return runs if isinstance(runs, FitData) else FitData.from_table(runs)


def fit_law(runs, rows=None, *, starts: int = 500, seed=0, huber_delta: float = HUBER_DELTA,
            phi: float | None = None, chinchilla: bool = False, warm=()) -> LawFit:
    """Fit the law to a runs table (DataFrame with n_once, n_rec, r, tokens, loss, or FitData).

    ``rows``: indices of the rows to use (repeats = multiplicities); ``phi``: hold φ at this value
    (restricted fit); ``chinchilla``: fit Chinchilla's L = E + A·N^−α + B·D^−β with
    N = N_once + N_rec (φ reported as None), which is also what happens when no row loops
    (φ cannot be identified); ``warm``: extra starting points θ; ``seed``: int or list of ints.
    """
    with single_threaded_blas():
        return _fit_law(as_fit_data(runs), rows, starts, seed, huber_delta, phi, chinchilla, warm)


def _fit_law(data, rows, starts, seed, huber_delta, phi, chinchilla, warm, max_polish=5, prune_after=20) -> LawFit:
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


# ---------------------------------------------------------------------------------------------
# Bootstrap: block resampling of (budget × r) cells, or of runs, shared across tables for pairing


def unit_labels(table, by: str = "cells") -> np.ndarray:
    """The resampling unit of each row: its (budget_flops, r) cell, or the run itself.

    Run labels name the design point (budget, r, width, seed) when the table has those columns, so
    that two tables of the same design (a baseline and a probe) pair run by run; otherwise the row.
    """
    if by == "cells":
        if "budget_flops" not in table or table["budget_flops"].isna().any():
            raise ValueError("cell resampling needs budget_flops on every row")
        return np.array([f"C{c:.6g}|r{r:g}" for c, r in zip(table["budget_flops"], table["r"])])
    if by != "runs":
        raise ValueError(f"unknown resampling unit {by!r} (cells | runs)")
    cols = [c for c in ("budget_flops", "r", "width", "seed") if c in table and table[c].notna().all()]
    if {"budget_flops", "width"} <= set(cols):
        labels = table[cols].astype(str).agg("|".join, axis=1).to_numpy()
        if len(set(labels)) == len(labels):
            return labels
    return np.array([f"row{i}" for i in range(len(table))])


def bootstrap_plan(labels: list[np.ndarray], n_resamples: int, seed=0) -> list[list[np.ndarray]]:
    """Draw resamples of units with replacement, the same draws for every table.

    ``labels[t]`` gives the unit of each row of table t. Units are the sorted union over tables;
    each resample draws that many units. Returns plan[k][t]: row indices of table t in resample k
    (a row repeats as often as its unit was drawn).
    """
    units = np.unique(np.concatenate([np.asarray(lab) for lab in labels]))
    unit_of = [np.searchsorted(units, np.asarray(lab)) for lab in labels]
    rng = np.random.default_rng([int(seed), 6])
    plan = []
    for _ in range(n_resamples):
        counts = np.bincount(rng.integers(0, len(units), len(units)), minlength=len(units))
        plan.append([np.repeat(np.arange(len(u)), counts[u]) for u in unit_of])
    return plan


@dataclass
class BootstrapDraws:
    """Parameters refitted on each resample: params[t, k] = (E, A, α, B, β, φ) of table t in
    resample k, NaN where the refit failed (or φ where it is not identifiable)."""

    params: np.ndarray  # (tables, resamples, 6)
    converged: np.ndarray  # (tables, resamples) bool


def _refit(task) -> tuple[int, int, np.ndarray, bool]:
    t, k, data, rows, starts, seed, delta, phi, warm = task
    # Only the best start is polished (ties are reported for the full-data fit), and since the
    # warm start finds the best early, hopeless starts are dropped after 10 iterations, not 20.
    try:
        fit = _fit_law(data, rows, starts, [int(seed), 5, k], delta, phi, False, warm, max_polish=1, prune_after=10)
    except UserError:  # a resample with fewer distinct runs than parameters: counted as failed
        return t, k, np.full(6, np.nan), False
    p = fit.params
    return t, k, np.array([np.nan if p[n] is None else p[n] for n in PARAM_NAMES]), fit.converged


def _run_chunk(tasks):
    with single_threaded_blas():
        return [_refit(task) for task in tasks]


def bootstrap_fits(tables, plan: list[list[np.ndarray]], *, starts: int = 500, seed=0,
                   huber_delta: float = HUBER_DELTA, phi: float | None = None, warm=None,
                   workers: int | None = None, progress=None) -> BootstrapDraws:
    """Refit the law on every resample of ``plan`` (from :func:`bootstrap_plan`) for every table.

    Each refit is a full multistart (``starts`` random starts, seeded by (seed, resample)) plus
    ``warm[t]``, the table's full-data optimum, as an extra start; only its best start is polished
    and stalled starts are dropped after 10 iterations. Runs in ``workers`` processes
    (default: all cores); results do not depend on the number of workers. ``progress(done, total)``
    is called as refits finish.
    """
    datas = [as_fit_data(t) for t in tables]
    warm = [() if warm is None or warm[t] is None else [warm[t]] for t in range(len(datas))]
    tasks = [(t, k, datas[t], rows[t], starts, seed, huber_delta, phi, warm[t])
             for k, rows in enumerate(plan) for t in range(len(datas))]
    params = np.full((len(datas), len(plan), 6), np.nan)
    converged = np.zeros((len(datas), len(plan)), dtype=bool)
    workers = max(1, min(workers or cpu_count(), len(tasks)))
    chunks = [tasks[i::workers * 4] for i in range(min(len(tasks), workers * 4))]
    done = 0
    for results in parallel_map(_run_chunk, chunks, workers):
        for t, k, p, ok in results:
            params[t, k], converged[t, k] = p, ok
        done += len(results)
        if progress is not None:
            progress(done, len(tasks))
    return BootstrapDraws(params, converged)


def paired_bootstrap(tables, n_resamples: int = 200, *, by: str = "cells", seed: int = 0, starts: int = 500,
                     huber_delta: float = HUBER_DELTA, workers: int | None = None, progress=None) -> BootstrapDraws:
    """Bootstrap several runs tables with the same draws of units (cells or runs), for paired
    differences such as Δφ = φ(probe) − φ(baseline):

        draws = paired_bootstrap([baseline, probe], 200)
        delta_phi = draws.params[1, :, 5] - draws.params[0, :, 5]
        percentile_ci(delta_phi)

    Each table's full-data fit (same ``starts`` and seed) warm-starts its refits.
    """
    datas = [as_fit_data(t) for t in tables]
    plan = bootstrap_plan([unit_labels(t, by) for t in tables], n_resamples, seed)
    warm = [fit_law(d, starts=starts, seed=[seed, 0], huber_delta=huber_delta).theta for d in datas]
    return bootstrap_fits(datas, plan, starts=starts, seed=seed, huber_delta=huber_delta, warm=warm,
                          workers=workers, progress=progress)


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> list[float] | None:
    """Percentile interval of the finite samples; None when there are none."""
    x = np.asarray(samples, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return None
    q = 100 * (1 - level) / 2
    return [float(np.percentile(x, q)), float(np.percentile(x, 100 - q))]


# ---------------------------------------------------------------------------------------------
# The full analysis behind `loopscale fit`


@dataclass
class FitReport:
    """Everything `loopscale fit` reports; ``to_json()`` is fit.json."""

    fit: LawFit
    restricted: dict[str, LawFit]  # "phi=0", "phi=1"
    per_r: dict[str, LawFit]  # Chinchilla form per r, N = N_once + N_rec
    bootstrap: BootstrapDraws | None
    resample: str | None  # cells | runs
    n_units: int
    split_half: dict[str, dict]
    warnings: list[str]
    notes: list[str]
    settings: dict
    runs: object  # the usable runs table (pandas), for plots
    diagnostics: object = None  # regime.Diagnostics: the regime the runs trained in and the verdict

    @property
    def ci(self) -> dict[str, list[float] | None]:
        if self.bootstrap is None:
            return {n: None for n in PARAM_NAMES}
        samples = self.bootstrap.params[0]
        ci = {n: percentile_ci(samples[:, i]) for i, n in enumerate(PARAM_NAMES)}
        if not self.fit.phi_fitted:
            ci["phi"] = None
        return ci

    def to_json(self) -> dict:
        doc = {
            "law": FORMULA,
            "params": self.fit.params,
            "ci": self.ci,
            "ci_level": 0.95,
            "r2": self.fit.r2,
            "objective": self.fit.objective,
            "huber_delta": self.settings["huber_delta"],
            "converged": self.fit.converged,
            "n_runs": self.fit.n_runs,
            "phi_identifiable": self.fit.phi_fitted,
            "fit": self.fit.to_dict(),
            "restricted": {k: v.to_dict() for k, v in self.restricted.items()},
            "per_r": {k: v.to_dict() for k, v in self.per_r.items()},
            "residuals": self.fit.residuals,
            "split_half": self.split_half,
            "bootstrap": None,
            "warnings": self.warnings,
            "notes": self.notes,
            "settings": self.settings,
            "ci_degenerate": [] if self.diagnostics is None else self.diagnostics.ci_degenerate,
            "diagnostics": None if self.diagnostics is None else self.diagnostics.to_json(),
        }
        if self.bootstrap is not None:
            p, ok = self.bootstrap.params[0], self.bootstrap.converged[0]
            doc["bootstrap"] = {
                "n_resamples": int(p.shape[0]), "resample": self.resample, "n_units": self.n_units,
                "n_failed": int(np.sum(~np.isfinite(p[:, 0]))), "n_unconverged": int(np.sum(~ok)),
                "samples": {n: [float(v) for v in p[:, i]] for i, n in enumerate(PARAM_NAMES)},
            }
        return json_safe(doc)



def check_settings(*, starts: int, bootstrap: int, seed: int, huber_delta: float, resample: str) -> None:
    """Refuse settings `loopscale fit` cannot run with (UserError, named by their flags)."""
    if resample not in ("cells", "runs"):
        raise UserError(f"--resample must be cells or runs, got {resample!r}")
    if not (huber_delta > 0 and np.isfinite(huber_delta)):
        raise UserError(f"--huber-delta must be a positive number, got {huber_delta}")
    if starts < 0 or bootstrap < 0 or seed < 0:
        raise UserError("--starts, --bootstrap and --seed must be non-negative")


def run_fit(table, *, starts: int = 500, bootstrap: int = 200, seed: int = 0,
            huber_delta: float = HUBER_DELTA, resample: str = "cells", workers: int | None = None,
            progress=None) -> FitReport:
    """The whole analysis of a runs table (method.md §5): free fit, restricted fits φ = 0 and
    φ = 1, per-r Chinchilla fits, bootstrap CIs and the split-half check.

    ``table`` is a runs DataFrame (see loopscale.runs_table); unusable rows are left out with a
    warning. ``progress(stage, done, total)`` reports long work.
    """
    check_settings(starts=starts, bootstrap=bootstrap, seed=seed, huber_delta=huber_delta, resample=resample)
    with single_threaded_blas():
        return _run_fit(table, starts, bootstrap, seed, huber_delta, resample, workers, progress)


def _run_fit(table, starts, bootstrap, seed, huber_delta, resample, workers, progress) -> FitReport:
    runs, warnings = usable_rows(table)
    notes: list[str] = []
    if len(runs) == 0:
        raise UserError("no usable runs left to fit")
    data = FitData.from_table(runs)
    say = progress or (lambda stage, done, total: None)
    kw = {"starts": starts, "huber_delta": huber_delta}
    n_fits = 1 + 2 * data.phi_identifiable + len(np.unique(data.r)) + 2 * data.phi_identifiable
    done = iter(range(1, n_fits + 1))

    say("fits", 0, n_fits)
    fit = fit_law(data, seed=[seed, 0], **kw)
    say("fits", next(done), n_fits)
    if not data.phi_identifiable:
        notes.append("phi is not identifiable: no run loops a block with parameters (only r = 1 rows, or "
                     "n_rec = 0 everywhere); fitted the Chinchilla form L = E + A*N^-alpha + B*D^-beta "
                     "with N = n_once + n_rec")
    if not fit.converged:
        warnings.append(f"the best start did not converge ({fit.message})")
    if fit.ties:
        phis = ""
        if fit.phi_fitted:
            phis = f": phi {fit.theta[I_PHI]:.4g} reported, also " + ", ".join(f"{t[I_PHI]:.4g}" for t in fit.ties)
        warnings.append(f"multimodal: {len(fit.ties) + 1} distinct optima reach the best objective within "
                        f"{TIE_RTOL:g} (fit.tied_optima in fit.json){phis}")
    if fit.at_bounds:
        warnings.append(f"optimum on the box bound for {', '.join(fit.at_bounds)}")

    restricted = {}
    if data.phi_identifiable:
        for i, value in enumerate((0.0, 1.0)):
            restricted[f"phi={value:g}"] = fit_law(data, seed=[seed, 1, i], phi=value, **kw)
            say("fits", next(done), n_fits)

    per_r = {}
    for r in np.unique(data.r):
        rows = np.flatnonzero(data.r == r)
        key = f"{r:g}"
        if len(rows) < 5:
            notes.append(f"no per-r fit for r = {key}: {len(rows)} runs, fewer than 5 parameters")
        else:
            per_r[key] = fit_law(data, rows, seed=[seed, 3, int(r)], chinchilla=True, **kw)
        say("fits", next(done), n_fits)

    split = split_half(runs, data, seed=seed, notes=notes, **kw) if data.phi_identifiable else {}
    say("fits", n_fits, n_fits)

    draws, n_units, unit = None, 0, None
    if bootstrap > 0:
        unit = resample
        if unit == "cells" and ("budget_flops" not in runs or runs["budget_flops"].isna().any()):
            unit = "runs"
            notes.append("no budget_flops column (or missing values): the bootstrap resamples runs")
        labels = unit_labels(runs, unit)
        n_units = len(np.unique(labels))
        plan = bootstrap_plan([labels], bootstrap, seed)
        draws = bootstrap_fits([data], plan, seed=seed, warm=[fit.theta], workers=workers,
                               progress=lambda d, t: say("bootstrap", d, t), **kw)
        n_failed = int(np.sum(~np.isfinite(draws.params[0, :, 0])))
        if n_failed:
            warnings.append(f"{n_failed} of {bootstrap} bootstrap refits failed (too few distinct runs)")

    settings = {"starts": starts, "bootstrap": bootstrap, "seed": seed, "huber_delta": huber_delta,
                "resample": unit, "bounds": {n: [float(LOWER[i]), float(UPPER[i])] for i, n in enumerate(PARAM_NAMES)},
                "bounds_note": f"{', '.join(LOG_FITTED)} bounds are on their logs e, a, b"}
    report = FitReport(fit=fit, restricted=restricted, per_r=per_r, bootstrap=draws, resample=unit,
                       n_units=n_units, split_half=split, warnings=warnings, notes=notes,
                       settings=settings, runs=runs)
    from loopscale.analysis.regime import regime_diagnostics  # regime reads fit's bounds: imported here, not above

    report.diagnostics = regime_diagnostics(runs, report)
    return report


def split_half(runs, data: FitData, *, seed: int, notes: list[str], **kw) -> dict[str, dict]:
    """φ refitted on the lower and the upper half of the FLOP budgets (the middle budget of an odd
    count goes to the upper half)."""
    if "budget_flops" not in runs or runs["budget_flops"].isna().any():
        notes.append("no split-half check: needs budget_flops on every run")
        return {}
    budgets = np.sort(runs["budget_flops"].unique())
    if len(budgets) < 2:
        notes.append("no split-half check: a single FLOP budget")
        return {}
    halves = {"low": budgets[: len(budgets) // 2], "high": budgets[len(budgets) // 2 :]}
    out = {}
    for i, (name, chosen) in enumerate(halves.items()):
        rows = np.flatnonzero(runs["budget_flops"].isin(chosen).to_numpy())
        entry = {"budgets": [float(b) for b in chosen], "n_runs": len(rows), "phi": None, "converged": None}
        sub = data.subset(rows)
        if not sub.phi_identifiable:
            notes.append(f"split-half {name}: phi not identifiable on these budgets")
        else:
            try:
                half = fit_law(sub, seed=[seed, 4, i], **kw)
                entry.update(phi=half.phi, converged=half.converged, r2=half.r2)
            except UserError as e:
                notes.append(f"split-half {name}: {e}")
        out[name] = entry
    return out
