"""The iso-depth looped decoder of method.md §2: prelude → shared block × r → coda.

Read ``LoopedLM.forward`` top to bottom: it is the paper's architecture in a dozen lines.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from loopscale.counting import Arch
from loopscale.probes import Injection

SOFTCAP = 15.0
NORM_EPS = 1e-6
ROPE_BASE = 10000.0


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in nats/token (logits already fp32)."""
    return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


# -- Fused helpers (CPU speed at small widths) ------------------------------------------------
# At d ≤ 64 a CPU training step is dominated by elementwise passes (norms, RoPE, squared ReLU)
# and small attention products rather than by large matmuls, so these few ops get hand-written
# backwards that touch each tensor fewer times. They compute the same functions as the plain forms in their docstrings (to float
# rounding); tests/test_model.py checks the two paths against each other, forward and gradients.
# On CUDA the plain forms run instead (PyTorch's fused kernels, one launch each, and what
# torch.compile knows): ``use_fast_path`` decides per call, ``fast_path`` overrides it.

FAST_PATH = "auto"  # "auto": fast path on non-CUDA tensors, plain forms on CUDA | "on" | "off"
FAST_PATH_MODES = ("auto", "on", "off")


def use_fast_path(x: torch.Tensor) -> bool:
    """Whether the model runs the hand-written fast path on ``x`` (else the plain PyTorch forms)."""
    return FAST_PATH == "on" or (FAST_PATH == "auto" and not x.is_cuda)


@contextlib.contextmanager
def fast_path(mode: str):
    """Set ``FAST_PATH`` to "auto", "on" or "off" inside the block (tests, benches)."""
    global FAST_PATH
    if mode not in FAST_PATH_MODES:
        raise ValueError(f"fast_path: expected one of {', '.join(FAST_PATH_MODES)}, got {mode!r}")
    before, FAST_PATH = FAST_PATH, mode
    try:
        yield
    finally:
        FAST_PATH = before


def _rms_scale(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """rsqrt(mean(x²) + eps) over ``dim``, in at least fp32, keepdim. (A sum of squares, not
    ``vector_norm``: over a dim other than the last, vector_norm ran ~50× slower here.)"""
    ss = x.square().sum(dim, keepdim=True, dtype=torch.promote_types(x.dtype, torch.float32))
    return ss.div_(x.size(dim)).add_(NORM_EPS).rsqrt_()


def _rms_backward(g: torch.Tensor, y: torch.Tensor, s: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Gradient of y = x·s(x) (s = _rms_scale over ``dim``) given y, s and g = dL/dy: s·(g − y·mean(g·y))."""
    dot = (g * y).mean(dim, keepdim=True)
    return torch.addcmul(g, y, dot, value=-1).mul_(s)


class _RMSNormalize(torch.autograd.Function):
    """F.rms_norm(x, (d,), eps=NORM_EPS) without a weight."""

    @staticmethod
    def forward(ctx, x):
        s = _rms_scale(x)
        y = (x * s).to(x.dtype)
        ctx.save_for_backward(y, s)
        return y

    @staticmethod
    def backward(ctx, g):
        y, s = ctx.saved_tensors
        return _rms_backward(g, y, s)


def rms_normalize(x: torch.Tensor) -> torch.Tensor:
    """Parameter-free RMSNorm over the last dim (eps 1e-6)."""
    return _RMSNormalize.apply(x)


class _SquaredReLU(torch.autograd.Function):
    """relu(x)², saving relu(x) alone; backward 2·relu(x)·g."""

    @staticmethod
    def forward(ctx, x):
        r = torch.relu(x)
        ctx.save_for_backward(r)
        return r * r

    @staticmethod
    def backward(ctx, g):
        (r,) = ctx.saved_tensors
        return (g * r).mul_(2)


def squared_relu(x: torch.Tensor) -> torch.Tensor:
    return _SquaredReLU.apply(x)


def _rotate_into(out: torch.Tensor, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """out = RoPE(x) on (first half, second half) pairs of the head dim, which is second to last:
    x (..., hd, T), cos/sin (hd/2, T); sin → −sin gives the inverse rotation."""
    h = x.size(-2) // 2
    x1, x2, o1, o2 = x[..., :h, :], x[..., h:, :], out[..., :h, :], out[..., h:, :]
    torch.mul(x1, cos, out=o1).addcmul_(x2, sin, value=-1)
    torch.mul(x2, cos, out=o2).addcmul_(x1, sin)


_CAUSAL_MASKS: dict[tuple, torch.Tensor] = {}


def _causal_mask(T: int, dtype: torch.dtype, device) -> torch.Tensor:
    """(T, T) additive mask: 0 on and below the diagonal, −inf above."""
    key = (T, dtype, str(device))
    if key not in _CAUSAL_MASKS:
        _CAUSAL_MASKS[key] = torch.full((T, T), float("-inf"), dtype=dtype, device=device).triu_(1)
    return _CAUSAL_MASKS[key]


class _CausalAttention(torch.autograd.Function):
    """Fused projections (B, T, 3d) → causal attention output (B, T, d): the same function as the
    plain path's q, k, v heads, RoPE, QK-norm (``F.rms_norm(apply_rope(·), (hd,), eps=NORM_EPS)``
    on q and k) and ``F.scaled_dot_product_attention(q, k, v, is_causal=True)``.

    At head_dim 8 a matmul whose output rows are 8 wide runs several times slower than one whose
    rows are T wide, and elementwise passes over rows of 4 or 8 barely vectorise. So the heads are
    kept transposed, (B·H, hd, T): QK-norm and RoPE run along T, every product below has T-wide
    output rows (oᵀ = vᵀpᵀ, dvᵀ = doᵀp, dqᵀ = kᵀdsᵀ, dkᵀ = qᵀds), and only q and do are also
    laid out (T, hd) for the two products that need them as the left factor."""

    @staticmethod
    def forward(ctx, qkv, cos, sin, n_head: int):
        B, T, three_d = qkv.shape
        H, hd = n_head, three_d // (3 * n_head)
        xt = qkv.view(B, T, 3, H, hd).permute(2, 0, 3, 4, 1).contiguous()  # (3, B, H, hd, T)
        cos, sin = cos.mT.contiguous(), sin.mT.contiguous()  # (hd/2, T)
        s = _rms_scale(xt[:2], dim=-2)  # (2, B, H, 1, T)
        qk = torch.empty(xt[:2].shape, dtype=qkv.dtype, device=qkv.device)
        _rotate_into(qk, xt[:2] * s, cos, sin)  # RoPE keeps the RMS: normalise, then rotate
        qT, kT, vT = (t.view(B * H, hd, T) for t in (qk[0], qk[1], xt[2]))
        q = qT.mT.contiguous()
        scale = 1.0 / math.sqrt(hd)
        p = torch.bmm(q, kT).mul_(scale).add_(_causal_mask(T, qkv.dtype, qkv.device)).softmax(-1)
        oT = torch.bmm(vT, p.mT)
        ctx.save_for_backward(qk, s, xt, p, cos, sin)
        ctx.scale = scale
        return oT.view(B, H * hd, T).transpose(1, 2).contiguous()

    @staticmethod
    def backward(ctx, gy):
        qk, s, xt, p, cos, sin = ctx.saved_tensors
        _, B, H, hd, T = qk.shape
        BH = B * H
        qT, kT, vT = (t.view(BH, hd, T) for t in (qk[0], qk[1], xt[2]))
        goT = gy.transpose(1, 2).contiguous().view(BH, hd, T)
        go = gy.view(B, T, H, hd).transpose(1, 2).contiguous().view(BH, T, hd)
        g = torch.empty(3, BH, hd, T, dtype=gy.dtype, device=gy.device)
        torch.bmm(goT, p, out=g[2])  # dvᵀ = doᵀ p
        ds = torch._softmax_backward_data(torch.bmm(go, vT), p, -1, p.dtype).mul_(ctx.scale)
        torch.bmm(kT, ds.mT, out=g[0])  # dqᵀ = kᵀ dsᵀ
        torch.bmm(qT, ds, out=g[1])  # dkᵀ = qᵀ ds
        gqk = g[:2].view(2, B, H, hd, T)  # still rotated: the norm's backward first, then rotate back
        gn = _rms_backward(gqk, qk, s, dim=-2)
        grad = torch.empty(B, T, 3, H, hd, dtype=gy.dtype, device=gy.device)
        gx = grad.permute(2, 0, 3, 4, 1)  # (3, B, H, hd, T) view
        _rotate_into(gx[:2], gn, cos, -sin)
        gx[2].copy_(g[2].view(B, H, hd, T))
        return grad.view(B, T, 3 * H * hd), None, None, None


def causal_attention(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_head: int) -> torch.Tensor:
    """(B, T, 3d) fused projections → causal self-attention output (B, T, d), with RoPE and
    QK-norm on q and k (the fast path of ``Attention``; see ``_CausalAttention``)."""
    return _CausalAttention.apply(qkv, cos.to(qkv.dtype), sin.to(qkv.dtype), n_head)


class RMSNorm(nn.Module):
    """RMSNorm with a learnable scale (eps 1e-6)."""

    def __init__(self, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if use_fast_path(x):
            return rms_normalize(x) * self.weight
        return F.rms_norm(x, (x.size(-1),), self.weight, NORM_EPS)


def rope_tables(seq_len: int, head_dim: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables, shape (seq_len, head_dim/2), base 10000."""
    inv_freq = 1.0 / (ROPE_BASE ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of the head dimension. x: (B, H, T, hd).

    The plain form (CUDA); the CPU fast path applies it fused with QK-norm in ``causal_attention``."""
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

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                in_scale: torch.Tensor | None = None) -> torch.Tensor:
        """x: the normalised input. Fast path: ``in_scale`` is the pre-norm's scale (x is normalised
        without it), folded into one q/k/v matmul, with RoPE and QK-norm fused."""
        B, T, d = x.shape
        cos, sin = rope[0][:T], rope[1][:T]
        if in_scale is not None:
            w = torch.cat((self.q.weight, self.k.weight, self.v.weight)) * in_scale
            return self.o(causal_attention(F.linear(x, w), cos, sin, self.n_head))
        q, k, v = (p(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
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

    def forward(self, x: torch.Tensor, in_scale: torch.Tensor | None = None) -> torch.Tensor:
        """x: the normalised input. Fast path: ``in_scale`` is the pre-norm's scale, folded into the
        up weight, and relu(·)² has its own backward."""
        if in_scale is not None:
            return self.down(squared_relu(F.linear(x, self.up.weight * in_scale)))
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
        if use_fast_path(x):  # norm(x) = rms_normalize(x)·w, each w folded into the next weight
            x = x + self.attn(rms_normalize(x), rope, self.norm_attn.weight)
            return x + self.mlp(rms_normalize(x), self.norm_mlp.weight)
        x = x + self.attn(self.norm_attn(x), rope)
        return x + self.mlp(self.norm_mlp(x))


# -- Injection: how the prelude output e enters each recurrence ------------------------------
# Each kind keeps a loop state, mixes (e, state) into the block input, folds the block output
# back into the state, and reads the state out for the coda. A probe brings its own kind
# (loopscale.probes: a torch-free Injection), which ProbeInjection makes a module.


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


class ProbeInjection(nn.Module):
    """A probe's injection (loopscale.probes.Injection): its declared weights as parameters of this module
    (``injection.<name>``, the optimizer's "lane" group), its forward as the methods of the others."""

    def __init__(self, spec: Injection):
        super().__init__()
        self.spec = spec
        for name, shape in spec.weights().items():
            self.register_parameter(name, nn.Parameter(torch.empty(shape)))
        with torch.no_grad():
            spec.init(self)

    def init_state(self, e):
        return self.spec.init_state(self, e)

    def mix(self, t, e, h):
        return self.spec.mix(self, t, e, h)

    def update(self, t, h, s):
        return self.spec.update(self, t, h, s)

    def readout(self, h):
        return self.spec.readout(self, h)


def make_injection(a: Arch) -> nn.Module:
    if a.r == 1:
        return NoInjection()
    spec = a.probe_injection()
    if spec is not None:
        return ProbeInjection(spec)
    if a.injection == "linear":
        return LinearInjection(a.d_model)
    if a.injection == "additive":
        return AdditiveInjection()
    raise ValueError(f"unknown injection {a.injection!r}")


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
