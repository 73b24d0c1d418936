"""The bootstrap of the fit (method.md §5): block resampling of (budget × r) cells, or of runs, with
the same draws shared across tables so that differences pair (Δφ of `compare`).

:func:`unit_labels` names each row's unit, :func:`bootstrap_plan` draws the resamples,
:func:`bootstrap_fits` refits the law on each (in parallel, warm-started at the full-data optimum),
:func:`paired_bootstrap` does all three, and :func:`percentile_ci` reads an interval off the draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from loopscale.analysis.defaults import BOOTSTRAP, HUBER_DELTA, RESAMPLE, STARTS
from loopscale.analysis.law import PARAM_NAMES
from loopscale.analysis.lawfit import fit_on_data, as_fit_data, fit_law
from loopscale.analysis.parallel import parallel_map, single_threaded_blas
from loopscale.errors import UserError
from loopscale.schedule import cpu_count


def unit_labels(table, by: str = RESAMPLE) -> np.ndarray:
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
        fit = fit_on_data(data, rows, starts, [int(seed), 5, k], delta, phi, False, warm, max_polish=1, prune_after=10)
    except UserError:  # a resample with fewer distinct runs than parameters: counted as failed
        return t, k, np.full(6, np.nan), False
    p = fit.params
    return t, k, np.array([np.nan if p[n] is None else p[n] for n in PARAM_NAMES]), fit.converged


def _run_chunk(tasks):
    with single_threaded_blas():
        return [_refit(task) for task in tasks]


def bootstrap_fits(tables, plan: list[list[np.ndarray]], *, starts: int = STARTS, seed=0,
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


def paired_bootstrap(tables, n_resamples: int = BOOTSTRAP, *, by: str = RESAMPLE, seed: int = 0, starts: int = STARTS,
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
