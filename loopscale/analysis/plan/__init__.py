"""`loopscale plan`: will a grid measure φ, or a probe's Δφ, before a GPU-hour is spent?

A grid (YAML, loopscale.grid) gives every run's n_once, n_rec, r, tokens D and FLOPs. Under a prior
law (the paper's coefficients, or a fit.json) the grid is simulated ``replicates`` times with
Gaussian noise of ``noise`` nats on each final loss, and every replicate is analysed as
`loopscale fit` would (method.md §5):

1. **Point fit**: :func:`loopscale.analysis.lawfit.fit_law` — the same Huber objective, box and multistart, but
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
of the grid bracket its compute-optimal width (loopscale.analysis.cells.cell_minima)? Fewer than 2/3 of the
cells with ≥ 3 widths is a warning: the fit would see one side of each valley.

Units: losses in nats, FLOPs are training FLOPs (counting.py). Cost in the executor's unit
(:func:`executor_unit`): GPU-hours at peak TFLOP/s × MFU, or CPU core-hours at a rate in FLOP/s per
core (measured by the sweep of ``--from``, else ``--cpu-gflops``, default DEFAULT_CPU_GFLOPS), with
the wall-clock time on the executor's parallel jobs.

Modules: design (the grid as a table of runs), cost, prior (a finished sweep as the prior), bracketing,
refit (the batched Newton refit), sandwich (the asymptotic variance), simulate, suggest, planner
(:func:`plan_grid`, the whole plan), settings (plan's own defaults). The names below are re-exported here.
"""

from loopscale.analysis.plan.bracketing import bracketing
from loopscale.analysis.plan.cost import (cost_summary, cpu_hours, executor_layout, executor_unit, gpu_hours,
                                          schedule_hours, unit_hours)
from loopscale.analysis.plan.design import baseline_and_probes, design_table, fit_data
from loopscale.analysis.plan.planner import PlanReport, check_grid, check_plan_args, plan_grid
from loopscale.analysis.plan.prior import SweepPrior, measured_cpu_rate, sweep_prior
from loopscale.analysis.plan.refit import refit_many
from loopscale.analysis.plan.sandwich import Z80, Z95, information, phi_variance
from loopscale.analysis.plan.settings import DEFAULT_CPU_GFLOPS, SWEEP_FIT_STARTS
from loopscale.analysis.plan.simulate import bootstrap_many, point_fits, simulate_losses, spread_width
from loopscale.analysis.plan.suggest import candidate_cells, check_pick, greedy_suggestions, low_information_runs

__all__ = [
    "DEFAULT_CPU_GFLOPS", "SWEEP_FIT_STARTS", "Z80", "Z95", "PlanReport", "SweepPrior", "baseline_and_probes",
    "bootstrap_many", "bracketing", "candidate_cells", "check_grid", "check_pick", "check_plan_args",
    "cost_summary", "cpu_hours", "design_table", "executor_layout", "executor_unit", "fit_data", "gpu_hours",
    "greedy_suggestions", "information", "low_information_runs", "measured_cpu_rate", "phi_variance",
    "plan_grid", "point_fits", "refit_many", "schedule_hours", "simulate_losses", "spread_width", "sweep_prior",
    "unit_hours",
]
