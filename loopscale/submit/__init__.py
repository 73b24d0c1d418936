"""Submitting a sweep: plan, run folders, executors, the scheduler's word on runs in flight, the lock.

- :mod:`~loopscale.submit.sweep`: ``run_sweep(grid, sweep_dir, ex)``, a whole `loopscale sweep` call
  (lock, plan, data check, folder, submit, clean-up on failure, keep the grid, optional wait);
  ``plan_sweep`` reads only (`--dry-run`).
- :mod:`~loopscale.submit.actions`: ``plan(specs, states)``, pure: each run's action (``submit``,
  ``resubmit``, ``skip``, ``wait``, ``hold``).
- :mod:`~loopscale.submit.folder`: the sweep folder (kept grid, data check, config.yaml, earlier attempts).
- :mod:`~loopscale.submit.executors`: ``submit(sweep_dir, specs, ex)``: ``slurm`` as one job array
  (:mod:`~loopscale.submit.slurm`), ``local`` as detached worker jobs (:mod:`~loopscale.submit.local`),
  ``debug`` in this process; :mod:`~loopscale.submit.worker` is what runs inside the job, and
  :mod:`~loopscale.submit.detached` starts the local workers' controllers in a session of their own.
- :mod:`~loopscale.submit.job`: ``TrainJob``, SLURM's checkpointable job; ``train(run_dir, stop, threads)``, the
  one bridge to :mod:`loopscale.training` (imported inside it, in the job: nothing else here reaches torch).
- :mod:`~loopscale.submit.scheduler`: ``states(sweep_dir, jobs)``, SLURM's or the local processes' word
  on runs in flight, the one place the scheduler is asked; ``run_states`` and ``wait`` use it.
- :mod:`~loopscale.submit.lock`: ``with sweep_lock(sweep_dir): ...``.
- :mod:`~loopscale.submit.rekey`: ``rekey(sweep_dir)``: run folders with path-based ids (made before data identities)
  moved to ids of the data they trained on (`loopscale sweep` does it first; `loopscale rekey`).
- :mod:`~loopscale.submit.cancel`: ``cancel_runs(sweep_dir, ids)`` (`loopscale cancel`): a cancel marker in each
  run folder, then scancel or the local workers stop the runs at a step boundary, checkpointed.
"""

from loopscale.submit.actions import ACTIONS, PlanRow, action_for, plan, plan_totals
from loopscale.submit.executors import run_debug, submit
from loopscale.submit.folder import (
    archive_attempt,
    check_data,
    make_sweep_dir,
    record_grid,
    sweep_changes,
    unwritable,
    write_config,
)
from loopscale.submit.lock import sweep_lock
from loopscale.submit.rekey import Rekeyed, rekey
from loopscale.submit.scheduler import run_states, wait
from loopscale.submit.sweep import (
    SweepOutcome,
    SweepPlan,
    SweepProgress,
    plan_sweep,
    run_sweep,
)
from loopscale.submit.worker import run_job, run_queue

__all__ = [
    "ACTIONS", "PlanRow", "Rekeyed", "SweepOutcome", "SweepPlan", "SweepProgress", "action_for", "archive_attempt", "check_data",
    "make_sweep_dir", "plan", "plan_sweep", "plan_totals", "record_grid", "rekey", "run_debug", "run_job", "run_queue",
    "run_states", "run_sweep", "submit", "sweep_changes", "sweep_lock", "unwritable", "wait", "write_config",
]
