"""MuonH: Muon on a hypersphere, the paper's optimizer for 2-D block matrices (method.md §4).

The update rule, per 2-D weight W (shape m×n) with gradient G, momentum μ = 0.95, lr η, and
c_W = ‖W₀‖_F recorded when the optimizer is constructed:

    B ← μ·B + (1 − μ)·G                    momentum buffer (B₀ = 0)
    M ← (1 − μ)·G + μ·B                    Nesterov look-ahead
    O ← NS₅(M)                             ≈ U Vᵀ of M = U S Vᵀ (orthogonalisation, see below)
    U ← O · c_W / ‖O‖_F                    the update has the weight's initial norm
    W ← W − η·U                            so ‖η·U‖_F = η·c_W
    W ← W · c_W / ‖W‖_F                    project back onto the sphere ‖W‖_F = c_W

No weight decay (on the sphere it is a first-order no-op). ``group["lr"]`` is read at every
step, so a schedule that rewrites it each step (``loopscale.training.train``) works.

NS₅, the orthogonalisation: X ← M / (‖M‖_F·s + ε); tall matrices (m > n) are transposed so the
Gram matrix A = X Xᵀ is the small side (the injection W ∈ R^{d×2d} is wide and used as is); then
five iterations of X ← a·X + (b·A + c·A²)·X with A = X Xᵀ. Two coefficient sets, chosen by the run
config's ``train.muon_ns`` (``loopscale.training.optim.build_optimizer``):

- ``"polar_express"`` (the default, here and in the run config): the per-step Polar Express
  coefficients (Amsel et al. 2025, arXiv:2505.16932; 5 steps, safety 2e-2, cushion 2) with
  s = 1.02, ε = 1e-6 — what the paper's authors' code uses.
- ``"quintic"``: Keller Jordan's quintic Newton–Schulz, (a, b, c) = (3.4445, −4.7750, 2.0315) at
  every step, s = 1, ε = 1e-7 (github.com/KellerJordan/Muon). It does not converge to U Vᵀ
  exactly: the singular values land roughly in [0.5, 1.5] (≈0.7–1.2 in practice). Kept as an
  option; every muonh run before ``train.muon_ns`` existed used it (their run ids stay valid
  under ``muon_ns: quintic``, see ``RunConfig.semantic_dict``).

Computed in bf16 on CUDA (as the authors do) and fp32 elsewhere. Because U is rescaled to c_W, the
two variants differ only in the spread of U's singular values, not in the update's size.

Source: the paper's authors' training code, github.com/kschwethelm/looped-lm-scaling (MIT),
``nanochat/optim.py`` ``muon_step_fused`` (MuonH = "Muon-Hyperball", after HyperP,
arXiv:2603.28743). Followed exactly: the Nesterov form (lerp), the Polar Express coefficients,
safety factor and ε, the rescale of the orthogonalised update to ‖W₀‖_F (clamped at 1e-10), the
plain ``W − η·U`` step, the projection back to ‖W₀‖_F, no weight decay, momentum 0.95, 5 steps,
and no per-shape lr factor (tests/test_muon.py checks steps against a plain fp32 rewrite of theirs).
Differences: the orthogonalisation runs in fp32 off CUDA (the authors: bf16 always), and its
output is rescaled and applied in fp32 (the authors: in bf16); ‖W₀‖_F is recorded at construction
(the authors: at the first step — the same unless the weights change in between); matrices are
updated one shape-bucket at a time rather than in one compiled kernel; ``quintic`` is available.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

QUINTIC = ((3.4445, -4.7750, 2.0315),) * 5
POLAR_EXPRESS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
# name -> (coefficients per step, norm safety factor s, eps)
NS_COEFFICIENTS = {"quintic": (QUINTIC, 1.0, 1e-7), "polar_express": (POLAR_EXPRESS, 1.02, 1e-6)}


def orthogonalize(g: Tensor, steps: int = 5, coefficients: str = "polar_express", dtype: torch.dtype | None = None) -> Tensor:
    """NS₅ of ``g`` (a matrix, or a batch of same-shape matrices in the last two dims).

    Returns ≈ U Vᵀ in ``dtype`` (default: bf16 on CUDA, fp32 otherwise); see the module docstring.
    """
    if g.ndim < 2:
        raise ValueError(f"orthogonalize needs a matrix, got shape {tuple(g.shape)}")
    if coefficients not in NS_COEFFICIENTS:
        raise ValueError(f"unknown ns_coefficients {coefficients!r}; choose one of {', '.join(NS_COEFFICIENTS)}")
    coeffs, safety, eps = NS_COEFFICIENTS[coefficients]
    if not 1 <= steps <= len(coeffs):
        raise ValueError(f"ns_steps must be in [1, {len(coeffs)}], got {steps}")
    if dtype is None:
        dtype = torch.bfloat16 if g.is_cuda else torch.float32
    x = g.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) * safety + eps)
    shape = x.shape
    x = x.reshape(-1, *shape[-2:])  # one batch dim: b·A + c·A² and a·X + (…)·X are one baddbmm each
    for a, b, c in coeffs[:steps]:
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    x = x.reshape(shape)
    return x.mT if tall else x


class MuonH(torch.optim.Optimizer):
    """Muon with Nesterov momentum and Newton–Schulz orthogonalisation, on the sphere of each
    weight's initial Frobenius norm (update rule and source in the module docstring).

    Only 2-D parameters. Group keys: ``lr``, ``momentum`` (0.95), ``ns_steps`` (5),
    ``ns_coefficients`` ("polar_express", the authors' | "quintic"). The initial norms live in the
    optimizer state (``state[p]["init_norm"]``), so they travel with ``state_dict``.
    """

    def __init__(self, params, lr: float = 0.014, momentum: float = 0.95, ns_steps: int = 5,
                 ns_coefficients: str = "polar_express"):
        if lr < 0:
            raise ValueError(f"lr must be non-negative, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        defaults = dict(lr=lr, momentum=momentum, ns_steps=ns_steps, ns_coefficients=ns_coefficients)
        super().__init__(params, defaults)
        for group in self.param_groups:
            orthogonalize(torch.zeros(2, 2), group["ns_steps"], group["ns_coefficients"])  # validate settings
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"MuonH takes 2-D matrices only, got a parameter of shape {tuple(p.shape)}")
                norm = p.detach().float().norm()
                if not norm > 0:
                    raise ValueError(f"MuonH needs non-zero weights (sphere radius ‖W₀‖_F), got shape {tuple(p.shape)} at 0")
                self.state[p]["init_norm"] = norm.to(p.device)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mu = group["lr"], group["momentum"]
            buckets: dict[tuple, list[Tensor]] = defaultdict(list)
            for p in group["params"]:
                if p.grad is not None:
                    buckets[(tuple(p.shape), p.device, p.dtype)].append(p)
            for ps in buckets.values():
                self._update_bucket(ps, lr, mu, group["ns_steps"], group["ns_coefficients"])
        return loss

    def _update_bucket(self, ps: list[Tensor], lr: float, mu: float, ns_steps: int, coeffs: str) -> None:
        """One step for same-shape matrices, as one stacked batch (a few ops per bucket, not per matrix)."""
        bufs = []
        for p in ps:
            st = self.state[p]
            if "momentum_buffer" not in st:
                st["momentum_buffer"] = torch.zeros_like(p)
            bufs.append(st["momentum_buffer"])
        grads = [p.grad for p in ps]
        torch._foreach_lerp_(bufs, grads, 1.0 - mu)  # B ← μB + (1−μ)G
        m = torch.lerp(torch.stack(grads), torch.stack(bufs), mu)  # M ← (1−μ)G + μB
        o = orthogonalize(m, ns_steps, coeffs).float()
        c = torch.stack([self.state[p]["init_norm"].float() for p in ps]).view(-1, 1, 1)
        u = o * (c / o.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-10))
        w = torch.stack(ps).float().sub_(u, alpha=lr)
        w.mul_(c / w.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-10))
        torch._foreach_copy_(ps, list(w.to(ps[0].dtype).unbind(0)))
