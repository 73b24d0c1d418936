"""Submitting runs: write their folders, then hand them to an executor.

- ``slurm``: one job array (:mod:`loopscale.submit.slurm`);
- ``local``: detached submitit local worker jobs on this machine (:mod:`loopscale.submit.local`);
- ``debug``: each run here, in this process, in order, through submitit's DebugExecutor.

Each run's ``job.json`` records its job; its stdout/stderr are ``job.out``/``job.err`` in the run folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

from loopscale.errors import UserError
from loopscale.grid import ExecutorConfig, RunSpec
from loopscale.schedule import longest_first, resolve_kind
from loopscale.store import JOB_FILE, JOBS_DIR, RunState, file_state, runs_root
from loopscale.submit.folder import archive_attempt, write_config
from loopscale.submit.local import submit_local
from loopscale.submit.records import job_record, sync, write_json
from loopscale.schedule import process_start
from loopscale.submit.slurm import submit_slurm
from loopscale.submit.worker import run_job

KINDS = ("slurm", "local", "debug")


def submit(sweep_dir: str | Path, specs: list[RunSpec], ex: ExecutorConfig, job_name: str = "loopscale",
           on_finish: Callable[[str, RunState], None] | None = None) -> dict[str, dict[str, Any]]:
    """Write the run folders of ``specs`` and submit them; returns {run_id: job record}.

    slurm and local return at once (the jobs run on); debug runs each spec here, in order, calling
    ``on_finish`` after each. Earlier attempts of resubmitted runs move to ``attempts/<n>/``. A submission
    that fails (UserError) removes the run folders it created.
    """
    sweep_dir = Path(sweep_dir)
    kind = resolve_kind(ex.kind)
    if not specs:
        return {}
    if kind not in KINDS:
        raise UserError(f"unknown executor {kind!r}; choose one of auto, slurm, local, debug")
    root = runs_root(sweep_dir)
    run_dirs, fresh = [], []
    for s in specs:
        d = root / s.run_id
        if not d.exists():
            fresh.append(d)
        d.mkdir(parents=True, exist_ok=True)
        archive_attempt(d)
        write_config(d, s)
        run_dirs.append(d)
    (sweep_dir / JOBS_DIR).mkdir(exist_ok=True)
    sync()
    try:
        if kind == "slurm":
            records = submit_slurm(sweep_dir, run_dirs, ex, job_name)
        elif kind == "local":
            records = submit_local(sweep_dir, longest_first(run_dirs, specs), ex)
        else:
            records = run_debug(sweep_dir, run_dirs, on_finish)
    except UserError:
        for d in fresh:  # nothing was submitted: leave no trace of the new runs
            shutil.rmtree(d, ignore_errors=True)
        raise
    sync()
    return records


def run_debug(sweep_dir: Path, run_dirs: list[Path],
              on_finish: Callable[[str, RunState], None] | None = None) -> dict[str, dict]:
    """The debug executor: every run in this process, in order; ``on_finish`` after each."""
    import submitit

    executor = submitit.DebugExecutor(folder=sweep_dir / JOBS_DIR)
    pid = os.getpid()
    records, jobs = {}, []
    for d in run_dirs:
        job = executor.submit(run_job, str(d.resolve()), True, False)
        rec = job_record("debug", job.job_id, sweep_dir, d, workers=[{"pid": pid, "pid_start": process_start(pid)}])
        write_json(d / JOB_FILE, rec)
        records[d.name] = rec
        jobs.append((d, job))
    for d, job in jobs:
        job.result()  # runs it here; run_job records failures in error.json instead of raising
        if on_finish:
            on_finish(d.name, file_state(d))
    return records
