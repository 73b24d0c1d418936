"""The multistart optimiser of the fit (method.md §5): minimises the objective of analysis.law on its box.

Two stages:
1. every start (random in the box plus a small fixed grid) descends at once, vectorised over starts:
   projected Gauss–Newton steps with Huber's IRLS weights, analytic gradient, Armijo line search
   (:func:`descend`);
2. the best start, and one start per other tied optimum, are polished by scipy's L-BFGS-B with the
   analytic gradient and tight tolerances; its status is the reported ``converged`` (:func:`polish`).

:func:`multistart` runs both and says what the other starts found (ties, bounds).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from loopscale.analysis.defaults import HUBER_DELTA, STARTS
from loopscale.analysis.law import LOWER, PARAM_NAMES, UPPER, FitData, evaluate, objective

TIE_RTOL = 1e-6  # objectives within this relative distance of the best count as reaching it
DISTINCT = 1e-3  # optima further apart than this fraction of the box (any coordinate) are distinct


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


def multistart(data: FitData, starts: int = STARTS, seed=0, delta: float = HUBER_DELTA,
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
