"""What practitioners compute from a fitted law (method.md §7).

For a looped model (width d, r recurrences) of the iso-depth family: its equivalent non-looped
size N_eff = N_once + r^φ·N_rec, the FLOP-matched non-looped model (same width, r = 1: iso-depth
keeps FLOPs/token equal), what one recurrence is worth (r^φ/r), its predicted loss, and at a FLOP
budget C the compute-optimal width per r with its loss gap to r = 1.

Parameter counts and FLOPs come from loopscale.counting. They are quadratics in the width d, so the
exact quadratics (read off counting.py at three valid widths) give them at any real width too.
Units: parameters (non-embedding), FLOPs, tokens, nats.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import cache

import numpy as np
from scipy.optimize import minimize_scalar

from loopscale import paper
from loopscale.analysis.law import Law
from loopscale.counting import Arch, flops_per_token, n_once, n_rec
from loopscale.errors import UserError
from loopscale.grid import WIDTH_UNIT


@dataclass(frozen=True)
class Family:
    """The iso-depth family widths are drawn from (defaults: the paper's, method.md §2–§3)."""

    n_layers_eff: int = paper.N_LAYERS_EFF
    n_prelude: int = paper.N_PRELUDE
    n_coda: int = paper.N_CODA
    head_dim: int = paper.HEAD_DIM
    seq_len: int = paper.SEQ_LEN
    vocab: int = paper.VOCAB
    width_step: int = WIDTH_UNIT  # d = width_step · s

    def arch(self, d_model: int, r: int) -> Arch:
        return Arch(d_model=d_model, r=r, n_layers_eff=self.n_layers_eff, n_prelude=self.n_prelude,
                    n_coda=self.n_coda, head_dim=self.head_dim)


PAPER_FAMILY = Family()


@dataclass(frozen=True)
class ModelSize:
    """One model of the family. ``width`` may be fractional (a continuous optimum)."""

    r: int
    width: float  # d_model, channels
    n_once: float
    n_rec: float
    flops_per_token: float  # training FLOPs per token

    @property
    def n_params(self) -> float:
        return self.n_once + self.n_rec

    def to_dict(self, family: Family = PAPER_FAMILY) -> dict:
        return {**asdict(self), "s": self.width / family.width_step, "n_params": self.n_params}


@cache
def _quadratics(r: int, family: Family) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact coefficients (in d) of n_once, n_rec and FLOPs/token, from counting.py."""
    ds = [family.head_dim * k for k in (1, 2, 3)]
    archs = [family.arch(d, r) for d in ds]
    V = np.vander(np.array(ds, dtype=float), 3)

    def solve(ys):
        return np.linalg.solve(V, np.array(ys, dtype=float))

    return (solve([n_once(a) for a in archs]), solve([n_rec(a) for a in archs]),
            solve([flops_per_token(a, family.seq_len, family.vocab) for a in archs]))


def size_at_width(width: float, r: int, family: Family = PAPER_FAMILY) -> ModelSize:
    """Parameters and FLOPs/token of the width-``width`` member with r recurrences."""
    if not width > 0:
        raise UserError(f"width must be positive, got {width}")
    q_once, q_rec, q_flops = _quadratics(int(r), family)
    return ModelSize(int(r), float(width), float(np.polyval(q_once, width)), float(np.polyval(q_rec, width)),
                     float(np.polyval(q_flops, width)))


def width_for_params(n_params: float, r: int, family: Family = PAPER_FAMILY) -> float:
    """The (real) width whose unique non-embedding parameters N_once + N_rec equal ``n_params``."""
    q_once, q_rec, _ = _quadratics(int(r), family)
    q = q_once + q_rec
    roots = np.roots(q - np.array([0.0, 0.0, float(n_params)]))
    real = [z.real for z in roots if abs(z.imag) < 1e-9 and z.real > 0]
    if not real:
        raise UserError(f"no positive width has {n_params:.4g} parameters at r = {r}")
    return max(real)


@dataclass(frozen=True)
class Equivalence:
    """A looped model next to the non-looped models it is compared with."""

    law: Law
    looped: ModelSize
    n_eff: float  # N_once + r^φ·N_rec: the non-looped size it performs like
    equivalent: ModelSize  # the non-looped (r = 1) model with N_eff parameters
    flop_matched: ModelSize  # the non-looped model of the same width: same FLOPs/token
    worth: float  # r^φ / r: one recurrence in units of a unique block
    tokens: float | None
    loss: float | None  # predicted, nats
    loss_flop_matched: float | None  # same training FLOPs (C = F·D of the looped run)

    def to_dict(self) -> dict:
        return {
            "law": self.law.to_dict(), "looped": self.looped.to_dict(), "n_eff": self.n_eff,
            "equivalent_non_looped": self.equivalent.to_dict(), "flop_matched_non_looped": self.flop_matched.to_dict(),
            "flops_ratio": self.looped.flops_per_token / self.flop_matched.flops_per_token,
            "recurrence_worth": self.worth, "tokens": self.tokens, "loss": self.loss,
            "loss_flop_matched": self.loss_flop_matched,
        }


def equivalent(law: Law, r: int, *, width: float | None = None, n_params: float | None = None,
               tokens: float | None = None, budget_flops: float | None = None,
               family: Family = PAPER_FAMILY) -> Equivalence:
    """Compare a looped model (given by ``width`` or by ``n_params`` unique parameters) with the
    non-looped models of equal quality (N_eff) and equal cost (same width). With ``tokens`` or a
    FLOP budget (D = C / F), also the predicted losses."""
    if (width is None) == (n_params is None):
        raise UserError("give the looped model by its width or by its parameter count (one of them)")
    if tokens is not None and budget_flops is not None:
        raise UserError("give tokens or a FLOP budget, not both")
    if width is None:
        width = width_for_params(n_params, r, family)
    looped = size_at_width(width, r, family)
    n_eff = float(law.n_eff(looped.n_once, looped.n_rec, r))
    flat = size_at_width(width, 1, family)
    equal = size_at_width(width_for_params(n_eff, 1, family), 1, family)
    if budget_flops is not None:
        tokens = budget_flops / looped.flops_per_token
    loss = flat_loss = None
    if tokens is not None:
        if not tokens > 0:
            raise UserError(f"tokens must be positive, got {tokens}")
        loss = float(law.predict(looped.n_once, looped.n_rec, r, tokens))
        flat_tokens = tokens * looped.flops_per_token / flat.flops_per_token
        flat_loss = float(law.predict(flat.n_once, flat.n_rec, 1, flat_tokens))
    return Equivalence(law, looped, n_eff, equal, flat, float(law.recurrence_worth(r)), tokens, loss, flat_loss)


@dataclass(frozen=True)
class ComputeOptimal:
    """The loss-minimising width for r at a FLOP budget, and how far it stays behind r = 1."""

    model: ModelSize
    budget_flops: float
    tokens: float
    n_eff: float
    loss: float  # nats
    gap_to_r1: float | None  # loss − loss of r = 1 at the same budget, nats

    def to_dict(self) -> dict:
        return {"r": self.model.r, **self.model.to_dict(), "budget_flops": self.budget_flops,
                "tokens": self.tokens, "n_eff": self.n_eff, "loss": self.loss, "gap_to_r1": self.gap_to_r1}


def loss_at_budget(law: Law, width: float, r: int, budget_flops: float, family: Family = PAPER_FAMILY) -> float:
    """Predicted loss (nats) of the width-``width`` model trained on D = C / F tokens."""
    m = size_at_width(width, r, family)
    return float(law.predict(m.n_once, m.n_rec, r, budget_flops / m.flops_per_token))


def compute_optimal(law: Law, budget_flops: float, rs=(1, 2, 4, 8), *, grid=None,
                    s_range: tuple[float, float] = (1.0, 1024.0),
                    family: Family = PAPER_FAMILY) -> list[ComputeOptimal]:
    """Loss-minimising width per r at FLOP budget C. Continuous in s over ``s_range`` by default;
    with ``grid`` (width multipliers s) the best grid width. The gap is to r = 1 found the same way."""
    if not budget_flops > 0:
        raise UserError(f"the FLOP budget must be positive, got {budget_flops}")
    step = family.width_step

    def best_width(r: int) -> float:
        if grid is not None:
            losses = [loss_at_budget(law, step * s, r, budget_flops, family) for s in grid]
            return step * float(grid[int(np.argmin(losses))])
        lo, hi = (math.log(v) for v in s_range)
        res = minimize_scalar(lambda ls: loss_at_budget(law, step * math.exp(ls), r, budget_flops, family),
                              bounds=(lo, hi), method="bounded", options={"xatol": 1e-10})
        return step * math.exp(res.x)

    def optimum(r: int) -> tuple[ModelSize, float, float]:
        m = size_at_width(best_width(r), r, family)
        tokens = budget_flops / m.flops_per_token
        return m, tokens, float(law.predict(m.n_once, m.n_rec, r, tokens))

    base = optimum(1)[2]
    out = []
    for r in rs:
        m, tokens, loss = optimum(int(r))
        out.append(ComputeOptimal(m, float(budget_flops), float(tokens), float(law.n_eff(m.n_once, m.n_rec, r)),
                                  loss, loss - base))
    return out


def parse_amount(text: str | float | int, what: str = "value") -> float:
    """'410M', '1.5B', '20B', '2e19', '3.2T' → float (K, M, B/G, T suffixes)."""
    if isinstance(text, (int, float)):
        return float(text)
    t = str(text).strip().replace("_", "").replace(",", "")
    scale = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}
    mult = 1.0
    if t and t[-1].lower() in scale:
        mult, t = scale[t[-1].lower()], t[:-1]
    try:
        value = float(t) * mult
    except ValueError:
        raise UserError(f"cannot read {what} {text!r} (e.g. 410M, 1.5B, 2e19)") from None
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"{what} must be a positive number, got {text!r}")
    return value
