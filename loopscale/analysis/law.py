"""The joint recurrence scaling law (method.md §1), pure numpy.

    L(N_once, N_rec, r, D) = E + A · (N_once + r^φ · N_rec)^(−α) + B · D^(−β)

Units: parameter counts are unique non-embedding parameters, D is training tokens, L is the final
validation loss in nats/token. Coefficients are stored at full precision; round only on screen.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from loopscale.errors import UserError

FORMULA = "L = E + A*(N_once + r^phi*N_rec)^(-alpha) + B*D^(-beta)"  # ASCII, as fit.json records it
FORMULA_TEXT = "L = E + A·(N_once + r^φ·N_rec)^−α + B·D^−β"  # the same law for people: screen and report
PARAM_NAMES = ("E", "A", "alpha", "B", "beta", "phi")  # the coefficients, in this order everywhere (θ of the fit)
FIT_FILE = "fit.json"  # what `loopscale fit` writes and load_law reads


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


def _scalar(x: np.ndarray):
    return float(x) if np.ndim(x) == 0 else x
