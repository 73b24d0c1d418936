"""The paper's learning-rate transfer (method.md §4), as pure functions. Torch-free.

Units: learning rates are per optimizer step (AdamW: the step size before Adam's normalisation;
MuonH: the fraction of ‖W₀‖_F the update moves a matrix, see ``loopscale.training.muon``); widths d in
channels; D (``tokens``) and B (``batch_tokens``) in tokens; parameter counts in parameters.

    lr_embed  = 0.3   × w × b          w = (d / 640)^−0.5           width (muP) transfer
    lr_head   = 0.004 × w × b          b = (B / B_ref)^β            batch transfer, β = 0 (off) by default
    lr_norm   = 0.005 × w
    lr_matrix = 0.014 × (D / D_ref)^−0.32 × b

    D_ref = 10 × (N_once + r_ref·N_rec) of the s = 10 reference model (d = 10 × 64 = 640)

Source: the paper's authors' ``scripts/base_train.py`` and ``GPT.setup_optimizer`` in
github.com/kschwethelm/looped-lm-scaling (MIT); followed exactly, including two details:

- The reference model. The authors build it "architecture-matched" to the run only in whether it
  loops: every looped run (r > 1, any injection or probe) is referred to the 2-4-2 model with
  r = 4 and linear injection, every r = 1 run to the plain 20-layer stack. So the reference does
  *not* use the run's r. Here the reference keeps the run's family — n_layers_eff, n_prelude,
  n_coda, head_dim — at width 640 (nudged up to a multiple of head_dim, as the authors do), with
  linear injection, no probe, and r_ref = 1 for r = 1 runs, else 4 (``REF_R_LOOPED``; the run's own r
  if 4 does not divide the family's loop depth). For the paper's family (ℓ_eff 20, prelude 2,
  coda 2) this is exactly the authors' reference. With the run's r instead, D_ref would differ
  only through the injection's 2d² per recurrence (≈ ±3 %, i.e. ≈ 1 % in lr). Pass ``ref_r``
  to override.
- Batch transfer (HyperP, arXiv:2603.28743 §5.4; the authors use β = 0.558 with B_ref = 2^18 =
  262,144 tokens, the paper's batch, so it is 1 in all their runs). It multiplies the embedding,
  head and matrix lrs but not the norm lr, as in the authors' code. Here β defaults to 0 (off):
  tiny CPU grids train at batches far from 2^18, where an extrapolated (B/B_ref)^0.558 would cut
  every lr by ~7×.

The data term applies to the matrix lr only (HyperP Table 1), and all scales are exactly 1 for a
run of the s = 10 reference size (d = 640) at D = D_ref and B = B_ref.

``with_paper_lrs`` applies the rule to a ``RunConfig`` (grids with ``train.lr_rule: paper`` call it
per run at expansion): D is the run's resolved tokens (iterations × B), and the four lrs are
written into the config rounded to 6 significant digits, so the run's config.yaml shows them and its
run id hashes them the same on every machine (a last-ulp difference in ``pow`` cannot move an id).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from loopscale.counting import Arch, baseline_arch, n_effective_compute

if TYPE_CHECKING:
    from loopscale.config import RunConfig

# The paper's base learning rates, tuned at the s = 10 reference (d = 640).
BASE_LR_EMBED = 0.3
BASE_LR_HEAD = 0.004
BASE_LR_NORM = 0.005
BASE_LR_MATRIX = 0.014
REF_SIZE = 10
ASPECT_RATIO = 64
D_MODEL_REF = REF_SIZE * ASPECT_RATIO  # 640, the width transfer's reference
REF_DATA_RATIO = 10  # D_ref = 10 × effective params of the reference
REF_R_LOOPED = 4  # the authors' reference recurrence count for every looped run
DATA_EXPONENT = -0.32
WIDTH_EXPONENT = -0.5
LR_KEYS = ("lr_matrix", "lr_embed", "lr_head", "lr_norm")
LR_DIGITS = 6  # significant digits of the lrs written into a run's config
B_REF = 2**18  # 262,144 tokens, the paper's batch
AUTHORS_BATCH_EXPONENT = 0.558  # HyperP; the authors' value (off here by default)


def width_scale(d_model: int) -> float:
    """(d / 640)^−0.5, the AdamW lrs' width transfer."""
    if d_model <= 0:
        raise ValueError(f"d_model must be positive, got {d_model}")
    return (d_model / D_MODEL_REF) ** WIDTH_EXPONENT


def batch_scale(batch_tokens: int, exponent: float = 0.0, b_ref: int = B_REF) -> float:
    """(B / B_ref)^exponent; exponent 0 (the default) turns batch transfer off."""
    if batch_tokens <= 0 or b_ref <= 0:
        raise ValueError(f"batch sizes must be positive, got B={batch_tokens}, B_ref={b_ref}")
    return (batch_tokens / b_ref) ** exponent if exponent else 1.0


def reference_arch(arch: Arch, ref_r: int | None = None) -> Arch:
    """The s = 10 reference of ``arch``'s family (see the module docstring for the choice of r)."""
    hd = arch.head_dim
    d_ref = -(-D_MODEL_REF // hd) * hd  # nudged up to a multiple of head_dim, as the authors
    if ref_r is None:
        ref_r = 1
        if arch.r > 1:
            loop_depth = arch.n_layers_eff - arch.n_prelude - arch.n_coda
            ref_r = REF_R_LOOPED if loop_depth % REF_R_LOOPED == 0 else arch.r
    return baseline_arch(arch, d_model=d_ref, r=ref_r, injection="linear")


def d_ref(arch: Arch, ref_r: int | None = None) -> int:
    """D_ref in tokens: 10 × (N_once + r·N_rec) of the reference."""
    return REF_DATA_RATIO * n_effective_compute(reference_arch(arch, ref_r))


def data_scale(arch: Arch, tokens: float, ref_r: int | None = None) -> float:
    """(D / D_ref)^−0.32, the matrix lr's data transfer."""
    if tokens <= 0:
        raise ValueError(f"tokens must be positive, got {tokens}")
    return (tokens / d_ref(arch, ref_r)) ** DATA_EXPONENT


def paper_lr_details(arch: Arch, tokens: float, batch_tokens: int, *, batch_exponent: float = 0.0,
                     b_ref: int = B_REF, ref_r: int | None = None) -> dict[str, Any]:
    """The four lrs and every factor behind them (for dry runs and resolved configs)."""
    if not tokens > 0:
        raise ValueError(f"tokens must be positive, got {tokens}")
    w = width_scale(arch.d_model)
    b = batch_scale(batch_tokens, batch_exponent, b_ref)
    ref = reference_arch(arch, ref_r)
    dref = REF_DATA_RATIO * n_effective_compute(ref)
    s = (tokens / dref) ** DATA_EXPONENT
    return {
        "lr_matrix": BASE_LR_MATRIX * s * b,
        "lr_embed": BASE_LR_EMBED * w * b,
        "lr_head": BASE_LR_HEAD * w * b,
        "lr_norm": BASE_LR_NORM * w,
        "width_scale": w,
        "data_scale": s,
        "batch_scale": b,
        "d_ref": dref,
        "ref_d_model": ref.d_model,
        "ref_r": ref.r,
    }


def paper_lrs(arch: Arch, tokens: float, batch_tokens: int, *, batch_exponent: float = 0.0,
              b_ref: int = B_REF, ref_r: int | None = None) -> dict[str, float]:
    """``dict(lr_matrix=…, lr_embed=…, lr_head=…, lr_norm=…)`` for a run of ``arch`` trained on
    ``tokens`` tokens at ``batch_tokens`` tokens per step (the paper's transfer rules above)."""
    det = paper_lr_details(arch, tokens, batch_tokens, batch_exponent=batch_exponent, b_ref=b_ref, ref_r=ref_r)
    return {k: det[k] for k in LR_KEYS}


def round_lr(x: float) -> float:
    """``x`` to ``LR_DIGITS`` significant digits (0.014 stays 0.014)."""
    return float(f"{x:.{LR_DIGITS}g}")


def with_paper_lrs(cfg: RunConfig, *, batch_exponent: float = 0.0, b_ref: int = B_REF) -> RunConfig:
    """``cfg`` with its four lrs set by the paper's transfer for its model, its resolved D
    (iterations × batch_tokens, so FLOP budgets work) and its batch, rounded by ``round_lr``."""
    t = cfg.train
    lrs = paper_lrs(cfg.model, cfg.tokens(), t.batch_tokens, batch_exponent=batch_exponent, b_ref=b_ref)
    return dataclasses.replace(cfg, train=dataclasses.replace(t, **{k: round_lr(v) for k, v in lrs.items()}))
