"""GPU training throughput and bf16 MFU of the paper's model family: s ∈ {10, 20}, r ∈ {1, 4}, ± torch.compile.

d = 64·s, ℓ_eff 20 (prelude 2, coda 2; r = 1 is a plain 20-layer stack), head_dim 128, vocab 32064,
sequence 2048, MuonH + AdamW (the paper's optimizer), bf16 autocast. One optimizer step per iteration on
``--rows`` rows (no accumulation). MFU = achieved model FLOP/s (tokens/s × the paper's FLOPs/token,
method.md §3) over this GPU's dense bf16 matmul rate, measured in the same run (loopscale.perf), so it
reads higher than against the vendor's spec sheet. Synthetic tokens: model and optimizer, not the loader.

    python bench/gpu_throughput.py [--rows 16] [--steps 10] [--warmup 3] [--s 10 20] [--r 1 4]
    python bench/gpu_throughput.py --cpu-smoke   # scaled down, on CPU, fp32: checks the script end to end

Without a CUDA GPU (and without --cpu-smoke) it prints why and exits 0, so `make bench` passes on CPUs.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time

import torch

from loopscale.config import RunConfig, TrainConfig
from loopscale.counting import Arch
from loopscale.model import LoopedLM, cross_entropy
from loopscale.optim import build_optimizer
from loopscale.perf import matmul_flops_per_s

PAPER = dict(layers=20, prelude=2, coda=2, head_dim=128, vocab=32064, seq=2048, s=[10, 20])
SMOKE = dict(layers=6, prelude=1, coda=1, head_dim=32, vocab=512, seq=64, s=[1, 2])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(arch: Arch, vocab: int, seq: int, rows: int, steps: int, warmup: int, compile: bool,
            device: torch.device, amp: torch.dtype | None) -> dict:
    """Tokens/s over ``steps`` training steps after ``warmup`` (which includes compilation)."""
    torch.manual_seed(0)
    cfg = RunConfig(model=arch, train=TrainConfig(tokens=1, seq_len=seq, batch_tokens=rows * seq, optimizer="muonh"),
                    vocab_size=vocab)
    model = LoopedLM(arch, vocab, seq).to(device)
    forward = torch.compile(model) if compile else model
    opt = build_optimizer(model, cfg)
    x = torch.randint(0, vocab, (rows, seq + 1), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = cross_entropy(forward(x[:, :-1]), x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    warm_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    tps = steps * rows * seq / (time.perf_counter() - t)
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"tps": tps, "fpt": cfg.flops_per_token(), "warm_s": warm_s, "mem_gb": mem}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-smoke", action="store_true", help="scaled-down family on CPU in fp32 (no GPU needed)")
    p.add_argument("--s", type=int, nargs="+", help="width multipliers (d = 64·s); default 10 20 (smoke: 1 2)")
    p.add_argument("--r", type=int, nargs="+", default=[1, 4], help="recurrences")
    p.add_argument("--compile", choices=["both", "on", "off"], default="both")
    p.add_argument("--rows", type=int, help="rows per step; default 16 (smoke: 2)")
    p.add_argument("--steps", type=int, help="timed steps; default 10 (smoke: 2)")
    p.add_argument("--warmup", type=int, help="untimed steps first (compilation happens here); default 3 (smoke: 1)")
    args = p.parse_args()

    if args.cpu_smoke:
        fam, device, amp, dtype_name = SMOKE, torch.device("cpu"), None, "fp32"
        rows, steps, warmup = args.rows or 2, args.steps or 2, args.warmup or 1
    else:
        if not torch.cuda.is_available():
            print("gpu_throughput: no CUDA GPU visible, nothing measured (run it on a GPU node; "
                  "--cpu-smoke runs a scaled-down version on CPU)", file=sys.stderr)
            return 0
        fam, device, amp, dtype_name = PAPER, torch.device("cuda"), torch.bfloat16, "bf16"
        rows, steps, warmup = args.rows or 16, args.steps or 10, args.warmup or 3
    widths = args.s or fam["s"]
    compiles = {"both": [False, True], "on": [True], "off": [False]}[args.compile]

    peak = matmul_flops_per_s(device, amp or torch.float32)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{name}; torch {torch.__version__}; dense {dtype_name} matmul {peak / 1e12:.2f} TFLOP/s (measured)")
    print(f"ℓ_eff {fam['layers']} (prelude {fam['prelude']}, coda {fam['coda']}), head_dim {fam['head_dim']}, "
          f"vocab {fam['vocab']}, seq {fam['seq']}, {rows} rows/step, {steps} timed steps after {warmup}")
    head = f"{'s':>3} {'d':>5} {'r':>2} {'compile':>7} {'tokens/s':>11} {'GFLOP/tok':>9} {'TFLOP/s':>8} {'MFU':>6} " \
           f"{'mem GiB':>7} {'warm-up s':>9}"
    print(head)
    print("-" * len(head))
    for s in widths:
        for r in args.r:
            arch = Arch(d_model=64 * s, r=r, n_layers_eff=fam["layers"], n_prelude=fam["prelude"],
                        n_coda=fam["coda"], head_dim=fam["head_dim"])
            for comp in compiles:
                label = f"{s:>3} {64 * s:>5} {r:>2} {'yes' if comp else 'no':>7}"
                try:
                    m = measure(arch, fam["vocab"], fam["seq"], rows, steps, warmup, comp, device, amp)
                except torch.cuda.OutOfMemoryError:
                    print(f"{label}  out of memory at {rows} rows (try --rows {max(1, rows // 2)})", flush=True)
                    m = None
                if m is not None:
                    flops = m["tps"] * m["fpt"]
                    mem = "-" if device.type == "cpu" else f"{m['mem_gb']:.1f}"
                    print(f"{label} {m['tps']:>11,.0f} {m['fpt'] / 1e9:>9.3f} {flops / 1e12:>8.2f} "
                          f"{flops / peak:>6.1%} {mem:>7} {m['warm_s']:>9.1f}", flush=True)
                gc.collect()
                torch._dynamo.reset()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
