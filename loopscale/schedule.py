"""How runs share a machine: the executor kind, the local layout (jobs × threads or GPUs) and the
local queue's order. No torch and no submitit: `plan` estimates a sweep's wall clock from the
same arithmetic that `sweep` (loopscale.submit) runs it with.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loopscale.grid import ExecutorConfig, RunSpec


def resolve_kind(kind: str) -> str:
    """auto → slurm when sbatch is on PATH, else local."""
    if kind == "auto":
        return "slurm" if shutil.which("sbatch") else "local"
    return kind


def visible_gpus() -> list[str]:
    """GPU ids this machine offers local jobs: CUDA_VISIBLE_DEVICES if set, else nvidia-smi's list."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, _ in enumerate(line for line in out.stdout.splitlines() if line.startswith("GPU "))]


def cpu_count() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@dataclass(frozen=True)
class LocalLayout:
    """How local runs share this machine: ``n`` worker jobs run at once; worker i sees GPU
    ``gpus[i % len(gpus)]`` (if any) and uses ``threads`` torch CPU threads."""

    n: int
    threads: int
    gpus: tuple[str, ...] = ()


def local_layout(ex: ExecutorConfig) -> LocalLayout:
    gpus = tuple(visible_gpus())
    n = ex.local_jobs or (len(gpus) if gpus else max(1, cpu_count() // (ex.threads_per_job or 1)))
    threads = ex.threads_per_job or max(1, cpu_count() // n)
    return LocalLayout(n, threads, gpus)


# Per-token cost of a small CPU run beyond its FLOPs, in FLOP-equivalents: on the 2-core machine a step's
# fixed work (norms, attention bookkeeping, optimizer) costs about what 360k FLOPs/token of matmul do.
PER_TOKEN_OVERHEAD_FLOPS = 360_000


def queue_cost(tokens, flops_per_token):
    """A run's expected length for ordering the local queue: tokens × (FLOPs/token + a per-token overhead)."""
    return tokens * (flops_per_token + PER_TOKEN_OVERHEAD_FLOPS)


def longest_first(run_dirs: list[Path], specs: list[RunSpec]) -> list[Path]:
    """The local queue, longest expected run first (:func:`queue_cost`), so that the last runs to start
    are short ones and no worker idles long at the end of a sweep."""
    cost = {s.run_id: queue_cost(s.tokens, s.flops_per_token) for s in specs}
    return sorted(run_dirs, key=lambda d: -cost.get(d.name, 0))


# --- processes of this machine (local workers, a data dir's prepare lock) ---------------------------------

def process_start(pid: int) -> int | None:
    """Start time of a live, non-zombie process (clock ticks since boot), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        if not Path("/proc/self/stat").exists():  # no procfs: fall back to a signal-0 probe
            try:
                os.kill(pid, 0)
                return 0
            except OSError:
                return None
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def alive(pid: Any, pid_start: Any) -> bool:
    """The process is running and is the one recorded (not a later process with a reused pid)."""
    if not isinstance(pid, int):
        return False
    start = process_start(pid)
    return start is not None and (not pid_start or start in (0, pid_start))
