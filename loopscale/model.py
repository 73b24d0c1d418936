"""The iso-depth looped decoder of method.md §2: prelude → shared block × r → coda.

Read ``LoopedLM.forward`` top to bottom: it is the paper's architecture in a dozen lines.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from loopscale.counting import Arch

SOFTCAP = 15.0
NORM_EPS = 1e-6
ROPE_BASE = 10000.0


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in nats/token (logits already fp32)."""
    return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


class RMSNorm(nn.Module):
    """RMSNorm with a learnable scale (eps 1e-6)."""

    def __init__(self, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),), self.weight, NORM_EPS)


def rope_tables(seq_len: int, head_dim: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables, shape (seq_len, head_dim/2), base 10000."""
    inv_freq = 1.0 / (ROPE_BASE ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of the head dimension. x: (B, H, T, hd)."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Attention(nn.Module):
    def __init__(self, d: int, head_dim: int):
        super().__init__()
        self.n_head, self.head_dim = d // head_dim, head_dim
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, d, bias=False)
        self.v = nn.Linear(d, d, bias=False)
        self.o = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        B, T, d = x.shape
        q, k, v = (p(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        cos, sin = rope[0][:T], rope[1][:T]
        # RoPE, then parameter-free RMSNorm on q and k (QK-norm).
        q = F.rms_norm(apply_rope(q, cos, sin), (self.head_dim,), eps=NORM_EPS)
        k = F.rms_norm(apply_rope(k, cos, sin), (self.head_dim,), eps=NORM_EPS)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(B, T, d))


class MLP(nn.Module):
    """d → 4d → d with squared ReLU."""

    def __init__(self, d: int):
        super().__init__()
        self.up = nn.Linear(d, 4 * d, bias=False)
        self.down = nn.Linear(4 * d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.relu(self.up(x)).square())


class Block(nn.Module):
    """Pre-norm transformer layer: 12d² weights + 2d norm scales."""

    def __init__(self, d: int, head_dim: int):
        super().__init__()
        self.norm_attn = RMSNorm(d)
        self.attn = Attention(d, head_dim)
        self.norm_mlp = RMSNorm(d)
        self.mlp = MLP(d)

    def forward(self, x: torch.Tensor, rope) -> torch.Tensor:
        x = x + self.attn(self.norm_attn(x), rope)
        return x + self.mlp(self.norm_mlp(x))


# -- Injection: how the prelude output e enters each recurrence ------------------------------
# Each kind keeps a loop state, mixes (e, state) into the block input, folds the block output
# back into the state, and reads the state out for the coda. Probes add kinds here.


class NoInjection(nn.Module):
    """r = 1: the single pass starts from e; nothing to mix."""

    def init_state(self, e):
        return e

    def mix(self, t, e, h):
        return h

    def update(self, t, h, s):
        return s

    def readout(self, h):
        return h


class LinearInjection(NoInjection):
    """u = W·[e ∥ h], W ∈ R^{d×2d} shared across loops, initialised to [I ∥ 0]; h⁰ = e."""

    def __init__(self, d: int):
        super().__init__()
        self.proj = nn.Linear(2 * d, d, bias=False)
        with torch.no_grad():
            self.proj.weight.zero_()
            self.proj.weight[:, :d].copy_(torch.eye(d))

    def mix(self, t, e, h):
        return self.proj(torch.cat((e, h), dim=-1))


class AdditiveInjection(NoInjection):
    """u = h + e with h⁰ = 0 (the paper's additive ablation)."""

    def init_state(self, e):
        return torch.zeros_like(e)

    def mix(self, t, e, h):
        return h + e


def make_injection(a: Arch) -> nn.Module:
    kind = a.injection_kind
    if kind == "none":
        return NoInjection()
    if kind == "linear":
        return LinearInjection(a.d_model)
    if kind == "additive":
        return AdditiveInjection()
    if kind == "hyperconn":
        from loopscale.probes import HyperConnections  # noqa: PLC0415 - probe lives with probes

        return HyperConnections(a.d_model, a.hc_lanes, a.r)
    raise ValueError(f"unknown injection {kind!r}")


class LoopedLM(nn.Module):
    """Embedding → norm → prelude → (inject → shared block → norm_recur) × r → coda → norm → head."""

    def __init__(self, arch: Arch, vocab_size: int, max_seq_len: int):
        super().__init__()
        self.arch, self.vocab_size = arch, vocab_size
        d, hd = arch.d_model, arch.head_dim
        self.embed = nn.Embedding(vocab_size, d)
        self.norm_embed = RMSNorm(d)
        self.prelude = nn.ModuleList(Block(d, hd) for _ in range(arch.l_prelude))
        self.injection = make_injection(arch)
        self.recur = nn.ModuleList(Block(d, hd) for _ in range(arch.l_recur))
        self.norm_recur = RMSNorm(d)
        self.coda = nn.ModuleList(Block(d, hd) for _ in range(arch.l_coda))
        self.norm_final = RMSNorm(d)
        self.lm_head = nn.Linear(d, vocab_size, bias=False)
        cos, sin = rope_tables(max_seq_len, hd)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The paper's init: embedding N(0,1), head N(0,1e-3), matrices U(±√3/√fan_in), norms 1."""
        d = self.arch.d_model
        nn.init.normal_(self.embed.weight, 0.0, 1.0)
        nn.init.normal_(self.lm_head.weight, 0.0, 1e-3)
        for blk in (*self.prelude, *self.recur, *self.coda):
            for lin in (blk.attn.q, blk.attn.k, blk.attn.v, blk.attn.o, blk.mlp.up):
                bound = math.sqrt(3.0) / math.sqrt(d)
                nn.init.uniform_(lin.weight, -bound, bound)
            bound = math.sqrt(3.0) / math.sqrt(4 * d)
            nn.init.uniform_(blk.mlp.down.weight, -bound, bound)
        for m in self.modules():
            if isinstance(m, RMSNorm):
                m.weight.fill_(1.0)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) → soft-capped fp32 logits (B, T, V)."""
        a, rope = self.arch, (self.rope_cos, self.rope_sin)
        x = self.norm_embed(self.embed(idx))
        for blk in self.prelude:
            x = blk(x, rope)
        e, h = x, self.injection.init_state(x)
        for t in range(a.r):
            # Truncated backprop: the first r − k recurrences run without gradient (forward only).
            with torch.set_grad_enabled(torch.is_grad_enabled() and t >= a.r - a.k_grad):
                u = self.injection.mix(t, e, h)
                for blk in self.recur:
                    u = blk(u, rope)
                h = self.injection.update(t, h, self.norm_recur(u))
        x = self.injection.readout(h)
        for blk in self.coda:
            x = blk(x, rope)
        logits = self.lm_head(self.norm_final(x)).float()
        return SOFTCAP * torch.tanh(logits / SOFTCAP)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy in nats/token."""
        return cross_entropy(self.forward(idx), targets)

    # -- bookkeeping --------------------------------------------------------------------------
    def n_non_embedding_params(self) -> int:
        skip = {id(self.embed.weight), id(self.lm_head.weight)}
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Optimizer groups as the paper: block matrices + injection / embedding / head / norms and scalars."""
        groups: dict[str, list[nn.Parameter]] = {"matrix": [], "embed": [], "head": [], "norm": [], "lane": []}
        for name, p in self.named_parameters():
            if name.startswith("embed."):
                groups["embed"].append(p)
            elif name.startswith("lm_head."):
                groups["head"].append(p)
            elif name.startswith("injection.") and not name.startswith("injection.proj."):
                groups["lane"].append(p)
            elif p.ndim >= 2:
                groups["matrix"].append(p)
            else:
                groups["norm"].append(p)
        return groups
