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


class CombinedOptimizer:
    """Several optimizers stepped as one (MuonH on the matrices, AdamW on the rest).

    ``param_groups`` is the concatenation of the parts' groups — the same dicts, so writing a
    group's ``"lr"`` reaches the optimizer that owns it. ``state_dict`` holds one entry per part.
    """

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]):
        self.optimizers = dict(optimizers)

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    @property
    def state(self) -> dict:
        return {p: s for opt in self.optimizers.values() for p, s in opt.state.items()}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers.values():
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state_dict: dict) -> None:
        if set(state_dict) != set(self.optimizers):
            raise ValueError(f"optimizer state has parts {sorted(state_dict)}, expected {sorted(self.optimizers)}")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state_dict[name])

    def __repr__(self) -> str:
        return f"CombinedOptimizer({', '.join(f'{k}={type(v).__name__}' for k, v in self.optimizers.items())})"


def build_optimizer(model, cfg: RunConfig) -> torch.optim.Optimizer | CombinedOptimizer:
    """The paper's parameter groups: block matrices (+ injection), embedding, LM head, norm scales,
    and probe lane parameters (which use the norm lr).

    ``adamw``: one AdamW over all groups (weight decay on the matrices only).
    ``muonh``: ``MuonH`` (momentum 0.95, 5 orthogonalisation steps with the coefficients of
    ``train.muon_ns``, Polar Express by default; no weight decay) on the matrix group and AdamW (the
    config's betas and eps, no weight decay) on the others, stepped together as a ``CombinedOptimizer``.
    The orthogonalisation runs in bf16 on CUDA and fp32 on CPU (``loopscale.training.muon.orthogonalize``).
    ``weight_decay`` does not apply under muonh (the matrices live on spheres).
    Group order is the same for both: matrix, embed, head, norm, lane (empty groups skipped).
    """
    t = cfg.train
    if t.optimizer not in ("adamw", "muonh"):
        raise ValueError(f"optimizer {t.optimizer!r} is not available")
    groups = model.param_groups()
    lrs = {"matrix": t.lr_matrix, "embed": t.lr_embed, "head": t.lr_head, "norm": t.lr_norm, "lane": t.lr_norm}
    if t.optimizer == "adamw":
        param_groups = [
            {"params": ps, "lr": lrs[name], "name": name, "weight_decay": t.weight_decay if name == "matrix" else 0.0}
            for name, ps in groups.items()
            if ps
        ]
        return torch.optim.AdamW(param_groups, betas=t.betas, eps=t.eps, foreach=True)
    from loopscale.training.muon import MuonH  # noqa: PLC0415 - only the muonh path needs it

    parts: dict[str, torch.optim.Optimizer] = {}
    if groups["matrix"]:
        parts["muonh"] = MuonH([{"params": groups["matrix"], "lr": lrs["matrix"], "name": "matrix"}],
                               momentum=0.95, ns_steps=5, ns_coefficients=t.muon_ns)
    adam_groups = [
        {"params": ps, "lr": lrs[name], "name": name, "weight_decay": 0.0}
        for name, ps in groups.items()
        if ps and name != "matrix"
    ]
    if adam_groups:
        parts["adamw"] = torch.optim.AdamW(adam_groups, betas=t.betas, eps=t.eps, foreach=True)
    return CombinedOptimizer(parts)
