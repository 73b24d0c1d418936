"""The slurm executor: the runs as one SLURM job array through submitit's AutoExecutor.

Each array task runs ``loopscale.submit.job.TrainJob`` (checkpointable: timeouts and preemptions requeue and
resume); its stdout/stderr are linked into the run folder as job.out/job.err from ``<sweep>/jobs/``.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
from pathlib import Path
from typing import Any

from loopscale.errors import UserError
from loopscale.grid import ExecutorConfig
from loopscale.store import JOB_FILE, JOBS_DIR
from loopscale.submit.records import job_record, link_logs, submission_error, write_json

MAX_TIMEOUT_REQUEUES = 20


def submit_slurm(sweep_dir: Path, run_dirs: list[Path], ex: ExecutorConfig, job_name: str) -> dict[str, dict]:
    import submitit

    if not shutil.which("sbatch") or not shutil.which("srun"):
        raise UserError("executor slurm: sbatch/srun not found on PATH (use --executor local on this machine)")
    from loopscale.submit.job import (
        TrainJob,  # checkpointable: SLURM timeouts and preemptions requeue and resume
    )

    # A run longer than its time limit is checkpointed and requeued at each limit (submitit's default: 3 times).
    executor = submitit.AutoExecutor(folder=sweep_dir / JOBS_DIR, cluster="slurm",
                                     slurm_max_num_timeout=MAX_TIMEOUT_REQUEUES)
    setup = list(ex.setup)
    if ex.cpus_per_task:  # torch's default thread count ignores the job's CPU allocation
        setup.append(f"export OMP_NUM_THREADS={ex.cpus_per_task} MKL_NUM_THREADS={ex.cpus_per_task}")
    params: dict[str, Any] = {
        # one task per GPU: a run on several GPUs trains data-parallel, its tasks the ranks (loopscale.training.distributed)
        "name": ex.job_name or job_name, "timeout_min": ex.time_min, "nodes": 1,
        "tasks_per_node": max(1, ex.gpus_per_node),
        # a rank that fails ends the job at once instead of leaving the others waiting in a collective
        "slurm_srun_args": ["--kill-on-bad-exit=1"] if ex.gpus_per_node > 1 else None,
        "cpus_per_task": ex.cpus_per_task, "mem_gb": ex.mem_gb,
        "gpus_per_node": ex.gpus_per_node or None,
        "slurm_partition": ex.partition, "slurm_account": ex.account, "slurm_qos": ex.qos,
        "slurm_constraint": ex.constraint, "slurm_array_parallelism": ex.array_parallelism,
        "slurm_setup": setup or None,
        # short jobs: the default 90 s warning would fire at once on a few-minute limit
        "slurm_signal_delay_s": min(90, max(10, ex.time_min * 60 // 10)),
    }
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit echoes sbatch's stderr; we report it once
            with executor.batch():
                jobs = [executor.submit(TrainJob(str(d.resolve()))) for d in run_dirs]
    except (subprocess.CalledProcessError, RuntimeError, OSError) as e:
        raise submission_error("slurm", e) from None
    records = {}
    for d, job in zip(run_dirs, jobs):
        logs = link_logs(d, job.paths.stdout, job.paths.stderr)
        rec = job_record("slurm", job.job_id, sweep_dir, d, array_job_id=job.job_id.split("_")[0], logs=logs)
        write_json(d / JOB_FILE, rec)
        records[d.name] = rec
    return records
