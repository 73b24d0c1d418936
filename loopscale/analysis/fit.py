"""The whole analysis behind `loopscale fit` (method.md §5): :func:`run_fit` fits the joint law to a runs
table (free, φ = 0 and φ = 1, per r in the Chinchilla form, split-half), bootstraps its CIs and judges the
regime the runs trained in; :class:`FitReport` holds it all and ``to_json()`` is fit.json.

The pieces live beside it, one idea each: the law, its box, log coordinates and the Huber objective in
analysis.law; the multistart optimiser in analysis.multistart; one fit (LawFit, fit_law) in
analysis.lawfit; the bootstrap in analysis.bootstrap; the verdict in analysis.regime; the shared
defaults (starts, resamples, Huber δ) in analysis.defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from loopscale.analysis.bootstrap import BootstrapDraws, bootstrap_fits, bootstrap_plan, percentile_ci, unit_labels
from loopscale.analysis.defaults import BOOTSTRAP, HUBER_DELTA, RESAMPLE, RESAMPLE_UNITS, SEED, STARTS
from loopscale.analysis.law import BOUNDS_NOTE, FORMULA, I_PHI, PARAM_NAMES, FitData, bounds
from loopscale.analysis.lawfit import LawFit, fit_law
from loopscale.analysis.multistart import TIE_RTOL
from loopscale.analysis.parallel import single_threaded_blas
from loopscale.analysis.regime import Diagnostics, FitSummary, regime_diagnostics
from loopscale.atomic import json_safe
from loopscale.errors import UserError
from loopscale.runs_table import usable_rows


@dataclass
class FitReport:
    """Everything `loopscale fit` reports; ``to_json()`` is fit.json."""

    fit: LawFit
    restricted: dict[str, LawFit]  # "phi=0", "phi=1"
    per_r: dict[str, LawFit]  # Chinchilla form per r, N = N_once + N_rec
    bootstrap: BootstrapDraws | None
    resample: str | None  # cells | runs
    n_units: int
    split_half: dict[str, dict]
    warnings: list[str]
    notes: list[str]
    settings: dict
    runs: object  # the usable runs table (pandas), for plots
    diagnostics: Diagnostics | None = None  # the regime the runs trained in and the verdict

    def summary(self) -> FitSummary:
        """What the regime verdict reads of this fit (analysis.regime.FitSummary)."""
        return FitSummary.of(self.fit, self.ci, self.split_half)

    @property
    def ci(self) -> dict[str, list[float] | None]:
        if self.bootstrap is None:
            return {n: None for n in PARAM_NAMES}
        samples = self.bootstrap.params[0]
        ci = {n: percentile_ci(samples[:, i]) for i, n in enumerate(PARAM_NAMES)}
        if not self.fit.phi_fitted:
            ci["phi"] = None
        return ci

    def to_json(self) -> dict:
        doc = {
            "law": FORMULA,
            "params": self.fit.params,
            "ci": self.ci,
            "ci_level": 0.95,
            "r2": self.fit.r2,
            "objective": self.fit.objective,
            "huber_delta": self.settings["huber_delta"],
            "converged": self.fit.converged,
            "n_runs": self.fit.n_runs,
            "phi_identifiable": self.fit.phi_fitted,
            "fit": self.fit.to_dict(),
            "restricted": {k: v.to_dict() for k, v in self.restricted.items()},
            "per_r": {k: v.to_dict() for k, v in self.per_r.items()},
            "residuals": self.fit.residuals,
            "split_half": self.split_half,
            "bootstrap": None,
            "warnings": self.warnings,
            "notes": self.notes,
            "settings": self.settings,
            "ci_degenerate": [] if self.diagnostics is None else self.diagnostics.ci_degenerate,
            "diagnostics": None if self.diagnostics is None else self.diagnostics.to_json(),
        }
        if self.bootstrap is not None:
            p, ok = self.bootstrap.params[0], self.bootstrap.converged[0]
            doc["bootstrap"] = {
                "n_resamples": int(p.shape[0]), "resample": self.resample, "n_units": self.n_units,
                "n_failed": int(np.sum(~np.isfinite(p[:, 0]))), "n_unconverged": int(np.sum(~ok)),
                "samples": {n: [float(v) for v in p[:, i]] for i, n in enumerate(PARAM_NAMES)},
            }
        return json_safe(doc)



def check_settings(*, starts: int, bootstrap: int, seed: int, huber_delta: float, resample: str) -> None:
    """Refuse settings `loopscale fit` cannot run with (UserError, named by their flags)."""
    if resample not in RESAMPLE_UNITS:
        raise UserError(f"--resample must be cells or runs, got {resample!r}")
    if not (huber_delta > 0 and np.isfinite(huber_delta)):
        raise UserError(f"--huber-delta must be a positive number, got {huber_delta}")
    if starts < 0 or bootstrap < 0 or seed < 0:
        raise UserError("--starts, --bootstrap and --seed must be non-negative")


def run_fit(table, *, starts: int = STARTS, bootstrap: int = BOOTSTRAP, seed: int = SEED,
            huber_delta: float = HUBER_DELTA, resample: str = RESAMPLE, workers: int | None = None,
            progress=None) -> FitReport:
    """The whole analysis of a runs table (method.md §5): free fit, restricted fits φ = 0 and
    φ = 1, per-r Chinchilla fits, bootstrap CIs and the split-half check.

    ``table`` is a runs DataFrame (see loopscale.runs_table); unusable rows are left out with a
    warning. ``progress(stage, done, total)`` reports long work.
    """
    check_settings(starts=starts, bootstrap=bootstrap, seed=seed, huber_delta=huber_delta, resample=resample)
    with single_threaded_blas():
        return _run_fit(table, starts, bootstrap, seed, huber_delta, resample, workers, progress)


def _run_fit(table, starts, bootstrap, seed, huber_delta, resample, workers, progress) -> FitReport:
    runs, warnings = usable_rows(table)
    notes: list[str] = []
    if len(runs) == 0:
        raise UserError("; ".join(["no usable runs left to fit", *warnings]))  # what was left out (stale runs...)
    data = FitData.from_table(runs)
    say = progress or (lambda stage, done, total: None)
    kw = {"starts": starts, "huber_delta": huber_delta}
    n_fits = 1 + 2 * data.phi_identifiable + len(np.unique(data.r)) + 2 * data.phi_identifiable
    done = iter(range(1, n_fits + 1))

    say("fits", 0, n_fits)
    try:
        fit = fit_law(data, seed=[seed, 0], **kw)
    except UserError as e:  # too few runs: say what was left out (stale runs, failed ones) on the same line
        raise UserError("; ".join([str(e), *warnings])) from None
    say("fits", next(done), n_fits)
    if not data.phi_identifiable:
        notes.append("phi is not identifiable: no run loops a block with parameters (only r = 1 rows, or "
                     "n_rec = 0 everywhere); fitted the Chinchilla form L = E + A*N^-alpha + B*D^-beta "
                     "with N = n_once + n_rec")
    if not fit.converged:
        warnings.append(f"the best start did not converge ({fit.message})")
    if fit.ties:
        phis = ""
        if fit.phi_fitted:
            phis = f": phi {fit.theta[I_PHI]:.4g} reported, also " + ", ".join(f"{t[I_PHI]:.4g}" for t in fit.ties)
        warnings.append(f"multimodal: {len(fit.ties) + 1} distinct optima reach the best objective within "
                        f"{TIE_RTOL:g} (fit.tied_optima in fit.json){phis}")
    if fit.at_bounds:
        warnings.append(f"optimum on the box bound for {', '.join(fit.at_bounds)}")

    restricted = {}
    if data.phi_identifiable:
        for i, value in enumerate((0.0, 1.0)):
            restricted[f"phi={value:g}"] = fit_law(data, seed=[seed, 1, i], phi=value, **kw)
            say("fits", next(done), n_fits)

    per_r = {}
    for r in np.unique(data.r):
        rows = np.flatnonzero(data.r == r)
        key = f"{r:g}"
        if len(rows) < 5:
            notes.append(f"no per-r fit for r = {key}: {len(rows)} runs, fewer than 5 parameters")
        else:
            per_r[key] = fit_law(data, rows, seed=[seed, 3, int(r)], chinchilla=True, **kw)
        say("fits", next(done), n_fits)

    split = split_half(runs, data, seed=seed, notes=notes, **kw) if data.phi_identifiable else {}
    say("fits", n_fits, n_fits)

    draws, n_units, unit = None, 0, None
    if bootstrap > 0:
        unit = resample
        if unit == "cells" and ("budget_flops" not in runs or runs["budget_flops"].isna().any()):
            unit = "runs"
            notes.append("no budget_flops column (or missing values): the bootstrap resamples runs")
        labels = unit_labels(runs, unit)
        n_units = len(np.unique(labels))
        plan = bootstrap_plan([labels], bootstrap, seed)
        draws = bootstrap_fits([data], plan, seed=seed, warm=[fit.theta], workers=workers,
                               progress=lambda d, t: say("bootstrap", d, t), **kw)
        n_failed = int(np.sum(~np.isfinite(draws.params[0, :, 0])))
        if n_failed:
            warnings.append(f"{n_failed} of {bootstrap} bootstrap refits failed (too few distinct runs)")

    settings = {"starts": starts, "bootstrap": bootstrap, "seed": seed, "huber_delta": huber_delta,
                "resample": unit, "bounds": bounds(), "bounds_note": BOUNDS_NOTE}
    report = FitReport(fit=fit, restricted=restricted, per_r=per_r, bootstrap=draws, resample=unit,
                       n_units=n_units, split_half=split, warnings=warnings, notes=notes,
                       settings=settings, runs=runs)
    report.diagnostics = regime_diagnostics(runs, report.summary())
    return report


def split_half(runs, data: FitData, *, seed: int, notes: list[str], **kw) -> dict[str, dict]:
    """φ refitted on the lower and the upper half of the FLOP budgets (the middle budget of an odd
    count goes to the upper half)."""
    if "budget_flops" not in runs or runs["budget_flops"].isna().any():
        notes.append("no split-half check: needs budget_flops on every run")
        return {}
    budgets = np.sort(runs["budget_flops"].unique())
    if len(budgets) < 2:
        notes.append("no split-half check: a single FLOP budget")
        return {}
    halves = {"low": budgets[: len(budgets) // 2], "high": budgets[len(budgets) // 2 :]}
    out = {}
    for i, (name, chosen) in enumerate(halves.items()):
        rows = np.flatnonzero(runs["budget_flops"].isin(chosen).to_numpy())
        entry = {"budgets": [float(b) for b in chosen], "n_runs": len(rows), "phi": None, "converged": None}
        sub = data.subset(rows)
        if not sub.phi_identifiable:
            notes.append(f"split-half {name}: phi not identifiable on these budgets")
        else:
            try:
                half = fit_law(sub, seed=[seed, 4, i], **kw)
                entry.update(phi=half.phi, converged=half.converged, r2=half.r2)
            except UserError as e:
                notes.append(f"split-half {name}: {e}")
        out[name] = entry
    return out
