"""The joint recurrence scaling law (method.md §1) and its parametrisation for the fit, pure numpy.

    L(N_once, N_rec, r, D) = E + A · (N_once + r^φ · N_rec)^(−α) + B · D^(−β)

Units: parameter counts are unique non-embedding parameters, D is training tokens, L is the final
validation loss in nats/token. Coefficients are stored at full precision; round only on screen.

This module owns, for `fit`, `compare`, `plan` and the regime diagnostics alike (method.md §5):

- the log coordinates θ = (e, a, α, b, β, φ) with E = exp(e), A = exp(a), B = exp(b) (LOG_FITTED), and the
  one conversion between θ and the coefficients (:func:`theta_of`, :func:`params_of`);
- the box the fit searches (LOWER, UPPER, on θ);
- the runs in the form the objective reads (:class:`FitData`), log L̂ and its Jacobian
  (:func:`log_prediction`);
- the one objective, Huber_δ on log-loss residuals, with its gradient and curvature (:func:`evaluate`):

    Σ_i w_i · Huber_δ( LSE(a − α·log N_eff,i , b − β·log D_i , e) − log L_i ),

  where N_eff = N_once + r^φ·N_rec (parameters), D is tokens, L the loss in nats, and w_i are row
  multiplicities (1, or bootstrap counts).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from loopscale.analysis.defaults import HUBER_DELTA
from loopscale.errors import UserError

FORMULA = "L = E + A*(N_once + r^phi*N_rec)^(-alpha) + B*D^(-beta)"  # ASCII, as fit.json records it
FORMULA_TEXT = "L = E + A·(N_once + r^φ·N_rec)^−α + B·D^−β"  # the same law for people: screen and report
PARAM_NAMES = ("E", "A", "alpha", "B", "beta", "phi")  # the coefficients, in this order everywhere (θ of the fit)
FIT_FILE = "fit.json"  # what `loopscale fit` writes and load_law reads
LOG_FITTED = ("E", "A", "B")  # fitted as their logs e, a, b: θ = (e, a, α, b, β, φ) in PARAM_NAMES order
I_PHI = PARAM_NAMES.index("phi")
# The box of θ (method.md §5); E, A and B bounds are on their logs e, a, b.
LOWER = np.array([-3.0, -5.0, 0.0, -5.0, 0.0, -3.0])
UPPER = np.array([2.0, 35.0, 2.5, 35.0, 2.5, 3.0])
BOUNDS_NOTE = f"{', '.join(LOG_FITTED)} bounds are on their logs e, a, b"


@dataclass(frozen=True)
class Law:
    """Coefficients of the law. With ``phi = 0`` looping adds nothing; ``phi = 1`` means r loops of
    a block are worth r unique blocks."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float
    phi: float

    def n_eff(self, n_once, n_rec, r):
        """Equivalent unique parameters N_eff = N_once + r^φ · N_rec (parameters)."""
        n_once, n_rec, r = (np.asarray(v, dtype=float) for v in (n_once, n_rec, r))
        return _scalar(n_once + r**self.phi * n_rec)

    def predict(self, n_once, n_rec, r, tokens):
        """Predicted final validation loss in nats/token after training on ``tokens`` tokens."""
        n_eff = np.asarray(self.n_eff(n_once, n_rec, r), dtype=float)
        tokens = np.asarray(tokens, dtype=float)
        return _scalar(self.E + self.A * n_eff ** (-self.alpha) + self.B * tokens ** (-self.beta))

    def recurrence_worth(self, r):
        """What one recurrence is worth in unique blocks: r^φ / r (1 = as good as a new block)."""
        r = np.asarray(r, dtype=float)
        return _scalar(r**self.phi / r)

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, params: dict, where: str = "law") -> "Law":
        """Build from {E, A, alpha, B, beta, phi}; a missing or null phi (non-identifiable fit) is 0."""
        missing = [k for k in PARAM_NAMES[:5] if params.get(k) is None]
        if missing:
            raise UserError(f"{where}: missing coefficients {', '.join(missing)}")
        values = {k: float(params[k]) for k in PARAM_NAMES[:5]}
        phi = params.get("phi")
        values["phi"] = 0.0 if phi is None else float(phi)
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            raise UserError(f"{where}: non-finite coefficients {', '.join(bad)}")
        return cls(**values)


# Project page constants (method.md §1): the main fit on the paper's 116 runs.
PAPER_LAW = Law(E=1.56773, A=28.027, alpha=0.19924, B=915.82, beta=0.36863, phi=0.459)


def load_law(spec: str | Path, need_phi: bool = False) -> Law:
    """``"paper"`` → PAPER_LAW; otherwise a fit.json (or a folder holding one) written by `loopscale fit`.

    A fit without φ (no looped runs: the Chinchilla form) loads with φ = 0, or is refused with
    ``need_phi``, when the caller is about to say something about looped models."""
    if str(spec).lower() == "paper":
        return PAPER_LAW
    path = Path(spec)
    if path.is_dir():
        path = path / FIT_FILE
    if not path.is_file():
        raise UserError(f"{path}: no such fit file (use --law paper or a fit.json from `loopscale fit`)")
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read fit JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("params"), dict):
        raise UserError(f"{path}: not a fit.json (no 'params' object)")
    if need_phi and doc["params"].get("phi") is None:
        raise UserError(f"{path}: this fit has no phi (no looped runs were fitted); looped models need one")
    return Law.from_dict(doc["params"], where=str(path))


# ---------------------------------------------------------------------------------------------
# Log coordinates and the box


def theta_of(params: Law | Mapping) -> np.ndarray:
    """θ = (e, a, α, b, β, φ) of a Law or of {E, A, alpha, B, beta, phi} (fit.json's params; a null φ,
    the Chinchilla form, is 0). The one conversion from coefficients to the fit's coordinates."""
    p = params.to_dict() if isinstance(params, Law) else params
    phi = p.get("phi")
    return np.array([math.log(p["E"]), math.log(p["A"]), p["alpha"], math.log(p["B"]), p["beta"],
                     0.0 if phi is None else phi], dtype=float)


def params_of(theta, with_phi: bool = True) -> dict[str, float | None]:
    """{E, A, alpha, B, beta, phi} of θ = (e, a, α, b, β, φ); φ None without ``with_phi`` (the Chinchilla
    form). The one conversion from the fit's coordinates to coefficients (``Law.from_dict`` of it: a Law)."""
    e, a, alpha, b, beta, phi = (float(v) for v in theta)
    return {"E": float(np.exp(e)), "A": float(np.exp(a)), "alpha": alpha, "B": float(np.exp(b)),
            "beta": beta, "phi": phi if with_phi else None}


def bounds() -> dict[str, list[float]]:
    """The box as fit.json and compare-*.json record it: name → [lower, upper] on θ (see BOUNDS_NOTE)."""
    return {n: [float(LOWER[i]), float(UPPER[i])] for i, n in enumerate(PARAM_NAMES)}


def bound_value(name: str, side: str) -> float:
    """A bound of the box in reported coordinates (E, A, B: exp of the log bound); side lower | upper."""
    i = PARAM_NAMES.index(name)
    v = float(LOWER[i] if side == "lower" else UPPER[i])
    return math.exp(v) if name in LOG_FITTED else v


# ---------------------------------------------------------------------------------------------
# The objective: Huber on log-loss residuals, with its derivatives


@dataclass(frozen=True)
class FitData:
    """A runs table in the form the objective reads. ``weight`` = row multiplicity."""

    n_once: np.ndarray
    n_rec: np.ndarray
    r: np.ndarray
    log_tokens: np.ndarray
    log_loss: np.ndarray
    weight: np.ndarray
    log_r: np.ndarray = field(init=False, repr=False)
    log_r_unique: np.ndarray = field(init=False, repr=False)  # log of each distinct r
    r_index: np.ndarray = field(init=False, repr=False)  # row → its distinct r

    def __post_init__(self) -> None:
        ok = np.isfinite(self.log_tokens) & np.isfinite(self.log_loss) & (self.r >= 1)
        ok &= (self.n_once >= 0) & (self.n_rec >= 0) & (self.n_once + self.n_rec > 0)
        if not ok.all():
            raise UserError(f"{int((~ok).sum())} runs with invalid n_once/n_rec/r/tokens/loss; "
                            "leave them out first (loopscale.runs_table.usable_rows)")
        unique, index = np.unique(self.r, return_inverse=True)
        object.__setattr__(self, "log_r", np.log(self.r))
        object.__setattr__(self, "log_r_unique", np.log(unique))
        object.__setattr__(self, "r_index", index)

    @classmethod
    def from_arrays(cls, n_once, n_rec, r, tokens, loss, weight=None) -> "FitData":
        cols = [np.asarray(v, dtype=float) for v in (n_once, n_rec, r, tokens, loss)]
        w = np.ones(len(cols[0])) if weight is None else np.asarray(weight, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):  # bad rows are refused just below
            return cls(cols[0], cols[1], cols[2], np.log(cols[3]), np.log(cols[4]), w)

    @classmethod
    def from_table(cls, df) -> "FitData":
        return cls.from_arrays(df["n_once"], df["n_rec"], df["r"], df["tokens"], df["loss"])

    def __len__(self) -> int:
        return len(self.log_loss)

    def subset(self, rows) -> "FitData":
        """Rows by index; repeated indices become multiplicities (bootstrap draws)."""
        counts = np.bincount(np.asarray(rows, dtype=int), minlength=len(self)).astype(float)
        keep = counts > 0
        return FitData(self.n_once[keep], self.n_rec[keep], self.r[keep], self.log_tokens[keep],
                       self.log_loss[keep], counts[keep] * self.weight[keep])

    @property
    def phi_identifiable(self) -> bool:
        """φ only matters through rows that loop (r > 1) a block with parameters (N_rec > 0)."""
        return bool(np.any((self.r > 1) & (self.n_rec > 0)))


def log_prediction(theta: np.ndarray, data: FitData, jacobian: bool = False):
    """log L̂ (S, n) for each row of θ (S, 6) = (e, a, α, b, β, φ); with ``jacobian`` also
    ∂ log L̂ / ∂θ (S, 6, n)."""
    theta = np.atleast_2d(theta)
    e, a, alpha, b, beta, phi = (theta[:, i : i + 1] for i in range(6))
    r_phi = np.exp(phi * data.log_r_unique)[:, data.r_index]  # r^φ, once per distinct r
    loop = r_phi * data.n_rec  # r^φ·N_rec
    n_eff = data.n_once + loop
    log_n_eff = np.log(n_eff)
    # LSE(t1, t2, e) = log(e^t1 + e^t2 + e^e): the box keeps every term within float range
    # (t ≤ 35), so the sum is formed directly.
    term_n = np.exp(a - alpha * log_n_eff)  # A·N_eff^−α
    term_d = np.exp(b - beta * data.log_tokens)  # B·D^−β
    floor = np.exp(e)  # E
    pred = term_n + term_d + floor
    if not jacobian:
        return np.log(pred)
    J = np.empty((theta.shape[0], 6, len(data)))
    np.divide(floor, pred, out=J[:, 0])
    np.divide(term_n, pred, out=J[:, 1])
    np.multiply(J[:, 1], -log_n_eff, out=J[:, 2])
    np.divide(term_d, pred, out=J[:, 3])
    np.multiply(J[:, 3], -data.log_tokens, out=J[:, 4])
    np.multiply(J[:, 1], -alpha * (loop / n_eff) * data.log_r, out=J[:, 5])
    return np.log(pred), J


def evaluate(theta: np.ndarray, data: FitData, delta: float = HUBER_DELTA, need: int = 1, *,
             log_loss=None, weight=None, newton: bool = False):
    """The Huber objective of each row of θ (S, 6): f (S,); with need ≥ 1 also ∂f/∂θ (S, 6); with
    need = 2 also a curvature matrix (S, 6, 6) of the log-loss residuals ρ = log L̂ − log L:

    - ``newton`` False: the Gauss–Newton/IRLS matrix Σ w·ψ(ρ)/ρ·J Jᵀ (the fit's stage 1);
    - ``newton`` True: semismooth Newton, Σ w·(1{|ρ| ≤ δ} + 0.01·ψ(ρ)/ρ)·J Jᵀ: Gauss–Newton on the
      rows inside Huber's quadratic zone plus 1% of the IRLS matrix to keep it positive definite
      (plan's batched refits, which start near an optimum).

    ``log_loss`` and ``weight``: the observed log L and row weights, (n,) for every row of θ or
    (S, n) one per row of θ (many loss vectors on one design at once); default the data's own.
    """
    log_loss = data.log_loss if log_loss is None else log_loss
    weight = data.weight if weight is None else weight
    if need == 0:
        log_pred, J = log_prediction(theta, data), None
    else:
        log_pred, J = log_prediction(theta, data, jacobian=True)
    res = log_pred - log_loss
    absr = np.abs(res)
    quad = absr <= delta
    huber = np.where(quad, 0.5 * res * res, delta * (absr - 0.5 * delta))
    f = huber @ weight if np.ndim(weight) == 1 else np.sum(weight * huber, axis=1)
    if need == 0:
        return f
    psi = np.clip(res, -delta, delta) * weight
    g = np.matmul(J, psi[:, :, None])[:, :, 0]
    if need == 1:
        return f, g
    if newton:
        h = weight * np.where(quad, 1.01, 0.01 * delta / np.maximum(absr, 1e-300))
    else:
        h = weight * np.where(quad, 1.0, delta / np.maximum(absr, 1e-300))
    M = np.matmul(J * h[:, None, :], J.transpose(0, 2, 1))
    return f, g, M


def objective(theta, data: FitData, delta: float = HUBER_DELTA, grad: bool = False):
    """The Huber objective at θ = (e, a, α, b, β, φ) (one vector or a batch); with ``grad`` also
    its gradient."""
    out = evaluate(np.asarray(theta, dtype=float), data, delta, need=1 if grad else 0)
    if np.ndim(theta) == 1:
        return (float(out[0][0]), out[1][0]) if grad else float(out[0])
    return out


def predict_loss(theta, data: FitData) -> np.ndarray:
    """Predicted loss L̂ per row, nats."""
    e, a, alpha, b, beta, phi = np.asarray(theta, dtype=float)
    n_eff = data.n_once + data.r**phi * data.n_rec
    return np.exp(e) + np.exp(a) * n_eff**-alpha + np.exp(b) * np.exp(-beta * data.log_tokens)


def _scalar(x: np.ndarray):
    return float(x) if np.ndim(x) == 0 else x
