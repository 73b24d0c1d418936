"""An adaptive sweep's settings from the command line: the cap on its spend (FLOPs, or hours priced as `plan`
prices the executor: GPU-hours or CPU core-hours, analysis.plan.cost) and K, the runs per round (the executor's
parallel slots)."""

from __future__ import annotations

import math

from loopscale.analysis.adaptive.simulate import BATCH, CAP_TIMES_FIXED
from loopscale.analysis.plan.cost import executor_layout, executor_unit, unit_hours
from loopscale.analysis.plan.settings import DEFAULT_CPU_GFLOPS
from loopscale.errors import UserError


def check_args(until_ci: float, max_flops, max_hours, batch) -> None:
    """Bad input (UserError, one line)."""
    if not (math.isfinite(until_ci) and until_ci > 0):
        raise UserError(f"--until-ci must be a positive CI width of phi, got {until_ci:g}")
    if max_flops is not None and max_hours is not None:
        raise UserError("--max-flops and --max-hours both cap the spend: give one")
    if max_flops is not None and not (math.isfinite(max_flops) and max_flops > 0):
        raise UserError(f"--max-flops must be a positive number of FLOPs, got {max_flops:g}")
    if max_hours is not None and not (math.isfinite(max_hours) and max_hours > 0):
        raise UserError(f"--max-hours must be a positive number of hours, got {max_hours:g}")
    if batch is not None and batch < 1:
        raise UserError(f"--batch must be at least 1, got {batch}")


def cap(grid, space, max_flops=None, max_hours=None) -> tuple[float, str]:
    """The cap in FLOPs and one line saying where it comes from."""
    if max_flops is not None:
        return float(max_flops), f"cap {max_flops:.3g} FLOPs (--max-flops)"
    if max_hours is not None:
        unit, why = executor_unit(grid)
        per_flop = float(unit_hours(1.0, unit, core_s_per_flop=1e-9 / DEFAULT_CPU_GFLOPS))
        flops = max_hours / per_flop
        name = "GPU-hours" if unit == "gpu_hours" else f"CPU core-hours at {DEFAULT_CPU_GFLOPS:g} GFLOP/s per core"
        return flops, f"cap {max_hours:g} {name} = {flops:.3g} FLOPs (--max-hours; {why})"
    c = CAP_TIMES_FIXED * space.fixed_flops
    return c, (f"cap {c:.3g} FLOPs: twice the fixed grid's {space.fixed_flops:.3g} ({len(space.fixed)} runs); "
               "--max-flops or --max-hours to change")


def batch(grid, given=None) -> tuple[int, str]:
    """K and why: --batch, else the executor's parallel slots (local jobs, or one SLURM array's parallelism)."""
    if given is not None:
        return int(given), "--batch"
    lay = executor_layout(grid, executor_unit(grid)[0])
    if lay["jobs"] is None:
        return BATCH, f"{BATCH}: one SLURM array (no executor.array_parallelism)"
    return int(lay["jobs"]), f"the executor's parallel slots ({lay['jobs_from']})"
