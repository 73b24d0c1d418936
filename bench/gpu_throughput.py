"""GPU training throughput and bf16 MFU of the paper's model family: s ∈ {10, 20}, r ∈ {1, 4}, ± torch.compile.

d = 64·s, ℓ_eff 20 (prelude 2, coda 2; r = 1 is a plain 20-layer stack), head_dim 128, vocab 32064,
sequence 2048, MuonH + AdamW (the paper's optimizer), bf16 autocast. One optimizer step per iteration on
``--rows`` rows (no accumulation). MFU = achieved model FLOP/s (tokens/s × the paper's FLOPs/token,
method.md §3) over this GPU's dense bf16 matmul rate, measured in the same run (loopscale.training.perf), so it
reads higher than against the vendor's spec sheet. Synthetic tokens: model and optimizer, not the loader.

    python bench/gpu_throughput.py [--rows 16] [--steps 10] [--warmup 3] [--s 10 20] [--r 1 4] [--json OUT]
    python bench/gpu_throughput.py --paper-memory   # peak memory of each paper-grid micro batch size
    python bench/gpu_throughput.py --cpu-smoke   # scaled down, on CPU, fp32: checks the script end to end

``--paper-memory`` measures, for each micro-batch size of grids/paper.yaml (``train.micro_batch_rows``, one
per width bucket), one training step (two micro batches accumulated, then the optimizer) of the widest paper
run in that bucket at r = 1 (the most parameters; activations are the same at every r, ℓ_eff being fixed),
eager: torch.compile only lowers it. The peak is ``torch.cuda.max_memory_allocated``, measured, not estimated.

Without a CUDA GPU (and without --cpu-smoke) it prints why and exits 0, so `make bench` passes on CPUs.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

from loopscale.config import RunConfig, TrainConfig
from loopscale.counting import Arch
from loopscale.training.model import LoopedLM, cross_entropy
from loopscale.training.optim import build_optimizer
from loopscale.training.perf import matmul_flops_per_s

PAPER = dict(layers=20, prelude=2, coda=2, head_dim=128, vocab=32064, seq=2048, s=[10, 20])
SMOKE = dict(layers=6, prelude=1, coda=1, head_dim=32, vocab=512, seq=64, s=[1, 2])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(arch: Arch, vocab: int, seq: int, rows: int, steps: int, warmup: int, compile: bool,
            device: torch.device, amp: torch.dtype | None, micro_batches: int = 1) -> dict:
    """Tokens/s over ``steps`` training steps after ``warmup`` (which includes compilation); each step
    accumulates ``micro_batches`` forward/backward passes of ``rows`` rows before the optimizer."""
    torch.manual_seed(0)
    cfg = RunConfig(model=arch, train=TrainConfig(tokens=1, seq_len=seq, batch_tokens=rows * seq, optimizer="muonh"),
                    vocab_size=vocab)
    model = LoopedLM(arch, vocab, seq).to(device)
    forward = torch.compile(model) if compile else model
    opt = build_optimizer(model, cfg)
    x = torch.randint(0, vocab, (rows, seq + 1), device=device)

    def step() -> None:
        for _ in range(micro_batches):
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
    tps = steps * micro_batches * rows * seq / (time.perf_counter() - t)
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
    p.add_argument("--paper-memory", action="store_true", help="peak memory of each paper-grid micro batch size")
    p.add_argument("--json", type=Path, help="also write the rows measured to this JSON file")
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
    if args.paper_memory:
        return paper_memory(device, amp, args.cpu_smoke, args.json)
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
    rows_out = []
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
                rows_out.append({"s": s, "d": 64 * s, "r": r, "compile": comp, "rows": rows,
                                 **({"oom": True} if m is None else {**m, "mfu": m["tps"] * m["fpt"] / peak})})
                if m is not None:
                    flops = m["tps"] * m["fpt"]
                    mem = "-" if device.type == "cpu" else f"{m['mem_gb']:.1f}"
                    print(f"{label} {m['tps']:>11,.0f} {m['fpt'] / 1e9:>9.3f} {flops / 1e12:>8.2f} "
                          f"{flops / peak:>6.1%} {mem:>7} {m['warm_s']:>9.1f}", flush=True)
                gc.collect()
                torch._dynamo.reset()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps({"device": name, "peak_flops": peak, "dtype": dtype_name, "rows": rows_out},
                                        indent=1))
    return 0


def paper_memory(device: torch.device, amp: torch.dtype | None, smoke: bool, out: Path | None) -> int:
    """Peak memory of one training step at each paper-grid micro batch size (see the module docstring)."""
    from loopscale.grid import find_grid, load_grid

    runs = [run for run in load_grid(find_grid("paper")).runs if run.r == 1]
    widest: dict[int, object] = {}
    for run in runs:  # the widest run of each micro-batch bucket
        mb = run.config.train.micro_batch_rows
        if mb not in widest or run.d_model > widest[mb].d_model:
            widest[mb] = run
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    total = torch.cuda.get_device_properties(device).total_memory / 2**30 if device.type == "cuda" else None
    print(f"{name}: peak memory of one paper-grid step (2 micro batches + optimizer), eager, r = 1"
          + (f"; {total:.0f} GiB on the device" if total else ""))
    head = f"{'d':>5} {'micro rows':>10} {'seq':>5} {'peak GiB':>9} {'of device':>9}"
    print(head)
    print("-" * len(head))
    rows_out = []
    for mb, run in sorted(widest.items(), key=lambda kv: kv[1].d_model):
        arch, seq, vocab = run.config.model, run.config.train.seq_len, run.config.vocab_size
        if smoke:  # the same code path on a model a CPU steps in a moment
            arch = Arch(d_model=64, r=1, n_layers_eff=2, n_prelude=0, n_coda=0, head_dim=32)
            seq, vocab, mb = 64, 512, 2
        oom = False
        try:
            peak = measure(arch, vocab, seq, mb, steps=1, warmup=0, compile=False, device=device, amp=amp,
                           micro_batches=2)["mem_gb"]
        except torch.cuda.OutOfMemoryError:
            peak, oom = None, True
        rows_out.append({"d": run.d_model, "micro_batch_rows": mb, "seq": seq, "peak_gib": peak, "oom": oom,
                         "device_gib": total})
        shown = "OOM" if oom else ("-" if peak is None else f"{peak:.1f}")
        share = f"{peak / total:.0%}" if peak is not None and total else "-"
        print(f"{run.d_model:>5} {mb:>10} {seq:>5} {shown:>9} {share:>9}", flush=True)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if out:
        out.write_text(json.dumps({"device": name, "rows": rows_out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
