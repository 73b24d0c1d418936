"""Where and how a sweep's runs execute: the ``ExecutorConfig`` of a grid's ``executor:`` section (or of the
command line), read strictly and checked. Never part of a run's identity; ``loopscale.schedule`` and
``loopscale.submit`` act on it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from loopscale.config import ConfigError, build
from loopscale.validate import GridError, show

EXECUTOR_KINDS = ("auto", "slurm", "local", "debug")


@dataclass(frozen=True)
class ExecutorConfig:
    """Where and how runs execute. Not part of any run's identity.

    slurm: partition, account, qos, time_min (minutes per run), gpus_per_node, cpus_per_task, mem_gb,
    constraint, array_parallelism (array tasks running at once), setup (shell lines before the run).
    local: local_jobs (runs at once; default one per GPU, else CPU cores / threads_per_job) and
    threads_per_job (torch CPU threads per run; default CPU cores / local_jobs).
    """

    kind: str = "auto"  # auto (slurm if sbatch is on PATH, else local) | slurm | local | debug
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: int = 60
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    constraint: str | None = None
    array_parallelism: int | None = None
    job_name: str | None = None
    setup: tuple[str, ...] = ()
    local_jobs: int | None = None
    threads_per_job: int | None = None


def parse_executor(raw: Any, where: str) -> ExecutorConfig:
    """The grid's ``executor:`` section, strictly: unknown keys and wrong types are errors."""
    if raw is None:
        return ExecutorConfig()
    if not isinstance(raw, dict):
        raise GridError(f"{where}: executor: expected a mapping, got {show(raw)}")
    raw = dict(raw)
    setup = raw.pop("setup", ())
    if isinstance(setup, str):
        setup = [setup]
    if not isinstance(setup, (list, tuple)) or not all(isinstance(s, str) for s in setup):
        raise GridError(f"{where}: executor.setup: expected a list of shell lines, got {show(setup)}")
    try:
        ex = build(ExecutorConfig, raw, "executor")
    except ConfigError as e:
        raise GridError(f"{where}: {e}") from None
    ex = dataclasses.replace(ex, setup=tuple(setup))
    check_executor(ex, where)
    return ex


def check_executor(ex: ExecutorConfig, where: str = "executor") -> None:
    if ex.kind not in EXECUTOR_KINDS:
        raise GridError(f"{where}: executor.kind: unknown executor {ex.kind!r}; choose one of "
                        f"{', '.join(EXECUTOR_KINDS)}")
    for key in ("time_min", "cpus_per_task", "array_parallelism", "local_jobs", "threads_per_job"):
        v = getattr(ex, key)
        if v is not None and v < 1:
            raise GridError(f"{where}: executor.{key}: must be at least 1, got {v}")
    if ex.gpus_per_node < 0:
        raise GridError(f"{where}: executor.gpus_per_node: must not be negative, got {ex.gpus_per_node}")
    if ex.mem_gb is not None and not ex.mem_gb > 0:
        raise GridError(f"{where}: executor.mem_gb: must be positive, got {ex.mem_gb}")
