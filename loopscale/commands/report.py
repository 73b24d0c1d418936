"""`loopscale report SWEEP`: one self-contained HTML report of a sweep and its tables as Markdown."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from loopscale.analysis import defaults
from loopscale.commands.stages import stage_progress
from loopscale.commands.console import counts_line, make_console, resolve_sweep
from loopscale.errors import UserError
from loopscale.fmt import num


def output_path(out: Optional[Path], sweep_dir: Path) -> Path:
    """--out: an .html file, or a folder for report.html; default SWEEP/report.html."""
    if out is None:
        return sweep_dir / "report.html"
    if out.suffix.lower() in (".html", ".htm"):
        return out
    if out.is_dir() or not out.suffix:
        return out / "report.html"
    raise UserError(f"--out {out}: give an .html file or a folder (the Markdown goes next to it as .md)")


def register(app: typer.Typer) -> None:
    @app.command()
    def report(
        sweep_dir: Optional[Path] = typer.Argument(None, metavar="SWEEP", help="Sweep folder (default: the only "
                                                   "one under ./sweeps)."),
        out: Optional[Path] = typer.Option(None, "--out", help="The HTML file (default SWEEP/report.html); the "
                                           "Markdown tables go next to it (report.md)."),
        starts: int = typer.Option(defaults.STARTS, help="Random starts of each multistart (plus a fixed grid of "
                                   f"{defaults.GRID_STARTS})."),
        bootstrap: int = typer.Option(defaults.BOOTSTRAP, help="Bootstrap resamples of the fit and of each compare "
                                      "(0 = none)."),
        seed: int = typer.Option(defaults.SEED, help="Seed of starts and resamples: same seed, same numbers."),
        huber_delta: float = typer.Option(defaults.HUBER_DELTA, "--huber-delta", help="Huber δ on log-loss residuals."),
        resample: str = typer.Option(defaults.RESAMPLE, help="Bootstrap unit of the fit: cells ((budget × r) blocks) "
                                     "| runs."),
        workers: Optional[int] = typer.Option(None, help="Processes for the bootstraps (default: all cores)."),
    ) -> None:
        """Report a sweep: grid and status, compute spent, the fit with CIs and residuals, probe comparisons,
        every run; one HTML file with its figures inside, and the same tables as Markdown."""
        from loopscale.report.build import gather
        from loopscale.report.write import write_report

        sweep_dir = resolve_sweep(sweep_dir)
        html_path = output_path(out, sweep_dir)
        if workers is not None and workers < 1:
            raise UserError(f"--workers must be at least 1, got {workers}")
        with stage_progress() as progress:
            rep = gather(sweep_dir, starts=starts, bootstrap=bootstrap, seed=seed, huber_delta=huber_delta,
                         resample=resample, workers=workers, progress=progress)
            try:
                html, md = write_report(rep, html_path)
            except OSError as e:
                raise UserError(f"{html_path}: cannot write the report there ({e.strerror or e})") from None
        console = make_console()
        console.print(f"sweep {sweep_dir}: {counts_line(rep.counts)}", highlight=False, soft_wrap=True)
        f = rep.fit.result
        if f is None:
            console.print(f"fit: {rep.fit.reason}", highlight=False, soft_wrap=True, markup=False)
        else:
            ci = f.ci["phi"]
            phi = "not identifiable" if f.fit.phi is None else f"φ = {num(f.fit.phi, 3)}" + (
                f" [{num(ci[0], 3)}, {num(ci[1], 3)}]" if ci else "")
            console.print(f"fit ({f.fit.n_runs} runs): {phi}, R² = {num(f.fit.r2)}", highlight=False, soft_wrap=True,
                          markup=False)
        for p in rep.probes:
            line = p.reason
            if p.doc is not None:
                line = f"Δφ = {num(p.doc['delta_phi'], 3, sign='+')}. {p.doc['verdict']['text']}"
            console.print(f"compare {p.probe}: {line}", highlight=False, soft_wrap=True, markup=False)
        n_fig = rep.n_figures
        console.print(f"wrote {html} ({n_fig} figures inside) and {md}", highlight=False, soft_wrap=True, markup=False)
