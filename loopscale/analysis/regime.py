"""Regime diagnostics: did the sweep train where the law can be trusted? (torch-free)

One implementation for `fit`, `compare`, `report` and `plan`:

- :func:`cell_minima` — per iso-FLOP cell (budget × r × probe), a parabola L = a + b·x + c·x² in
  x = log N (N = N_once + N_rec, repeats of one width averaged first) and where its vertex lies
  relative to the widths trained: ``inside`` (bracketed), ``below`` the smallest, ``above`` the
  largest, ``flat`` (no positive curvature) or ``few`` (< 3 widths).
- :func:`seed_noise` — pooled seed-to-seed sd of runs identical except their seed.
- :func:`regime_diagnostics` — the cells, tokens per parameter, epochs of the data, parameters on
  the fit's box bounds, residual RMSE against seed noise, and a verdict (``trustworthy`` with one
  plain line per failed criterion in ``reasons``). Thresholds are the module constants below.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from loopscale.analysis.fit import LOG_FITTED, LOWER, UPPER
from loopscale.analysis.law import PARAM_NAMES
from loopscale.atomic import json_safe
from loopscale.fmt import finite, si

# --- thresholds of the verdict ---------------------------------------------------------------------
MIN_WIDTHS = 3  # widths a cell needs for a parabola
BRACKETED_SHARE = 2 / 3  # of the cells with >= MIN_WIDTHS widths, this share must bracket their optimum
MIN_R2 = 0.98
MAX_PHI_CI_WIDTH = 0.35  # 95% bootstrap CI of φ
SPLIT_HALF_FLOOR = 0.01  # split-half φs closer than this always agree (a zero-width CI of noise-free data)
MAX_RESID_TO_NOISE = 2.0  # residual RMSE of the fit at most this many seed-noise sds
AT_BOUND_TOL = 1e-4  # a parameter within this share of its box width from a bound is "at" it
CI_DEGENERATE_RTOL = 1e-6  # a CI narrower than this (relative) has zero width
# Tokens per parameter D / (N_once + N_rec) of the paper's 116 runs (runs_table.paper_design).
PAPER_TOKENS_PER_PARAM = (2.3, 187.0)
TOKENS_PER_PARAM_SLACK = 2.0  # a span reaching beyond the paper's by more than this factor is noted

DATA_DIR_COLUMNS = ("data.dir", "data_dir")
# Settings all runs of one fit must share. Runs that differ in one were trained by different recipes: e.g.
# a sweep folder holding runs of an older loopscale beside the new ones (their ids differ, so both stay).
RECIPE_COLUMNS = ("train.optimizer", "train.muon_ns", "train.seq_len", "train.batch_tokens", "train.betas",
                  "train.eps", "train.warmup_steps", "train.final_lr_frac", "train.grad_clip", "train.weight_decay",
                  "data.loader", "data.dir", "data.eval_tokens", "vocab_size", "model.n_layers_eff",
                  "model.head_dim", "model.injection")


# --- iso-FLOP cells --------------------------------------------------------------------------------

@dataclass(frozen=True)
class CellMinimum:
    """One (budget, r[, probe]) iso-FLOP cell and where its loss minimum over N lies."""

    budget: float  # FLOP budget C of the cell
    r: int
    probe: str
    n_widths: int  # distinct N values trained in the cell
    n_min: float  # smallest / largest N = N_once + N_rec trained
    n_max: float
    n_star: float | None  # parabola vertex in log N (None: < 3 widths or curvature <= 0)
    loss_star: float | None  # parabola value at the vertex
    curvature: float | None  # c of L = a + b·log N + c·log² N (None: < 3 widths)
    bracketed: bool  # vertex strictly inside (log n_min, log n_max) and curvature > 0
    where: str  # inside | below | above | flat | few
    n_runs: int = 0  # runs in the cell (repeats included)

    def to_dict(self) -> dict:
        return asdict(self)


def width_means(n, loss) -> tuple[np.ndarray, np.ndarray]:
    """The distinct N of a cell, sorted, and the mean loss at each (seed repeats averaged)."""
    widths, inverse = np.unique(np.asarray(n, dtype=float), return_inverse=True)
    return widths, np.bincount(inverse, weights=np.asarray(loss, dtype=float)) / np.bincount(inverse)


def parabola(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Least-squares parabola through (x, y) with x centred for conditioning: (x0, [c, b, a]) for
    y = a + b·(x − x0) + c·(x − x0)² (np.polyval order)."""
    x0 = float(np.mean(x))
    return x0, np.polyfit(x - x0, y, 2)


def _vertex(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least-squares parabola y = a + b·x + c·x² (:func:`parabola`): (c, x*, y*) with x* = −b/(2c) (NaN
    when c <= 0)."""
    x0, (c, b, a) = parabola(x, y)
    if not c > 0:
        return float(c), math.nan, math.nan
    xs = -b / (2 * c)
    return float(c), float(xs + x0), float(a + b * xs + c * xs * xs)


def one_cell(n, loss, budget: float, r: int, probe: str = "none") -> CellMinimum:
    """The minimum of one cell from its runs' N and losses (repeats of an N averaged)."""
    n = np.asarray(n, dtype=float)
    widths, mean = width_means(n, loss)
    base = dict(budget=float(budget), r=int(r), probe=str(probe), n_widths=len(widths),
                n_min=float(widths[0]), n_max=float(widths[-1]), n_runs=len(n))
    if len(widths) < MIN_WIDTHS:
        return CellMinimum(**base, n_star=None, loss_star=None, curvature=None, bracketed=False, where="few")
    x = np.log(widths)
    c, xs, ys = _vertex(x, mean)
    if not np.isfinite(xs):
        return CellMinimum(**base, n_star=None, loss_star=None, curvature=c, bracketed=False, where="flat")
    where = "inside" if x[0] < xs < x[-1] else "below" if xs <= x[0] else "above"
    return CellMinimum(**base, n_star=float(np.exp(xs)), loss_star=ys, curvature=c, bracketed=where == "inside",
                       where=where)


def cell_minima(n, loss, budget, r, probe=None) -> list[CellMinimum]:
    """Minima of every (budget, r, probe) cell; arrays of equal length. N is unique non-embedding
    parameters N_once + N_rec. Rows with a NaN budget or loss (token-budget runs, unfinished runs)
    belong to no cell. Sorted by probe, budget, r."""
    n, loss = np.asarray(n, dtype=float), np.asarray(loss, dtype=float)
    budget, r = np.asarray(budget, dtype=float), np.asarray(r, dtype=float)
    probe = np.full(len(n), "none", dtype=object) if probe is None else \
        np.array(["none" if p is None or (isinstance(p, float) and math.isnan(p)) else str(p) for p in probe], dtype=object)
    if not (len(n) == len(loss) == len(budget) == len(r) == len(probe)):
        raise ValueError("cell_minima: n, loss, budget, r and probe must have equal lengths")
    ok = np.isfinite(n) & (n > 0) & np.isfinite(loss) & np.isfinite(budget) & np.isfinite(r)
    keys = sorted({(probe[i], budget[i], r[i]) for i in np.flatnonzero(ok)})
    out = []
    for p, c, rr in keys:
        m = ok & (probe == p) & (budget == c) & (r == rr)
        out.append(one_cell(n[m], loss[m], c, int(rr), p))
    return out


def table_cells(table: pd.DataFrame) -> list[CellMinimum]:
    """:func:`cell_minima` of a runs table (n_once, n_rec, r, loss, budget_flops[, probe])."""
    if "budget_flops" not in table:
        return []
    return cell_minima(table["n_once"] + table["n_rec"], table["loss"], table["budget_flops"], table["r"],
                       table["probe"] if "probe" in table else None)


# --- seed noise --------------------------------------------------------------------------------------

def seed_noise(table: pd.DataFrame) -> dict:
    """Pooled sd of the loss over runs identical except ``seed`` (same probe, r, N, tokens and budget):
    sqrt(Σ (n_g − 1)·s_g² / Σ (n_g − 1)) over groups g with at least two seeds.

    Returns {"sd": float | None, "n_groups", "n_runs", "source": "repeats" | None, "groups": [...]}
    (sd None when no run is repeated with another seed)."""
    none = {"sd": None, "n_groups": 0, "n_runs": 0, "source": None, "groups": []}
    if "seed" not in table or len(table) == 0:
        return none
    df = table[np.isfinite(table["loss"].to_numpy(dtype=float)) & table["seed"].notna().to_numpy()].copy()
    if len(df) == 0:
        return none
    df["_n"] = df["n_once"] + df["n_rec"]
    df["_probe"] = df["probe"].fillna("none").astype(str) if "probe" in df else "none"
    df["_budget"] = df["budget_flops"].fillna(-1.0) if "budget_flops" in df else -1.0
    df["_tokens"] = df["tokens"].round(0)
    groups, num, den, n_runs = [], 0.0, 0, 0
    for (p, c, r, n, d), g in df.groupby(["_probe", "_budget", "r", "_n", "_tokens"], sort=True):
        if g["seed"].nunique() < 2:
            continue
        loss = g["loss"].to_numpy(dtype=float)
        sd = float(np.std(loss, ddof=1))
        num += (len(loss) - 1) * sd * sd
        den += len(loss) - 1
        n_runs += len(loss)
        groups.append({"probe": p, "budget": None if c < 0 else float(c), "r": int(r), "n": float(n),
                       "tokens": float(d), "n_seeds": int(g["seed"].nunique()), "n_runs": len(loss),
                       "mean": float(loss.mean()), "sd": sd, "spread": float(loss.max() - loss.min())})
    if not den:
        return none
    return {"sd": math.sqrt(num / den), "n_groups": len(groups), "n_runs": n_runs, "source": "repeats",
            "groups": groups}


# --- data epochs ---------------------------------------------------------------------------------------

def train_tokens_of(data_dir) -> int | None:
    """train_tokens of a prepared data dir (its meta.json; loopscale.data), None when unknown."""
    try:
        meta = json.loads((Path(str(data_dir)).expanduser() / "meta.json").read_text())
        v = meta.get("train_tokens") if isinstance(meta, dict) else None
        return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 else None
    except (OSError, ValueError, TypeError):
        return None


def _run_train_tokens(table: pd.DataFrame, train_tokens) -> np.ndarray:
    """Per run: train tokens of its data (NaN when unknown)."""
    if train_tokens is not None:
        return np.full(len(table), float(train_tokens))
    col = next((c for c in DATA_DIR_COLUMNS if c in table), None)
    if col is None:
        return np.full(len(table), np.nan)
    cache: dict[str, int | None] = {}
    out = []
    for d in table[col]:
        if d is None or (isinstance(d, float) and math.isnan(d)) or str(d).strip() == "":
            out.append(np.nan)
            continue
        if str(d) not in cache:
            cache[str(d)] = train_tokens_of(d)
        v = cache[str(d)]
        out.append(np.nan if v is None else float(v))
    return np.array(out, dtype=float)


# --- the fit, whichever form it comes in ---------------------------------------------------------------

@dataclass
class _FitView:
    theta: np.ndarray | None  # (e, a, α, b, β, φ), internal coordinates
    phi_free: bool
    r2: float | None
    rmse: float | None
    ci: dict  # name → [lo, hi] | None, in reported coordinates
    split_half: dict


def _view(fit, ci=None, split_half=None) -> _FitView | None:
    """A FitReport, a LawFit or a fit.json dict, read the same way."""
    if fit is None:
        return None
    if hasattr(fit, "fit") and hasattr(fit, "split_half"):  # FitReport
        rep = fit
        v = _view(rep.fit, rep.ci if ci is None else ci, rep.split_half if split_half is None else split_half)
        return v
    if hasattr(fit, "theta"):  # LawFit
        rmse = fit.residuals.get("all", {}).get("rmse") if fit.residuals else None
        return _FitView(np.asarray(fit.theta, dtype=float), bool(fit.phi_fitted), finite(fit.r2), finite(rmse),
                        dict(ci or {}), dict(split_half or {}))
    if isinstance(fit, dict):  # fit.json
        p = fit.get("params") or {}
        try:
            theta = np.array([math.log(p["E"]), math.log(p["A"]), p["alpha"], math.log(p["B"]), p["beta"],
                              0.0 if p.get("phi") is None else p["phi"]], dtype=float)
        except (KeyError, TypeError, ValueError):
            theta = None
        rmse = ((fit.get("residuals") or {}).get("all") or {}).get("rmse")
        free = p.get("phi") is not None and fit.get("phi_identifiable", True) is not False
        return _FitView(theta, free, finite(fit.get("r2")), finite(rmse), dict(ci or fit.get("ci") or {}),
                        dict(split_half or fit.get("split_half") or {}))
    raise TypeError(f"regime_diagnostics: cannot read a fit from {type(fit).__name__}")


def bounds_hit(theta, phi_free: bool = True) -> dict[str, str]:
    """{name: "lower" | "upper"} of the parameters whose estimate θ (internal coordinates: e, a, α,
    b, β, φ) lies within AT_BOUND_TOL of the box width from a bound; φ only when it was fitted."""
    out = {}
    theta = np.asarray(theta, dtype=float)
    tol = AT_BOUND_TOL * (UPPER - LOWER)
    for i, name in enumerate(PARAM_NAMES):
        if name == "phi" and not phi_free:
            continue
        if theta[i] <= LOWER[i] + tol[i]:
            out[name] = "lower"
        elif theta[i] >= UPPER[i] - tol[i]:
            out[name] = "upper"
    return out


def degenerate_cis(ci: dict) -> list[str]:
    """Names whose CI has zero width (every resample gave the same value, e.g. pinned at a bound)."""
    out = []
    for name in PARAM_NAMES:
        c = ci.get(name)
        if c is None or c[0] is None or c[1] is None:
            continue
        if abs(c[1] - c[0]) <= CI_DEGENERATE_RTOL * max(abs(c[0]), abs(c[1]), 1e-300):
            out.append(name)
    return out


# --- the verdict -----------------------------------------------------------------------------------------

@dataclass
class Diagnostics:
    """Where the sweep trained relative to the law's compute-optimal regime, and whether its fit can
    be trusted. ``to_json()`` is the ``diagnostics`` object of fit.json."""

    cells: list[dict]  # CellMinimum.to_dict() per cell
    cells_bracketed: int
    n_cells: int  # cells with >= MIN_WIDTHS widths
    tokens_per_param: list[float] | None  # [min, max] of D / (N_once + N_rec)
    epochs: list[float] | None  # [min, max] of D / train tokens of the data (None: unknown)
    per_run: list[dict]  # run_id, r, n, tokens, tokens_per_param, epochs (None: unknown)
    at_bounds: list[str]  # names among E, A, alpha, B, beta, phi
    bounds_hit: dict[str, str]  # name → lower | upper
    bound_values: dict[str, float]  # name → the bound, in reported coordinates (E, A, B: exp of the log bound)
    ci_degenerate: list[str]  # names whose bootstrap CI has zero width
    r2: float | None
    residual_rmse: float | None
    seed_noise: dict  # sd, n_groups, n_runs, source (repeats | given | None), groups
    phi_ci_width: float | None
    split_half_consistent: bool | None
    checks: dict[str, bool | None]  # criterion → passed (None: not checked)
    trustworthy: bool
    reasons: list[str]  # one line per failed criterion (then context for them)
    notes: list[str] = field(default_factory=list)  # context that does not decide the verdict
    thresholds: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return json_safe(asdict(self))



def thresholds() -> dict:
    return {"min_widths": MIN_WIDTHS, "bracketed_share": BRACKETED_SHARE, "min_r2": MIN_R2,
            "max_phi_ci_width": MAX_PHI_CI_WIDTH,
            "split_half_floor": SPLIT_HALF_FLOOR, "max_resid_to_noise": MAX_RESID_TO_NOISE,
            "at_bound_tol": AT_BOUND_TOL, "paper_tokens_per_param": list(PAPER_TOKENS_PER_PARAM)}


def _bound_value(name: str, side: str) -> float:
    i = PARAM_NAMES.index(name)
    v = float(LOWER[i] if side == "lower" else UPPER[i])
    return math.exp(v) if name in LOG_FITTED else v


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.3e}"


def _unset(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def mixed_recipe(table: pd.DataFrame) -> dict[str, dict[str, int]]:
    """The RECIPE_COLUMNS whose value differs between the table's runs: column → {value: runs}.

    A value missing from a run's record is read as what it meant when the setting did not exist yet
    (``data.loader``: windows; ``train.muon_ns`` under muonh: quintic), else as "unset"."""
    out: dict[str, dict[str, int]] = {}
    optimizer = table["train.optimizer"] if "train.optimizer" in table else pd.Series([None] * len(table))
    for col in RECIPE_COLUMNS:
        if col not in table:
            continue
        values = []
        for v, opt in zip(table[col].tolist(), optimizer.tolist()):
            if _unset(v):
                v = {"data.loader": "windows"}.get(col, "quintic" if col == "train.muon_ns" and opt == "muonh"
                                                   else "unset")
            values.append(str(v))
        counts = pd.Series(values).value_counts()
        if len(counts) > 1:
            out[col] = {k: int(n) for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))}
    return out


def _mixed_reason(mixed: dict[str, dict[str, int]]) -> str:
    parts = "; ".join(f"{col} " + ", ".join(f"{v} ×{n}" for v, n in counts.items()) for col, counts in mixed.items())
    return (f"the runs were trained by more than one recipe ({parts}): one law over them mixes recipes "
            "(runs of an older grid or loopscale left in the sweep folder? move their run folders aside)")


def regime_diagnostics(table: pd.DataFrame, fit=None, *, seed_noise=None, train_tokens=None, ci=None,
                       split_half=None) -> Diagnostics:
    """Diagnostics of a runs table and (optionally) its fit.

    ``table``: runs (n_once, n_rec, r, tokens, loss; budget_flops, probe, seed, run_id, data.dir used
    when present); rows without a finite loss are ignored. ``fit``: a fit.FitReport, a fit.LawFit or
    a fit.json dict (None: only the design is judged). ``seed_noise``: a known seed-to-seed sd in nats
    (default: pooled from the table's seed repeats). ``train_tokens``: tokens of the training data
    (default: each run's data dir meta.json). ``ci`` / ``split_half``: φ CI and split-half fits when
    ``fit`` is a bare LawFit.
    """
    df = table.reset_index(drop=True)
    loss = pd.to_numeric(df["loss"], errors="coerce").to_numpy(dtype=float)
    df = df[np.isfinite(loss)].reset_index(drop=True)
    view = _view(fit, ci, split_half)

    # cells
    cells = table_cells(df) if len(df) else []
    judged = [c for c in cells if c.n_widths >= MIN_WIDTHS]
    bracketed = sum(c.bracketed for c in judged)

    # tokens per parameter and epochs
    n = (df["n_once"] + df["n_rec"]).to_numpy(dtype=float)
    tokens = df["tokens"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        tpp = tokens / n
        ep = tokens / _run_train_tokens(df, train_tokens)
    ok_tpp = tpp[np.isfinite(tpp)]
    ok_ep = ep[np.isfinite(ep)]
    ids = df["run_id"].astype(str).tolist() if "run_id" in df else [f"row {i}" for i in range(len(df))]
    per_run = [{"run_id": ids[i], "r": float(df["r"].iloc[i]), "n": float(n[i]), "tokens": float(tokens[i]),
                "tokens_per_param": finite(tpp[i]), "epochs": finite(ep[i])} for i in range(len(df))]

    # noise
    noise = _seed_noise_of(df, seed_noise)

    # the fit
    hit, deg, r2, rmse, phi_w, split_ok = {}, [], None, None, None, None
    if view is not None:
        if view.theta is not None and np.all(np.isfinite(view.theta)):
            hit = bounds_hit(view.theta, view.phi_free)
        deg = degenerate_cis(view.ci)
        r2, rmse = view.r2, view.rmse
        phi_ci = view.ci.get("phi") if view.phi_free else None
        if phi_ci is not None and None not in phi_ci:
            phi_w = float(phi_ci[1] - phi_ci[0])
        split_ok = _split_half_ok(view.split_half, phi_ci)

    checks: dict[str, bool | None] = {}
    reasons: list[str] = []
    notes: list[str] = []
    mixed = mixed_recipe(df)
    checks["one_recipe"] = not mixed
    if mixed:
        reasons.append(_mixed_reason(mixed))
    bound_values = {k: _bound_value(k, s) for k, s in hit.items()}
    if view is not None:
        checks["no_parameter_at_bound"] = not hit
        for name, side in hit.items():
            reasons.append(_bound_reason(name, side, bound_values[name]))
    checks["cells_bracketed"] = bool(judged) and bracketed >= BRACKETED_SHARE * len(judged)
    if not checks["cells_bracketed"]:
        reasons.append(_cells_reason(cells, judged, bracketed))
    if view is not None:
        checks["r2"] = None if r2 is None else r2 >= MIN_R2
        if checks["r2"] is False:
            reasons.append(f"R² is {r2:.3f}, below {MIN_R2}: the law does not describe these losses well")
        checks["phi_ci_width"] = None if phi_w is None else phi_w < MAX_PHI_CI_WIDTH
        if checks["phi_ci_width"] is False:
            reasons.append(f"the 95% CI of φ is {phi_w:.2f} wide (at most {MAX_PHI_CI_WIDTH} wanted): φ is not pinned down")
        checks["split_half"] = split_ok
        if split_ok is False:
            reasons.append(f"φ refitted on the lower and the upper budgets disagrees ({_split_words(view.split_half)}): "
                           "φ drifts with scale")
        sd = noise["sd"]
        checks["residual_vs_noise"] = None if (sd is None or rmse is None) else rmse <= MAX_RESID_TO_NOISE * sd
        if checks["residual_vs_noise"] is False:
            reasons.append(f"residual RMSE {rmse:.4f} nats is {rmse / sd:.1f}× the seed-to-seed noise {sd:.4f} "
                           f"(at most {MAX_RESID_TO_NOISE:g}× wanted): the law misses structure in the losses")
    trustworthy = all(v is not False for v in checks.values())

    context = []
    if ok_tpp.size:
        lo, hi = float(ok_tpp.min()), float(ok_tpp.max())
        plo, phi_ = PAPER_TOKENS_PER_PARAM
        if lo < plo / TOKENS_PER_PARAM_SLACK or hi > phi_ * TOKENS_PER_PARAM_SLACK:
            context.append(f"tokens per parameter {_fmt(lo)}–{_fmt(hi)} (the paper's runs span {plo:g}–{phi_:g})")
    if ok_ep.size and ok_ep.max() > 1:
        context.append(f"runs repeat their training data: up to {ok_ep.max():.2g} epochs "
                       f"({int((ok_ep > 1).sum())} of {ok_ep.size} runs over one epoch)")
    if noise["sd"] is None:
        notes.append("seed noise unknown: no run is repeated with another seed, so the residual RMSE "
                     "cannot be compared with it")
    if trustworthy:
        notes = context + notes
    else:
        reasons += context
    return Diagnostics(
        cells=[c.to_dict() for c in cells], cells_bracketed=int(bracketed), n_cells=len(judged),
        tokens_per_param=[float(ok_tpp.min()), float(ok_tpp.max())] if ok_tpp.size else None,
        epochs=[float(ok_ep.min()), float(ok_ep.max())] if ok_ep.size else None, per_run=per_run,
        at_bounds=[k for k in PARAM_NAMES if k in hit], bounds_hit=hit, bound_values=bound_values, ci_degenerate=deg,
        r2=r2, residual_rmse=rmse, seed_noise=noise, phi_ci_width=phi_w, split_half_consistent=split_ok,
        checks=checks, trustworthy=bool(trustworthy), reasons=reasons, notes=notes, thresholds=thresholds())


def _seed_noise_of(df: pd.DataFrame, given) -> dict:
    if given is None:
        return seed_noise(df)
    if isinstance(given, dict):
        return given
    return {"sd": float(given), "n_groups": 0, "n_runs": 0, "source": "given", "groups": []}


def _split_half_ok(halves: dict, phi_ci) -> bool | None:
    """Each half's φ inside the other's CI. Halves that carry their own CI ("ci") are checked as they
    are; otherwise each half's CI is taken as the full fit's, widened by √2 (half the runs), around
    the half's φ, i.e. |φ_low − φ_high| ≤ √2·(CI width)/2, never tighter than SPLIT_HALF_FLOOR.
    None when there is nothing to check."""
    low, high = (halves or {}).get("low"), (halves or {}).get("high")
    if not low or not high or low.get("phi") is None or high.get("phi") is None:
        return None
    if low.get("ci") and high.get("ci"):
        inside = lambda v, c: c[0] - SPLIT_HALF_FLOOR <= v <= c[1] + SPLIT_HALF_FLOOR  # noqa: E731
        return bool(inside(low["phi"], high["ci"]) and inside(high["phi"], low["ci"]))
    if phi_ci is None or None in phi_ci:
        return None
    allowed = max(math.sqrt(2) * (phi_ci[1] - phi_ci[0]) / 2, SPLIT_HALF_FLOOR)
    return bool(abs(low["phi"] - high["phi"]) <= allowed)


def _split_words(halves: dict) -> str:
    return ", ".join(f"{k} φ = {v['phi']:.3g}" for k, v in halves.items() if v.get("phi") is not None)


WHY_BOUND = {
    ("E", "lower"): "the losses do not flatten within the trained range",
    ("E", "upper"): "the losses sit on a floor the law cannot separate from the size and data terms",
    ("alpha", "lower"): "the loss does not fall with model size in these runs",
    ("beta", "lower"): "the loss does not fall with training tokens in these runs",
    ("phi", "lower"): "looping adds nothing measurable, or the looped runs are out of regime",
    ("phi", "upper"): "the looped runs gain more than the law can express",
}


def _bound_reason(name: str, side: str, value: float) -> str:
    why = WHY_BOUND.get((name, side), "the data do not pin this parameter down")
    return f"{name} is at its {side} bound ({value:.4g}): {why}"


def _cells_reason(cells: list[CellMinimum], judged: list[CellMinimum], bracketed: int) -> str:
    if not judged:
        if not cells:
            return ("no iso-FLOP cells (no budget_flops): cannot check that the trained widths bracket the "
                    "compute-optimal width")
        return (f"no iso-FLOP cell has {MIN_WIDTHS} or more widths: cannot check that the trained widths bracket "
                "the compute-optimal width (train more widths per budget)")
    tail = cells_missed(judged)
    return f"{bracketed}/{len(judged)} iso-FLOP cells bracket their optimum" + (f": {tail}" if tail else "")


def cells_missed(judged: list[CellMinimum]) -> str:
    """Where the cells that do not bracket their optimum miss it, and what to train instead, in one
    clause ("" when every cell brackets it). Shared by the fit's verdict and plan's warning."""
    where = {w: sum(c.where == w for c in judged) for w in ("below", "above", "flat")}
    parts = []
    if where["below"]:
        parts.append(f"the compute-optimal width lies below the smallest width trained in {_cells(where['below'])} "
                     "(train narrower models or larger budgets)")
    if where["above"]:
        parts.append(f"the compute-optimal width lies above the largest width trained in {_cells(where['above'])} "
                     "(train wider models or smaller budgets)")
    if where["flat"]:
        parts.append(f"{_cells(where['flat'])} show no minimum (loss not convex in log N)")
    return "; ".join(parts)


def _cells(k: int) -> str:
    return "1 cell" if k == 1 else f"{k} cells"


# --- words and table rows, shared by `fit`, `compare`, `report` (diagnostics as their JSON dict) -------

CELL_COLUMNS = ("budget", "r", "widths", "N trained", "N*", "L*", "where")
WHERE_WORDS = {"inside": "inside (bracketed)", "below": "below smallest N", "above": "above largest N",
               "flat": "no minimum", "few": "< 3 widths"}


def verdict_line(diag: dict) -> str:
    """'trustworthy' or 'NOT trustworthy (k reasons)', with the bracketed-cell count."""
    cells = f"{diag['cells_bracketed']}/{diag['n_cells']} iso-FLOP cells bracketed"
    if diag["trustworthy"]:
        return f"trustworthy: the fit passed every regime check ({cells})"
    k = sum(v is False for v in diag["checks"].values())
    return f"NOT trustworthy: {k} regime check{'s' if k != 1 else ''} failed ({cells})"


def ci_text(name: str, value, ci, diag: dict | None, fmt) -> str:
    """A parameter's CI for people: '—' without one; 'at lower bound (0.0498)' when the estimate sits on
    a bound and the CI has zero width there; '[lo, hi] (estimate at lower bound)' when only the estimate
    does. ``fmt`` formats one number."""
    side = (diag or {}).get("bounds_hit", {}).get(name)
    degenerate = name in (diag or {}).get("ci_degenerate", [])
    if side and (degenerate or ci is None):
        return f"at {side} bound ({fmt(value)})"
    if ci is None:
        return "—"
    if degenerate:
        return f"zero width ({fmt(ci[0])})"
    text = f"[{fmt(ci[0])}, {fmt(ci[1])}]"
    return text + (f" (estimate at {side} bound)" if side else "")


def cell_rows(diag: dict, with_probe: bool | None = None) -> tuple[list[str], list[list[str]]]:
    """(columns, rows) of the cell-minima table; a probe column when the cells hold several probes."""
    cells = diag["cells"]
    if with_probe is None:
        with_probe = len({c["probe"] for c in cells}) > 1
    cols = (["probe"] if with_probe else []) + list(CELL_COLUMNS)
    rows = []
    for c in cells:
        rows.append(([c["probe"]] if with_probe else []) + [
            f"{c['budget']:.3g}".replace("e+", "e"), str(c["r"]), str(c["n_widths"]),
            f"{si(c['n_min'])}–{si(c['n_max'])}", si(c["n_star"]) if c["n_star"] is not None else "—",
            f"{c['loss_star']:.4f}" if c["loss_star"] is not None else "—", WHERE_WORDS.get(c["where"], c["where"])])
    return cols, rows


def noise_line(diag: dict) -> str:
    """Residual RMSE beside the seed-to-seed noise, in words."""
    rmse, noise = diag.get("residual_rmse"), diag["seed_noise"]
    left = "residual RMSE —" if rmse is None else f"residual RMSE {rmse:.4f} nats"
    if noise["sd"] is None:
        return f"{left}; seed noise unknown (no run repeated with another seed)"
    src = (f"pooled over {noise['n_groups']} repeated design point{'s' if noise['n_groups'] != 1 else ''}, "
           f"{noise['n_runs']} runs") if noise["source"] == "repeats" else "as given"
    ratio = f" (ratio {rmse / noise['sd']:.2g})" if rmse is not None and noise["sd"] > 0 else ""
    return f"{left} vs seed noise {noise['sd']:.4f} nats, {src}{ratio}"
