"""`loopscale plan`: will a grid measure φ, or a probe's Δφ, before a GPU-hour is spent?

A grid (YAML, loopscale.grid) gives every run's n_once, n_rec, r, tokens D and FLOPs. Under a prior
law (the paper's coefficients, or a fit.json) the grid is simulated ``replicates`` times with
Gaussian noise of ``noise`` nats on each final loss, and every replicate is analysed as
`loopscale fit` would (method.md §5):

1. **Point fit**: :func:`loopscale.analysis.fit.fit_law` — the same Huber objective, box and multistart, but
   with ``starts`` random starts (default 8, plus fit's fixed grid of 24) and the true θ as a warm
   start, instead of 500 random starts. The true θ is near the optimum, so this finds the same
   optimum at a sixth of the cost.
2. **Bootstrap CI**: the same cell bootstrap as `fit` ((budget × r) blocks, :func:`bootstrap_plan`,
   ``bootstrap`` resamples, percentile 95% CI), but each resample is refitted by a semismooth
   Newton descent on the same objective and box (:func:`refit_many`), vectorised over every
   resample of every replicate and warm-started at the replicate's own optimum, where `fit` runs a
   multistart per resample: ≈0.3 ms a refit instead of ≈70 ms. Tests check it lands on `fit`'s
   bootstrap optima (to 1e-4 in φ; 1e-6 measured on the paper grid).

``phi_ci_width`` is the mean width of those per-replicate bootstrap CIs: the width `fit` would print
for this grid. Also reported: ``phi_ci_width_spread``, the central 95% range of φ̂ across
replicates (the true sampling spread of the estimator), and ``phi_ci_width_fisher``, the asymptotic
width ±1.96·sd from the Huber M-estimator's sandwich covariance at the true θ (no simulation).

Probes (method.md §6): for each probe in the grid, the probe's runs are simulated with φ + Δ and
their probe-none counterparts (the same budget, width, r and seed; taken from the grid, or built
from its settings when the grid only holds the probe) with φ; r = 1 runs are shared, with the same
noise. Both are fitted, and Δφ's CI comes from a paired cell bootstrap, as `compare` would do.

Suggestions: a greedy search over candidate cells (budget × width × r, each one more run) ranks them
by the fall of the sandwich variance of φ per training FLOP; the top pick is checked by simulation
(a thousand fresh replicates with and without it, refitted by :func:`refit_many` from the true θ).
Existing runs whose removal would widen the CI least per FLOP they cost are listed as carrying
little information.

Prior: the paper's law, a fit.json, or (``--from SWEEP``, :func:`sweep_prior`) a finished sweep's own
fit, made as `loopscale fit` makes it (loopscale.analysis.fit.run_fit, but 100 random starts and no bootstrap:
only the point estimate is used), with its measured noise: the larger of the pooled seed-to-seed sd
of runs identical but for the seed (loopscale.analysis.regime.seed_noise; the grid's ``repeats:``) and the
fit's residual RMSE.

Regime (:func:`bracketing`): under the prior law, without noise, does each iso-FLOP (budget, r) cell
of the grid bracket its compute-optimal width (loopscale.analysis.regime.cell_minima)? Fewer than 2/3 of the
cells with ≥ 3 widths is a warning: the fit would see one side of each valley.

Units: losses in nats, FLOPs are training FLOPs (counting.py). Cost in the executor's unit
(:func:`executor_unit`): GPU-hours at peak TFLOP/s × MFU, or CPU core-hours at a rate in FLOP/s per
core (measured by the sweep of ``--from``, else ``--cpu-gflops``, default DEFAULT_CPU_GFLOPS), with
the wall-clock time on the executor's parallel jobs.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import erf

from loopscale.analysis.fit import (
    HUBER_DELTA,
    I_PHI,
    LOWER,
    UPPER,
    FitData,
    bootstrap_plan,
    fit_law,
    log_prediction,
    percentile_ci,
    unit_labels,
)
from loopscale.analysis.law import Law
from loopscale.analysis.parallel import parallel_map, single_threaded_blas
from loopscale import paper
from loopscale.atomic import json_safe
from loopscale.counting import ArchError, baseline_arch, n_once, n_rec, probe_arch, split_arch
from loopscale.errors import UserError
from loopscale.schedule import cpu_count, local_layout, queue_cost, resolve_kind, visible_gpus

Z95 = 1.959963984540054  # two-sided 95%
Z80 = 0.8416212335729143  # one-sided 80% power
H100_BF16_DENSE_TFLOPS = paper.H100_BF16_DENSE_TFLOPS
PAPER_MFU = paper.MFU


# ---------------------------------------------------------------------------------------------
# The grid as a table of runs


def design_table(specs) -> pd.DataFrame:
    """Run specs (loopscale.grid.RunSpec) → one row per run with what the law and the cost need:
    n_once, n_rec (parameters), r, tokens (D), flops_per_token, flops (= tokens·flops_per_token),
    budget_flops (NaN for token budgets), width, probe, seed, run_id."""
    rows = [dict(run_id=s.run_id, budget_flops=np.nan if s.budget_flops is None else float(s.budget_flops),
                 width=s.d_model, r=s.r, probe=s.probe, seed=s.seed, n_once=float(s.n_once),
                 n_rec=float(s.n_rec), tokens=float(s.tokens), flops_per_token=float(s.flops_per_token),
                 flops=float(s.flops_per_token) * float(s.tokens)) for s in specs]
    return pd.DataFrame(rows)


def _run_row(cfg, run_id: str, budget) -> dict:
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
            built.append(_run_row(_plain(s.config), f"{s.run_id}~none", s.budget_flops))
    if built:
        base = pd.concat([base, pd.DataFrame(built)], ignore_index=True)
    probes = {}
    for name in sorted({s.probe for s in specs if s.probe != "none"}):
        own = [s for s in specs if s.probe == name or (s.r == 1 and s.probe == "none")]
        probes[name] = design_table(own)
    return base, probes, len(built)


# ---------------------------------------------------------------------------------------------
# Cost, in the unit of the grid's executor: GPU-hours, or CPU core-hours


def gpu_hours(flops, peak_tflops: float = H100_BF16_DENSE_TFLOPS, mfu: float = PAPER_MFU):
    """Hours of one GPU running at peak_tflops·1e12·mfu FLOP/s."""
    return np.asarray(flops, dtype=float) / (peak_tflops * 1e12 * mfu) / 3600.0


def cpu_hours(flops, core_s_per_flop: float):
    """Core-hours at ``core_s_per_flop`` core-seconds per training FLOP."""
    return np.asarray(flops, dtype=float) * core_s_per_flop / 3600.0


def unit_hours(flops, unit: str, *, peak_tflops: float = H100_BF16_DENSE_TFLOPS, mfu: float = PAPER_MFU,
               core_s_per_flop: float | None = None):
    """Cost of ``flops`` training FLOPs in ``unit``: GPU-hours at peak_tflops × mfu, or CPU core-hours
    at ``core_s_per_flop``."""
    if unit == "gpu_hours":
        return gpu_hours(flops, peak_tflops, mfu)
    if unit == "cpu_hours":
        if not (core_s_per_flop and core_s_per_flop > 0):
            raise ValueError("cpu_hours needs a positive core_s_per_flop")
        return cpu_hours(flops, core_s_per_flop)
    raise ValueError(f"unknown cost unit {unit!r}")


def executor_unit(grid, hint: str = "auto") -> tuple[str, str]:
    """Does the grid train on GPUs or CPUs? Returns ("gpu_hours" | "cpu_hours", why).

    ``hint`` gpu/cpu decides. Otherwise, in this order: ``train.device`` cuda or cpu; the executor's
    ``gpus_per_node`` > 0; slurm jobs without GPUs; local and debug jobs (``kind: auto`` is slurm where
    sbatch is on PATH, else local, as `sweep` resolves it) use the GPUs this machine shows
    (loopscale.schedule.visible_gpus), else its CPU cores."""
    if hint not in ("auto", "gpu", "cpu"):
        raise UserError(f"--cost-unit must be auto, gpu or cpu, got {hint!r}")
    if hint != "auto":
        return f"{hint}_hours", f"--cost-unit {hint}"
    devices = {s.config.train.device for s in grid.runs}
    if devices == {"cuda"}:
        return "gpu_hours", "train.device is cuda"
    if devices == {"cpu"}:
        return "cpu_hours", "train.device is cpu"
    ex = grid.executor
    if ex.gpus_per_node > 0:
        return "gpu_hours", f"executor.gpus_per_node is {ex.gpus_per_node}"
    kind = resolve_kind(ex.kind)
    if kind == "slurm":
        return "cpu_hours", "slurm jobs without executor.gpus_per_node train on CPU"
    gpus = visible_gpus()
    if gpus:
        return "gpu_hours", f"{kind} jobs on this machine, which shows {len(gpus)} GPU(s)"
    return "cpu_hours", f"{kind} jobs on this machine, which shows no GPU (train.device auto falls back to CPU)"


def executor_layout(grid, unit: str) -> dict:
    """How many jobs run at once and how many cores (CPU) or GPUs each uses: the executor's settings,
    resolved as `sweep` would on this machine (loopscale.schedule.local_layout). ``jobs`` None: as many
    as the scheduler starts at once (slurm without array_parallelism)."""
    ex = grid.executor
    kind = resolve_kind(ex.kind)
    threads = {s.config.train.threads for s in grid.runs}
    fixed_threads = next(iter(threads)) if len(threads) == 1 and next(iter(threads)) > 0 else None
    if kind == "slurm":
        per_job = max(ex.gpus_per_node, 1) if unit == "gpu_hours" else (fixed_threads or ex.cpus_per_task or 1)
        return {"kind": kind, "jobs": ex.array_parallelism, "per_job": per_job,
                "jobs_from": "executor.array_parallelism" if ex.array_parallelism else "every array task at once"}
    if kind == "debug":
        per_job = 1 if unit == "gpu_hours" else (fixed_threads or cpu_count())
        return {"kind": kind, "jobs": 1, "per_job": per_job, "jobs_from": "the debug executor runs one at a time"}
    lay = local_layout(ex)
    per_job = 1 if unit == "gpu_hours" else (fixed_threads or lay.threads)
    return {"kind": kind, "jobs": lay.n, "per_job": per_job, "longest_first": True,  # as submit's local queue
            "jobs_from": "executor.local_jobs" if ex.local_jobs else "this machine's GPUs/cores"}


def schedule_hours(hours: np.ndarray, jobs: int | None) -> float:
    """Wall-clock hours of runs taking ``hours`` each, started in order on ``jobs`` slots (a free
    slot takes the next run); ``jobs`` None: all at once."""
    hours = np.asarray(hours, dtype=float)
    if hours.size == 0:
        return 0.0
    if jobs is None or jobs >= hours.size:
        return float(hours.max())
    slots = [0.0] * jobs
    heapq.heapify(slots)
    for h in hours:
        heapq.heappush(slots, heapq.heappop(slots) + float(h))
    return max(slots)


def cost_summary(design: pd.DataFrame, peak_tflops: float = H100_BF16_DENSE_TFLOPS, mfu: float = PAPER_MFU, *,
                 unit: str = "gpu_hours", core_s_per_flop: float | None = None, layout: dict | None = None) -> dict:
    """Total training FLOPs (Σ tokens·flops_per_token) and their cost in ``unit``, per r and in all.

    gpu_hours: at peak_tflops × mfu per GPU. cpu_hours: core-hours at ``core_s_per_flop``.
    ``layout`` (:func:`executor_layout`): also the expected wall-clock hours, each run taking
    its unit-hours / per_job, runs started on ``jobs`` slots in the executor's order: grid order, or
    for the local queue longest first (loopscale.schedule.queue_cost)."""
    def hours(f):
        return unit_hours(f, unit, peak_tflops=peak_tflops, mfu=mfu, core_s_per_flop=core_s_per_flop)

    per_r = []
    for r, rows in design.groupby("r"):
        f = float(rows["flops"].sum())
        per_r.append({"r": int(r), "runs": len(rows), "flops": f, unit: float(hours(f)), "hours": float(hours(f))})
    total = float(design["flops"].sum())
    out = {"unit": unit, "total_flops": total, unit: float(hours(total)), "hours": float(hours(total)),
           "runs": len(design), "per_r": per_r}
    if unit == "gpu_hours":
        out.update(peak_tflops=peak_tflops, mfu=mfu)
    else:
        out.update(core_s_per_flop=core_s_per_flop, gflops_per_core=1e-9 / core_s_per_flop)
    if layout is not None:
        run_hours = np.asarray(hours(design["flops"].to_numpy(dtype=float)), dtype=float) / layout["per_job"]
        if layout.get("longest_first"):
            cost = queue_cost(design["tokens"].to_numpy(dtype=float), design["flops_per_token"].to_numpy(dtype=float))
            run_hours = run_hours[np.argsort(-cost, kind="stable")]
        out.update(wall_hours=schedule_hours(run_hours, layout["jobs"]), parallel_jobs=layout["jobs"],
                   per_job=layout["per_job"], executor=layout["kind"], jobs_from=layout["jobs_from"])
    return out


# ---------------------------------------------------------------------------------------------
# A finished sweep as the prior: its fitted law, its measured noise and CPU rate


# Default CPU rate when no sweep measured one: FLOP/s per core (training FLOPs of counting.py).
# The default grid (grids/tiny.yaml: bytes, d 8-32, seq 64) from a fresh clone on the 2-core dev machine,
# 2 jobs x 1 thread, evaluation and start-up included: 5.9 GFLOP/s per core (9.4e12 FLOPs, 13.8 min).
# Wider models run faster per FLOP (the previous default, d 32-96 with vocab 4096: ~13 GFLOP/s per core);
# `plan --from SWEEP` measures the rate of your own runs instead.
DEFAULT_CPU_GFLOPS = 6.0
SWEEP_FIT_STARTS = 100  # random starts of the sweep's fit in `plan --from` (`fit` uses 500; law only)


@dataclass
class SweepPrior:
    """What `plan --from SWEEP` takes from a finished sweep."""

    path: str
    law: Law
    fit: dict  # n_runs, r2, converged, params, residual_rmse, starts, warnings
    seed_noise: dict  # loopscale.analysis.regime.seed_noise of the fitted runs
    residual_rmse: float
    noise: float  # max(seed sd, residual RMSE)
    noise_source: str
    cpu_rate: dict | None  # measured core-seconds per FLOP of its CPU runs (None: no CPU runs)

    @property
    def law_source(self) -> str:
        return f"sweep:{self.path}"


def sweep_prior(sweep_dir, *, starts: int = SWEEP_FIT_STARTS, seed: int = 0, workers: int | None = None,
                progress=None) -> SweepPrior:
    """Fit a sweep's finished runs as `loopscale fit SWEEP` does (loopscale.runs_table.load_runs,
    loopscale.analysis.fit.run_fit; ``starts`` random starts and no bootstrap: only the point fit is needed)
    and measure its noise: the larger of the pooled seed-to-seed sd of runs identical but for the
    seed (loopscale.analysis.regime.seed_noise) and the fit's residual RMSE. A sweep with several probes is
    fitted on its probe-none runs. Bad sweeps raise UserError naming the folder."""
    from loopscale.analysis.fit import run_fit
    from loopscale.analysis.regime import seed_noise
    from loopscale.runs_table import load_runs, select_probe, usable_rows
    from loopscale.store import FINISHED

    path = Path(sweep_dir)
    if not path.is_dir():
        raise UserError(f"{path}: no such sweep folder (--from takes a sweep folder made by `loopscale sweep`)")
    if not (path / "runs").is_dir() and not (path / "results.db").is_file():
        raise UserError(f"{path}: not a sweep folder (no runs/ and no results.db)")
    try:
        table = load_runs(path)
    except UserError as e:
        raise UserError(f"{path}: {e}" if not str(e).startswith(str(path)) else str(e)) from None
    status = table["status"].fillna("").astype(str) if "status" in table else pd.Series("done", index=table.index)
    finished = status.isin(FINISHED).to_numpy() & np.isfinite(table["loss"].to_numpy(dtype=float))
    if not finished.any():
        states = ", ".join(f"{k} {v}" for k, v in status.value_counts().items())
        raise UserError(f"{path}: no finished runs to fit ({states}); run the sweep first")
    probes = set(table["probe"].fillna("none").astype(str)) if "probe" in table else {"none"}
    try:
        table, _ = select_probe(table, "none" if len(probes) > 1 else None)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    usable, _ = usable_rows(table)
    if len(usable) and not FitData.from_table(usable).phi_identifiable:
        raise UserError(f"{path}: no finished run loops a block (r > 1), so the sweep has no phi to plan with")
    try:
        report = run_fit(table, starts=starts, bootstrap=0, seed=seed, workers=workers, progress=progress)
    except UserError as e:
        raise UserError(f"{path}: cannot fit the law ({e})") from None
    fit = report.fit
    rmse = float(fit.residuals["all"]["rmse"])
    noise = seed_noise(report.runs)
    sd = noise["sd"]
    if sd is None:
        value, why = rmse, (f"the fit's residual RMSE {rmse:.4g} nats ({fit.n_runs} runs); no run is repeated "
                            "with another seed, so seed noise is unknown (add `repeats:` to the grid)")
    else:
        value = max(sd, rmse)
        which = "seed-to-seed sd" if sd >= rmse else "the fit's residual RMSE"
        why = (f"{which}: max(seed-to-seed sd {sd:.4g} nats pooled over {noise['n_groups']} repeated point(s), "
               f"{noise['n_runs']} runs; residual RMSE {rmse:.4g} nats over {fit.n_runs} runs)")
    if not value > 0:
        raise UserError(f"{path}: the measured noise is 0 (the law fits every run exactly); give --noise")
    fit_doc = {"n_runs": fit.n_runs, "r2": fit.r2, "converged": fit.converged, "params": fit.params,
               "residual_rmse": rmse, "starts": starts, "bootstrap": 0, "at_bounds": fit.at_bounds,
               "warnings": list(report.warnings)}
    return SweepPrior(str(path), fit.law, fit_doc, noise, rmse, float(value), why,
                      measured_cpu_rate(path, usable))


def measured_cpu_rate(sweep_dir, runs: pd.DataFrame) -> dict | None:
    """Core-seconds per training FLOP of a sweep's CPU runs: Σ wall_time_s·threads / Σ flops_total
    (wall time as result.json records it: training, evaluation and start-up), from the runs table
    `load_runs` read. Threads per run: the config's train.threads, else the worker's (the run's
    started.json), else this machine's cores. Also the training-only rate,
    tokens_per_s·flops_per_token/threads. None when no finished run ran on CPU."""
    def col(name):
        return pd.to_numeric(runs[name], errors="coerce") if name in runs else pd.Series(np.nan, index=runs.index)

    device = runs["device"].astype(str) if "device" in runs else pd.Series("", index=runs.index)
    wall, f, tps, fpt = col("wall_time_s"), col("flops_total"), col("tokens_per_s"), col("flops_per_token")
    cpu = ((device == "cpu") & (wall > 0) & (f > 0)).to_numpy()
    if not cpu.any():
        return None
    root = Path(sweep_dir) / "runs"
    threads = col("train.threads").fillna(0).to_numpy(dtype=float)
    for i in np.flatnonzero(cpu & (threads <= 0)):
        try:
            threads[i] = json.loads((root / str(runs["run_id"].iloc[i]) / "started.json").read_text()).get("threads") or 0
        except (OSError, ValueError, AttributeError):
            threads[i] = 0
    threads = np.where(threads > 0, threads, cpu_count())[cpu]
    wall, f, tps, fpt = (x.to_numpy(dtype=float)[cpu] for x in (wall, f, tps, fpt))
    core_s, flops = float(np.sum(wall * threads)), float(np.sum(f))
    timed = (tps > 0) & np.isfinite(fpt)
    train_core_s = float(np.sum(f[timed] / (tps[timed] * fpt[timed]) * threads[timed]))
    return {"core_s_per_flop": core_s / flops, "gflops_per_core": flops / core_s / 1e9,
            "train_gflops_per_core": flops / train_core_s / 1e9 if train_core_s > 0 else None,
            "runs": int(cpu.sum()), "core_hours": core_s / 3600.0, "flops": flops}


# ---------------------------------------------------------------------------------------------
# Does the grid bracket each cell's compute-optimal width under the law?


def bracketing(grid, law: Law, law_source: str = "paper", probe_delta: float = 0.0) -> dict:
    """The grid's iso-FLOP (budget, r, probe) cells under ``law`` without noise: the loss the law
    predicts at each design point (probe runs at φ + probe_delta, as they are simulated), and where
    each cell's minimum over N = N_once + N_rec lies (loopscale.analysis.regime.cell_minima). ``warning`` is
    set when fewer than 2/3 of the cells with ≥ 3 widths bracket it: the fit would see one side of
    each valley. Token-budget runs belong to no cell."""
    from loopscale.analysis.regime import BRACKETED_SHARE, MIN_WIDTHS, cell_minima, cells_missed

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


# ---------------------------------------------------------------------------------------------
# The law and its Jacobian, batched over many θ and many loss vectors


def theta_of(law: Law) -> np.ndarray:
    """θ = (e, a, α, b, β, φ) as the fit parametrises it."""
    return np.array([math.log(law.E), math.log(law.A), law.alpha, math.log(law.B), law.beta, law.phi])


def fit_data(design: pd.DataFrame, loss=None) -> FitData:
    loss = np.ones(len(design)) if loss is None else loss
    return FitData.from_arrays(design["n_once"], design["n_rec"], design["r"], design["tokens"], loss)


def _huber(res: np.ndarray, weight: np.ndarray, delta: float) -> np.ndarray:
    absr = np.abs(res)
    return np.sum(weight * np.where(absr <= delta, 0.5 * res * res, delta * (absr - 0.5 * delta)), axis=1)


def _newton_terms(theta, data, log_loss, weight, delta):
    """Objective (P,), gradient (P, 6) and a semismooth Newton matrix (P, 6, 6): Gauss–Newton on
    the rows inside Huber's quadratic zone, plus 1% of the IRLS matrix (all rows, weight δ/|ρ|
    outside) to keep it positive definite. Near an optimum this converges in a few steps, where
    IRLS alone crawls."""
    log_pred, J = log_prediction(theta, data, jacobian=True)
    res = log_pred - log_loss
    absr = np.abs(res)
    quad = absr <= delta
    f = _huber(res, weight, delta)
    g = np.matmul(J, (weight * np.clip(res, -delta, delta))[:, :, None])[:, :, 0]
    h = weight * np.where(quad, 1.01, 0.01 * delta / np.maximum(absr, 1e-300))
    M = np.matmul(J * h[:, None, :], J.transpose(0, 2, 1))
    return f, g, M


def refit_many(theta0: np.ndarray, data: FitData, log_loss: np.ndarray, weight: np.ndarray,
               delta: float = HUBER_DELTA, max_iter: int = 300, ftol: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """Minimise the fit objective (Huber on log-loss residuals, the fit's box) for P problems at once.

    Problem p has losses ``log_loss[p]`` (n,), row weights ``weight[p]`` (n,) (bootstrap
    multiplicities) and start ``theta0[p]`` (a nearby optimum: warm start only). Projected
    semismooth Newton steps (:func:`_newton_terms`) with backtracking, on the box as stage 1 of
    loopscale.analysis.fit.multistart.
    Returns (θ (P, 6), converged (P,))."""
    x = np.clip(np.array(theta0, dtype=float), LOWER, UPPER)
    P = len(x)
    converged = np.zeros(P, dtype=bool)
    live = np.arange(P)
    f, g, M = _newton_terms(x, data, log_loss, weight, delta)
    eye = np.eye(6)
    for _ in range(max_iter):
        if live.size == 0:
            break
        xi, fi, gi, Mi, Li, Wi = x[live], f[live], g[live], M[live], log_loss[live], weight[live]
        held = ((xi <= LOWER) & (gi > 0)) | ((xi >= UPPER) & (gi < 0))
        F = (~held).astype(float)
        Mr = Mi * F[:, :, None] * F[:, None, :] + eye * (1.0 - F)[:, :, None]
        Mr += eye * (1e-12 * np.einsum("sii->s", Mr) + 1e-300)[:, None, None]
        d = -np.linalg.solve(Mr, (F * gi)[:, :, None])[:, :, 0] * F
        d *= np.minimum(1.0, 0.25 / np.max(np.abs(d) / (UPPER - LOWER), axis=1).clip(1e-300))[:, None]
        t = np.ones(len(live))
        x_new, f_new = xi.copy(), fi.copy()
        pending = np.arange(len(live))
        for _ in range(30):  # backtracking (Armijo) per problem
            if pending.size == 0:
                break
            xt = np.clip(xi[pending] + t[pending, None] * d[pending], LOWER, UPPER)
            ft = _huber(log_prediction(xt, data) - Li[pending], Wi[pending], delta)
            ok = ft <= fi[pending] + 1e-4 * np.einsum("si,si->s", gi[pending], xt - xi[pending])
            x_new[pending[ok]], f_new[pending[ok]] = xt[ok], ft[ok]
            pending = pending[~ok]
            t[pending] *= 0.5
        done = (fi - f_new) <= ftol * np.abs(fi)
        fn, gn, Mn = _newton_terms(x_new, data, Li, Wi, delta)
        x[live], f[live], g[live], M[live] = x_new, fn, gn, Mn
        converged[live[done]] = True
        live = live[~done]
    return x, converged


# ---------------------------------------------------------------------------------------------
# Asymptotic (sandwich) variance of φ


def _huber_moments(sigma_log: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """E[ψ'(ε)] and E[ψ(ε)²] of Huber's ψ for ε ~ N(0, σ²), per row."""
    c = delta / np.maximum(sigma_log, 1e-300)
    inside = erf(c / math.sqrt(2.0))  # P(|z| ≤ c)
    pdf = np.exp(-0.5 * c * c) / math.sqrt(2.0 * math.pi)
    e_psi2 = sigma_log**2 * (inside - 2.0 * c * pdf) + delta**2 * (1.0 - inside)
    return inside, e_psi2


def information(design: pd.DataFrame, law: Law, noise: float, delta: float = HUBER_DELTA):
    """Per-row pieces of the Huber M-estimator's sandwich covariance at the true θ.

    Noise of ``noise`` nats on L is ≈ noise/L on log L. Returns (J (n, 6), a (n,), b (n,)) with
    A = Σ a·J Jᵀ (expected Hessian), B = Σ b·J Jᵀ (score covariance), Cov θ̂ ≈ A⁻¹ B A⁻¹."""
    data = fit_data(design)
    log_pred, J = log_prediction(theta_of(law)[None], data, jacobian=True)
    a, b = _huber_moments(noise / np.exp(log_pred[0]), delta)
    return J[0].T, a, b


def phi_variance(J: np.ndarray, a: np.ndarray, b: np.ndarray, weight=None) -> float:
    """Sandwich variance of φ̂ from :func:`information` rows (optionally weighted/subset)."""
    w = np.ones(len(a)) if weight is None else np.asarray(weight, dtype=float)
    A = (J * (w * a)[:, None]).T @ J
    B = (J * (w * b)[:, None]).T @ J
    return float(_sandwich_phi(A[None], B[None])[0])


def _sandwich_phi(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """(A⁻¹ B A⁻¹)[φ, φ] for a batch of 6×6 matrices; inf where A is singular."""
    out = np.full(len(A), np.inf)
    try:
        u = np.linalg.solve(A, np.broadcast_to(np.eye(6)[I_PHI], (len(A), 6))[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:
        u = np.stack([np.linalg.lstsq(m, np.eye(6)[I_PHI], rcond=None)[0] for m in A])
    v = np.einsum("pi,pij,pj->p", u, B, u)
    ok = np.isfinite(v) & (v > 0)
    out[ok] = v[ok]
    return out


# ---------------------------------------------------------------------------------------------
# Simulation


@dataclass
class Simulation:
    """φ̂ of each replicate and, when bootstrapped, its percentile 95% CI (NaN where a fit failed)."""

    phi: np.ndarray  # (R,)
    ci: np.ndarray | None  # (R, 2)
    converged: np.ndarray  # (R,) point fit converged
    boot_unconverged: int = 0


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
    plan = bootstrap_plan([_labels(d) for d in design_list], n_resamples, seed)
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


def _labels(design: pd.DataFrame) -> np.ndarray:
    """Bootstrap units as `fit` draws them: (budget × r) cells; runs when budgets are in tokens
    (named by their design point, so that a probe's run pairs with its baseline run)."""
    if design["budget_flops"].notna().all():
        return unit_labels(design, "cells")
    return np.array([f"D{t:.6g}|r{r:g}|d{w:g}|s{s:g}" for t, r, w, s in
                     zip(design["tokens"], design["r"], design["width"], design["seed"])])


def _percentile_rows(samples: np.ndarray, level: float = 0.95) -> np.ndarray:
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


# ---------------------------------------------------------------------------------------------
# Candidate cells and the greedy search


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
                row = _run_row(cfg, f"cand-{level:.3g}-d{w}-r{r}", level if iso_flop else None)
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
    var = float(_sandwich_phi(A[None], B[None])[0])
    outer = np.einsum("ci,cj->cij", Jc, Jc)
    picks = []
    for _ in range(k):
        v = _sandwich_phi(A[None] + ac[:, None, None] * outer, B[None] + bc[:, None, None] * outer)
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
    v = _sandwich_phi(A, B)
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


# ---------------------------------------------------------------------------------------------
# The whole plan


@dataclass
class PlanReport:
    doc: dict
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return json_safe({**self.doc, "notes": self.notes})

    @property
    def warnings(self) -> list[str]:
        return list(self.doc.get("warnings", []))


def plan_grid(grid, law: Law, *, law_source: str = "paper", noise: float = 0.01, noise_source: str | None = None,
              replicates: int = 100, bootstrap: int = 200, probe_delta: float = 0.07, seed: int = 0, starts: int = 8,
              peak_tflops: float = H100_BF16_DENSE_TFLOPS, mfu: float = PAPER_MFU, suggest: int = 5,
              delta: float = HUBER_DELTA, workers: int | None = None, cost_unit: str = "auto",
              cpu_gflops: float | None = None, sweep: SweepPrior | None = None, diagnostics: dict | None = None,
              progress=None) -> PlanReport:
    """Predict what fitting ``grid`` (loopscale.grid.Grid) will measure; see the module docstring.
    ``workers``: processes (default all cores; results do not depend on it).
    ``cost_unit``: auto (:func:`executor_unit`) | gpu | cpu. CPU cost at ``cpu_gflops`` GFLOP/s per
    core, else the rate ``sweep`` measured, else DEFAULT_CPU_GFLOPS. ``sweep``: the prior's sweep
    (reported, and its CPU rate). ``diagnostics``: :func:`bracketing` if already computed.
    ``progress(stage, done, total)`` reports long work."""
    check_plan_args(noise=noise, replicates=replicates, bootstrap=bootstrap, seed=seed, starts=starts,
                    peak_tflops=peak_tflops, mfu=mfu, suggest=suggest, delta=delta, workers=workers,
                    probe_delta=probe_delta, cpu_gflops=cpu_gflops, cost_unit=cost_unit)
    say = progress or (lambda stage, done, total: None)
    t0 = time.perf_counter()
    notes: list[str] = []
    runs = design_table(grid.runs)
    base, probes, n_built = baseline_and_probes(grid)
    if n_built:
        notes.append(f"the probe's {n_built} probe-none counterparts (baseline runs for Δφ) are not in this grid; "
                     "they are assumed trained already (e.g. by the main grid) and are not in the cost")
    check_grid(grid, base)
    if not base["budget_flops"].notna().all():
        notes.append("token budgets (no FLOP budgets): the bootstrap resamples runs, as `fit` does")
    if diagnostics is None:
        diagnostics = bracketing(grid, law, law_source, probe_delta)
    doc: dict = {"grid": grid.name, "path": None if grid.path is None else str(grid.path), "n_runs": len(runs),
                 "law": law.to_dict(), "law_source": law_source, "noise_nats": noise,
                 "noise_source": noise_source or "--noise", "replicates": replicates,
                 "bootstrap": bootstrap, "starts": starts, "seed": seed, "huber_delta": delta,
                 "diagnostics": diagnostics, "warnings": [diagnostics["warning"]] if diagnostics["warning"] else []}
    if sweep is not None:
        doc["sweep"] = {"path": sweep.path, "fit": sweep.fit, "residual_rmse": sweep.residual_rmse,
                        "seed_noise": {k: sweep.seed_noise[k] for k in ("sd", "n_groups", "n_runs")},
                        "cpu_rate": sweep.cpu_rate}
    unit, why = executor_unit(grid, cost_unit)
    core_s, rate_source = None, None
    if unit == "cpu_hours":
        if cpu_gflops is not None:
            core_s, rate_source = 1e-9 / cpu_gflops, f"--cpu-gflops {cpu_gflops:g}"
        elif sweep is not None and sweep.cpu_rate is not None:
            r = sweep.cpu_rate
            core_s = r["core_s_per_flop"]
            rate_source = (f"measured on sweep:{sweep.path}: {r['gflops_per_core']:.3g} GFLOP/s per core over its "
                           f"{r['runs']} CPU runs (wall time × threads, evaluation and start-up included)")
        else:
            core_s = 1e-9 / DEFAULT_CPU_GFLOPS
            rate_source = (f"default {DEFAULT_CPU_GFLOPS:g} GFLOP/s per core (grids/tiny.yaml from a fresh clone "
                           "on the 2-core dev machine; --cpu-gflops to change, --from SWEEP to measure)")
    cost = cost_summary(runs, peak_tflops, mfu, unit=unit, core_s_per_flop=core_s, layout=executor_layout(grid, unit))
    cost["unit_reason"] = why
    if rate_source:
        cost["rate_source"] = rate_source
    doc.update({"total_flops": cost["total_flops"], unit: cost[unit], "cost": cost})

    with single_threaded_blas():
        # φ on the baseline (probe none) runs
        losses = simulate_losses(base, law, noise, replicates, [seed, 1])
        say("fits", 0, replicates)
        thetas, ok = point_fits(base, losses, law, starts, seed, delta, workers)
        say("fits", replicates, replicates)
        phi = thetas[:, I_PHI]
        J, a, b = information(base, law, noise, delta)
        fisher = 2 * Z95 * math.sqrt(phi_variance(J, a, b))
        doc.update(_phi_summary(phi, law.phi, fisher, ok))
        if bootstrap > 0:
            say("bootstrap", 0, 1)
            boot, unconv = bootstrap_many([base], [losses], [thetas], bootstrap, seed, delta, workers)
            say("bootstrap", 1, 1)
            boot_phi = boot[0]
            ci = _percentile_rows(boot_phi)
            doc.update(_ci_summary(ci, law.phi, unconv, boot[0].size))
            doc["phi_ci_width"] = doc["phi_ci_width_bootstrap"]
            doc["phi_ci_width_method"] = (f"mean width of each replicate's percentile 95% cell-bootstrap CI "
                                          f"({bootstrap} resamples), as `fit` reports it")
        else:
            boot_phi = None
            ci = np.column_stack([phi - Z95 * np.nanstd(phi), phi + Z95 * np.nanstd(phi)])
            doc.update(_ci_summary(ci, law.phi, 0, 0))
            doc["phi_ci_width_bootstrap"] = None
            doc["phi_ci_width"] = doc["phi_ci_width_spread"]
            doc["phi_ci_width_method"] = ("central 95% range of phi across replicates (no bootstrap; the CIs "
                                          "for the exclusion chances are phi ± 1.96·sd across replicates)")

        # probes: Δφ with a paired bootstrap
        doc["probes"], probe_sims = {}, {}
        for i, (name, table) in enumerate(probes.items()):
            say(f"probe {name}", 0, 1)
            doc["probes"][name], probe_sims[name] = _probe_power(
                base, table, losses, thetas, boot_phi, law, noise, bootstrap, probe_delta, seed, i + 1, starts, delta,
                workers)
            say(f"probe {name}", 1, 1)

        # Which cells to add, which carry little: on the baseline when the grid loops plain runs,
        # else on the grid's probe (its own runs, simulated at φ + Δ above).
        target, t_law, t_probe = base, law, "none"
        if not ((runs["probe"] == "none") & (runs["r"] > 1)).any() and probes:
            t_probe = next(iter(probes))
            target, t_law = probe_sims[t_probe]
        doc["suggestions_for"] = t_probe
        cand = candidate_cells(grid, target, t_probe) if suggest > 0 else pd.DataFrame()
        picks = greedy_suggestions(target, cand, t_law, noise, suggest, delta)
        if picks:
            say("check top pick", 0, 1)
            picks[0]["simulated"] = check_pick(target, picks[0], t_law, noise, seed, delta=delta)
            say("check top pick", 1, 1)
        for pick in picks:
            pick["hours"] = pick[unit] = float(unit_hours(pick["flops"], unit, peak_tflops=peak_tflops, mfu=mfu,
                                                          core_s_per_flop=core_s))
        doc["suggestions"] = picks
        doc["low_information"] = (low_information_runs(target, t_law, noise, suggest, delta, among=runs["run_id"])
                                  if suggest > 0 else [])
    doc["n_baseline_runs"] = len(base)
    doc["seconds"] = time.perf_counter() - t0
    return PlanReport(doc, notes)


def check_grid(grid, base: pd.DataFrame | None = None) -> None:
    """Refuse a grid that cannot measure φ (UserError): no looped run, or fewer runs than parameters."""
    if base is None:
        base = baseline_and_probes(grid)[0]
    if not fit_data(base).phi_identifiable:
        raise UserError(f"{grid.name}: no run loops a block (all r = 1): phi cannot be measured on this grid")
    if len(base) < 6:
        raise UserError(f"{grid.name}: {len(base)} runs, fewer than the 6 parameters of the law")


def check_plan_args(*, noise=None, replicates=100, bootstrap=200, seed=0, starts=8,
                    peak_tflops=H100_BF16_DENSE_TFLOPS, mfu=PAPER_MFU, suggest=5, delta=HUBER_DELTA, workers=None,
                    probe_delta=0.07, cpu_gflops=None, cost_unit="auto") -> None:
    """Refuse settings :func:`plan_grid` cannot run with (UserError, named by their flags); ``noise``
    None: not known yet (measured by --from)."""
    _check_args(noise, replicates, bootstrap, seed, starts, peak_tflops, mfu, suggest, delta)
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if not math.isfinite(probe_delta):
        raise UserError(f"--probe-delta must be a finite number, got {probe_delta}")
    if cpu_gflops is not None and not (cpu_gflops > 0 and math.isfinite(cpu_gflops)):
        raise UserError(f"--cpu-gflops must be a positive number of GFLOP/s per core, got {cpu_gflops}")
    if cost_unit not in ("auto", "gpu", "cpu"):
        raise UserError(f"--cost-unit must be auto, gpu or cpu, got {cost_unit!r}")


def _check_args(noise, replicates, bootstrap, seed, starts, peak_tflops, mfu, suggest, delta) -> None:
    if noise is not None and not (noise > 0 and math.isfinite(noise)):
        raise UserError(f"--noise must be a positive number of nats, got {noise}")
    if replicates < 10:
        raise UserError(f"--replicates must be at least 10, got {replicates}")
    if bootstrap != 0 and bootstrap < 20:
        raise UserError(f"--bootstrap must be 0 (none) or at least 20, got {bootstrap}")
    if seed < 0 or starts < 0 or suggest < 0:
        raise UserError("--seed, --starts and --suggest must be non-negative")
    if not (peak_tflops > 0 and math.isfinite(peak_tflops)):
        raise UserError(f"--peak-tflops must be positive, got {peak_tflops}")
    if not 0 < mfu <= 1:
        raise UserError(f"--mfu must be in (0, 1], got {mfu}")
    if not delta > 0:
        raise UserError(f"huber delta must be positive, got {delta}")


def _phi_summary(phi: np.ndarray, true_phi: float, fisher: float, ok: np.ndarray) -> dict:
    good = np.isfinite(phi)
    return {"phi_true": true_phi, "phi_mean": float(np.mean(phi[good])), "phi_median": float(np.median(phi[good])),
            "phi_sd": float(np.std(phi[good], ddof=1)), "phi_bias": float(np.mean(phi[good]) - true_phi),
            "phi_ci_width_spread": spread_width(phi), "phi_ci_width_fisher": fisher,
            "n_fits_failed": int(np.sum(~good)), "n_fits_unconverged": int(np.sum(good & ~ok))}


def _ci_summary(ci: np.ndarray, true_phi: float, unconverged: int, total: int) -> dict:
    good = np.all(np.isfinite(ci), axis=1)
    lo, hi = ci[good, 0], ci[good, 1]
    out = {"phi_ci_width_bootstrap": float(np.mean(hi - lo)), "phi_ci_mean": [float(np.mean(lo)), float(np.mean(hi))],
           "p_ci_excludes_0": float(np.mean(lo > 0)), "p_ci_excludes_1": float(np.mean(hi < 1)),
           "p_ci_covers_truth": float(np.mean((lo <= true_phi) & (true_phi <= hi)))}
    if total:
        out["bootstrap_refits"] = total
        out["bootstrap_unconverged"] = unconverged
    return out


def _probe_power(base, table, base_loss, tb, base_boot, law, noise, bootstrap, probe_delta, seed, stream, starts,
                 delta, workers) -> tuple[dict, tuple]:
    """The probe's runs simulated under φ + Δ beside the baseline replicates (φ; ``base_loss``,
    fitted θ ``tb``, bootstrap φ ``base_boot``), the r = 1 runs shared with their noise; Δφ's CI
    from a paired cell bootstrap (or ±1.96·sd across replicates). Returns the summary and
    (table, probe law)."""
    probe_law = dataclasses.replace(law, phi=law.phi + probe_delta)
    probe_loss = simulate_losses(table, probe_law, noise, len(base_loss), [seed, 2, stream])
    shared = table["run_id"].map({rid: i for i, rid in enumerate(base["run_id"])})
    has = shared.notna().to_numpy()
    probe_loss[:, has] = base_loss[:, shared[has].astype(int).to_numpy()]  # the same r = 1 runs
    tp, okp = point_fits(table, probe_loss, probe_law, starts, seed, delta, workers)
    d_phi = tp[:, I_PHI] - tb[:, I_PHI]
    good = np.isfinite(d_phi)
    sd = float(np.std(d_phi[good], ddof=1))
    out = {"delta_true": probe_delta, "n_runs": len(table), "n_shared_r1": int(has.sum()),
           "phi_probe_mean": float(np.nanmean(tp[:, I_PHI])), "phi_base_mean": float(np.nanmean(tb[:, I_PHI])),
           "delta_mean": float(np.mean(d_phi[good])), "delta_sd": sd,
           "delta_ci_width_spread": spread_width(d_phi),
           "min_detectable_delta": (Z95 + Z80) * sd,  # 80% power, two-sided 5%, from the spread
           "p_resolved_spread": float(np.mean(np.abs(d_phi[good]) > Z95 * sd)),
           "n_fits_unconverged": int(np.sum(np.isfinite(tp[:, 0]) & ~okp))}
    if bootstrap > 0:
        # The baseline's draws are the main bootstrap's when the probe adds no new cell (same plan).
        reuse = base_boot is not None and set(_labels(table)) <= set(_labels(base))
        boot, _ = bootstrap_many([base, table], [base_loss, probe_loss], [tb, tp], bootstrap, seed, delta,
                                 workers, only=(1,) if reuse else None)
        if reuse:
            boot[0] = base_boot
        ci = _percentile_rows(boot[1] - boot[0])
        okc = np.all(np.isfinite(ci), axis=1)
        out["delta_ci_width"] = float(np.mean(ci[okc, 1] - ci[okc, 0]))
        out["p_resolved"] = float(np.mean((ci[okc, 0] > 0) | (ci[okc, 1] < 0)))
        out["p_resolved_method"] = "paired bootstrap 95% CI of Δφ (the units `fit` resamples) excludes 0"
    else:
        out["delta_ci_width"] = 2 * Z95 * sd
        out["p_resolved"] = out["p_resolved_spread"]
        out["p_resolved_method"] = "|Δφ̂| > 1.96·sd of Δφ̂ across replicates (no bootstrap)"
    return out, (table, probe_law)


def check_pick(design: pd.DataFrame, pick: dict, law: Law, noise: float, seed, replicates: int = 1000,
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
