"""Optimizers and the learning-rate schedule (method.md §4)."""

from __future__ import annotations

import torch

from loopscale.config import RunConfig


def lr_factor(step: int, iterations: int, warmup_steps: int, final_lr_frac: float) -> float:
    """Multiplier of the peak lr at ``step`` (0-based): optional linear warmup, then linear decay
    over the whole run to ``final_lr_frac`` × peak at the last step (the paper: no warmup, 0.1)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, iterations - 1 - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / span))
    return 1.0 - (1.0 - final_lr_frac) * progress


def build_optimizer(model, cfg: RunConfig) -> torch.optim.Optimizer:
    """AdamW with the paper's parameter groups: block matrices (+ injection), embedding, LM head,
    norm scales, and probe lane parameters (which use the norm lr)."""
    t = cfg.train
    if t.optimizer != "adamw":
        raise ValueError(f"optimizer {t.optimizer!r} is not available yet")
    groups = model.param_groups()
    lrs = {"matrix": t.lr_matrix, "embed": t.lr_embed, "head": t.lr_head, "norm": t.lr_norm, "lane": t.lr_norm}
    param_groups = [
        {"params": ps, "lr": lrs[name], "name": name, "weight_decay": t.weight_decay if name == "matrix" else 0.0}
        for name, ps in groups.items()
        if ps
    ]
    return torch.optim.AdamW(param_groups, betas=t.betas, eps=t.eps, foreach=True)
