"""`loopscale compare --probe NAME`: φ of a probe against the baseline, with a paired bootstrap."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from loopscale.analysis import defaults
from loopscale.commands.diagnostics import print_diagnostics
from loopscale.commands.stages import stage_progress
from loopscale.errors import UserError
from loopscale.fmt import num
from loopscale.probes import choices as probe_choices


def _ci(ci) -> str:
    return "—" if ci is None else f"[{num(ci[0], 3, sign='+')}, {num(ci[1], 3, sign='+')}]"


def _print_compare(doc: dict, out: Console) -> None:
    from loopscale.analysis.law import FORMULA_TEXT

    base, probe = doc["baseline"], doc["probe"]
    t = Table(title=f"probe {probe['name']} vs baseline {base['name']}: {FORMULA_TEXT}, same objective and bounds")
    for col in ("", "runs (looped)", "φ", "95% CI", "p (Δφ = 0)", "R²", "α", "β", "E", "converged"):
        t.add_column(col, justify="left" if col == "" else "right")
    for key, side in (("baseline", base), ("probe", probe)):
        p = side["params"]
        t.add_row(f"{key}: {side['name']}", f"{side['n_runs']} ({side['n_looped_runs']})", num(side["phi"], 3),
                  "—" if side["ci"] is None else f"[{num(side['ci'][0], 3)}, {num(side['ci'][1], 3)}]", "",
                  num(side["r2"]), num(p["alpha"]), num(p["beta"]), num(p["E"]), str(side["converged"]))
    p_value = doc["p_value"]
    t.add_row("Δφ = probe − baseline", "", num(doc["delta_phi"], 3, sign="+"), _ci(doc["delta_phi_ci"]),
              "—" if p_value is None else f"{p_value:.3g}", "", "", "", "", "")
    out.print(t)
    for key, side in (("baseline", base), ("probe", probe)):
        if side.get("diagnostics"):
            print_diagnostics(side["diagnostics"], out, title=f"{key} {side['name']}")

    loss = Table(title="at matched compute (same budget, r and width): probe − baseline")
    for col in ("r", "runs", "cells", "Δloss mean (nats)", "Δloss median", "Δ best loss per cell", "D_probe/D_base"):
        loss.add_column(col, justify="right")
    tokens = doc["token_gain"] or {}
    for key, row in doc["loss_change"].items():
        ratio = tokens.get("median") if key == "all" else tokens.get("per_r", {}).get(key)
        loss.add_row(key, str(row["n_runs"]), str(row["n_cells"]), num(row["mean"], sign="+"),
                     num(row["median"], sign="+"), num(row["best"], sign="+"), num(ratio, 3))
    out.print(loss)
    out.print(doc["verdict"]["text"], highlight=False, soft_wrap=True)
    boot = doc["bootstrap"]
    if boot:
        failed = boot["n_failed"]
        out.print(f"bootstrap: {boot['n_resamples']} paired resamples of {boot['n_units']} (budget × r) cells, "
                  f"{boot['n_used']} used (failed: baseline {failed['baseline']}, probe {failed['probe']}); "
                  f"p-value two-sided, from the resamples' side of 0", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    @app.command()
    def compare(
        source: Path = typer.Argument(..., help="Sweep folder (baseline and probe runs) or a CSV/Parquet runs "
                                      "table with a probe column (baseline rows: none)."),
        probe: str = typer.Option(..., "--probe", help=f"The probe to compare: {probe_choices(skip_baseline=True)}."),
        baseline: str = typer.Option("none", "--baseline", help=f"The probe taken as baseline: {probe_choices()}."),
        out: Optional[Path] = typer.Option(None, "--out", help="Folder for compare-<probe>.json and the plot "
                                           "(default: beside the source)."),
        starts: int = typer.Option(defaults.STARTS, help="Random starts of each multistart (plus a fixed grid of "
                                   f"{defaults.GRID_STARTS})."),
        bootstrap: int = typer.Option(defaults.BOOTSTRAP, help="Paired bootstrap resamples of (budget × r) cells "
                                      "(0 = none)."),
        seed: int = typer.Option(defaults.SEED, help="Seed of starts and resamples: same seed, same output."),
        huber_delta: float = typer.Option(defaults.HUBER_DELTA, "--huber-delta", help="Huber δ on log-loss residuals."),
        workers: Optional[int] = typer.Option(None, help="Processes for the bootstrap (default: all cores)."),
        no_plots: bool = typer.Option(False, "--no-plots", help="Skip the PNG figure."),
        json_out: bool = typer.Option(False, "--json", help="Print the comparison JSON to stdout and nothing else."),
    ) -> None:
        """Fit baseline and probe with the same law; φ, Δφ with a paired bootstrap CI, loss and token changes."""
        from loopscale.analysis.compare import check_probe_name
        from loopscale.analysis.compare import compare as run_compare
        from loopscale.atomic import write_json_atomic
        from loopscale.runs_table import load_runs

        check_probe_name(probe, "--probe")
        check_probe_name(baseline, "--baseline")
        if workers is not None and workers < 1:
            raise UserError(f"--workers must be at least 1, got {workers}")
        table = load_runs(source)
        with stage_progress() as progress:
            result = run_compare(table, probe, baseline, starts=starts, bootstrap=bootstrap, seed=seed,
                                 huber_delta=huber_delta, workers=workers, progress=progress)
        doc = {"source": str(source), **result.to_json()}
        out_dir = out or (source if source.is_dir() else source.parent)
        path = out_dir / f"compare-{probe}.json"
        try:
            write_json_atomic(path, doc)
            plot = None if no_plots else _plot(result, out_dir)
        except OSError as e:
            raise UserError(f"{out_dir}: cannot write the comparison there ({e.strerror or e})") from None
        err = Console(stderr=True)
        for line in result.warnings:
            err.print(f"[yellow]warning:[/] {line}", highlight=False, soft_wrap=True)
        if json_out:
            sys.stdout.write(json.dumps(doc, allow_nan=False) + "\n")
            return
        console = Console()
        _print_compare(doc, console)
        for note in result.notes:
            console.print(f"note: {note}", highlight=False, soft_wrap=True)
        console.print(f"wrote {path}" + (f" and {plot}" if plot else ""), highlight=False)


def _plot(result, out_dir: Path) -> Path:
    from loopscale.analysis.compare_plots import write_plot

    return write_plot(result, out_dir)
