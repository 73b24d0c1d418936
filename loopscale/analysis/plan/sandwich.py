"""The asymptotic (sandwich) variance of φ̂: the Huber M-estimator's A⁻¹ B A⁻¹ at the true θ, built from
per-run terms, so that adding or dropping a run is a rank-one update (the suggestions rank cells by it)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.special import erf

from loopscale.analysis.defaults import HUBER_DELTA
from loopscale.analysis.law import I_PHI, Law, log_prediction, theta_of
from loopscale.analysis.plan.design import fit_data

Z95 = 1.959963984540054  # two-sided 95%
Z80 = 0.8416212335729143  # one-sided 80% power


def _huber_moments(sigma_log: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """E[ψ'(ε)] and E[ψ(ε)²] of Huber's ψ for ε ~ N(0, σ²), per row."""
    c = delta / np.maximum(sigma_log, 1e-300)
    inside = erf(c / math.sqrt(2.0))  # P(|z| ≤ c)
    pdf = np.exp(-0.5 * c * c) / math.sqrt(2.0 * math.pi)
    e_psi2 = sigma_log**2 * (inside - 2.0 * c * pdf) + delta**2 * (1.0 - inside)
    return inside, e_psi2


def information(design: pd.DataFrame, law: Law, noise: float, delta: float = HUBER_DELTA):
    """Per-row pieces of the Huber M-estimator's sandwich covariance at the true θ.

    Noise of ``noise`` nats on L is ≈ noise/L on log L. Returns (J (n, 6), a (n,), b (n,)) with
    A = Σ a·J Jᵀ (expected Hessian), B = Σ b·J Jᵀ (score covariance), Cov θ̂ ≈ A⁻¹ B A⁻¹."""
    data = fit_data(design)
    log_pred, J = log_prediction(theta_of(law)[None], data, jacobian=True)
    a, b = _huber_moments(noise / np.exp(log_pred[0]), delta)
    return J[0].T, a, b


def phi_variance(J: np.ndarray, a: np.ndarray, b: np.ndarray, weight=None) -> float:
    """Sandwich variance of φ̂ from :func:`information` rows (optionally weighted/subset)."""
    w = np.ones(len(a)) if weight is None else np.asarray(weight, dtype=float)
    A = (J * (w * a)[:, None]).T @ J
    B = (J * (w * b)[:, None]).T @ J
    return float(sandwich_phi(A[None], B[None])[0])


def sandwich_phi(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """(A⁻¹ B A⁻¹)[φ, φ] for a batch of 6×6 matrices; inf where A is singular."""
    out = np.full(len(A), np.inf)
    try:
        u = np.linalg.solve(A, np.broadcast_to(np.eye(6)[I_PHI], (len(A), 6))[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:
        u = np.stack([np.linalg.lstsq(m, np.eye(6)[I_PHI], rcond=None)[0] for m in A])
    v = np.einsum("pi,pij,pj->p", u, B, u)
    ok = np.isfinite(v) & (v > 0)
    out[ok] = v[ok]
    return out
