"""Training throughput of the looped model on this machine, r ∈ {1, 2, 4, 8} at one width.

Prints tokens/s and the achieved model FLOP/s (method.md §3 accounting) as a fraction of the
machine's dense fp32 matmul rate, measured in the same run with a large torch.mm. Synthetic token
ids: this measures the model and optimizer, not the data loader.

    python bench/train_throughput.py [--width 128] [--layers 10] [--seq-len 256] [--rows 16]
"""

from __future__ import annotations

import argparse
import time

import torch

from loopscale.config import RunConfig, TrainConfig
from loopscale.counting import Arch

from loopscale.optim import build_optimizer
from loopscale.model import LoopedLM, cross_entropy


def matmul_flops_per_s(n: int = 2048, repeats: int = 5) -> float:
    """Dense fp32 matmul rate: the best of a few n×n @ n×n products."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def train_tokens_per_s(arch: Arch, vocab: int, seq_len: int, rows: int, steps: int) -> float:
    torch.manual_seed(0)
    cfg = RunConfig(model=arch, train=TrainConfig(tokens=1, seq_len=seq_len, batch_tokens=rows * seq_len), vocab_size=vocab)
    model = LoopedLM(arch, vocab, seq_len)
    opt = build_optimizer(model, cfg)
    x = torch.randint(0, vocab, (rows, seq_len + 1))
    for i in range(steps + 2):  # two warm-up steps
        if i == 2:
            t = time.perf_counter()
        cross_entropy(model(x[:, :-1]), x[:, 1:]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps * rows * seq_len / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--layers", type=int, default=10)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    peak = matmul_flops_per_s()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; dense fp32 matmul: {peak / 1e9:.1f} GFLOP/s")
    print(f"width {args.width}, ℓ_eff {args.layers}, seq {args.seq_len}, vocab {args.vocab}, {args.rows} rows/step")
    print(f"{'r':>3} {'tokens/s':>10} {'FLOPs/token':>14} {'GFLOP/s':>9} {'of matmul':>10}")
    for r in (1, 2, 4, 8):
        arch = Arch(d_model=args.width, r=r, n_layers_eff=args.layers, n_prelude=1, n_coda=1, head_dim=args.head_dim)
        cfg = RunConfig(model=arch, train=TrainConfig(tokens=1, seq_len=args.seq_len), vocab_size=args.vocab)
        tps = train_tokens_per_s(arch, args.vocab, args.seq_len, args.rows, args.steps)
        fpt = cfg.flops_per_token()
        print(f"{r:>3} {tps:>10,.0f} {fpt:>14,} {tps * fpt / 1e9:>9.2f} {tps * fpt / peak:>10.1%}")


if __name__ == "__main__":
    main()
