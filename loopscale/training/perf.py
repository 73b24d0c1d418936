"""Model FLOP utilisation: achieved model FLOP/s over the device's measured dense matmul rate.

The denominator is measured, not taken from a spec sheet: the best of a few large square matmuls in the
dtype the model computes in (bf16 under autocast, else fp32), once per process and device. Measured rates
sit below the vendor's peak (an H100 SXM reaches ~700–800 of its 989 bf16 TFLOP/s), so MFU against
them reads higher than against the spec; ``peak_flops`` is recorded next to ``mfu`` to convert.
"""

from __future__ import annotations

import time

import torch

_PEAKS: dict[tuple[str, str], float] = {}


def matmul_flops_per_s(device: torch.device, dtype: torch.dtype, n: int | None = None, repeats: int = 10) -> float:
    """Dense n×n @ n×n matmul rate (FLOP/s), best of ``repeats`` after warm-up."""
    if device.type == "cuda":
        n = n or 8192
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(3):
            a @ b
        torch.cuda.synchronize(device)
        best = float("inf")
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end) / 1e3)
        del a, b
        torch.cuda.empty_cache()
    else:
        n = n or 1024
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def peak_flops(device: torch.device, amp: torch.dtype | None) -> float | None:
    """The measured matmul rate of a CUDA device in the training dtype (cached per process); None on CPU,
    where a shared, noisy core makes MFU meaningless and the runs are small anyway."""
    if device.type != "cuda":
        return None
    dtype = amp or torch.float32
    key = (str(device), str(dtype))
    if key not in _PEAKS:
        _PEAKS[key] = matmul_flops_per_s(device, dtype)
    return _PEAKS[key]


def mfu(tokens_per_s: float | None, flops_per_token: float, peak: float | None, world_size: int = 1) -> float | None:
    """Achieved model FLOP/s (all ranks) over the summed peak of the ranks' devices."""
    if not tokens_per_s or not peak:
        return None
    return tokens_per_s * flops_per_token / (peak * world_size)
