"""What a training change does to φ (method.md §6): `loopscale compare --probe NAME`.

A probe is a named model/training variant (loopscale.probes) run on the looped cells (r > 1) of an
iso-FLOP grid; its r = 1 runs are the baseline's (at r = 1 there is no loop to change). The law is
fitted twice with the same objective, bounds and number of starts (analysis.lawfit): to the baseline runs and to the
probe runs, each with the same shared r = 1 runs, on the (budget × r) cells both have. Then:

- φ with a percentile CI for each, and Δφ = φ_probe − φ_baseline with a *paired* block bootstrap: each
  resample draws (budget × r) cells once and refits both tables on them, so the shared r = 1 runs and
  the cell-to-cell design variation cancel in Δφ;
- a two-sided bootstrap p-value for Δφ = 0 (see :func:`bootstrap_p_value`);
- the validation-loss change at matched compute per r (nats; same budget, r and width);
- the token-side gain D_probe / D_baseline per matched run: at a FLOP budget a probe that charges
  fewer FLOPs per token (tbptt: detached recurrences cost forward only) trains on more tokens;
- one sentence on which moved, capacity (φ) or tokens. Loss can fall while φ falls (tbptt in the
  paper: φ 0.453 → 0.38 at ≈1.3× the tokens): that gain is token-side, not a better loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from loopscale.analysis.bootstrap import BootstrapDraws, bootstrap_fits, bootstrap_plan, percentile_ci, unit_labels
from loopscale.analysis.defaults import BOOTSTRAP, HUBER_DELTA, SEED, STARTS
from loopscale.analysis.law import BOUNDS_NOTE, FORMULA, I_PHI, PARAM_NAMES, FitData, bounds
from loopscale.analysis.lawfit import LawFit, fit_law
from loopscale.analysis.parallel import single_threaded_blas
from loopscale.analysis.regime import Diagnostics, FitSummary, regime_diagnostics
from loopscale.atomic import json_safe
from loopscale import probes
from loopscale.errors import UserError
from loopscale.runs_table import BAD_STATUS, UNFINISHED, usable_rows

MIN_CELLS = 4  # (budget × r) cells per fit for a bootstrap: fewer and most resamples repeat one cell
MIN_LOOPED_CELLS = 2  # of which looped (r > 1): φ must stay identifiable in most resamples
TOKEN_SIDE = 0.05  # a median token ratio further than this from 1 counts as a token-side change
# (hyperconn charges (K²+2K)·d instead of 2d² for the injection: ≈1.02× the tokens, not a token-side gain)
P_VALUE_METHOD = ("two-sided bootstrap p-value: 2·min(share of resamples with Δφ* ≤ 0, share with Δφ* ≥ 0), "
                  "each share counted as (k + 1)/(n + 1) over the n resamples where both refits have φ")


# ---------------------------------------------------------------------------------------------
# The two tables


@dataclass
class Tables:
    """The runs each fit reads: ``baseline`` and ``probe`` share their r = 1 rows and their cells."""

    baseline: pd.DataFrame
    probe: pd.DataFrame
    n_shared: int  # r = 1 runs in both
    cells: list[tuple[float, int]]  # (budget_flops, r) cells both tables cover, sorted
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_probe_name(name: str, flag: str) -> None:
    try:
        probes.lookup(name)
    except probes.UnknownProbe as e:
        raise UserError(f"{flag}: {e}") from None


def split_tables(df: pd.DataFrame, probe: str, baseline: str = "none") -> Tables:
    """Baseline and probe runs of a runs table (a ``probe`` column; missing = none), restricted to the
    (budget × r) cells both have, each with the r = 1 runs of those budgets (labelled none, baseline or probe).

    Raises UserError for an unknown probe, a probe (or baseline) with no looped runs, runs whose results
    are not in yet, and tables without FLOP budgets.
    """
    check_probe_name(probe, "--probe")
    check_probe_name(baseline, "--baseline")
    if probe == baseline:
        raise UserError(f"--probe and --baseline are both {probe!r}; compare a probe with another")
    labels = df["probe"].fillna("none").astype(str) if "probe" in df.columns else pd.Series("none", index=df.index)
    looped = (df["r"] > 1).to_numpy()
    have = sorted(set(labels[looped])) or ["none"]
    for name, role in ((probe, "probe"), (baseline, "baseline")):
        if not (looped & (labels == name).to_numpy()).any():
            hint = " (the table has no probe column)" if "probe" not in df.columns else ""
            raise UserError(f"no looped (r > 1) runs with {role} {name!r}{hint}; looped runs there have probe "
                            f"{', '.join(have)}")
    # r = 1 runs are plain models whatever their label (a grid files them under none): shared by both.
    mine = (labels.isin((probe, baseline)) | ((df["r"] == 1) & (labels == "none"))).to_numpy()
    df, labels = df[mine], labels[mine]
    if "run_id" in df.columns:  # an r = 1 run listed once per probe is still one run
        once = ~(df["run_id"].notna() & df["run_id"].duplicated() & (df["r"] == 1)).to_numpy()
        df, labels = df[once], labels[once]
    df, labels = df.reset_index(drop=True).assign(probe=labels.to_numpy()), labels.reset_index(drop=True)
    for name, role in ((probe, "probe"), (baseline, "baseline")):
        _check_collected(df[((df["r"] > 1) & (labels == name)).to_numpy()], name, role)
    if "budget_flops" not in df.columns or df["budget_flops"].isna().any():
        raise UserError("compare needs budget_flops on every run: it pairs baseline and probe by (budget × r) "
                        "cell, so the runs must come from an iso-FLOP grid (`flops:`)")

    runs, warnings = usable_rows(df)
    labels = runs["probe"]
    is_r1 = (runs["r"] == 1).to_numpy()
    cell = list(zip(runs["budget_flops"], runs["r"].astype(int)))
    cells = {name: {c for c, lab, one in zip(cell, labels, is_r1) if lab == name and not one}
             for name in (baseline, probe)}
    common = cells[baseline] & cells[probe]
    if not common:
        raise UserError(f"baseline {baseline!r} and probe {probe!r} have no (budget × r) cell with usable runs "
                        "in common")
    budgets = {c for c, _ in common}
    keep_loop = np.array([c in common and not one for c, one in zip(cell, is_r1)])
    keep_r1 = is_r1 & runs["budget_flops"].isin(budgets).to_numpy()
    notes = []
    for name, role in ((baseline, "baseline"), (probe, "probe")):
        extra = sorted(cells[name] - common)
        if extra:
            n = int((~keep_loop & ~is_r1 & (labels == name).to_numpy()).sum())
            notes.append(f"{role} {name}: left out {n} run(s) in {len(extra)} cell(s) the other side lacks: "
                         + ", ".join(f"C {c:.3g} r {r}" for c, r in extra))
    dropped_r1 = int((is_r1 & ~keep_r1).sum())
    if dropped_r1:
        notes.append(f"left out {dropped_r1} r = 1 run(s) at budgets without looped cells in both")
    shared = runs[keep_r1]
    base = pd.concat([shared, runs[keep_loop & (labels == baseline).to_numpy()]], ignore_index=True)
    prob = pd.concat([shared, runs[keep_loop & (labels == probe).to_numpy()]], ignore_index=True)
    r1_cells = [(float(b), 1) for b in sorted(shared["budget_flops"].unique())]
    return Tables(base, prob, len(shared), r1_cells + sorted(common), warnings, notes)


def _check_collected(rows: pd.DataFrame, name: str, role: str) -> None:
    """Every looped run of one side has a result, or raise: 'not collected yet'."""
    loss = pd.to_numeric(rows["loss"], errors="coerce").to_numpy(dtype=float)
    if np.isfinite(loss).any():
        return
    status = rows["status"].fillna("").astype(str).str.lower() if "status" in rows.columns else None
    if status is not None and status.isin(UNFINISHED).any():
        counts = status.value_counts()
        shown = ", ".join(f"{n} {s}" for s, n in counts.items())
        raise UserError(f"the {len(rows)} looped runs of {role} {name!r} have no results yet ({shown}); wait for "
                        "the sweep to finish (`loopscale status`) or collect it (`loopscale collect`), then compare")
    if status is not None and status.isin(BAD_STATUS).all():
        raise UserError(f"every looped run of {role} {name!r} failed, diverged or is stale; nothing to fit")
    raise UserError(f"the {len(rows)} looped runs of {role} {name!r} have no loss yet; collect their results first")


# ---------------------------------------------------------------------------------------------
# Matched compute: loss change and token ratio


def matched_runs(tables: Tables) -> pd.DataFrame:
    """Looped runs present on both sides at the same budget, r and width (and seed where both have
    one): budget_flops, r, width, loss and tokens of each side."""
    keys = ["budget_flops", "r", "width"]
    if "width" not in tables.baseline or "width" not in tables.probe:
        return pd.DataFrame(columns=keys + ["loss_baseline", "loss_probe", "tokens_baseline", "tokens_probe"])
    if all(t["seed"].notna().all() if "seed" in t else False for t in (tables.baseline, tables.probe)):
        keys.append("seed")
    sides = []
    for name, t in (("baseline", tables.baseline), ("probe", tables.probe)):
        t = t[t["r"] > 1]
        t = t.groupby(keys, as_index=False)[["loss", "tokens"]].mean()  # repeated seeds: their mean
        sides.append(t.rename(columns={"loss": f"loss_{name}", "tokens": f"tokens_{name}"}))
    return sides[0].merge(sides[1], on=keys).sort_values(keys).reset_index(drop=True)


def loss_change(tables: Tables, matched: pd.DataFrame) -> dict[str, dict]:
    """Per r (and "all"): validation-loss change probe − baseline at matched compute, nats.

    ``mean``/``median``: over runs matched by budget and width; ``best``: mean over cells of the
    change in the cell's lowest loss (the compute-optimal run of each side at that budget)."""
    out = {}
    best = {}
    for (c, r) in [cell for cell in tables.cells if cell[1] > 1]:
        lo = [t[(t["budget_flops"] == c) & (t["r"] == r)]["loss"].min() for t in (tables.baseline, tables.probe)]
        best.setdefault(r, []).append(lo[1] - lo[0])
    d = (matched["loss_probe"] - matched["loss_baseline"]).to_numpy(dtype=float)
    rs = matched["r"].to_numpy()
    for r in sorted(best):
        m = rs == r
        out[str(int(r))] = _change(d[m], best[r])
    out["all"] = _change(d, [v for r in sorted(best) for v in best[r]])
    return out


def _change(delta: np.ndarray, best: list[float]) -> dict:
    return {"n_runs": int(delta.size), "n_cells": len(best),
            "mean": float(np.mean(delta)) if delta.size else None,
            "median": float(np.median(delta)) if delta.size else None,
            "best": float(np.mean(best)) if best else None}


def token_gain(matched: pd.DataFrame) -> dict | None:
    """D_probe / D_baseline of the matched runs: median (all and per r), min, max. At the same FLOP
    budget this is the inverse ratio of FLOPs per token (tbptt: ≈1.3 on the paper's grid)."""
    if matched.empty:
        return None
    ratio = (matched["tokens_probe"] / matched["tokens_baseline"]).to_numpy(dtype=float)
    rs = matched["r"].to_numpy()
    return {"median": float(np.median(ratio)), "min": float(ratio.min()), "max": float(ratio.max()),
            "n_runs": int(ratio.size),
            "per_r": {str(int(r)): float(np.median(ratio[rs == r])) for r in np.unique(rs)}}


# ---------------------------------------------------------------------------------------------
# Inference on Δφ


def bootstrap_p_value(delta: np.ndarray) -> float | None:
    """Two-sided bootstrap p-value for Δφ = 0 from the paired resamples Δφ*: twice the smaller share
    of resamples on either side of 0, shares counted as (k + 1)/(n + 1) so that a finite number of
    resamples never claims p = 0 (the smallest reportable p is 2/(n + 1)); capped at 1."""
    x = np.asarray(delta, dtype=float)
    x = x[np.isfinite(x)]
    n = x.size
    if n == 0:
        return None
    below = (np.sum(x <= 0) + 1) / (n + 1)
    above = (np.sum(x >= 0) + 1) / (n + 1)
    return float(min(1.0, 2 * min(below, above)))


def verdict(delta_phi: float, ci: list[float] | None, loss: dict | None, tokens: dict | None,
            phi_at_bound: tuple[str, ...] = ()) -> dict:
    """Which moved, capacity (φ) or tokens, and a sentence saying so.

    φ moved when the Δφ CI excludes 0 (without a bootstrap: untested, read from the sign); it is
    ``unidentified`` when a fit (named in ``phi_at_bound``) put φ on its box bound. Tokens moved when the
    median D_probe / D_baseline is further than 5% from 1; the loss change is the mean over matched runs
    (else over cells' best runs)."""
    if phi_at_bound:
        phi_dir = "unidentified"
    elif ci is not None:
        phi_dir = "rose" if ci[0] > 0 else "fell" if ci[1] < 0 else "unchanged"
    else:
        phi_dir = "rose" if delta_phi > 0 else "fell"
    ratio = tokens["median"] if tokens else 1.0
    tok_dir = "more" if ratio > 1 + TOKEN_SIDE else "fewer" if ratio < 1 - TOKEN_SIDE else "same"
    dl = None
    if loss:
        dl = loss["all"]["mean"] if loss["all"]["mean"] is not None else loss["all"]["best"]
    loss_dir = None if dl is None else ("fell" if dl < 0 else "rose")
    moved = {(True, True): "both", (True, False): "capacity", (False, True): "tokens", (False, False): "neither"}[
        (phi_dir not in ("unchanged", "unidentified"), tok_dir != "same")]

    phi_txt = {"rose": "φ rose", "fell": "φ fell", "unidentified": "",
               "unchanged": "φ did not change detectably (its CI includes 0)"}[phi_dir]
    if ci is None:
        phi_txt += " (untested: no bootstrap)"
    tok_txt = f"{ratio:.2f}× the tokens at equal compute"
    loss_txt = "" if dl is None else f"loss {loss_dir} by {abs(dl):.3g} nats at matched compute"
    if phi_dir == "unidentified":
        text = (f"{loss_txt + '; ' if loss_txt else ''}φ is on its box bound in the {' and '.join(phi_at_bound)} "
                f"fit{'s' if len(phi_at_bound) > 1 else ''}, so these runs cannot tell whether capacity moved; ")
        text += (f"the probe trained on {tok_txt}, a token-side change" if tok_dir != "same" else f"{tok_txt}")
    elif loss_dir == "fell" and phi_dir == "fell":
        text = f"{loss_txt}, but {phi_txt}: the gain is token-side ({tok_txt}); the loop itself is worth less"
        if tok_dir != "more":
            text = f"{loss_txt}, but {phi_txt}: the gain is not capacity, and not more tokens ({tok_txt})"
    elif loss_dir == "fell" and phi_dir == "rose":
        text = f"{loss_txt} and {phi_txt}: a capacity gain, each recurrence is worth more"
        if tok_dir != "same":
            text += f" (also {tok_txt})"
    elif loss_dir == "fell":
        text = f"{loss_txt} while {phi_txt}: " + (f"the gain is token-side ({tok_txt})" if tok_dir == "more"
                                                  else f"neither capacity nor tokens account for it ({tok_txt})")
    elif loss_dir == "rose" and phi_dir == "fell":
        text = f"{loss_txt} and {phi_txt}: the probe costs capacity" + (
            f", which {tok_txt} did not make up" if tok_dir == "more" else "")
    elif loss_dir == "rose" and phi_dir == "rose":
        text = f"{phi_txt}, yet {loss_txt}: a capacity gain outweighed elsewhere ({tok_txt})"
    elif loss_dir == "rose":
        text = f"{loss_txt} while {phi_txt} ({tok_txt})"
    else:
        text = f"{phi_txt} ({tok_txt}); no matched runs to compare losses"
    return {"moved": moved, "phi": phi_dir, "tokens": tok_dir, "loss": loss_dir,
            "text": text[0].upper() + text[1:] + "."}


# ---------------------------------------------------------------------------------------------
# The comparison


@dataclass
class Comparison:
    """Everything `loopscale compare` reports; ``to_json()`` is compare-<probe>.json."""

    probe_name: str
    baseline_name: str
    tables: Tables
    fits: dict[str, LawFit]  # "baseline", "probe"
    draws: BootstrapDraws | None  # params[0] baseline, params[1] probe
    matched: pd.DataFrame
    loss: dict[str, dict]
    tokens: dict | None
    n_units: int
    settings: dict
    warnings: list[str]
    notes: list[str]
    diagnostics: dict[str, Diagnostics] = field(default_factory=dict)  # "baseline", "probe"

    def phi_samples(self, side: int) -> np.ndarray | None:
        return None if self.draws is None else self.draws.params[side, :, I_PHI]

    @property
    def delta_phi(self) -> float:
        return float(self.fits["probe"].theta[I_PHI] - self.fits["baseline"].theta[I_PHI])

    @property
    def delta_samples(self) -> np.ndarray | None:
        return None if self.draws is None else self.phi_samples(1) - self.phi_samples(0)

    @property
    def delta_ci(self) -> list[float] | None:
        return None if self.draws is None else percentile_ci(self.delta_samples)

    def params_ci(self, key: str) -> dict[str, list[float] | None]:
        t = 0 if key == "baseline" else 1
        if self.draws is None:
            return {n: None for n in PARAM_NAMES}
        return {n: percentile_ci(self.draws.params[t, :, i]) for i, n in enumerate(PARAM_NAMES)}

    def side(self, key: str) -> dict:
        fit = self.fits[key]
        table = self.tables.baseline if key == "baseline" else self.tables.probe
        ci = self.params_ci(key)
        diag = self.diagnostics.get(key)
        return {"diagnostics": None if diag is None else diag.to_json(), "name": self.baseline_name if key == "baseline" else self.probe_name,
                "phi": fit.phi, "ci": ci["phi"], "r2": fit.r2, "objective": fit.objective,
                "converged": fit.converged, "n_runs": fit.n_runs,
                "n_looped_runs": int((table["r"] > 1).sum()), "params": fit.params, "params_ci": ci,
                "fit": fit.to_dict()}

    def to_json(self) -> dict:
        bound = tuple(k for k, fit in self.fits.items() if "phi" in fit.at_bounds)
        verdict_ = verdict(self.delta_phi, self.delta_ci, self.loss, self.tokens, bound)
        doc = {
            "law": FORMULA,
            "probe_name": self.probe_name,
            "baseline_name": self.baseline_name,
            "baseline": self.side("baseline"),
            "probe": self.side("probe"),
            "delta_phi": self.delta_phi,
            "delta_phi_ci": self.delta_ci,
            "p_value": None if self.draws is None else bootstrap_p_value(self.delta_samples),
            "p_value_method": P_VALUE_METHOD,
            "ci_level": 0.95,
            "n_shared_r1_runs": self.tables.n_shared,
            "cells": [{"budget_flops": float(c), "r": int(r)} for c, r in self.tables.cells],
            "loss_change": self.loss,
            "loss_change_units": "nats, probe minus baseline at the same budget (and width)",
            "token_gain": self.tokens,
            "verdict": verdict_,
            "bootstrap": None,
            "warnings": self.warnings,
            "notes": self.notes,
            "settings": self.settings,
        }
        if self.draws is not None:
            p, ok = self.draws.params, self.draws.converged
            both = np.isfinite(p[0, :, I_PHI]) & np.isfinite(p[1, :, I_PHI])
            doc["bootstrap"] = {
                "n_resamples": int(p.shape[1]), "resample": "cells", "n_units": self.n_units,
                "paired": True, "n_used": int(both.sum()),
                "n_failed": {k: int(np.sum(~np.isfinite(p[t, :, I_PHI]))) for t, k in enumerate(("baseline", "probe"))},
                "n_unconverged": {k: int(np.sum(~ok[t])) for t, k in enumerate(("baseline", "probe"))},
                "samples": {"baseline_phi": [float(v) for v in p[0, :, I_PHI]],
                            "probe_phi": [float(v) for v in p[1, :, I_PHI]]},
            }
        return json_safe(doc)



def compare(df: pd.DataFrame, probe: str, baseline: str = "none", *, starts: int = STARTS,
            bootstrap: int = BOOTSTRAP, seed: int = SEED, huber_delta: float = HUBER_DELTA, workers: int | None = None,
            progress=None) -> Comparison:
    """Fit baseline and probe (each with the shared r = 1 runs) and compare them (module docstring).

    ``df``: a runs table with a ``probe`` column (loopscale.runs_table); ``bootstrap``: paired
    resamples of (budget × r) cells (0 = none: no CIs, no p-value); ``progress(stage, done, total)``.
    """
    if not (huber_delta > 0 and np.isfinite(huber_delta)):
        raise UserError(f"--huber-delta must be a positive number, got {huber_delta}")
    if starts < 0 or bootstrap < 0 or seed < 0:
        raise UserError("--starts, --bootstrap and --seed must be non-negative")
    tables = split_tables(df, probe, baseline)
    labels = [unit_labels(tables.baseline, "cells"), unit_labels(tables.probe, "cells")]
    n_units = len(np.unique(np.concatenate(labels)))
    if bootstrap > 0:
        for name, t, lab in (("baseline", tables.baseline, labels[0]), ("probe", tables.probe, labels[1])):
            n_cells, n_looped = len(set(lab)), t[t["r"] > 1].groupby(["budget_flops", "r"]).ngroups
            if n_cells < MIN_CELLS or n_looped < MIN_LOOPED_CELLS:
                raise UserError(f"too few (budget × r) cells for a bootstrap: the {name} fit has {n_cells} "
                                f"({n_looped} looped); it needs at least {MIN_CELLS} ({MIN_LOOPED_CELLS} looped). "
                                "Add budgets or r values, or run with --bootstrap 0 (no CIs)")
    say = progress or (lambda stage, done, total: None)
    kw = {"starts": starts, "huber_delta": huber_delta}
    with single_threaded_blas():
        say("fits", 0, 2)
        fits = {}
        for i, key in enumerate(("baseline", "probe")):
            fits[key] = fit_law(getattr(tables, key), seed=[seed, 0, i], **kw)
            say("fits", i + 1, 2)
        draws = None
        if bootstrap > 0:
            plan = bootstrap_plan(labels, bootstrap, seed)
            datas = [FitData.from_table(tables.baseline), FitData.from_table(tables.probe)]
            draws = bootstrap_fits(datas, plan, seed=seed, warm=[fits["baseline"].theta, fits["probe"].theta],
                                   workers=workers, progress=lambda d, t: say("bootstrap", d, t), **kw)

    warnings, notes = list(tables.warnings), list(tables.notes)
    for key, fit in fits.items():
        if not fit.converged:
            warnings.append(f"{key} fit: the best start did not converge ({fit.message})")
        if fit.ties:
            warnings.append(f"{key} fit: multimodal, {len(fit.ties) + 1} distinct optima reach the best objective; "
                            "phi " + ", ".join(f"{v:.4g}" for v in [fit.theta[I_PHI]] + [t[I_PHI] for t in fit.ties]))
        if fit.at_bounds:
            warnings.append(f"{key} fit: optimum on the box bound for {', '.join(fit.at_bounds)}")
    if draws is not None:
        lost = int(np.sum(~(np.isfinite(draws.params[0, :, I_PHI]) & np.isfinite(draws.params[1, :, I_PHI]))))
        if lost:
            warnings.append(f"{lost} of {bootstrap} paired resamples left out: a refit failed or drew no looped cell")
    matched = matched_runs(tables)
    if matched.empty:
        notes.append("no looped runs match by budget and width: loss change by cells' best runs only, no token ratio")
    settings = {"starts": starts, "bootstrap": bootstrap, "seed": seed, "huber_delta": huber_delta,
                "resample": "cells (paired)", "min_cells": MIN_CELLS,
                "bounds": bounds(), "bounds_note": BOUNDS_NOTE}
    result = Comparison(probe, baseline, tables, fits, draws, matched, loss_change(tables, matched),
                        token_gain(matched), n_units, settings, warnings, notes)
    for key in ("baseline", "probe"):
        result.diagnostics[key] = regime_diagnostics(getattr(tables, key),
                                                     FitSummary.of(fits[key], ci=result.params_ci(key)))
    return result
