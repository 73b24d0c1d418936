"""A round's look at its runs, batched over designs (every replicate of a simulation at once, or the one design
of a sweep): the point fit, φ's cell-bootstrap CI, the split-half refits and the verdict's checks, as
`loopscale fit` makes them (analysis.fit, analysis.regime), on 0/1 masks over the space's universe.

Cheap by construction: the first fit is fit's multistart (analysis.lawfit.fit_law, ``starts`` random starts and
fit's fixed grid); every later fit, every bootstrap resample and both halves are refitted by plan's batched
semismooth Newton descent (analysis.plan.refit.refit_many) from the current optimum, where `fit` runs a
multistart per resample (plan's tests check they land on the same optima)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from loopscale.analysis.adaptive.rule import halves, split_ok
from loopscale.analysis.bootstrap import percentile_ci
from loopscale.analysis.cells import MIN_WIDTHS, cell_minima
from loopscale.analysis.defaults import HUBER_DELTA
from loopscale.analysis.law import I_PHI, log_prediction
from loopscale.analysis.lawfit import fit_law
from loopscale.analysis.plan.refit import refit_many
from loopscale.analysis.regime import BRACKETED_SHARE, MAX_PHI_CI_WIDTH, MIN_R2, bounds_hit

CHUNK = 1024  # refits per batch of refit_many


@dataclass
class Assessment:
    """Per design (R,): the fit θ (R, 6), φ's CI (R, 2) and width, split-half φs, R², and the checks."""

    theta: np.ndarray
    ci: np.ndarray
    width: np.ndarray  # NaN where the bootstrap could not give a CI
    phi_low: np.ndarray
    phi_high: np.ndarray
    r2: np.ndarray
    split_ok: np.ndarray  # bool; not computed is not a pass
    cells_ok: np.ndarray  # bool: ≥ 2/3 of the cells with ≥ 3 widths bracket their minimum (on the losses)
    bounds_ok: np.ndarray  # bool: no parameter on the box bound

    def trustworthy_but_width(self) -> np.ndarray:
        """Every check of the verdict that this look makes, but the width of φ's CI."""
        return self.split_ok & self.cells_ok & self.bounds_ok & (self.r2 >= MIN_R2)

    def trustworthy(self) -> np.ndarray:
        return self.trustworthy_but_width() & (self.width < MAX_PHI_CI_WIDTH)


def first_fits(data, masks: np.ndarray, log_loss: np.ndarray, starts: int, seed: int,
               delta: float = HUBER_DELTA) -> np.ndarray:
    """fit's multistart on each design (no warm start: a sweep knows no true θ). θ (R, 6)."""
    out = np.full((len(masks), 6), np.nan)
    for k, (m, ll) in enumerate(zip(masks, log_loss)):
        rows = np.flatnonzero(m)
        sub = data.__class__(data.n_once[rows], data.n_rec[rows], data.r[rows], data.log_tokens[rows], ll[rows],
                             np.ones(rows.size))
        out[k] = fit_law(sub, starts=starts, seed=[seed, 11, k], huber_delta=delta).theta
    return out


def refit(data, theta0: np.ndarray, log_loss: np.ndarray, weight: np.ndarray, delta: float = HUBER_DELTA):
    """refit_many in chunks of CHUNK problems; θ (P, 6)."""
    out = np.empty_like(theta0, dtype=float)
    for i in range(0, len(theta0), CHUNK):
        s = slice(i, i + CHUNK)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            out[s] = refit_many(theta0[s], data, log_loss[s], weight[s], delta)[0]
    return out


def identifiable(data, weight: np.ndarray) -> np.ndarray:
    """Per weight row: φ can be fitted (a looped row with parameters) and ≥ 6 distinct rows (as plan's bootstrap)."""
    looped = ((data.r > 1) & (data.n_rec > 0)).astype(float)
    return ((weight @ looped) > 0) & ((weight > 0).sum(axis=1) >= 6)


def assess(space, data, masks: np.ndarray, log_loss: np.ndarray, theta0: np.ndarray, resamples: int, seed,
           delta: float = HUBER_DELTA) -> Assessment:
    """Fit, bootstrap and judge R designs (``masks`` (R, n) bool over the universe; ``log_loss`` (R, n), any
    finite value outside the mask) from the starts ``theta0`` (R, 6). The cell bootstrap draws (budget × r)
    cells of each design with replacement, ``resamples`` times, as `fit` does."""
    R, n = masks.shape
    w = masks.astype(float)
    theta = refit(data, theta0, log_loss, w, delta)
    log_pred = log_prediction(theta, data)
    loss, pred = np.exp(log_loss), np.exp(log_pred)
    mean = (w * loss).sum(1) / w.sum(1)
    r2 = 1.0 - (w * (loss - pred) ** 2).sum(1) / (w * (loss - mean[:, None]) ** 2).sum(1)

    codes = space.cell_codes()
    rng = np.random.default_rng([int(np.ravel(seed)[0]), 12])
    W = np.zeros((R * resamples, n))
    for k in range(R):
        present = np.unique(codes[masks[k]])
        draws = rng.integers(0, present.size, (resamples, present.size))
        counts = np.zeros((resamples, codes.max() + 1))
        np.add.at(counts, (np.arange(resamples)[:, None], present[draws]), 1.0)
        W[k * resamples:(k + 1) * resamples] = counts[:, codes] * w[k]
    ok = identifiable(data, W)
    phi = np.full(R * resamples, np.nan)
    idx = np.flatnonzero(ok)
    rep = idx // resamples
    phi[idx] = refit(data, theta[rep], log_loss[rep], W[idx], delta)[:, I_PHI]
    phi = phi.reshape(R, resamples)
    ci = np.full((R, 2), np.nan)
    for k in range(R):
        if np.isfinite(phi[k]).sum() >= 10:
            ci[k] = percentile_ci(phi[k])
    width = ci[:, 1] - ci[:, 0]

    c = space.table["budget_flops"].to_numpy(dtype=float)
    Wh = np.zeros((2 * R, n))
    for k in range(R):
        low, high = halves(c[masks[k]])
        Wh[2 * k] = w[k] * np.isin(c, low)
        Wh[2 * k + 1] = w[k] * np.isin(c, high)
    okh = identifiable(data, Wh)
    phih = np.full(2 * R, np.nan)
    j = np.flatnonzero(okh)
    phih[j] = refit(data, theta[j // 2], log_loss[j // 2], Wh[j], delta)[:, I_PHI]
    phi_low, phi_high = phih[0::2], phih[1::2]
    split = np.array([split_ok(phi_low[k], phi_high[k], width[k]) for k in range(R)])

    nn = (space.table["n_once"] + space.table["n_rec"]).to_numpy(dtype=float)
    r = space.table["r"].to_numpy(dtype=float)
    cells_ok = np.zeros(R, dtype=bool)
    bounds_ok = np.zeros(R, dtype=bool)
    for k in range(R):
        m = masks[k]
        judged = [cm for cm in cell_minima(nn[m], loss[k, m], c[m], r[m]) if cm.n_widths >= MIN_WIDTHS]
        cells_ok[k] = bool(judged) and sum(cm.bracketed for cm in judged) >= BRACKETED_SHARE * len(judged)
        bounds_ok[k] = np.all(np.isfinite(theta[k])) and not bounds_hit(theta[k])
    return Assessment(theta=theta, ci=ci, width=width, phi_low=phi_low, phi_high=phi_high, r2=r2, split_ok=split,
                      cells_ok=cells_ok, bounds_ok=bounds_ok)
