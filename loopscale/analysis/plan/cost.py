"""A grid's cost in the unit of its executor: GPU-hours at peak TFLOP/s × MFU, or CPU core-hours at a rate
per core; per r and in all, with the wall-clock time on the executor's parallel jobs."""

from __future__ import annotations

import heapq

import numpy as np
import pandas as pd

from loopscale import paper
from loopscale.errors import UserError
from loopscale.schedule import cpu_count, local_layout, queue_cost, resolve_kind, visible_gpus


def gpu_hours(flops, peak_tflops: float = paper.H100_BF16_DENSE_TFLOPS, mfu: float = paper.MFU):
    """Hours of one GPU running at peak_tflops·1e12·mfu FLOP/s."""
    return np.asarray(flops, dtype=float) / (peak_tflops * 1e12 * mfu) / 3600.0


def cpu_hours(flops, core_s_per_flop: float):
    """Core-hours at ``core_s_per_flop`` core-seconds per training FLOP."""
    return np.asarray(flops, dtype=float) * core_s_per_flop / 3600.0


def unit_hours(flops, unit: str, *, peak_tflops: float = paper.H100_BF16_DENSE_TFLOPS, mfu: float = paper.MFU,
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


def cost_summary(design: pd.DataFrame, peak_tflops: float = paper.H100_BF16_DENSE_TFLOPS, mfu: float = paper.MFU, *,
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
