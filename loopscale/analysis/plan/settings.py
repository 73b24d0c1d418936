"""plan's own settings: the defaults of plan_grid and `loopscale plan`. Its fits are deliberately cheaper than
`fit`'s (500 random starts): each of a plan's thousands of fits starts at the true θ or at a replicate's own
optimum, near the optimum it looks for (see the package docstring). Not `fit`'s defaults: those live apart."""

PLAN_REPLICATES = 100  # simulated replicates of the grid
PLAN_STARTS = 8  # random starts per replicate's point fit, besides fit's fixed grid of 24 and the true θ
PLAN_RESAMPLES = 200  # cell-bootstrap resamples per replicate, each refitted by refit_many from its optimum
SWEEP_FIT_STARTS = 100  # random starts of the sweep's fit in `plan --from` (`fit` uses 500; law only)
CHECK_REPLICATES = 1000  # fresh replicates that check the top suggestion by simulation
PLAN_NOISE = 0.01  # nats on each final loss, when neither --noise nor --from gives it
PROBE_DELTA = 0.07  # Δφ each probe of the grid is simulated with
SUGGEST = 5  # cells to suggest adding (and low-information runs to list)

# Default CPU rate when no sweep measured one: FLOP/s per core (training FLOPs of counting.py).
# The default grid (grids/tiny.yaml: bytes, d 8-32, seq 64) from a fresh clone on the 2-core dev machine,
# 2 jobs x 1 thread, evaluation and start-up included: 5.9 GFLOP/s per core (9.4e12 FLOPs, 13.8 min).
# Wider models run faster per FLOP (the previous default, d 32-96 with vocab 4096: ~13 GFLOP/s per core);
# `plan --from SWEEP` measures the rate of your own runs instead.
DEFAULT_CPU_GFLOPS = 6.0
