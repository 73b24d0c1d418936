"""`loopscale fit` (the joint law with bootstrap CIs) and `loopscale equiv` (what a law implies)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from loopscale import paper
from loopscale.analysis import defaults
from loopscale.analysis.regime_text import ci_text, noise_line
from loopscale.commands.diagnostics import print_cells, print_diagnostics
from loopscale.commands.stages import stage_progress
from loopscale.errors import UserError
from loopscale.fmt import num
from loopscale.probes import choices as probe_choices


def _print_cells(diag: dict, out: Console) -> None:
    print_cells(diag, "iso-FLOP cells: parabola in log N, its minimum N* and L* (N = N_once + N_rec)", out)


def _print_fit(doc: dict, out: Console) -> None:
    from loopscale.analysis.law import FORMULA_TEXT, PARAM_NAMES

    diag = doc.get("diagnostics")
    if diag:
        print_diagnostics(diag, out)
        _print_cells(diag, out)
    main = Table(title=f"{FORMULA_TEXT}   ({doc['n_runs']} runs)")
    main.add_column("param")
    main.add_column("fit", justify="right")
    main.add_column("95% CI", justify="right")
    for name in PARAM_NAMES:
        main.add_row(name, num(doc["params"][name]), ci_text(name, doc["params"][name], doc["ci"].get(name), diag, num))
    out.print(main)
    if diag:
        out.print(noise_line(diag), highlight=False, soft_wrap=True)
    fits = Table(title="free vs restricted fits")
    for col in ("fit", "φ", "R²", "objective", "converged", "starts at best"):
        fits.add_column(col, justify="right" if col != "fit" else "left")
    rows = [("free", doc["fit"])] + list(doc["restricted"].items())
    for name, f in rows:
        fits.add_row(name, num(f["params"]["phi"], 3), num(f["r2"]), num(f["objective"], 6, "g"),
                     str(f["converged"]), f"{f['n_starts_at_best']}/{f['n_starts']}")
    out.print(fits)
    per_r = Table(title="per r: Chinchilla fits (N = N_once + N_rec) and residuals of the joint fit (nats)")
    for col in ("r", "runs", "E", "alpha", "beta", "R²", "resid mean", "max |resid|", "RMSE"):
        per_r.add_column(col, justify="right")
    for key, res in doc["residuals"].items():
        f = doc["per_r"].get(key)
        p = f["params"] if f else {}
        per_r.add_row(key, str(res["n"]), num(p.get("E")), num(p.get("alpha")), num(p.get("beta")),
                      num(f["r2"]) if f else "—", num(res["mean"], sign="+"), num(res["max_abs"]), num(res["rmse"]))
    out.print(per_r)
    if doc["split_half"]:
        halves = ", ".join(f"{k} ({len(v['budgets'])} budgets, {v['n_runs']} runs) φ = {num(v['phi'], 3)}"
                           for k, v in doc["split_half"].items())
        out.print(f"split-half: {halves}", highlight=False)
    boot = doc["bootstrap"]
    if boot:
        out.print(f"bootstrap: {boot['n_resamples']} resamples of {boot['n_units']} {boot['resample']}, "
                  f"{boot['n_failed']} failed, {boot['n_unconverged']} not converged", highlight=False)


def _print_equiv(doc: dict, out: Console) -> None:
    law = doc["law"]
    out.print(f"law: E={num(law['E'])} A={num(law['A'])} α={num(law['alpha'])} B={num(law['B'])} "
              f"β={num(law['beta'])} φ={num(law['phi'], 3)}", highlight=False)
    eq = doc.get("model")
    if eq:
        lp, same, flat = eq["looped"], eq["equivalent_non_looped"], eq["flop_matched_non_looped"]
        t = Table(title=f"looped model, r = {lp['r']}")
        for col in ("model", "width d", "s", "unique params", "FLOPs/token", "loss (nats)"):
            t.add_column(col, justify="right" if col != "model" else "left")
        t.add_row(f"looped (r = {lp['r']})", f"{lp['width']:.0f}", f"{lp['s']:.2f}", f"{lp['n_params'] / 1e6:,.1f}M",
                  f"{lp['flops_per_token']:.4g}", num(eq["loss"]))
        t.add_row("equivalent non-looped (N_eff)", f"{same['width']:.0f}", f"{same['s']:.2f}",
                  f"{same['n_params'] / 1e6:,.1f}M", f"{same['flops_per_token']:.4g}", "")
        t.add_row("FLOP-matched non-looped (same width)", f"{flat['width']:.0f}", f"{flat['s']:.2f}",
                  f"{flat['n_params'] / 1e6:,.1f}M", f"{flat['flops_per_token']:.4g}", num(eq["loss_flop_matched"]))
        out.print(t)
        out.print(f"N_eff = {eq['n_eff'] / 1e6:,.1f}M; one recurrence is worth r^φ/r = {eq['recurrence_worth']:.3f} "
                  f"of a unique block; FLOPs/token looped / non-looped = {eq['flops_ratio']:.3f}", highlight=False)
    co = doc.get("compute_optimal")
    if co:
        t = Table(title=f"compute-optimal width per r at C = {co[0]['budget_flops']:.3g} FLOPs")
        for col in ("r", "width d", "s", "unique params", "N_eff", "tokens", "loss", "gap to r=1"):
            t.add_column(col, justify="right")
        for c in co:
            t.add_row(str(c["r"]), f"{c['width']:.0f}", f"{c['s']:.2f}", f"{c['n_params'] / 1e6:,.1f}M",
                      f"{c['n_eff'] / 1e6:,.1f}M", f"{c['tokens']:.4g}", num(c["loss"]), num(c["gap_to_r1"]))
        out.print(t)


def register(app: typer.Typer) -> None:
    @app.command()
    def fit(
        source: Path = typer.Argument(..., help="Sweep folder (its results store) or a CSV/Parquet runs table."),
        out: Optional[Path] = typer.Option(None, "--out", help="Folder for fit.json and plots (default: beside it)."),
        starts: int = typer.Option(defaults.STARTS, help="Random starts of the multistart (plus a fixed grid of "
                                   f"{defaults.GRID_STARTS})."),
        bootstrap: int = typer.Option(defaults.BOOTSTRAP, help="Bootstrap resamples (0 = none)."),
        seed: int = typer.Option(defaults.SEED, help="Seed of starts and resamples: same seed, same output."),
        huber_delta: float = typer.Option(defaults.HUBER_DELTA, "--huber-delta", help="Huber δ on log-loss residuals."),
        resample: str = typer.Option(defaults.RESAMPLE, help="Bootstrap unit: cells ((budget × r) blocks) | runs."),
        workers: Optional[int] = typer.Option(None, help="Processes for the bootstrap (default: all cores)."),
        probe: Optional[str] = typer.Option(None, help=f"Fit the runs of this probe ({probe_choices()})."),
        no_plots: bool = typer.Option(False, "--no-plots", help="Skip the PNG figures."),
        json_out: bool = typer.Option(False, "--json", help="Print fit.json to stdout and nothing else."),
    ) -> None:
        """Fit the joint recurrence law L(N_once, N_rec, r, D) with bootstrap CIs; writes fit.json."""
        from loopscale.analysis.fit import run_fit
        from loopscale.analysis.law import FIT_FILE
        from loopscale.atomic import write_json_atomic
        from loopscale.runs_table import load_runs, select_probe

        if workers is not None and workers < 1:
            raise UserError(f"--workers must be at least 1, got {workers}")
        table, probe_notes = select_probe(load_runs(source), probe)
        with stage_progress() as progress:
            report = run_fit(table, starts=starts, bootstrap=bootstrap, seed=seed, huber_delta=huber_delta,
                             resample=resample, workers=workers, progress=progress)
        report.notes[:0] = probe_notes
        doc = {"source": str(source), "probe": probe, **report.to_json()}
        out_dir = out or (source if source.is_dir() else source.parent)
        try:
            write_json_atomic(out_dir / FIT_FILE, doc)
            plots = [] if no_plots else [str(p) for p in _plots(report, out_dir)]
        except OSError as e:
            raise UserError(f"{out_dir}: cannot write the fit there ({e.strerror or e})") from None
        err = Console(stderr=True)
        for line in report.warnings:
            err.print(f"[yellow]warning:[/] {line}", highlight=False, soft_wrap=True)
        if json_out:
            sys.stdout.write(json.dumps(doc, allow_nan=False) + "\n")
            return
        console = Console()
        _print_fit(doc, console)
        for note in report.notes:
            console.print(f"note: {note}", highlight=False, soft_wrap=True)
        console.print(f"wrote {out_dir / FIT_FILE}" + (f" and {len(plots)} plots" if plots else ""), highlight=False)

    @app.command()
    def equiv(
        law: str = typer.Option("paper", help="'paper' (the paper's coefficients) or a fit.json / its folder."),
        r: int = typer.Option(4, "--r", help="Recurrences of the looped model."),
        params: Optional[str] = typer.Option(None, "--params", help="Looped model's unique parameters, e.g. 410M."),
        width: Optional[int] = typer.Option(None, "--width", help="Looped model's width d (instead of --params)."),
        s: Optional[float] = typer.Option(None, "--s", help="Width multiplier, d = 64·s (instead of --params)."),
        tokens: Optional[str] = typer.Option(None, help="Training tokens D for the predicted loss, e.g. 20B."),
        budget: Optional[str] = typer.Option(None, help="FLOP budget C (e.g. 1e19): D = C/F, compute-optimal widths."),
        rs: str = typer.Option("1,2,4,8", help="Recurrences compared at the budget."),
        grid: bool = typer.Option(False, "--grid", help="Compute-optimal widths on the paper's s grid."),
        layers: int = typer.Option(20, help="Effective depth ℓ_eff."),
        seq_len: int = typer.Option(paper.SEQ_LEN, help="Sequence length T (attention FLOPs)."),
        vocab: int = typer.Option(paper.VOCAB, help="Padded vocabulary V (embedding FLOPs)."),
        json_out: bool = typer.Option(False, "--json", help="Print JSON to stdout and nothing else."),
    ) -> None:
        """Equivalent non-looped size, FLOP-matched model, worth per recurrence, compute-optimal widths."""
        from loopscale.analysis.equiv import Family, compute_optimal, equivalent, parse_amount
        from loopscale.analysis.law import load_law

        given = [v is not None for v in (params, width, s)]
        try:
            r_list = [int(v) for v in rs.split(",") if v.strip()]
        except ValueError:
            raise UserError(f"--rs: expected comma-separated integers, got {rs!r}") from None
        looped = (any(given) and r > 1) or (budget is not None and any(v > 1 for v in r_list))
        fitted = load_law(law, need_phi=looped)
        family = Family(n_layers_eff=layers, seq_len=seq_len, vocab=vocab)
        if sum(given) > 1:
            raise UserError("give the looped model by one of --params, --width, --s")
        if not any(given) and budget is None:
            raise UserError("nothing to compute: give a looped model (--params/--width/--s) and/or a --budget")
        if tokens is not None and budget is not None and any(given):
            raise UserError("give --tokens or --budget for the predicted loss, not both")
        C = parse_amount(budget, "--budget") if budget is not None else None
        doc: dict = {"law": fitted.to_dict(), "family": asdict(family)}
        if any(given):
            w = width if width is not None else (family.width_step * s if s is not None else None)
            n = parse_amount(params, "--params") if params is not None else None
            eq = equivalent(fitted, r, width=w, n_params=n, family=family, budget_flops=C,
                            tokens=parse_amount(tokens, "--tokens") if tokens is not None else None)
            doc["model"] = eq.to_dict()
        if C is not None:
            from loopscale.runs_table import PAPER_GRID

            s_grid = sorted({s_ for widths in PAPER_GRID.values() for s_ in widths}) if grid else None
            optima = compute_optimal(fitted, C, r_list, grid=s_grid, family=family)
            doc["compute_optimal"] = [c.to_dict() for c in optima]
        if json_out:
            sys.stdout.write(json.dumps(doc, allow_nan=False) + "\n")
            return
        _print_equiv(doc, Console())


def _plots(report, out_dir: Path) -> list[Path]:
    from loopscale.analysis.fit_plots import write_plots

    return write_plots(report, out_dir)
