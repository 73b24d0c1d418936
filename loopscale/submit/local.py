"""The local executor: ``n`` detached submitit local jobs (workers) that take the runs in turn, one GPU
each where GPUs exist, else ``threads`` CPU threads each (the layout and the queue's order, longest run
first, are loopscale.schedule's arithmetic, which `plan` shares). Detached: Ctrl-C or the end of
`loopscale sweep` leaves them running (loopscale.submit.detached)."""

from __future__ import annotations

import math
import os
import subprocess
import uuid
from dataclasses import asdict
from pathlib import Path

from loopscale.grid import ExecutorConfig
from loopscale.schedule import local_layout
from loopscale.store import JOB_FILE, JOBS_DIR
from loopscale.submit.records import job_record, submission_error, write_json
from loopscale.schedule import process_start
from loopscale.submit.worker import run_queue


def submit_local(sweep_dir: Path, run_dirs: list[Path], ex: ExecutorConfig) -> dict[str, dict]:
    """``layout.n`` submitit local jobs that take the runs in turn (far fewer processes than one job per run)."""
    layout = local_layout(ex)
    n = min(layout.n, len(run_dirs))
    token = uuid.uuid4().hex
    records = {}
    for d in run_dirs:  # the runs belong to this submission before any worker looks at them
        records[d.name] = job_record("local", f"local-{token[:8]}", sweep_dir, d, submission=token,
                                     layout=asdict(layout), workers=[])
        write_json(d / JOB_FILE, records[d.name])
    from loopscale.submit.detached import DetachedLocalExecutor  # submitit, loaded when a sweep goes local

    executor = DetachedLocalExecutor(folder=sweep_dir / JOBS_DIR)
    # the whole queue runs under submitit's local timeout: allow every wave its time
    executor.update_parameters(timeout_min=ex.time_min * math.ceil(len(run_dirs) / n) + 10, gpus_per_node=0)
    queue = [str(d.resolve()) for d in run_dirs]
    try:
        with executor.batch():
            jobs = [executor.submit(run_queue, queue, layout, i, token) for i in range(n)]
    except (subprocess.SubprocessError, RuntimeError, OSError) as e:
        for d in run_dirs:
            (d / JOB_FILE).unlink(missing_ok=True)
        raise submission_error("local", e) from None
    workers = [{"pid": int(j.job_id), "pid_start": process_start(int(j.job_id)),
                "log": os.path.relpath(j.paths.stderr, sweep_dir)} for j in jobs]
    for d in run_dirs:
        records[d.name]["workers"] = workers
        write_json(d / JOB_FILE, records[d.name])
    return records
