"""`loopscale plan`: simulate a grid under a prior law and say whether it will measure φ (and a
probe's Δφ), what it costs, and which cells to add or drop. Logic in loopscale/analysis/plan/."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from loopscale import paper
from loopscale.commands.diagnostics import print_cells
from loopscale.commands.stages import stage_progress
from loopscale.probes import choices as probe_choices


def _f(v, digits: int = 3, spec: str = "f") -> str:
    return "—" if v is None else f"{v:.{digits}{spec}}"


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.0f}%"


def _budget(row: dict) -> str:
    return f"C {row['budget_flops']:.3g}" if row.get("budget_flops") is not None else f"D {row['tokens']:.3g}"


UNIT_WORDS = {"gpu_hours": ("GPU-hours", "GPU-h"), "cpu_hours": ("CPU core-hours", "core-h")}


def _hours(v) -> str:
    """Hours without rounding small numbers away (never '0.0')."""
    if v is None:
        return "—"
    if v == 0 or v >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}" if v >= 1e-3 else f"{v:.2e}"


def _duration(h) -> str:
    if h is None:
        return "—"
    s = h * 3600
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{h:.1f} h" if h < 48 else f"{h / 24:.1f} days"


def _print_prior(doc: dict, out: Console) -> None:
    law = doc["law"]
    out.print(f"[bold]{doc['grid']}[/] ({doc['n_runs']} runs) under the {doc['law_source']} law (φ = {law['phi']:.4g}), "
              f"noise {doc['noise_nats']:.4g} nats: {doc['replicates']} replicates, {doc['bootstrap']} bootstrap "
              "resamples each", highlight=False)
    sweep = doc.get("sweep")
    if sweep:
        f = sweep["fit"]
        out.print(f"law: fitted to {f['n_runs']} finished runs of {sweep['path']} ({f['starts']} starts, R² "
                  f"{_f(f['r2'])}{'' if f['converged'] else ', not converged'}"
                  f"{', at bounds: ' + ', '.join(f['at_bounds']) if f['at_bounds'] else ''})", highlight=False, soft_wrap=True)
        if f.get("stale_runs"):
            out.print(f"left out {f['stale_runs']} stale run(s) of {sweep['path']}: trained on data that has changed "
                      "since (`loopscale status` says which)", highlight=False, soft_wrap=True)
    out.print(f"noise: {doc['noise_nats']:.4g} nats, {doc['noise_source']}", highlight=False, soft_wrap=True)


def _print_cells(diag: dict, out: Console) -> None:
    print_cells(diag, f"iso-FLOP cells under the law without noise: {diag['cells_bracketed']}/{diag['n_cells']} "
                "with ≥ 3 widths bracket their compute-optimal width", out)


def _print_cost(cost: dict, out: Console) -> None:
    name, short = UNIT_WORDS[cost["unit"]]
    if cost["unit"] == "gpu_hours":
        title = f"cost at {cost['peak_tflops']:g} TFLOP/s peak × {cost['mfu']:g} MFU"
    else:
        title = f"cost at {cost['gflops_per_core']:.3g} GFLOP/s per CPU core"
    c = Table(title=title)
    for col in ("r", "runs", "FLOPs", name):
        c.add_column(col, justify="right")
    for row in cost["per_r"]:
        c.add_row(str(row["r"]), str(row["runs"]), f"{row['flops']:.3e}", _hours(row["hours"]))
    c.add_row("[bold]total[/]", str(cost["runs"]), f"[bold]{cost['total_flops']:.3e}[/]", f"[bold]{_hours(cost['hours'])}[/]")
    out.print(c)
    line = f"cost: {_hours(cost['hours'])} {name} ({cost['unit_reason']})"
    if "wall_hours" in cost:
        jobs = cost["parallel_jobs"]
        each = "core" if cost["unit"] == "cpu_hours" else "GPU"
        on = f"{jobs} job(s) at once" if jobs else "every job at once"
        line += (f"; wall clock ≈ {_duration(cost['wall_hours'])} on {on} ({cost['jobs_from']}), "
                 f"{cost['per_job']} {each}(s) each")
    out.print(line, highlight=False, soft_wrap=True)
    if cost.get("rate_source"):
        out.print(f"CPU rate: {cost['rate_source']}", highlight=False, soft_wrap=True)


def _print_plan(doc: dict, out: Console) -> None:
    _print_prior(doc, out)
    _print_cells(doc["diagnostics"], out)
    t = Table(title=f"φ measured on {doc['n_baseline_runs']} baseline runs")
    t.add_column("")
    t.add_column("value", justify="right")
    t.add_row("true φ", _f(doc["phi_true"], 4))
    t.add_row("φ̂ mean / median", f"{_f(doc['phi_mean'], 4)} / {_f(doc['phi_median'], 4)}")
    t.add_row("φ̂ sd across replicates", _f(doc["phi_sd"], 4))
    t.add_row("[bold]95% CI width[/] (mean bootstrap CI)" if doc["phi_ci_width_bootstrap"] is not None
              else "[bold]95% CI width[/] (replicate spread)", f"[bold]{_f(doc['phi_ci_width'])}[/]")
    t.add_row("  typical CI", f"[{_f(doc['phi_ci_mean'][0])}, {_f(doc['phi_ci_mean'][1])}]")
    t.add_row("  spread of φ̂ (central 95%)", _f(doc["phi_ci_width_spread"]))
    t.add_row("  asymptotic (sandwich) ±1.96 sd", _f(doc["phi_ci_width_fisher"]))
    t.add_row("P(CI excludes 0) / P(CI excludes 1)", f"{_pct(doc['p_ci_excludes_0'])} / {_pct(doc['p_ci_excludes_1'])}")
    t.add_row("P(CI covers true φ)", _pct(doc["p_ci_covers_truth"]))
    out.print(t)

    _print_cost(doc["cost"], out)

    if doc["probes"]:
        p = Table(title="probes: chance to resolve Δφ (probe at φ + Δ, paired with the baseline)")
        for col in ("probe", "runs", "Δφ", "Δφ̂ mean", "sd", "CI width", "P(resolve)", "Δφ @80%"):
            p.add_column(col, justify="right" if col != "probe" else "left")
        for name, v in doc["probes"].items():
            p.add_row(name, str(v["n_runs"]), _f(v["delta_true"]), _f(v["delta_mean"]), _f(v["delta_sd"]),
                      _f(v["delta_ci_width"]), _pct(v["p_resolved"]), _f(v["min_detectable_delta"]))
        out.print(p)
        out.print("Δφ @80%: smallest Δφ resolved with 80% power (2.80 × sd of Δφ̂)", highlight=False)

    picks = doc["suggestions"]
    if picks:
        cells: dict[tuple, dict] = {}
        for row in picks:
            key = (row["budget_flops"], row["tokens"], row["width"], row["r"])
            cell = cells.setdefault(key, {**row, "runs": 0})
            cell["runs"] += 1
        what = "" if doc["suggestions_for"] == "none" else f" ({doc['suggestions_for']} runs at r > 1)"
        s = Table(title=f"cells to add{what}, greedy by fall of φ's CI width per FLOP")
        short = UNIT_WORDS[doc["cost"]["unit"]][1]
        for col in ("budget", "width d", "r", "runs", f"{short} each", ""):
            s.add_column(col, justify="right" if col else "left")
        for row in cells.values():
            note = "another seed" if row["exists"] else ("new r" if row["new_r"] else "new cell")
            s.add_row(_budget(row), str(row["width"]), str(row["r"]), str(row["runs"]), _hours(row["hours"]), note)
        out.print(s)
        spent = sum(row["hours"] for row in picks)
        out.print(f"all {len(picks)} runs ({_hours(spent)} {short}): φ CI width {picks[0]['fisher_width_before']:.3f} → "
                  f"{picks[-1]['fisher_width_after']:.3f} (sandwich)", highlight=False)
        sim = picks[0].get("simulated")
        if sim:
            out.print(f"first run checked by simulation ({sim['replicates']} replicates, the same noise): sd of φ̂ × "
                      f"{sim['sd_ratio']:.3f} ± {sim['sd_ratio_se']:.3f}; the sandwich predicted × {sim['fisher_ratio']:.3f}",
                      highlight=False)
    if doc["low_information"]:
        waits = any(row["run_id"] is None for row in doc["low_information"])
        lo = Table(title="runs carrying least information on φ per FLOP"
                   + (" (no run ids: they wait for the grid's data)" if waits else ""))
        for col in ("run", "budget", "width d", "r", "FLOPs", "CI wider if dropped"):
            lo.add_column(col, justify="right" if col != "run" else "left")
        for row in doc["low_information"]:
            lo.add_row(row["run_id"] or "—", _budget(row), str(row["width"]), str(row["r"]), f"{row['flops']:.3g}",
                       f"{100 * max(row['ci_widening'], 0.0):.3f}%")
        out.print(lo)
    out.print(f"phi_ci_width: {doc['phi_ci_width_method']}", highlight=False, soft_wrap=True)
    for line in doc["warnings"]:
        out.print(f"[yellow]warning:[/] {line}", highlight=False, soft_wrap=True)
    for note in doc["notes"]:
        out.print(f"note: {note}", highlight=False, soft_wrap=True)
    out.print(f"{doc['seconds']:.1f} s", highlight=False)


def register(app: typer.Typer) -> None:
    @app.command()
    def plan(
        grid_file: Path = typer.Argument(..., metavar="GRID", help="Grid YAML file, or a shipped grid's name "
                                         "(e.g. paper)."),
        law: Optional[str] = typer.Option(None, help="Prior law: 'paper' (default: the paper's coefficients) or a "
                                          "fit.json / its folder."),
        from_sweep: Optional[Path] = typer.Option(None, "--from", metavar="SWEEP",
                                                  help="Prior from a finished sweep: its fitted law (fit's method, "
                                                       "--fit-starts starts, no bootstrap) and measured noise."),
        noise: Optional[float] = typer.Option(None, help="Gaussian noise on each run's final loss, nats (default 0.01; "
                                              "with --from the sweep's measured noise)."),
        replicates: int = typer.Option(100, help="Simulated replicates of the grid."),
        bootstrap: int = typer.Option(200, help="Cell-bootstrap resamples per replicate (0: CI from the replicate spread)."),
        probe_delta: float = typer.Option(0.07, "--probe-delta", help="Δφ each probe of the grid is simulated "
                                          f"with (probes: {probe_choices(skip_baseline=True)})."),
        seed: int = typer.Option(0, help="Seed of noise, starts and resamples: same seed, same output."),
        starts: int = typer.Option(8, help="Random starts per fit, besides fit's 24 fixed and the true θ."),
        fit_starts: int = typer.Option(100, "--fit-starts", help="With --from: random starts of the sweep's fit "
                                       "(`fit` uses 500)."),
        peak_tflops: float = typer.Option(paper.H100_BF16_DENSE_TFLOPS, "--peak-tflops", help="GPU peak TFLOP/s (989: H100 bf16 dense)."),
        mfu: float = typer.Option(paper.MFU, help="Model FLOP utilisation, a fraction of peak."),
        cost_unit: str = typer.Option("auto", "--cost-unit", help="auto (from the grid's executor and train.device) "
                                      "| gpu | cpu."),
        cpu_gflops: Optional[float] = typer.Option(None, "--cpu-gflops", help="CPU training rate, GFLOP/s per core "
                                                   "(default: the --from sweep's measured rate, else 6)."),
        suggest: int = typer.Option(5, help="Cells to suggest adding (and low-information runs to list)."),
        workers: Optional[int] = typer.Option(None, help="Processes (default: all cores)."),
        json_out: bool = typer.Option(False, "--json", help="Print the prediction as JSON and nothing else."),
        adaptive: bool = typer.Option(False, "--adaptive", help="Simulate an adaptive sweep that stops at --until-ci "
                                      "(against the fixed grid and random picks)."),
        until_ci: Optional[str] = typer.Option(None, "--until-ci", metavar="W", help="With --adaptive: the φ CI "
                                               "width to reach, or 'fixed' (the fixed grid's own predicted width)."),
        batch: int = typer.Option(8, "--batch", help="With --adaptive: runs chosen per round (K)."),
        max_flops: Optional[float] = typer.Option(None, "--max-flops", help="With --adaptive: FLOP cap (default "
                                                  "twice the fixed grid's)."),
    ) -> None:
        """Will this grid measure φ? Simulate it under a prior law, fit every replicate as `fit` does,
        and report φ's expected CI, a probe's chance to resolve Δφ, the cost, and cells worth adding."""
        from loopscale.analysis.law import load_law
        from loopscale.analysis.plan import bracketing, check_grid, check_plan_args, plan_grid, sweep_prior
        from loopscale.analysis.plan.settings import PLAN_NOISE
        from loopscale.errors import UserError
        from loopscale.grid import find_grid, load_grid

        if law is not None and from_sweep is not None:
            raise UserError("give --law or --from, not both")
        if adaptive or until_ci is not None:
            from loopscale.commands.plan_adaptive import run_adaptive

            run_adaptive(grid_file, law=law, from_sweep=from_sweep, noise=noise, until_ci=until_ci, adaptive=adaptive,
                         replicates=replicates if replicates != 100 else 50, batch=batch, max_flops=max_flops,
                         seed=seed, fit_starts=fit_starts, workers=workers, json_out=json_out)
            return
        if fit_starts < 0:
            raise UserError(f"--fit-starts must be non-negative, got {fit_starts}")
        check_plan_args(noise=noise, replicates=replicates, bootstrap=bootstrap, seed=seed, starts=starts,
                        peak_tflops=peak_tflops, mfu=mfu, suggest=suggest, workers=workers, probe_delta=probe_delta,
                        cpu_gflops=cpu_gflops, cost_unit=cost_unit)
        grid = load_grid(find_grid(grid_file))
        check_grid(grid)
        prior, law_source, noise_source, sweep = None, law or "paper", None, None
        if from_sweep is None:
            prior = load_law(law_source, need_phi=True)
        if noise is not None:
            noise_source = "--noise"
        elif from_sweep is None:
            noise, noise_source = PLAN_NOISE, f"default {PLAN_NOISE:g} nats (--noise)"
        with stage_progress() as progress:
            if from_sweep is not None:
                sweep = sweep_prior(from_sweep, starts=fit_starts, seed=seed, workers=workers,
                                    progress=lambda stage, done, total: progress(f"sweep {stage}", done, total))
                prior, law_source = sweep.law, sweep.law_source
                if noise is None:
                    noise, noise_source = sweep.noise, f"measured on {sweep.law_source}: {sweep.noise_source}"
            diagnostics = bracketing(grid, prior, law_source, probe_delta)
            if diagnostics["warning"]:
                Console(stderr=True).print(f"[yellow]warning:[/] {diagnostics['warning']}", highlight=False,
                                           soft_wrap=True)
            report = plan_grid(grid, prior, law_source=law_source, noise=noise, noise_source=noise_source,
                               replicates=replicates, bootstrap=bootstrap, probe_delta=probe_delta, seed=seed,
                               starts=starts, peak_tflops=peak_tflops, mfu=mfu, suggest=suggest, workers=workers,
                               cost_unit=cost_unit, cpu_gflops=cpu_gflops, sweep=sweep, diagnostics=diagnostics,
                               progress=progress)
        doc = report.to_json()
        if json_out:
            sys.stdout.write(json.dumps(doc, allow_nan=False) + "\n")
            return
        _print_plan(doc, Console())
