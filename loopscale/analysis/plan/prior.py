"""A finished sweep as plan's prior (`plan --from SWEEP`): its law, fitted as `loopscale fit` fits it; its
measured noise (the larger of the seed-to-seed sd and the fit's residual RMSE); its measured CPU rate."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from loopscale.analysis.fit import run_fit
from loopscale.analysis.law import FitData, Law
from loopscale.analysis.plan.settings import SWEEP_FIT_STARTS
from loopscale.analysis.regime import seed_noise
from loopscale.errors import UserError
from loopscale.runs_table import load_runs, select_probe, usable_rows
from loopscale.schedule import cpu_count
from loopscale.store import DB_FILE, FINISHED, RUNS_DIR, STALE, STARTED_FILE


@dataclass
class SweepPrior:
    """What `plan --from SWEEP` takes from a finished sweep."""

    path: str
    law: Law
    fit: dict  # n_runs, r2, converged, params, residual_rmse, starts, warnings, stale_runs
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
    path = Path(sweep_dir)
    if not path.is_dir():
        raise UserError(f"{path}: no such sweep folder (--from takes a sweep folder made by `loopscale sweep`)")
    if not (path / RUNS_DIR).is_dir() and not (path / DB_FILE).is_file():
        raise UserError(f"{path}: not a sweep folder (no runs/ and no results.db)")
    try:
        table = load_runs(path)
    except UserError as e:
        raise UserError(f"{path}: {e}" if not str(e).startswith(str(path)) else str(e)) from None
    status = table["status"].fillna("").astype(str) if "status" in table else pd.Series("done", index=table.index)
    stale = int((status == STALE).sum())  # finished on data that has changed since: left out, and said so
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
               "warnings": list(report.warnings), "stale_runs": stale}
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
    root = Path(sweep_dir) / RUNS_DIR
    threads = col("train.threads").fillna(0).to_numpy(dtype=float)
    for i in np.flatnonzero(cpu & (threads <= 0)):
        try:
            threads[i] = json.loads((root / str(runs["run_id"].iloc[i]) / STARTED_FILE).read_text()).get("threads") or 0
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
