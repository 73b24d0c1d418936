"""The local executor: ``n`` detached submitit local jobs (workers) that take the runs in turn, one GPU
each where GPUs exist, else ``threads`` CPU threads each (the layout and the queue's order, longest run
first, are loopscale.schedule's arithmetic, which `plan` shares)."""

from __future__ import annotations

import math
import os
import subprocess
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from loopscale.grid import ExecutorConfig
from loopscale.schedule import local_layout
from loopscale.store import JOB_FILE, JOBS_DIR
from loopscale.submit.records import job_record, submission_error, write_json
from loopscale.submit.scheduler import process_start
from loopscale.submit.worker import run_queue


class _DetachedPopen(subprocess.Popen):
    """Popen in a new session: Ctrl-C in the terminal, or the end of `loopscale sweep`, leaves the job. It does
    not inherit the command's stdout/stderr (the job logs to its own files), so `loopscale sweep … | tee log`
    returns when the submission is done, not when the last run ends."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("start_new_session", True)
        for stream in ("stdin", "stdout", "stderr"):
            kwargs.setdefault(stream, subprocess.DEVNULL)
        super().__init__(*args, **kwargs)


class _PopenShim:
    Popen = _DetachedPopen


def _local_executor(folder: Path):
    import submitit
    import submitit.local.local as local_mod

    class DetachedLocalExecutor(submitit.LocalExecutor):
        """submitit's LocalExecutor, its job controllers started in their own session."""

        def _submit_command(self, command: str):
            saved = local_mod.subprocess
            local_mod.subprocess = _PopenShim  # start_controller only calls subprocess.Popen
            try:
                return super()._submit_command(command)
            finally:
                local_mod.subprocess = saved

    return DetachedLocalExecutor(folder=folder)


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
    executor = _local_executor(sweep_dir / JOBS_DIR)
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
