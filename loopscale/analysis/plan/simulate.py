"""Simulation: a design's losses under the law plus Gaussian noise; the point fit of each replicate
(fit_law, warm-started at the true θ); the paired cell bootstrap of every replicate, refitted in batches
(refit_many); percentile CIs and spreads of the results."""

from __future__ import annotations

import numpy as np
import pandas as pd

from loopscale.analysis.bootstrap import bootstrap_plan, percentile_ci
from loopscale.analysis.defaults import HUBER_DELTA
from loopscale.analysis.law import I_PHI, Law, theta_of
from loopscale.analysis.lawfit import fit_law
from loopscale.analysis.parallel import parallel_map, single_threaded_blas
from loopscale.analysis.plan.design import bootstrap_units, fit_data
from loopscale.analysis.plan.refit import refit_many
from loopscale.schedule import cpu_count


def simulate_losses(design: pd.DataFrame, law: Law, noise: float, replicates: int, seed) -> np.ndarray:
    """Losses (R, n) in nats: the law on the design plus N(0, noise²) per run and replicate."""
    clean = np.asarray(law.predict(design["n_once"], design["n_rec"], design["r"], design["tokens"]), dtype=float)
    rng = np.random.default_rng(seed)
    return clean + noise * rng.standard_normal((replicates, len(design)))


def point_fits(design: pd.DataFrame, losses: np.ndarray, law: Law, starts: int, seed: int,
               delta: float = HUBER_DELTA, workers: int | None = 1) -> tuple[np.ndarray, np.ndarray]:
    """fit_law on each replicate (warm start: the true θ); returns (θ (R, 6), converged (R,)).
    Results do not depend on ``workers`` (processes; None = all cores)."""
    truth = theta_of(law)
    tasks = [(design, k, loss, truth, starts, seed, delta) for k, loss in enumerate(losses)]
    thetas, ok = np.full((len(losses), 6), np.nan), np.zeros(len(losses), dtype=bool)
    for results in _parallel(_point_fit_chunk, tasks, workers):
        for k, theta, conv in results:
            thetas[k], ok[k] = theta, conv
    return thetas, ok


def _point_fit_chunk(tasks):
    out = []
    with single_threaded_blas():
        for design, k, loss, truth, starts, seed, delta in tasks:
            if not np.all(loss > 0):  # a non-positive loss: the fit would drop runs; counted as failed
                out.append((k, np.full(6, np.nan), False))
                continue
            f = fit_law(fit_data(design, loss), starts=starts, seed=[seed, 7, k], huber_delta=delta, warm=[truth])
            out.append((k, f.theta, f.converged))
    return out


def _parallel(fn, tasks, workers):
    """fn over interleaved chunks of tasks in ``workers`` processes (fit's pool); yields results."""
    workers = max(1, min(workers or cpu_count(), len(tasks)))
    n_chunks = min(len(tasks), workers * 4) if workers > 1 else 1
    yield from parallel_map(fn, [tasks[i::n_chunks] for i in range(n_chunks)], workers)


def bootstrap_many(design_list: list[pd.DataFrame], losses_list: list[np.ndarray], thetas_list: list[np.ndarray],
                   n_resamples: int, seed: int, delta: float = HUBER_DELTA, workers: int | None = 1,
                   only=None, chunk: int = 2048):
    """Paired cell bootstrap of every replicate of one or more tables (the same unit draws for all
    tables and replicates, as `fit` pairs tables): φ of each refit, (tables, R, K), NaN where a
    resample cannot identify φ (no looped run, or fewer than 6 distinct runs: `fit` fails those
    too); and the number of refits that did not converge. ``only``: indices of the tables to refit
    (the others stay NaN), for reusing draws already made."""
    plan = bootstrap_plan([bootstrap_units(d) for d in design_list], n_resamples, seed)
    out = []
    unconverged = 0
    for t, (design, losses, thetas) in enumerate(zip(design_list, losses_list, thetas_list)):
        data = fit_data(design)
        n = len(design)
        if only is not None and t not in only:
            out.append(np.full((len(losses), n_resamples), np.nan))
            continue
        W = np.stack([np.bincount(plan[k][t], minlength=n) for k in range(n_resamples)]).astype(float)
        looped = ((data.r > 1) & (data.n_rec > 0)).astype(float)
        ok_w = ((W @ looped) > 0) & ((W > 0).sum(axis=1) >= 6)
        phi = np.full((len(losses), n_resamples), np.nan)
        kk, jj = np.meshgrid(np.flatnonzero(np.isfinite(thetas[:, 0])), np.flatnonzero(ok_w), indexing="ij")
        kk, jj = kk.ravel(), jj.ravel()
        tasks = [(data, thetas[kk[i:i + chunk]], np.log(losses[kk[i:i + chunk]]), W[jj[i:i + chunk]], delta, i)
                 for i in range(0, len(kk), chunk)]
        for results in _parallel(_refit_chunk, tasks, workers):
            for i, x, conv in results:
                phi[kk[i:i + len(x)], jj[i:i + len(x)]] = x[:, I_PHI]
                unconverged += int(np.sum(~conv))
        out.append(phi)
    return np.stack(out), unconverged


def _refit_chunk(tasks):
    with single_threaded_blas():
        return [(i, *refit_many(theta0, data, log_loss, w, delta)) for data, theta0, log_loss, w, delta, i in tasks]


def percentile_rows(samples: np.ndarray, level: float = 0.95) -> np.ndarray:
    """Row-wise percentile CI over finite values; NaN rows when fewer than 10 are finite."""
    out = np.full((len(samples), 2), np.nan)
    for k, row in enumerate(samples):
        if np.isfinite(row).sum() >= 10:
            out[k] = percentile_ci(row, level)
    return out


def spread_width(x: np.ndarray) -> float:
    """Central 95% range of the finite values (the sampling spread of an estimator)."""
    ci = percentile_ci(x)
    return float("nan") if ci is None else ci[1] - ci[0]
