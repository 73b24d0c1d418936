"""MuonH vs AdamW on a tiny looped model at the same tokens: final validation loss of each.

Trains ``Arch(d_model=64, r=4, n_layers_eff=10, n_prelude=1, n_coda=1, head_dim=32)`` — the tiny
grid's family, with its seq_len 128 and batch 2048 tokens, for 80 steps (≈ its 1e12-FLOP point) —
through ``loopscale.train.train`` on the real default corpus (``data/default``, or
``$LOOPSCALE_DATA``; ``loopscale data prepare`` writes it): AdamW at the given matrix lr(s), then
MuonH at each matrix lr of a small sweep. Embedding, head and norm lrs are ``TrainConfig``'s defaults
in every run (AdamW in both), so only the matrix optimizer and its lr differ. Prints one line per run
and the best of each. Without the corpus it falls back to a synthetic copy task (said in the output).

AdamW's default matrix lr here is 0.001, the best of a 6-point sweep at this recipe (d = 96, 80
steps: 0.0003 → 5.274, 0.001 → 5.257, 0.002 → 5.310, 0.003 → 5.416, 0.01 → 6.009, 0.03 → 6.404),
not ``TrainConfig.lr_matrix`` (0.01): the comparison is against a tuned AdamW.
About 1.5 min of CPU time (4 runs, one thread each); 4 min wall on a loaded shared 2-core machine.

    python bench/muon_vs_adamw.py [--width 64] [--tokens 163840] [--adamw-lrs 0.001] [--muon-lrs 0.01,0.02,0.05]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

from loopscale.config import DataConfig, RunConfig, TrainConfig
from loopscale.counting import Arch
from loopscale.lr_transfer import paper_lrs


def arch(width: int, r: int) -> Arch:
    return Arch(d_model=width, r=r, n_layers_eff=10, n_prelude=1, n_coda=1, head_dim=32)


def corpus_dir() -> Path | None:
    d = Path(os.environ.get("LOOPSCALE_DATA") or "data/default")
    return d if (d / "meta.json").exists() else None


def synthetic_corpus(out: Path, vocab: int = 512, n_train: int = 400_000, n_val: int = 40_000) -> Path:
    """A learnable stand-in: random tokens where every odd position repeats the previous one."""
    import json

    import numpy as np

    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("val", n_val)):
        t = rng.integers(1, vocab, size=n, dtype=np.uint16)
        t[1::2] = t[0:-1:2]
        t.tofile(out / f"{name}.bin")
    meta = {"format_version": 1, "tokenizer": "synthetic", "vocab_size": vocab, "dtype": "uint16", "bos_id": 0,
            "train_tokens": n_train, "val_tokens": n_val}
    (out / "meta.json").write_text(json.dumps(meta))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--r", type=int, default=4)
    p.add_argument("--tokens", type=int, default=163_840, help="training tokens per run (D)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-tokens", type=int, default=2048)
    p.add_argument("--eval-tokens", type=int, default=16_384)
    p.add_argument("--muon-lrs", default="0.01,0.02,0.05", help="MuonH matrix lrs to sweep, comma-separated")
    p.add_argument("--adamw-lrs", default="0.001", help="AdamW matrix lrs, comma-separated; '' skips AdamW")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    model = arch(args.width, args.r)

    from loopscale.data import load_data  # noqa: PLC0415 - after argparse, so --help is fast
    from loopscale.train import train  # noqa: PLC0415

    data_dir, tmp = corpus_dir(), None
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory()
        data_dir = synthetic_corpus(Path(tmp.name))
        print("no data/default: using a synthetic copy task instead of the real corpus")
    vocab = load_data(str(data_dir)).vocab_size
    base = TrainConfig(tokens=args.tokens, seq_len=args.seq_len, batch_tokens=args.batch_tokens,
                       threads=args.threads, seed=args.seed, log_every=10**9)
    print(f"data {data_dir} (vocab {vocab}); {model}; D = {args.tokens:,} tokens, B = {args.batch_tokens}, "
          f"{args.tokens // args.batch_tokens} steps; embed/head/norm lrs {base.lr_embed}/{base.lr_head}/{base.lr_norm}")
    print(f"(paper transfer would give lr_matrix {paper_lrs(model, args.tokens, args.batch_tokens)['lr_matrix']:.3f} "
          "for this D; the paper's base is 0.014 at D_ref)")

    def run(optimizer: str, lr_matrix: float) -> float:
        train_cfg = dataclasses.replace(base, optimizer=optimizer, lr_matrix=lr_matrix)
        cfg = RunConfig(model=model, train=train_cfg, data=DataConfig(dir=str(data_dir), eval_tokens=args.eval_tokens),
                        vocab_size=vocab)
        t = time.time()
        out = train(cfg, progress=False)
        print(f"{optimizer:6s} lr_matrix {lr_matrix:<6g} val_loss {out.val_loss:.4f}  ({out.status}, {time.time() - t:.0f} s)",
              flush=True)
        return out.val_loss

    def lrs(text: str) -> list[float]:
        return [float(x) for x in text.split(",") if x.strip()]

    adamw = {lr: run("adamw", lr) for lr in lrs(args.adamw_lrs)}
    muon = {lr: run("muonh", lr) for lr in lrs(args.muon_lrs)}
    best = {name: min(((v, lr) for lr, v in res.items() if v == v), default=(float("nan"), None))
            for name, res in (("adamw", adamw), ("muonh", muon))}
    (a, a_lr), (m, m_lr) = best["adamw"], best["muonh"]
    if a_lr is not None and m_lr is not None:
        print(f"best muonh (lr_matrix {m_lr:g}) {m:.4f} vs best adamw (lr_matrix {a_lr:g}) {a:.4f}: {m - a:+.4f} nats")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
