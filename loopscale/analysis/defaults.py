"""The fit settings `loopscale fit`, `compare` and `report` share: their one home.

The function signatures (analysis.fit.run_fit, fit_law, bootstrap, compare, report.build.gather) and the
Typer options of commands/fit.py, compare.py and report.py all read these. `plan` keeps its own,
deliberately smaller settings (analysis.plan: PLAN_*), named as its own. Plain constants: importing
this module loads nothing, so the CLI can build its options from it at start-up.
"""

from __future__ import annotations

STARTS = 500  # random starts of each multistart (plus a fixed grid of GRID_STARTS)
GRID_STARTS = 24  # the fixed grid of starts scaled to the data (analysis.multistart.draw_starts)
BOOTSTRAP = 200  # bootstrap resamples (0 = none)
HUBER_DELTA = 1e-3  # Huber δ on log-loss residuals (method.md §5)
SEED = 0  # seed of starts and resamples: same seed, same output
RESAMPLE = "cells"  # bootstrap unit of `fit`: (budget × r) cells | runs
RESAMPLE_UNITS = ("cells", "runs")
