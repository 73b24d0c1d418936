"""MuonH vs AdamW on a tiny looped model at the same tokens, each at its best matrix lr of a small sweep.

Trains ``Arch(d_model=64, r=4, n_layers_eff=10, n_prelude=1, n_coda=1, head_dim=32)`` — the tiny
grid's family, with its seq_len 128 and batch 2048 tokens, for 80 steps (≈ its 1e12-FLOP point) —
through ``loopscale.training.train.train`` on the real default corpus (``data/default``, or
``$LOOPSCALE_DATA``; ``loopscale data prepare`` writes it): AdamW at each matrix lr of one sweep, MuonH
at each of another. Embedding, head and norm lrs are ``TrainConfig``'s defaults in every run (AdamW
in both), so only the matrix optimizer and its lr differ. Prints one line per run, a table, and the
best of each against the other (and says if a best lies at the edge of its sweep). Without the corpus
it falls back to a synthetic copy task (said in the output).

Measured (2-core shared CPU, one thread per run, seed 0; ≈ 8 runs × 40-80 s):

    optimizer  lr_matrix  val_loss
    adamw         0.0003    5.3630
    adamw          0.001    5.3495  ← best
    adamw          0.003    5.3841
    adamw           0.01    5.8660      (TrainConfig's default lr_matrix, tuned at d≈96 on 300k tokens)
    muonh           0.01    5.3003
    muonh           0.02    5.2654  ← best
    muonh           0.05    5.2759
    muonh            0.1    5.3377
    best muonh (0.02) 5.2654 vs best adamw (0.001) 5.3495: -0.084 nats; seed 1: 5.2873 vs 5.3538, -0.066

The paper's transfer would put lr_matrix at 0.185 for this D (far below its D_ref, so extrapolated):
too high here; tiny grids keep ``lr_rule: fixed``.

    python bench/muon_vs_adamw.py [--width 64] [--tokens 163840] [--adamw-lrs 0.0003,0.001,0.003,0.01]
                                  [--muon-lrs 0.01,0.02,0.05,0.1] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from loopscale.config import DataConfig, RunConfig, TrainConfig
from loopscale.counting import Arch
from loopscale.lr_transfer import paper_lrs


def arch(width: int, r: int) -> Arch:
    return Arch(d_model=width, r=r, n_layers_eff=10, n_prelude=1, n_coda=1, head_dim=32)


def corpus_dir() -> Path | None:
    from loopscale.data.format import META_JSON, default_data_dir_setting

    d = Path(default_data_dir_setting())
    return d if (d / META_JSON).exists() else None


def synthetic_corpus(out: Path, vocab: int = 512, n_train: int = 400_000, n_val: int = 40_000) -> Path:
    """A learnable stand-in: random tokens where every odd position repeats the previous one."""
    import numpy as np

    from loopscale.data.format import TOKEN_FILES, write_meta

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        t = rng.integers(1, vocab, size=n, dtype=np.uint16)
        t[1::2] = t[0:-1:2]
        t.tofile(out / TOKEN_FILES[split])
    write_meta(out, tokenizer="synthetic", vocab_size=vocab, dtype="uint16", bos_id=0, train_tokens=n_train,
               val_tokens=n_val, train_docs=None, val_docs=None, val_unigram_entropy=None, sources=[],
               settings={"corpus": "synthetic"})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--r", type=int, default=4)
    p.add_argument("--tokens", type=int, default=163_840, help="training tokens per run (D)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-tokens", type=int, default=2048)
    p.add_argument("--eval-tokens", type=int, default=16_384)
    p.add_argument("--muon-lrs", default="0.01,0.02,0.05,0.1", help="MuonH matrix lrs to sweep, comma-separated")
    p.add_argument("--adamw-lrs", default="0.0003,0.001,0.003,0.01",
                   help="AdamW matrix lrs to sweep, comma-separated; '' skips AdamW")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    model = arch(args.width, args.r)

    from loopscale.data.dataset import load_data  # noqa: PLC0415 - after argparse, so --help is fast
    from loopscale.training.train import train  # noqa: PLC0415

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
    print(f"\nval_loss (nats/token) at D = {args.tokens:,} tokens, each optimizer's matrix lr swept:")
    print(f"{'optimizer':10s} {'lr_matrix':>9s} {'val_loss':>9s}")
    for name, res in (("adamw", adamw), ("muonh", muon)):
        for lr, v in res.items():
            print(f"{name:10s} {lr:>9g} {v:>9.4f}{'  ← best' if lr == best[name][1] and len(res) > 1 else ''}")
    (a, a_lr), (m, m_lr) = best["adamw"], best["muonh"]
    if a_lr is not None and m_lr is not None:
        edge = [f"{n} best at the edge of its sweep" for n, res, lr in (("adamw", adamw, a_lr), ("muonh", muon, m_lr))
                if len(res) > 2 and lr in (min(res), max(res))]
        print(f"best muonh (lr_matrix {m_lr:g}) {m:.4f} vs best adamw (lr_matrix {a_lr:g}) {a:.4f}: {m - a:+.4f} nats"
              + (f" ({'; '.join(edge)}: widen it)" if edge else ""))
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
