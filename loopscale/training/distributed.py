"""Data-parallel training on one node: process-group set-up, rank layout, reductions.

Ranks come from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR/PORT``) or,
in a SLURM job that submitit launched with several tasks, from submitit's ``TorchDistributedEnvironment``.
Without either (or with one process) nothing is set up and training runs as a single process.
Backend: nccl on CUDA, gloo on CPU.

Layout of one optimizer step: the step's ``rows`` rows are split into equal contiguous slices, rank k
training rows ``[k·rows/W, (k+1)·rows/W)`` in micro batches of ``micro_batch_rows``; DDP averages the
gradients, so the update equals the single-process one on the same rows (up to summation order).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

TIMEOUT = timedelta(minutes=10)  # longest a rank waits for the others (e.g. rank 0 writing a checkpoint)


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this module created the process group (and destroys it)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


SINGLE = DistEnv()


def _from_env() -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) of a multi-process launch, exporting the env:// variables; None
    for a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ:  # torchrun (or set by hand)
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0"))
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        from submitit.helpers import TorchDistributedEnvironment

        env = TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        return env.rank, env.world_size, env.local_rank
    return None


def init(device: torch.device) -> DistEnv:
    """Join (or create) the process group of a multi-process launch; the single-process env otherwise."""
    if dist.is_available() and dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    layout = _from_env()
    if layout is None:
        return SINGLE
    rank, world, local = layout
    if device.type == "cuda":
        torch.cuda.set_device(local_device(device, DistEnv(rank, world, local)))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world,
                            timeout=TIMEOUT)
    return DistEnv(rank, world, local, owns_group=True)


def shutdown(env: DistEnv | None) -> None:
    if env is not None and env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: torch.device, env: DistEnv) -> torch.device:
    """This rank's device: cuda:<local_rank> (modulo the visible GPUs) when data-parallel on CUDA."""
    if device.type == "cuda" and env.active:
        return torch.device("cuda", env.local_rank % torch.cuda.device_count())
    return device


def shard(rows: int, env: DistEnv) -> tuple[int, int]:
    """This rank's slice [lo, hi) of a step's rows."""
    from loopscale.config import ConfigError

    if rows % env.world_size:
        raise ConfigError(f"train: the {rows} rows of a step (batch_tokens / seq_len) do not split evenly "
                          f"over {env.world_size} processes")
    per = rows // env.world_size
    return env.rank * per, (env.rank + 1) * per


def wrap(module: torch.nn.Module, env: DistEnv, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``module`` when data-parallel, else ``module``."""
    if not env.active:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def no_sync(module: torch.nn.Module, sync: bool):
    """DDP's no_sync for micro batches before the last (gradients all-reduced once per step)."""
    if sync or not hasattr(module, "no_sync"):
        return contextlib.nullcontext()
    return module.no_sync()


def all_sum(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum a (float64) tensor over ranks, in place; unchanged for a single process."""
    if env.active:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def any_rank(flag: bool, env: DistEnv, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any (e.g. a stop request that reached rank 0 only)."""
    if not env.active:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(env: DistEnv) -> None:
    if env.active:
        dist.barrier()
