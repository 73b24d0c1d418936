"""The whole plan (:func:`plan_grid`): the grid's cost, its cells under the law, φ's simulated CI on the
baseline runs, each probe's power to resolve Δφ, and the suggestions, in one JSON document (PlanReport);
and the checks of its settings."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from loopscale import paper
from loopscale.analysis.defaults import HUBER_DELTA
from loopscale.analysis.law import I_PHI, Law
from loopscale.analysis.parallel import single_threaded_blas
from loopscale.analysis.plan.bracketing import bracketing
from loopscale.analysis.plan.cost import cost_summary, executor_layout, executor_unit, unit_hours
from loopscale.analysis.plan.design import baseline_and_probes, bootstrap_units, design_table, fit_data
from loopscale.analysis.plan.prior import SweepPrior
from loopscale.analysis.plan.sandwich import Z80, Z95, information, phi_variance
from loopscale.analysis.plan.settings import (
    DEFAULT_CPU_GFLOPS,
    PLAN_NOISE,
    PLAN_REPLICATES,
    PLAN_RESAMPLES,
    PLAN_STARTS,
    PROBE_DELTA,
    SUGGEST,
)
from loopscale.analysis.plan.simulate import bootstrap_many, percentile_rows, point_fits, simulate_losses, spread_width
from loopscale.analysis.plan.suggest import candidate_cells, check_pick, greedy_suggestions, low_information_runs
from loopscale.atomic import json_safe
from loopscale.errors import UserError


@dataclass
class PlanReport:
    doc: dict
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return json_safe({**self.doc, "notes": self.notes})

    @property
    def warnings(self) -> list[str]:
        return list(self.doc.get("warnings", []))


def plan_grid(grid, law: Law, *, law_source: str = "paper", noise: float = PLAN_NOISE, noise_source: str | None = None,
              replicates: int = PLAN_REPLICATES, bootstrap: int = PLAN_RESAMPLES, probe_delta: float = PROBE_DELTA,
              seed: int = 0, starts: int = PLAN_STARTS, peak_tflops: float = paper.H100_BF16_DENSE_TFLOPS,
              mfu: float = paper.MFU, suggest: int = SUGGEST,
              delta: float = HUBER_DELTA, workers: int | None = None, cost_unit: str = "auto",
              cpu_gflops: float | None = None, sweep: SweepPrior | None = None, diagnostics: dict | None = None,
              progress=None) -> PlanReport:
    """Predict what fitting ``grid`` (loopscale.grid.Grid) will measure; see the module docstring.
    ``workers``: processes (default all cores; results do not depend on it).
    ``cost_unit``: auto (:func:`executor_unit`) | gpu | cpu. CPU cost at ``cpu_gflops`` GFLOP/s per
    core, else the rate ``sweep`` measured, else DEFAULT_CPU_GFLOPS. ``sweep``: the prior's sweep
    (reported, and its CPU rate). ``diagnostics``: :func:`bracketing` if already computed.
    ``progress(stage, done, total)`` reports long work."""
    check_plan_args(noise=noise, replicates=replicates, bootstrap=bootstrap, seed=seed, starts=starts,
                    peak_tflops=peak_tflops, mfu=mfu, suggest=suggest, delta=delta, workers=workers,
                    probe_delta=probe_delta, cpu_gflops=cpu_gflops, cost_unit=cost_unit)
    say = progress or (lambda stage, done, total: None)
    t0 = time.perf_counter()
    notes: list[str] = []
    runs = design_table(grid.runs)
    base, probes, n_built = baseline_and_probes(grid)
    if n_built:
        notes.append(f"the probe's {n_built} probe-none counterparts (baseline runs for Δφ) are not in this grid; "
                     "they are assumed trained already (e.g. by the main grid) and are not in the cost")
    check_grid(grid, base)
    if not base["budget_flops"].notna().all():
        notes.append("token budgets (no FLOP budgets): the bootstrap resamples runs, as `fit` does")
    if diagnostics is None:
        diagnostics = bracketing(grid, law, law_source, probe_delta)
    doc: dict = {"grid": grid.name, "path": None if grid.path is None else str(grid.path), "n_runs": len(runs),
                 "law": law.to_dict(), "law_source": law_source, "noise_nats": noise,
                 "noise_source": noise_source or "--noise", "replicates": replicates,
                 "bootstrap": bootstrap, "starts": starts, "seed": seed, "huber_delta": delta,
                 "diagnostics": diagnostics, "warnings": [diagnostics["warning"]] if diagnostics["warning"] else []}
    if sweep is not None:
        doc["sweep"] = {"path": sweep.path, "fit": sweep.fit, "residual_rmse": sweep.residual_rmse,
                        "seed_noise": {k: sweep.seed_noise[k] for k in ("sd", "n_groups", "n_runs")},
                        "cpu_rate": sweep.cpu_rate}
    unit, why = executor_unit(grid, cost_unit)
    core_s, rate_source = None, None
    if unit == "cpu_hours":
        if cpu_gflops is not None:
            core_s, rate_source = 1e-9 / cpu_gflops, f"--cpu-gflops {cpu_gflops:g}"
        elif sweep is not None and sweep.cpu_rate is not None:
            r = sweep.cpu_rate
            core_s = r["core_s_per_flop"]
            rate_source = (f"measured on sweep:{sweep.path}: {r['gflops_per_core']:.3g} GFLOP/s per core over its "
                           f"{r['runs']} CPU runs (wall time × threads, evaluation and start-up included)")
        else:
            core_s = 1e-9 / DEFAULT_CPU_GFLOPS
            rate_source = (f"default {DEFAULT_CPU_GFLOPS:g} GFLOP/s per core (grids/tiny.yaml from a fresh clone "
                           "on the 2-core dev machine; --cpu-gflops to change, --from SWEEP to measure)")
    cost = cost_summary(runs, peak_tflops, mfu, unit=unit, core_s_per_flop=core_s, layout=executor_layout(grid, unit))
    cost["unit_reason"] = why
    if rate_source:
        cost["rate_source"] = rate_source
    doc.update({"total_flops": cost["total_flops"], unit: cost[unit], "cost": cost})

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
            ci = percentile_rows(boot_phi)
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
            pick["hours"] = pick[unit] = float(unit_hours(pick["flops"], unit, peak_tflops=peak_tflops, mfu=mfu,
                                                          core_s_per_flop=core_s))
        doc["suggestions"] = picks
        doc["low_information"] = (low_information_runs(target, t_law, noise, suggest, delta, among=runs["run_id"])
                                  if suggest > 0 else [])
        if not getattr(grid, "ids_known", True):  # no data yet: the runs have no ids (their keys are not folders)
            for row in doc["low_information"]:
                row["run_id"] = None
    doc["n_baseline_runs"] = len(base)
    doc["seconds"] = time.perf_counter() - t0
    return PlanReport(doc, notes)


def check_grid(grid, base: pd.DataFrame | None = None) -> None:
    """Refuse a grid that cannot measure φ (UserError): no looped run, or fewer runs than parameters."""
    if base is None:
        base = baseline_and_probes(grid)[0]
    if not fit_data(base).phi_identifiable:
        raise UserError(f"{grid.name}: no run loops a block (all r = 1): phi cannot be measured on this grid")
    if len(base) < 6:
        raise UserError(f"{grid.name}: {len(base)} runs, fewer than the 6 parameters of the law")


def check_plan_args(*, noise=None, replicates=PLAN_REPLICATES, bootstrap=PLAN_RESAMPLES, seed=0, starts=PLAN_STARTS,
                    peak_tflops=paper.H100_BF16_DENSE_TFLOPS, mfu=paper.MFU, suggest=SUGGEST, delta=HUBER_DELTA,
                    workers=None, probe_delta=PROBE_DELTA, cpu_gflops=None, cost_unit="auto") -> None:
    """Refuse settings :func:`plan_grid` cannot run with (UserError, named by their flags); ``noise``
    None: not known yet (measured by --from)."""
    _check_args(noise, replicates, bootstrap, seed, starts, peak_tflops, mfu, suggest, delta)
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if not math.isfinite(probe_delta):
        raise UserError(f"--probe-delta must be a finite number, got {probe_delta}")
    if cpu_gflops is not None and not (cpu_gflops > 0 and math.isfinite(cpu_gflops)):
        raise UserError(f"--cpu-gflops must be a positive number of GFLOP/s per core, got {cpu_gflops}")
    if cost_unit not in ("auto", "gpu", "cpu"):
        raise UserError(f"--cost-unit must be auto, gpu or cpu, got {cost_unit!r}")


def _check_args(noise, replicates, bootstrap, seed, starts, peak_tflops, mfu, suggest, delta) -> None:
    if noise is not None and not (noise > 0 and math.isfinite(noise)):
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
        reuse = base_boot is not None and set(bootstrap_units(table)) <= set(bootstrap_units(base))
        boot, _ = bootstrap_many([base, table], [base_loss, probe_loss], [tb, tp], bootstrap, seed, delta,
                                 workers, only=(1,) if reuse else None)
        if reuse:
            boot[0] = base_boot
        ci = percentile_rows(boot[1] - boot[0])
        okc = np.all(np.isfinite(ci), axis=1)
        out["delta_ci_width"] = float(np.mean(ci[okc, 1] - ci[okc, 0]))
        out["p_resolved"] = float(np.mean((ci[okc, 0] > 0) | (ci[okc, 1] < 0)))
        out["p_resolved_method"] = "paired bootstrap 95% CI of Δφ (the units `fit` resamples) excludes 0"
    else:
        out["delta_ci_width"] = 2 * Z95 * sd
        out["p_resolved"] = out["p_resolved_spread"]
        out["p_resolved_method"] = "|Δφ̂| > 1.96·sd of Δφ̂ across replicates (no bootstrap)"
    return out, (table, probe_law)
