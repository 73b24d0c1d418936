"""Parameter and FLOP accounting of the iso-depth looped decoder (method.md §2–§3).

Pure Python, no torch: grids expand and analyses run without it.

Conventions (the paper's):
- ``n_once``: unique non-embedding parameters applied once per token: prelude + coda layers and
  the three model-level RMSNorm scales (after the embedding, after each recurrence, before the head).
- ``n_rec``: unique non-embedding parameters of the looped block, including the injection layer.
- For r = 1 the model is a plain stack of ``n_layers_eff`` layers that all count as "recurrent"
  (no prelude/coda split, no injection), so ``n_once`` is just the 3·d of norms.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil

from loopscale.errors import UserError


class ArchError(UserError, ValueError):
    """An architecture that cannot be built (bad r, width, depth split)."""


@dataclass(frozen=True)
class Arch:
    """The shape of one looped model. Widths in channels, depths in layers."""

    d_model: int
    r: int = 1
    n_layers_eff: int = 20
    n_prelude: int = 2
    n_coda: int = 2
    head_dim: int = 128
    injection: str = "linear"  # linear | additive
    probe: str = "none"  # none | tbptt | hyperconn
    tbptt_k: int | None = None  # recurrences that get gradients under tbptt; None = ceil(r/2)
    hc_lanes: int = 2  # K, lanes of the hyperconnection probe

    def __post_init__(self) -> None:
        check_arch(self)

    # The depth split actually built: r = 1 has no prelude/coda and no injection.
    @property
    def l_prelude(self) -> int:
        return 0 if self.r == 1 else self.n_prelude

    @property
    def l_coda(self) -> int:
        return 0 if self.r == 1 else self.n_coda

    @property
    def l_recur(self) -> int:
        return (self.n_layers_eff - self.l_prelude - self.l_coda) // self.r

    @property
    def n_head(self) -> int:
        return self.d_model // self.head_dim

    @property
    def k_grad(self) -> int:
        """Recurrences that receive gradients (k in method.md §3)."""
        if self.probe == "tbptt" and self.r > 1:
            return self.tbptt_k if self.tbptt_k is not None else ceil(self.r / 2)
        return self.r

    @property
    def injection_kind(self) -> str:
        if self.r == 1:
            return "none"
        return "hyperconn" if self.probe == "hyperconn" else self.injection


INJECTIONS = ("linear", "additive")
PROBES = ("none", "tbptt", "hyperconn")


def check_arch(a: Arch) -> None:
    """Raise ArchError with one clear sentence when the shape cannot be built."""
    if not isinstance(a.r, int) or a.r < 1:
        raise ArchError(f"r must be a positive integer, got {a.r!r}")
    if not isinstance(a.d_model, int) or a.d_model < 1:
        raise ArchError(f"width d_model must be a positive integer, got {a.d_model!r}")
    if not isinstance(a.head_dim, int) or a.head_dim < 1:
        raise ArchError(f"head_dim must be a positive integer, got {a.head_dim!r}")
    if a.d_model % a.head_dim:
        raise ArchError(f"width {a.d_model} is not divisible by head_dim {a.head_dim}")
    if a.head_dim % 2:
        raise ArchError(f"head_dim must be even for RoPE, got {a.head_dim}")
    for name in ("n_layers_eff", "n_prelude", "n_coda"):
        v = getattr(a, name)
        if not isinstance(v, int) or v < 0:
            raise ArchError(f"{name} must be a non-negative integer, got {v!r}")
    if a.n_layers_eff < 1:
        raise ArchError(f"n_layers_eff must be at least 1, got {a.n_layers_eff}")
    if a.r > 1:
        loop_depth = a.n_layers_eff - a.n_prelude - a.n_coda
        if loop_depth < 1:
            raise ArchError(
                f"n_layers_eff {a.n_layers_eff} leaves no layers to loop after prelude "
                f"{a.n_prelude} + coda {a.n_coda}"
            )
        if loop_depth % a.r:
            raise ArchError(
                f"r = {a.r} does not divide the loop depth {loop_depth} "
                f"(n_layers_eff {a.n_layers_eff} - prelude {a.n_prelude} - coda {a.n_coda})"
            )
    if a.injection not in INJECTIONS:
        raise ArchError(f"unknown injection {a.injection!r}; choose one of {', '.join(INJECTIONS)}")
    if a.probe not in PROBES:
        raise ArchError(f"unknown probe {a.probe!r}; choose one of {', '.join(PROBES)}")
    if a.tbptt_k is not None and a.probe == "tbptt" and not (1 <= a.tbptt_k <= a.r):
        raise ArchError(f"tbptt_k must be in [1, r={a.r}], got {a.tbptt_k}")
    if a.tbptt_k is not None and a.probe != "tbptt":
        raise ArchError(f"tbptt_k is set but probe is {a.probe!r}; it only applies to probe tbptt")
    if a.probe == "hyperconn" and a.hc_lanes < 1:
        raise ArchError(f"hc_lanes must be at least 1, got {a.hc_lanes}")


def layer_params(d: int) -> int:
    """Weights of one block: attention 4d² + MLP 8d², plus two RMSNorm scales (2d)."""
    return 12 * d * d + 2 * d


def injection_params(a: Arch) -> int:
    """n_i: parameters of the injection shared across loops (0 for r = 1)."""
    kind = a.injection_kind
    d = a.d_model
    if kind == "linear":
        return 2 * d * d
    if kind == "hyperconn":
        # Per recurrence: alpha (K), M (K×K), beta (K). Tiny, but real parameters.
        k = a.hc_lanes
        return a.r * (k * k + 2 * k)
    return 0


def injection_flops_params(a: Arch) -> int:
    """n_i as charged in the FLOP formula ((K²+2K)·d "equivalent" for hyperconnections)."""
    if a.injection_kind == "hyperconn":
        k = a.hc_lanes
        return (k * k + 2 * k) * a.d_model
    return injection_params(a)


def n_once(a: Arch) -> int:
    """Unique non-embedding parameters applied once per token (prelude, coda, 3 model norms)."""
    return (a.l_prelude + a.l_coda) * layer_params(a.d_model) + 3 * a.d_model


def n_rec(a: Arch) -> int:
    """Unique non-embedding parameters of the looped block, including the injection."""
    return a.l_recur * layer_params(a.d_model) + injection_params(a)


def n_params(a: Arch) -> int:
    """All unique non-embedding parameters (n_once + n_rec)."""
    return n_once(a) + n_rec(a)


def n_effective_compute(a: Arch) -> int:
    """N_once + r·N_rec: parameters as executed per token (the paper's D_ref 'effective params')."""
    return n_once(a) + a.r * n_rec(a)


def embedding_params(a: Arch, vocab: int) -> int:
    """Token embedding + untied LM head."""
    return 2 * vocab * a.d_model


def flops_per_token(a: Arch, seq_len: int, vocab: int) -> int:
    """Training FLOPs per token, the authors' accounting (method.md §3).

    Recurrences without gradient (truncated backprop) cost forward only (2 instead of 6 per
    parameter, 4 instead of 12 per attention term).
    """
    d, T, V = a.d_model, seq_len, vocab
    r, k = a.r, a.k_grad
    l_pc = a.l_prelude + a.l_coda
    once = 6 * (l_pc * layer_params(d) + d * V)
    loop = (2 * (r - k) + 6 * k) * (a.l_recur * layer_params(d) + injection_flops_params(a))
    attn = 12 * l_pc * d * T + (4 * (r - k) + 12 * k) * a.l_recur * d * T
    return once + loop + attn


def iterations_for_budget(budget_flops: float, flops_token: int, batch_tokens: int) -> int:
    """Optimizer steps for a FLOP budget C: round(C / (F·B))."""
    return int(round(budget_flops / (flops_token * batch_tokens)))
