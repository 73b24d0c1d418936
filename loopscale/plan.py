"""`loopscale plan`: will a grid measure φ, or a probe's Δφ, before a GPU-hour is spent?

A grid (YAML, loopscale.grid) gives every run's n_once, n_rec, r, tokens D and FLOPs. Under a prior
law (the paper's coefficients, or a fit.json) the grid is simulated ``replicates`` times with
Gaussian noise of ``noise`` nats on each final loss, and every replicate is analysed as
`loopscale fit` would (method.md §5):

1. **Point fit**: :func:`loopscale.fit.fit_law` — the same Huber objective, box and multistart, but
   with ``starts`` random starts (default 8, plus fit's fixed grid of 24) and the true θ as a warm
   start, instead of 500 random starts. The true θ is near the optimum, so this finds the same
   optimum at a sixth of the cost.
2. **Bootstrap CI**: the same cell bootstrap as `fit` ((budget × r) blocks, :func:`bootstrap_plan`,
   ``bootstrap`` resamples, percentile 95% CI), but each resample is refitted by a semismooth
   Newton descent on the same objective and box (:func:`refit_many`), vectorised over every
   resample of every replicate and warm-started at the replicate's own optimum, where `fit` runs a
   multistart per resample: ≈0.3 ms a refit instead of ≈70 ms. Tests check it lands on `fit`'s
   bootstrap optima (to 1e-4 in φ; 1e-6 measured on the paper grid).

``phi_ci_width`` is the mean width of those per-replicate bootstrap CIs: the width `fit` would print
for this grid. Also reported: ``phi_ci_width_spread``, the central 95% range of φ̂ across
replicates (the true sampling spread of the estimator), and ``phi_ci_width_fisher``, the asymptotic
width ±1.96·sd from the Huber M-estimator's sandwich covariance at the true θ (no simulation).

Probes (method.md §6): for each probe in the grid, the probe's runs are simulated with φ + Δ and
their probe-none counterparts (the same budget, width, r and seed; taken from the grid, or built
from its settings when the grid only holds the probe) with φ; r = 1 runs are shared, with the same
noise. Both are fitted, and Δφ's CI comes from a paired cell bootstrap, as `compare` would do.

Suggestions: a greedy search over candidate cells (budget × width × r, each one more run) ranks them
by the fall of the sandwich variance of φ per training FLOP; the top pick is checked by simulation
(a thousand fresh replicates with and without it, refitted by :func:`refit_many` from the true θ).
Existing runs whose removal would widen the CI least per FLOP they cost are listed as carrying
little information.

Units: losses in nats, FLOPs are training FLOPs (counting.py), GPU-hours at peak TFLOP/s × MFU.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.special import erf

from loopscale.counting import ArchError, n_once, n_rec
from loopscale.errors import UserError
from loopscale.fit import (
    HUBER_DELTA,
    I_PHI,
    LOWER,
    UPPER,
    FitData,
    _cores,
    _map,
    bootstrap_plan,
    fit_law,
    log_prediction,
    percentile_ci,
    single_threaded_blas,
    unit_labels,
)
from loopscale.law import Law

Z95 = 1.959963984540054  # two-sided 95%
Z80 = 0.8416212335729143  # one-sided 80% power
H100_BF16_DENSE_TFLOPS = 989.0


# ---------------------------------------------------------------------------------------------
# The grid as a table of runs


def design_table(specs) -> pd.DataFrame:
    """Run specs (loopscale.grid.RunSpec) → one row per run with what the law and the cost need:
    n_once, n_rec (parameters), r, tokens (D), flops_per_token, flops (= tokens·flops_per_token),
    budget_flops (NaN for token budgets), width, probe, seed, run_id."""
    rows = [dict(run_id=s.run_id, budget_flops=np.nan if s.budget_flops is None else float(s.budget_flops),
                 width=s.d_model, r=s.r, probe=s.probe, seed=s.seed, n_once=float(s.n_once),
                 n_rec=float(s.n_rec), tokens=float(s.tokens), flops_per_token=float(s.flops_per_token),
                 flops=float(s.flops_per_token) * float(s.tokens)) for s in specs]
    return pd.DataFrame(rows)


def _run_row(cfg, run_id: str, budget) -> dict:
    """One design row from a RunConfig (for runs the grid does not list)."""
    f, t = cfg.flops_per_token(), cfg.tokens()
    return dict(run_id=run_id, budget_flops=np.nan if budget is None else float(budget), width=cfg.model.d_model,
                r=cfg.model.r, probe=cfg.model.probe, seed=cfg.train.seed, n_once=float(n_once(cfg.model)),
                n_rec=float(n_rec(cfg.model)), tokens=float(t), flops_per_token=float(f), flops=float(f) * float(t))


def _plain(cfg):
    """The probe-none version of a run (same width, r, budget, seed)."""
    model = dataclasses.replace(cfg.model, probe="none", tbptt_k=None)
    return dataclasses.replace(cfg, model=model)


def baseline_and_probes(grid) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], int]:
    """Split a grid into the baseline table (probe none) and one table per probe.

    A probe's table holds its own runs plus the r = 1 runs (no loop to change: shared with the
    baseline, as `fit --probe` reuses them). The baseline holds the grid's probe-none runs plus the
    probe-none counterpart of every probe run the grid lacks (built from the run's settings).
    Returns (baseline, {probe: table}, number of counterparts built)."""
    specs = list(grid.runs)
    plain = [s for s in specs if s.probe == "none"]
    base = design_table(plain)
    keys = {(s.budget_flops, s.config.train.tokens, s.d_model, s.r, s.seed) for s in plain}
    built = []
    for s in specs:
        key = (s.budget_flops, s.config.train.tokens, s.d_model, s.r, s.seed)
        if s.probe != "none" and key not in keys:
            keys.add(key)
            built.append(_run_row(_plain(s.config), f"{s.run_id}~none", s.budget_flops))
    if built:
        base = pd.concat([base, pd.DataFrame(built)], ignore_index=True)
    probes = {}
    for name in sorted({s.probe for s in specs if s.probe != "none"}):
        own = [s for s in specs if s.probe == name or (s.r == 1 and s.probe == "none")]
        probes[name] = design_table(own)
    return base, probes, len(built)


# ---------------------------------------------------------------------------------------------
# Cost


def gpu_hours(flops, peak_tflops: float = H100_BF16_DENSE_TFLOPS, mfu: float = 0.4):
    """Hours of one GPU running at peak_tflops·1e12·mfu FLOP/s."""
    return np.asarray(flops, dtype=float) / (peak_tflops * 1e12 * mfu) / 3600.0


def cost_summary(design: pd.DataFrame, peak_tflops: float = H100_BF16_DENSE_TFLOPS, mfu: float = 0.4) -> dict:
    """Total training FLOPs (Σ tokens·flops_per_token) and GPU-hours, per r and in all."""
    per_r = []
    for r, rows in design.groupby("r"):
        f = float(rows["flops"].sum())
        per_r.append({"r": int(r), "runs": len(rows), "flops": f, "gpu_hours": float(gpu_hours(f, peak_tflops, mfu))})
    total = float(design["flops"].sum())
    return {"total_flops": total, "gpu_hours": float(gpu_hours(total, peak_tflops, mfu)), "runs": len(design),
            "peak_tflops": peak_tflops, "mfu": mfu, "per_r": per_r}


# ---------------------------------------------------------------------------------------------
# The law and its Jacobian, batched over many θ and many loss vectors


def theta_of(law: Law) -> np.ndarray:
    """θ = (e, a, α, b, β, φ) as the fit parametrises it."""
    return np.array([math.log(law.E), math.log(law.A), law.alpha, math.log(law.B), law.beta, law.phi])


def fit_data(design: pd.DataFrame, loss=None) -> FitData:
    loss = np.ones(len(design)) if loss is None else loss
    return FitData.from_arrays(design["n_once"], design["n_rec"], design["r"], design["tokens"], loss)


def _huber(res: np.ndarray, weight: np.ndarray, delta: float) -> np.ndarray:
    absr = np.abs(res)
    return np.sum(weight * np.where(absr <= delta, 0.5 * res * res, delta * (absr - 0.5 * delta)), axis=1)


def _newton_terms(theta, data, log_loss, weight, delta):
    """Objective (P,), gradient (P, 6) and a semismooth Newton matrix (P, 6, 6): Gauss–Newton on
    the rows inside Huber's quadratic zone, plus 1% of the IRLS matrix (all rows, weight δ/|ρ|
    outside) to keep it positive definite. Near an optimum this converges in a few steps, where
    IRLS alone crawls."""
    log_pred, J = log_prediction(theta, data, jacobian=True)
    res = log_pred - log_loss
    absr = np.abs(res)
    quad = absr <= delta
    f = _huber(res, weight, delta)
    g = np.matmul(J, (weight * np.clip(res, -delta, delta))[:, :, None])[:, :, 0]
    h = weight * np.where(quad, 1.01, 0.01 * delta / np.maximum(absr, 1e-300))
    M = np.matmul(J * h[:, None, :], J.transpose(0, 2, 1))
    return f, g, M


def refit_many(theta0: np.ndarray, data: FitData, log_loss: np.ndarray, weight: np.ndarray,
               delta: float = HUBER_DELTA, max_iter: int = 300, ftol: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """Minimise the fit objective (Huber on log-loss residuals, the fit's box) for P problems at once.

    Problem p has losses ``log_loss[p]`` (n,), row weights ``weight[p]`` (n,) (bootstrap
    multiplicities) and start ``theta0[p]`` (a nearby optimum: warm start only). Projected
    semismooth Newton steps (:func:`_newton_terms`) with backtracking, on the box as stage 1 of
    loopscale.fit.multistart.
    Returns (θ (P, 6), converged (P,))."""
    x = np.clip(np.array(theta0, dtype=float), LOWER, UPPER)
    P = len(x)
    converged = np.zeros(P, dtype=bool)
    live = np.arange(P)
    f, g, M = _newton_terms(x, data, log_loss, weight, delta)
    eye = np.eye(6)
    for _ in range(max_iter):
        if live.size == 0:
            break
        xi, fi, gi, Mi, Li, Wi = x[live], f[live], g[live], M[live], log_loss[live], weight[live]
        held = ((xi <= LOWER) & (gi > 0)) | ((xi >= UPPER) & (gi < 0))
        F = (~held).astype(float)
        Mr = Mi * F[:, :, None] * F[:, None, :] + eye * (1.0 - F)[:, :, None]
        Mr += eye * (1e-12 * np.einsum("sii->s", Mr) + 1e-300)[:, None, None]
        d = -np.linalg.solve(Mr, (F * gi)[:, :, None])[:, :, 0] * F
        d *= np.minimum(1.0, 0.25 / np.max(np.abs(d) / (UPPER - LOWER), axis=1).clip(1e-300))[:, None]
        t = np.ones(len(live))
        x_new, f_new = xi.copy(), fi.copy()
        pending = np.arange(len(live))
        for _ in range(30):  # backtracking (Armijo) per problem
            if pending.size == 0:
                break
            xt = np.clip(xi[pending] + t[pending, None] * d[pending], LOWER, UPPER)
            ft = _huber(log_prediction(xt, data) - Li[pending], Wi[pending], delta)
            ok = ft <= fi[pending] + 1e-4 * np.einsum("si,si->s", gi[pending], xt - xi[pending])
            x_new[pending[ok]], f_new[pending[ok]] = xt[ok], ft[ok]
            pending = pending[~ok]
            t[pending] *= 0.5
        done = (fi - f_new) <= ftol * np.abs(fi)
        fn, gn, Mn = _newton_terms(x_new, data, Li, Wi, delta)
        x[live], f[live], g[live], M[live] = x_new, fn, gn, Mn
        converged[live[done]] = True
        live = live[~done]
    return x, converged


# ---------------------------------------------------------------------------------------------
# Asymptotic (sandwich) variance of φ


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
    return float(_sandwich_phi(A[None], B[None])[0])


def _sandwich_phi(A: np.ndarray, B: np.ndarray) -> np.ndarray:
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


# ---------------------------------------------------------------------------------------------
# Simulation


@dataclass
class Simulation:
    """φ̂ of each replicate and, when bootstrapped, its percentile 95% CI (NaN where a fit failed)."""

    phi: np.ndarray  # (R,)
    ci: np.ndarray | None  # (R, 2)
    converged: np.ndarray  # (R,) point fit converged
    boot_unconverged: int = 0


def simulate_losses(design: pd.DataFrame, law: Law, noise: float, replicates: int, seed) -> np.ndarray:
    """Losses (R, n) in nats: the law on the design plus N(0, noise²) per run and replicate."""
    clean = np.asarray(law.predict(design["n_once"], design["n_rec"], design["r"], design["tokens"]), dtype=float)
    rng = np.random.default_rng(seed)
    return clean + noise * rng.standard_normal((replicates, len(design)))


def point_fits(design: pd.DataFrame, losses: np.ndarray, law: Law, starts: int, seed: int,
               delta: float = HUBER_DELTA, workers: int | None = 1) -> tuple[np.ndarray, np.ndarray]:
    """fit_law on each replicate (warm start: the true θ); returns (θ (R, 6), converged (R,)).
    Results do not depend on ``workers`` (processes; None = all cores)."""
    truth = theta_of(law)
    tasks = [(design, k, loss, truth, starts, seed, delta) for k, loss in enumerate(losses)]
    thetas, ok = np.full((len(losses), 6), np.nan), np.zeros(len(losses), dtype=bool)
    for results in _parallel(_point_fit_chunk, tasks, workers):
        for k, theta, conv in results:
            thetas[k], ok[k] = theta, conv
    return thetas, ok


def _point_fit_chunk(tasks):
    out = []
    with single_threaded_blas():
        for design, k, loss, truth, starts, seed, delta in tasks:
            if not np.all(loss > 0):  # a non-positive loss: the fit would drop runs; counted as failed
                out.append((k, np.full(6, np.nan), False))
                continue
            f = fit_law(fit_data(design, loss), starts=starts, seed=[seed, 7, k], huber_delta=delta, warm=[truth])
            out.append((k, f.theta, f.converged))
    return out


def _parallel(fn, tasks, workers):
    """fn over interleaved chunks of tasks in ``workers`` processes (fit's pool); yields results."""
    workers = max(1, min(workers or _cores(), len(tasks)))
    n_chunks = min(len(tasks), workers * 4) if workers > 1 else 1
    yield from _map(fn, [tasks[i::n_chunks] for i in range(n_chunks)], workers)


def bootstrap_many(design_list: list[pd.DataFrame], losses_list: list[np.ndarray], thetas_list: list[np.ndarray],
                   n_resamples: int, seed: int, delta: float = HUBER_DELTA, workers: int | None = 1,
                   only=None, chunk: int = 2048):
    """Paired cell bootstrap of every replicate of one or more tables (the same unit draws for all
    tables and replicates, as `fit` pairs tables): φ of each refit, (tables, R, K), NaN where a
    resample cannot identify φ (no looped run, or fewer than 6 distinct runs: `fit` fails those
    too); and the number of refits that did not converge. ``only``: indices of the tables to refit
    (the others stay NaN), for reusing draws already made."""
    plan = bootstrap_plan([_labels(d) for d in design_list], n_resamples, seed)
    out = []
    unconverged = 0
    for t, (design, losses, thetas) in enumerate(zip(design_list, losses_list, thetas_list)):
        data = fit_data(design)
        n = len(design)
        if only is not None and t not in only:
            out.append(np.full((len(losses), n_resamples), np.nan))
            continue
        W = np.stack([np.bincount(plan[k][t], minlength=n) for k in range(n_resamples)]).astype(float)
        looped = ((data.r > 1) & (data.n_rec > 0)).astype(float)
        ok_w = ((W @ looped) > 0) & ((W > 0).sum(axis=1) >= 6)
        phi = np.full((len(losses), n_resamples), np.nan)
        kk, jj = np.meshgrid(np.flatnonzero(np.isfinite(thetas[:, 0])), np.flatnonzero(ok_w), indexing="ij")
        kk, jj = kk.ravel(), jj.ravel()
        tasks = [(data, thetas[kk[i:i + chunk]], np.log(losses[kk[i:i + chunk]]), W[jj[i:i + chunk]], delta, i)
                 for i in range(0, len(kk), chunk)]
        for results in _parallel(_refit_chunk, tasks, workers):
            for i, x, conv in results:
                phi[kk[i:i + len(x)], jj[i:i + len(x)]] = x[:, I_PHI]
                unconverged += int(np.sum(~conv))
        out.append(phi)
    return np.stack(out), unconverged


def _refit_chunk(tasks):
    with single_threaded_blas():
        return [(i, *refit_many(theta0, data, log_loss, w, delta)) for data, theta0, log_loss, w, delta, i in tasks]


def _labels(design: pd.DataFrame) -> np.ndarray:
    """Bootstrap units as `fit` draws them: (budget × r) cells; runs when budgets are in tokens
    (named by their design point, so that a probe's run pairs with its baseline run)."""
    if design["budget_flops"].notna().all():
        return unit_labels(design, "cells")
    return np.array([f"D{t:.6g}|r{r:g}|d{w:g}|s{s:g}" for t, r, w, s in
                     zip(design["tokens"], design["r"], design["width"], design["seed"])])


def _percentile_rows(samples: np.ndarray, level: float = 0.95) -> np.ndarray:
    """Row-wise percentile CI over finite values; NaN rows when fewer than 10 are finite."""
    out = np.full((len(samples), 2), np.nan)
    for k, row in enumerate(samples):
        if np.isfinite(row).sum() >= 10:
            out[k] = percentile_ci(row, level)
    return out


def spread_width(x: np.ndarray) -> float:
    """Central 95% range of the finite values (the sampling spread of an estimator)."""
    ci = percentile_ci(x)
    return float("nan") if ci is None else ci[1] - ci[0]


# ---------------------------------------------------------------------------------------------
# Candidate cells and the greedy search


def candidate_cells(grid, base: pd.DataFrame, probe: str = "none") -> pd.DataFrame:
    """Cells (budget × width × r, one probe-none run each) a researcher could add: every budget of
    the grid × every width it trains (at any budget) × every r the architecture allows up to
    2·max r, kept when tokens per parameter stay within the grid's own range. Budgets and widths
    are not extrapolated (the prior law is only trusted where the grid is). Existing cells are
    candidates too: another seed there. Looped candidates (r > 1) carry ``probe``; r = 1 ones none."""
    looped = [s.config for s in grid.runs if s.r > 1 and s.probe == probe]
    template = (looped or [grid.runs[0].config])[0]
    iso_flop = base["budget_flops"].notna().all()
    levels = sorted(set(base["budget_flops"] if iso_flop else base["tokens"]))
    widths = sorted(set(int(w) for w in base["width"]))
    r_max = 2 * int(base["r"].max())
    tpp = base["tokens"] / (base["n_once"] + base["n_rec"])
    tpp_lo, tpp_hi = float(tpp.min()), float(tpp.max())
    rows = []
    for level in levels:
        for w in widths:
            for r in range(1, r_max + 1):
                try:
                    p = probe if r > 1 else "none"
                    k = template.model.tbptt_k if p == "tbptt" else None
                    model = dataclasses.replace(template.model, d_model=int(w), r=r, probe=p, tbptt_k=k)
                except ArchError:
                    continue
                train = dataclasses.replace(template.train, budget_flops=level if iso_flop else None,
                                            tokens=None if iso_flop else int(level), seed=0)
                cfg = dataclasses.replace(template, model=model, train=train)
                if cfg.iterations() < 1:
                    continue
                row = _run_row(cfg, f"cand-{level:.3g}-d{w}-r{r}", level if iso_flop else None)
                if tpp_lo * (1 - 1e-9) <= row["tokens"] / (row["n_once"] + row["n_rec"]) <= tpp_hi * (1 + 1e-9):
                    rows.append(row)
    cand = pd.DataFrame(rows)
    if len(cand):
        key = ["budget_flops", "width", "r"] if iso_flop else ["tokens", "width", "r"]
        have = set(map(tuple, base[key].to_numpy().tolist()))
        cand["exists"] = [tuple(v) in have for v in cand[key].to_numpy().tolist()]
        cand["new_r"] = ~cand["r"].isin(set(base["r"]))
    return cand


def greedy_suggestions(base: pd.DataFrame, cand: pd.DataFrame, law: Law, noise: float, k: int = 5,
                       delta: float = HUBER_DELTA) -> list[dict]:
    """Add k cells one at a time, each the candidate that most lowers the sandwich variance of φ̂
    per training FLOP. Each pick records the predicted (Fisher) 95% CI width after it."""
    if k <= 0 or len(cand) == 0:
        return []
    J, a, b = information(base, law, noise, delta)
    Jc, ac, bc = information(cand, law, noise, delta)
    A = (J * a[:, None]).T @ J
    B = (J * b[:, None]).T @ J
    var = float(_sandwich_phi(A[None], B[None])[0])
    outer = np.einsum("ci,cj->cij", Jc, Jc)
    picks = []
    for _ in range(k):
        v = _sandwich_phi(A[None] + ac[:, None, None] * outer, B[None] + bc[:, None, None] * outer)
        gain = (var - v) / cand["flops"].to_numpy()
        j = int(np.argmax(gain))
        if not gain[j] > 0:
            break
        A, B = A + ac[j] * outer[j], B + bc[j] * outer[j]
        row = cand.iloc[j]
        picks.append({
            "budget_flops": None if np.isnan(row["budget_flops"]) else float(row["budget_flops"]),
            "tokens": float(row["tokens"]), "width": int(row["width"]), "r": int(row["r"]),
            "flops": float(row["flops"]), "exists": bool(row["exists"]), "new_r": bool(row["new_r"]),
            "fisher_width_before": 2 * Z95 * math.sqrt(var), "fisher_width_after": 2 * Z95 * math.sqrt(v[j]),
            "n_once": float(row["n_once"]), "n_rec": float(row["n_rec"]),
        })
        var = float(v[j])
    return picks


def low_information_runs(base: pd.DataFrame, law: Law, noise: float, k: int = 5,
                         delta: float = HUBER_DELTA, among=None) -> list[dict]:
    """The k runs whose removal widens the φ CI least per FLOP they cost (sandwich variance, leave
    one out); ``among``: run ids that may be listed (default: all)."""
    J, a, b = information(base, law, noise, delta)
    n = len(base)
    full = phi_variance(J, a, b)
    W = 1.0 - np.eye(n)
    A = np.einsum("pn,ni,nj->pij", W * a, J, J)
    B = np.einsum("pn,ni,nj->pij", W * b, J, J)
    v = _sandwich_phi(A, B)
    widen = np.sqrt(v / full) - 1.0  # relative CI widening when the run is dropped
    per_flop = widen / base["flops"].to_numpy()
    out = []
    allowed = np.ones(n, dtype=bool) if among is None else base["run_id"].isin(set(among)).to_numpy()
    for i in [i for i in np.argsort(per_flop, kind="stable") if allowed[i]][:k]:
        row = base.iloc[i]
        out.append({"run_id": str(row["run_id"]),
                    "budget_flops": None if np.isnan(row["budget_flops"]) else float(row["budget_flops"]),
                    "tokens": float(row["tokens"]), "width": int(row["width"]), "r": int(row["r"]),
                    "flops": float(row["flops"]), "ci_widening": float(widen[i])})
    return out


# ---------------------------------------------------------------------------------------------
# The whole plan


@dataclass
class PlanReport:
    doc: dict
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return _finite({**self.doc, "notes": self.notes})


def plan_grid(grid, law: Law, *, law_source: str = "paper", noise: float = 0.01, replicates: int = 100,
              bootstrap: int = 200, probe_delta: float = 0.07, seed: int = 0, starts: int = 8,
              peak_tflops: float = H100_BF16_DENSE_TFLOPS, mfu: float = 0.4, suggest: int = 5,
              delta: float = HUBER_DELTA, workers: int | None = None, progress=None) -> PlanReport:
    """Predict what fitting ``grid`` (loopscale.grid.Grid) will measure; see the module docstring.
    ``workers``: processes (default all cores; results do not depend on it).
    ``progress(stage, done, total)`` reports long work."""
    _check_args(noise, replicates, bootstrap, seed, starts, peak_tflops, mfu, suggest, delta)
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if not math.isfinite(probe_delta):
        raise UserError(f"--probe-delta must be a finite number, got {probe_delta}")
    say = progress or (lambda stage, done, total: None)
    t0 = time.perf_counter()
    notes: list[str] = []
    runs = design_table(grid.runs)
    base, probes, n_built = baseline_and_probes(grid)
    if n_built:
        notes.append(f"the probe's {n_built} probe-none counterparts (baseline runs for Δφ) are not in this grid; "
                     "they are assumed trained already (e.g. by the main grid) and are not in the cost")
    if not fit_data(base).phi_identifiable:
        raise UserError(f"{grid.name}: no run loops a block (all r = 1): phi cannot be measured on this grid")
    if len(base) < 6:
        raise UserError(f"{grid.name}: {len(base)} runs, fewer than the 6 parameters of the law")
    if not base["budget_flops"].notna().all():
        notes.append("token budgets (no FLOP budgets): the bootstrap resamples runs, as `fit` does")
    doc: dict = {"grid": grid.name, "path": None if grid.path is None else str(grid.path), "n_runs": len(runs),
                 "law": law.to_dict(), "law_source": law_source, "noise_nats": noise, "replicates": replicates,
                 "bootstrap": bootstrap, "starts": starts, "seed": seed, "huber_delta": delta}
    cost = cost_summary(runs, peak_tflops, mfu)
    doc.update(total_flops=cost["total_flops"], gpu_hours=cost["gpu_hours"], cost=cost)

    with single_threaded_blas():
        # φ on the baseline (probe none) runs
        losses = simulate_losses(base, law, noise, replicates, [seed, 1])
        say("fits", 0, replicates)
        thetas, ok = point_fits(base, losses, law, starts, seed, delta, workers)
        say("fits", replicates, replicates)
        phi = thetas[:, I_PHI]
        J, a, b = information(base, law, noise, delta)
        fisher = 2 * Z95 * math.sqrt(phi_variance(J, a, b))
        doc.update(_phi_summary(phi, law.phi, fisher, ok))
        if bootstrap > 0:
            say("bootstrap", 0, 1)
            boot, unconv = bootstrap_many([base], [losses], [thetas], bootstrap, seed, delta, workers)
            say("bootstrap", 1, 1)
            boot_phi = boot[0]
            ci = _percentile_rows(boot_phi)
            doc.update(_ci_summary(ci, law.phi, unconv, boot[0].size))
            doc["phi_ci_width"] = doc["phi_ci_width_bootstrap"]
            doc["phi_ci_width_method"] = (f"mean width of each replicate's percentile 95% cell-bootstrap CI "
                                          f"({bootstrap} resamples), as `fit` reports it")
        else:
            boot_phi = None
            ci = np.column_stack([phi - Z95 * np.nanstd(phi), phi + Z95 * np.nanstd(phi)])
            doc.update(_ci_summary(ci, law.phi, 0, 0))
            doc["phi_ci_width_bootstrap"] = None
            doc["phi_ci_width"] = doc["phi_ci_width_spread"]
            doc["phi_ci_width_method"] = ("central 95% range of phi across replicates (no bootstrap; the CIs "
                                          "for the exclusion chances are phi ± 1.96·sd across replicates)")

        # probes: Δφ with a paired bootstrap
        doc["probes"], probe_sims = {}, {}
        for i, (name, table) in enumerate(probes.items()):
            say(f"probe {name}", 0, 1)
            doc["probes"][name], probe_sims[name] = _probe_power(
                base, table, losses, thetas, boot_phi, law, noise, bootstrap, probe_delta, seed, i + 1, starts, delta,
                workers)
            say(f"probe {name}", 1, 1)

        # Which cells to add, which carry little: on the baseline when the grid loops plain runs,
        # else on the grid's probe (its own runs, simulated at φ + Δ above).
        target, t_law, t_probe = base, law, "none"
        if not ((runs["probe"] == "none") & (runs["r"] > 1)).any() and probes:
            t_probe = next(iter(probes))
            target, t_law = probe_sims[t_probe]
        doc["suggestions_for"] = t_probe
        cand = candidate_cells(grid, target, t_probe) if suggest > 0 else pd.DataFrame()
        picks = greedy_suggestions(target, cand, t_law, noise, suggest, delta)
        if picks:
            say("check top pick", 0, 1)
            picks[0]["simulated"] = check_pick(target, picks[0], t_law, noise, seed, delta=delta)
            say("check top pick", 1, 1)
        for pick in picks:
            pick["gpu_hours"] = float(gpu_hours(pick["flops"], peak_tflops, mfu))
        doc["suggestions"] = picks
        doc["low_information"] = (low_information_runs(target, t_law, noise, suggest, delta, among=runs["run_id"])
                                  if suggest > 0 else [])
    doc["n_baseline_runs"] = len(base)
    doc["seconds"] = time.perf_counter() - t0
    return PlanReport(doc, notes)


def _check_args(noise, replicates, bootstrap, seed, starts, peak_tflops, mfu, suggest, delta) -> None:
    if not (noise > 0 and math.isfinite(noise)):
        raise UserError(f"--noise must be a positive number of nats, got {noise}")
    if replicates < 10:
        raise UserError(f"--replicates must be at least 10, got {replicates}")
    if bootstrap != 0 and bootstrap < 20:
        raise UserError(f"--bootstrap must be 0 (none) or at least 20, got {bootstrap}")
    if seed < 0 or starts < 0 or suggest < 0:
        raise UserError("--seed, --starts and --suggest must be non-negative")
    if not (peak_tflops > 0 and math.isfinite(peak_tflops)):
        raise UserError(f"--peak-tflops must be positive, got {peak_tflops}")
    if not 0 < mfu <= 1:
        raise UserError(f"--mfu must be in (0, 1], got {mfu}")
    if not delta > 0:
        raise UserError(f"huber delta must be positive, got {delta}")


def _phi_summary(phi: np.ndarray, true_phi: float, fisher: float, ok: np.ndarray) -> dict:
    good = np.isfinite(phi)
    return {"phi_true": true_phi, "phi_mean": float(np.mean(phi[good])), "phi_median": float(np.median(phi[good])),
            "phi_sd": float(np.std(phi[good], ddof=1)), "phi_bias": float(np.mean(phi[good]) - true_phi),
            "phi_ci_width_spread": spread_width(phi), "phi_ci_width_fisher": fisher,
            "n_fits_failed": int(np.sum(~good)), "n_fits_unconverged": int(np.sum(good & ~ok))}


def _ci_summary(ci: np.ndarray, true_phi: float, unconverged: int, total: int) -> dict:
    good = np.all(np.isfinite(ci), axis=1)
    lo, hi = ci[good, 0], ci[good, 1]
    out = {"phi_ci_width_bootstrap": float(np.mean(hi - lo)), "phi_ci_mean": [float(np.mean(lo)), float(np.mean(hi))],
           "p_ci_excludes_0": float(np.mean(lo > 0)), "p_ci_excludes_1": float(np.mean(hi < 1)),
           "p_ci_covers_truth": float(np.mean((lo <= true_phi) & (true_phi <= hi)))}
    if total:
        out["bootstrap_refits"] = total
        out["bootstrap_unconverged"] = unconverged
    return out


def _probe_power(base, table, base_loss, tb, base_boot, law, noise, bootstrap, probe_delta, seed, stream, starts,
                 delta, workers) -> tuple[dict, tuple]:
    """The probe's runs simulated under φ + Δ beside the baseline replicates (φ; ``base_loss``,
    fitted θ ``tb``, bootstrap φ ``base_boot``), the r = 1 runs shared with their noise; Δφ's CI
    from a paired cell bootstrap (or ±1.96·sd across replicates). Returns the summary and
    (table, probe law)."""
    probe_law = dataclasses.replace(law, phi=law.phi + probe_delta)
    probe_loss = simulate_losses(table, probe_law, noise, len(base_loss), [seed, 2, stream])
    shared = table["run_id"].map({rid: i for i, rid in enumerate(base["run_id"])})
    has = shared.notna().to_numpy()
    probe_loss[:, has] = base_loss[:, shared[has].astype(int).to_numpy()]  # the same r = 1 runs
    tp, okp = point_fits(table, probe_loss, probe_law, starts, seed, delta, workers)
    d_phi = tp[:, I_PHI] - tb[:, I_PHI]
    good = np.isfinite(d_phi)
    sd = float(np.std(d_phi[good], ddof=1))
    out = {"delta_true": probe_delta, "n_runs": len(table), "n_shared_r1": int(has.sum()),
           "phi_probe_mean": float(np.nanmean(tp[:, I_PHI])), "phi_base_mean": float(np.nanmean(tb[:, I_PHI])),
           "delta_mean": float(np.mean(d_phi[good])), "delta_sd": sd,
           "delta_ci_width_spread": spread_width(d_phi),
           "min_detectable_delta": (Z95 + Z80) * sd,  # 80% power, two-sided 5%, from the spread
           "p_resolved_spread": float(np.mean(np.abs(d_phi[good]) > Z95 * sd)),
           "n_fits_unconverged": int(np.sum(np.isfinite(tp[:, 0]) & ~okp))}
    if bootstrap > 0:
        # The baseline's draws are the main bootstrap's when the probe adds no new cell (same plan).
        reuse = base_boot is not None and set(_labels(table)) <= set(_labels(base))
        boot, _ = bootstrap_many([base, table], [base_loss, probe_loss], [tb, tp], bootstrap, seed, delta,
                                 workers, only=(1,) if reuse else None)
        if reuse:
            boot[0] = base_boot
        ci = _percentile_rows(boot[1] - boot[0])
        okc = np.all(np.isfinite(ci), axis=1)
        out["delta_ci_width"] = float(np.mean(ci[okc, 1] - ci[okc, 0]))
        out["p_resolved"] = float(np.mean((ci[okc, 0] > 0) | (ci[okc, 1] < 0)))
        out["p_resolved_method"] = "paired bootstrap 95% CI of Δφ (the units `fit` resamples) excludes 0"
    else:
        out["delta_ci_width"] = 2 * Z95 * sd
        out["p_resolved"] = out["p_resolved_spread"]
        out["p_resolved_method"] = "|Δφ̂| > 1.96·sd of Δφ̂ across replicates (no bootstrap)"
    return out, (table, probe_law)


def check_pick(design: pd.DataFrame, pick: dict, law: Law, noise: float, seed, replicates: int = 1000,
               delta: float = HUBER_DELTA) -> dict:
    """Simulate ``replicates`` fresh replicates of ``design`` with and without the picked run (the
    same noise on the shared runs) and compare the sd of φ̂: the check of the sandwich prediction.
    Each replicate is refitted by :func:`refit_many` from the true θ (cheap enough for the
    thousand replicates a few-percent effect needs)."""
    row = {c: pick[c] for c in ("n_once", "n_rec", "r", "tokens", "width")}
    row.update(budget_flops=np.nan if pick["budget_flops"] is None else pick["budget_flops"], run_id="suggested")
    grown = pd.concat([design, pd.DataFrame([row])], ignore_index=True)
    losses = simulate_losses(grown, law, noise, replicates, [seed, 3])
    truth = np.repeat(theta_of(law)[None], replicates, axis=0)
    phis = []
    for d, loss in ((design, losses[:, :-1]), (grown, losses)):
        with np.errstate(invalid="ignore", divide="ignore"):
            x, _ = refit_many(truth, fit_data(d), np.log(loss), np.ones_like(loss), delta)
        phis.append(x[:, I_PHI])
    good = np.isfinite(phis[0]) & np.isfinite(phis[1])
    before, after = phis[0][good], phis[1][good]
    sd0, sd1 = float(np.std(before, ddof=1)), float(np.std(after, ddof=1))
    # Its Monte-Carlo error: the same ratio over replicates drawn with replacement.
    rng = np.random.default_rng([int(np.ravel(seed)[0]), 4])
    idx = rng.integers(0, len(before), (400, len(before)))
    ratios = np.std(after[idx], axis=1, ddof=1) / np.std(before[idx], axis=1, ddof=1)
    return {"replicates": int(good.sum()), "phi_sd_before": sd0, "phi_sd_after": sd1, "sd_ratio": sd1 / sd0,
            "sd_ratio_se": float(np.std(ratios, ddof=1)),
            "fisher_ratio": pick["fisher_width_after"] / pick["fisher_width_before"]}


def _finite(obj):
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj
