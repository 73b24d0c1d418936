"""Regime diagnostics: did the sweep train where the law can be trusted? (torch-free)

One implementation for `fit`, `compare`, `report` and `plan`:

- the iso-FLOP cells and where their minima lie: analysis.cells;
- :func:`seed_noise` — pooled seed-to-seed sd of runs identical except their seed.
- :func:`regime_diagnostics` — the cells, tokens per parameter, epochs of the data, parameters on
  the fit's box bounds, residual RMSE against seed noise, and a verdict (``trustworthy`` with one
  plain line per failed criterion in ``reasons``). Thresholds are the module constants below. The fit
  comes in as a :class:`FitSummary` (of a LawFit, or of a fit.json).
- the verdict and the cells in words and table rows: analysis.regime_text.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from loopscale.analysis.cells import MIN_WIDTHS, CellMinimum, cells_missed, table_cells
from loopscale.analysis.law import LOWER, PARAM_NAMES, UPPER, bound_value, theta_of
from loopscale.atomic import json_safe
from loopscale.data import identity
from loopscale.data.format import read_meta
from loopscale.fmt import finite

if TYPE_CHECKING:
    from loopscale.analysis.lawfit import LawFit

# --- thresholds of the verdict ---------------------------------------------------------------------
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
DATA_ID_COLUMNS = ("data_id", "data.data_id")  # the identity of the data a run trained on (result.json, config)
# Settings all runs of one fit must share. Runs that differ in one were trained by different recipes: e.g.
# a sweep folder holding runs of an older loopscale beside the new ones (their ids differ, so both stay).
RECIPE_COLUMNS = ("train.optimizer", "train.muon_ns", "train.seq_len", "train.batch_tokens", "train.betas",
                  "train.eps", "train.warmup_steps", "train.final_lr_frac", "train.grad_clip", "train.weight_decay",
                  "data.loader", "data", "data.eval_tokens", "vocab_size", "model.n_layers_eff",
                  "model.head_dim", "model.injection")


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
    """train_tokens of a prepared data dir (its metadata, loopscale.data.format), None when unknown."""
    try:
        meta = read_meta(Path(str(data_dir)).expanduser())
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


# --- the fit ---------------------------------------------------------------------------------------------

@dataclass
class FitSummary:
    """What the verdict reads of a fit: its estimate, R², residual RMSE, CIs and split-half refits."""

    theta: np.ndarray | None  # (e, a, α, b, β, φ), the fit's coordinates (analysis.law); None: unknown
    phi_free: bool  # φ was fitted (not held, not the Chinchilla form)
    r2: float | None
    rmse: float | None  # residual RMSE of L − L̂ over all runs, nats
    ci: dict = field(default_factory=dict)  # name → [lo, hi] | None, in reported coordinates
    split_half: dict = field(default_factory=dict)  # fit.json's split_half: low/high → phi (and ci)

    @classmethod
    def of(cls, fit: "LawFit", ci: dict | None = None, split_half: dict | None = None) -> "FitSummary":
        """A LawFit (analysis.lawfit), with the CIs and split-half refits made around it, if any."""
        rmse = fit.residuals.get("all", {}).get("rmse") if fit.residuals else None
        return cls(np.asarray(fit.theta, dtype=float), bool(fit.phi_fitted), finite(fit.r2), finite(rmse),
                   dict(ci or {}), dict(split_half or {}))

    @classmethod
    def from_json(cls, doc: dict) -> "FitSummary":
        """A fit.json written by `loopscale fit` (its params, r2, residuals, ci, split_half)."""
        p = doc.get("params") or {}
        try:
            theta = theta_of(p)
        except (KeyError, TypeError, ValueError):
            theta = None
        rmse = ((doc.get("residuals") or {}).get("all") or {}).get("rmse")
        free = p.get("phi") is not None and doc.get("phi_identifiable", True) is not False
        return cls(theta, free, finite(doc.get("r2")), finite(rmse), dict(doc.get("ci") or {}),
                   dict(doc.get("split_half") or {}))


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


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.3e}"


def _unset(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def data_of(table: pd.DataFrame) -> pd.Series | None:
    """Per run, the data it trained on by content: its recorded identity (data_id); for a run recorded before
    identities, the identity of its data dir now (``loopscale.data.identity``; the stale check keeps runs of
    re-prepared data out), else its path. None when the table names no data at all."""
    ids = [c for c in DATA_ID_COLUMNS if c in table]
    dirs = [c for c in DATA_DIR_COLUMNS if c in table]
    if not ids and not dirs:
        return None
    now: dict[str, str | None] = {}  # data dir -> its identity now (hashed once per dir)
    out: list[str | None] = []
    for i in range(len(table)):
        v = next((table[c].iloc[i] for c in ids if not _unset(table[c].iloc[i])), None)
        d = next((table[c].iloc[i] for c in dirs if not _unset(table[c].iloc[i])), None)
        if v is None and d is not None:
            if str(d) not in now:
                try:
                    now[str(d)] = identity.data_id(Path(str(d)).expanduser())
                except (OSError, ValueError):  # a meta.json without its token files: the path it is
                    now[str(d)] = None
            v = now[str(d)]
        out.append(f"data_id {str(v)[:12]}" if v is not None else None if d is None else str(d))
    return pd.Series(out, index=table.index, dtype=object)


def mixed_recipe(table: pd.DataFrame) -> dict[str, dict[str, int]]:
    """The RECIPE_COLUMNS whose value differs between the table's runs: column → {value: runs}.

    ``data`` is the data a run trained on by its identity (``data_of``: a moved sweep is one recipe; the same
    path re-prepared with other tokens is two). A value missing from a run's record is read as what it meant
    when the setting did not exist yet (``data.loader``: windows; ``train.muon_ns`` under muonh: quintic), else
    as "unset"."""
    out: dict[str, dict[str, int]] = {}
    optimizer = table["train.optimizer"] if "train.optimizer" in table else pd.Series([None] * len(table))
    for col in RECIPE_COLUMNS:
        column = data_of(table) if col == "data" else table[col] if col in table else None
        if column is None:
            continue
        values = []
        for v, opt in zip(column.tolist(), optimizer.tolist()):
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


def regime_diagnostics(table: pd.DataFrame, fit: FitSummary | None = None, *, seed_noise=None,
                       train_tokens=None) -> Diagnostics:
    """Diagnostics of a runs table and (optionally) its fit.

    ``table``: runs (n_once, n_rec, r, tokens, loss; budget_flops, probe, seed, run_id, data.dir used
    when present); rows without a finite loss are ignored. ``fit``: what the verdict reads of the fit
    (:class:`FitSummary`: ``FitSummary.of(law_fit, ci, split_half)``, ``FitSummary.from_json(doc)``,
    or ``FitReport.summary()``; None: only the design is judged). ``seed_noise``: a known seed-to-seed
    sd in nats (default: pooled from the table's seed repeats). ``train_tokens``: tokens of the
    training data (default: each run's data dir meta.json).
    """
    df = table.reset_index(drop=True)
    loss = pd.to_numeric(df["loss"], errors="coerce").to_numpy(dtype=float)
    df = df[np.isfinite(loss)].reset_index(drop=True)

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
    if fit is not None:
        if fit.theta is not None and np.all(np.isfinite(fit.theta)):
            hit = bounds_hit(fit.theta, fit.phi_free)
        deg = degenerate_cis(fit.ci)
        r2, rmse = fit.r2, fit.rmse
        phi_ci = fit.ci.get("phi") if fit.phi_free else None
        if phi_ci is not None and None not in phi_ci:
            phi_w = float(phi_ci[1] - phi_ci[0])
        split_ok = _split_half_ok(fit.split_half, phi_ci)

    checks: dict[str, bool | None] = {}
    reasons: list[str] = []
    notes: list[str] = []
    mixed = mixed_recipe(df)
    checks["one_recipe"] = not mixed
    if mixed:
        reasons.append(_mixed_reason(mixed))
    bound_values = {k: bound_value(k, s) for k, s in hit.items()}
    if fit is not None:
        checks["no_parameter_at_bound"] = not hit
        for name, side in hit.items():
            reasons.append(_bound_reason(name, side, bound_values[name]))
    checks["cells_bracketed"] = bool(judged) and bracketed >= BRACKETED_SHARE * len(judged)
    if not checks["cells_bracketed"]:
        reasons.append(_cells_reason(cells, judged, bracketed))
    if fit is not None:
        checks["r2"] = None if r2 is None else r2 >= MIN_R2
        if checks["r2"] is False:
            reasons.append(f"R² is {r2:.3f}, below {MIN_R2}: the law does not describe these losses well")
        checks["phi_ci_width"] = None if phi_w is None else phi_w < MAX_PHI_CI_WIDTH
        if checks["phi_ci_width"] is False:
            reasons.append(f"the 95% CI of φ is {phi_w:.2f} wide (at most {MAX_PHI_CI_WIDTH} wanted): φ is not pinned down")
        checks["split_half"] = split_ok
        if split_ok is False:
            reasons.append(f"φ refitted on the lower and the upper budgets disagrees ({_split_words(fit.split_half)}): "
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
