"""Time `loopscale fit` on the paper's 116-run design against a plain reference.

Synthetic runs from the paper's law (σ = 0.01 nats) on the iso-FLOP grid of method.md §3.

- loopscale: the full analysis (free fit, φ = 0 / φ = 1, per-r fits, split-half) plus the bootstrap,
  500 random starts (+ 24 grid starts) per fit and 200 cell resamples, on all cores.
- reference: what one would write first: scipy.optimize.minimize(L-BFGS-B) with numerical gradients
  on a scipy.special logsumexp/huber objective, one start at a time. Only a subset of starts is run;
  the full cost (1 + 200 fits × 524 starts) is EXTRAPOLATED from its mean time per start.

Run: .venv/bin/python bench/fit_speed.py [--starts 500] [--bootstrap 200] [--ref-starts 20]
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np
from scipy.optimize import minimize
from scipy.special import huber, logsumexp

from loopscale.analysis.bootstrap import bootstrap_fits, bootstrap_plan, unit_labels
from loopscale.analysis.fit import run_fit
from loopscale.analysis.law import LOWER, PAPER_LAW, UPPER, FitData
from loopscale.analysis.lawfit import fit_law
from loopscale.analysis.multistart import draw_starts
from loopscale.analysis.parallel import single_threaded_blas
from loopscale.runs_table import synthetic_runs


def reference_objective(theta, log_n_eff_fn, log_d, log_l, delta=1e-3):
    e, a, alpha, b, beta, phi = theta
    lne = log_n_eff_fn(phi)
    pred = logsumexp(np.stack([a - alpha * lne, b - beta * log_d, np.full_like(lne, e)]), axis=0)
    return float(np.sum(huber(delta, pred - log_l)))


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the bootstrap's worker processes)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--starts", type=int, default=500)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--ref-starts", type=int, default=20)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} cores, load average {load:.2f} at start (other work slows every number below)")

    runs = synthetic_runs(PAPER_LAW, sigma=0.01, seed=0)
    data = FitData.from_table(runs)
    print(f"{len(runs)} runs (paper grid, synthetic), {args.starts} random starts + 24 grid, "
          f"{args.bootstrap} bootstrap resamples")

    t0, c0 = time.perf_counter(), cpu_seconds()
    fit = fit_law(runs, starts=args.starts, seed=[0, 0])
    t_fit, c_fit = time.perf_counter() - t0, cpu_seconds() - c0
    plan = bootstrap_plan([unit_labels(runs, "cells")], args.bootstrap, seed=0)
    t0, c0 = time.perf_counter(), cpu_seconds()
    bootstrap_fits([runs], plan, starts=args.starts, seed=0, warm=[fit.theta], workers=args.workers)
    t_boot, c_boot = time.perf_counter() - t0, cpu_seconds() - c0
    t0, c0 = time.perf_counter(), cpu_seconds()
    report = run_fit(runs, starts=args.starts, bootstrap=args.bootstrap, seed=0, workers=args.workers)
    t_all, c_all = time.perf_counter() - t0, cpu_seconds() - c0
    print(f"loopscale  free fit: {t_fit:6.2f} s ({c_fit:.2f} CPU s)   bootstrap: {t_boot:6.2f} s ({c_boot:.1f} CPU s)"
          f"   fit + bootstrap: {t_fit + t_boot:6.2f} s wall")
    print(f"loopscale  whole `fit` analysis (9 multistart fits + bootstrap): {t_all:6.2f} s wall, {c_all:.1f} CPU s; "
          f"phi = {report.fit.phi:.4f}, CI {report.ci['phi']}")

    # Reference: plain scipy, numerical gradients, one start at a time, same objective and box.
    n_once, n_rec, r = data.n_once, data.n_rec, data.r

    def lne_fn(phi):
        return np.log(n_once + r**phi * n_rec)

    starts = draw_starts(data, args.ref_starts, seed=[0, 0], fixed={})[24 : 24 + args.ref_starts]
    bounds = list(zip(LOWER, UPPER))
    t0, c0 = time.perf_counter(), cpu_seconds()
    ref_best = np.inf
    with single_threaded_blas():  # same BLAS setting as loopscale: compare algorithms, not threads
        for x0 in starts:
            res = minimize(reference_objective, x0, args=(lne_fn, data.log_tokens, data.log_loss),
                           method="L-BFGS-B", bounds=bounds, options=dict(ftol=1e-15, gtol=1e-11, maxiter=5000))
            ref_best = min(ref_best, res.fun)
    per_start = (time.perf_counter() - t0) / len(starts)
    cpu_per_start = (cpu_seconds() - c0) / len(starts)
    n_fits = 1 + args.bootstrap
    ref_total = per_start * (args.starts + 24) * n_fits
    ref_cpu = cpu_per_start * (args.starts + 24) * n_fits
    print(f"reference  {per_start * 1e3:.1f} ms per start ({cpu_per_start * 1e3:.1f} CPU ms; measured on {len(starts)} "
          f"starts); best objective {ref_best:.6g} vs loopscale {fit.objective:.6g}")
    print(f"reference  fit + bootstrap EXTRAPOLATED to {args.starts + 24} starts x {n_fits} fits: "
          f"{ref_total:,.0f} s wall, {ref_cpu:,.0f} CPU s (one core)")
    print(f"speed-up, reference extrapolated / loopscale fit + bootstrap: {ref_total / (t_fit + t_boot):,.0f}x wall, "
          f"{ref_cpu / (c_fit + c_boot):,.0f}x CPU")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
