"""`loopscale report`: what one sweep has to say, gathered into one :class:`~loopscale.report.data.Report`.

:func:`gather` reads the sweep (run states with the scheduler's word, the results store), sums the
compute spent, fits the law to the baseline runs as `loopscale fit` does (analysis.fit.run_fit),
compares each probe present with the baseline as `loopscale compare` does (analysis.compare.compare),
reads every run's training curve (analysis.curves), finds the compute-optimal points of the fitted
runs, measured and as the law predicts them (analysis.optimal), and renders the figures as PNG bytes. Nothing here formats: report.sections lays the report out as
tables, report.html and report.md render it, report.write writes both.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from loopscale.analysis.compare import compare
from loopscale.analysis.defaults import BOOTSTRAP, HUBER_DELTA, RESAMPLE, SEED, STARTS
from loopscale.analysis.fit import check_settings, run_fit
from loopscale.analysis.law import FitData, predict_loss
from loopscale.analysis.regime import regime_diagnostics
from loopscale.errors import UserError
from loopscale.report.data import BASELINE, FitPart, ProbePart, Report, TrainingPart
from loopscale.runs_table import select_probe, usable_rows
from loopscale.store import FINISHED, GRID_FILE, STATES, load_results
from loopscale.submit.scheduler import run_states


def gather(sweep_dir: str | Path, *, starts: int = STARTS, bootstrap: int = BOOTSTRAP, seed: int = SEED,
           huber_delta: float = HUBER_DELTA, resample: str = RESAMPLE, workers: int | None = None,
           plots: bool = True, progress=None) -> Report:
    """Everything the report shows for ``sweep_dir``. The fit settings are `loopscale fit`'s (the
    compare uses the same starts, resamples, seed and δ); ``progress(stage, done, total)`` reports work.
    A sweep with too few finished runs still gives a report, its fit part saying why there is no fit."""
    check_settings(starts=starts, bootstrap=bootstrap, seed=seed, huber_delta=huber_delta, resample=resample)
    say = progress or (lambda stage, done, total: None)
    sweep_dir = Path(sweep_dir)
    say("read the sweep", 0, 1)
    runs = load_results(sweep_dir)
    states = run_states(sweep_dir)  # the scheduler's word on runs in flight, as `loopscale status`
    known = runs["run_id"].isin(list(states))
    runs.loc[known, "status"] = [states[rid].state for rid in runs.loc[known, "run_id"]]
    runs.loc[known, "detail"] = [states[rid].detail or None for rid in runs.loc[known, "run_id"]]
    labels = probe_labels(runs)
    runs["probe"] = labels
    say("read the sweep", 1, 1)

    training = training_part(sweep_dir, runs, plots=plots, progress=say)
    kw = dict(starts=starts, bootstrap=bootstrap, seed=seed, huber_delta=huber_delta)
    fit = fit_part(runs, resample=resample, workers=workers, plots=plots, progress=_prefixed(say, "fit"), **kw)
    probes = []
    for probe in sorted(set(labels[runs["r"] > 1]) - {BASELINE}):
        probes.append(probe_part(runs, probe, workers=workers, plots=plots,
                                 progress=_prefixed(say, f"compare {probe}"), **kw))
    grid_text, name, description = _grid(sweep_dir)
    settings = {"starts": starts, "bootstrap": bootstrap, "seed": seed, "huber_delta": huber_delta,
                "resample": fit.result.resample if fit.result else resample}
    return Report(sweep_dir=sweep_dir, name=name, description=description, grid_text=grid_text,
                  created=time.strftime("%Y-%m-%d %H:%M %Z"), runs=runs,
                  counts=status_counts(runs["status"]),
                  cost=cost_table(runs), fit=fit, probes=probes, settings=settings, training=training)


def training_part(sweep_dir: Path, runs: pd.DataFrame, *, plots: bool = True, progress=None) -> TrainingPart:
    """Every run's training curve (runs/<id>/metrics.jsonl), drawn one panel per budget and a row per
    probe; unreadable files are noted, never fatal."""
    from loopscale.analysis.curves import curve_panels, sweep_curves

    say = progress or (lambda stage, done, total: None)
    say("training curves", 0, 1)
    curves, notes = sweep_curves(sweep_dir, runs)
    panels = curve_panels(runs, curves, BASELINE)
    part = TrainingPart(n_runs=len({i for p in panels for i in p.run_ids}), notes=notes,
                        kind=panels[0].kind if panels else "flops",
                        probes=list(dict.fromkeys(p.probe for p in panels)))
    if plots and panels:
        from loopscale.analysis.paper_plots import training_curves

        part.figure = training_curves(panels)
    say("training curves", 1, 1)
    return part


def probe_labels(runs: pd.DataFrame) -> pd.Series:
    """Each run's probe; a missing label is the baseline (none)."""
    if "probe" not in runs.columns:
        return pd.Series(BASELINE, index=runs.index)
    return runs["probe"].fillna(BASELINE).astype(str).replace("", BASELINE)


def fit_part(runs: pd.DataFrame, *, starts: int, bootstrap: int, seed: int, huber_delta: float,
             resample: str = RESAMPLE, workers: int | None = None, plots: bool = True, progress=None) -> FitPart:
    """Fit the baseline runs (those of probe none when the sweep holds probes) with fit.run_fit."""
    present = sorted(set(probe_labels(runs)))
    probe = None if len(present) == 1 else BASELINE if BASELINE in present else present[0]
    table, notes = select_probe(runs, probe)
    usable, _ = usable_rows(table)
    if probe is not None:
        notes.insert(0, f"fitted the runs of probe {probe} (the sweep also holds "
                        f"{', '.join(p for p in present if p != probe)}; those are compared below)")
    part = FitPart(probe=probe, n_usable=len(usable), notes=notes)
    looped = bool(np.any((usable["r"] > 1) & (usable["n_rec"] > 0))) if len(usable) else False
    n_params = 6 if looped else 5
    if len(usable) < n_params:
        have = "has" if len(usable) == 1 else "have"
        part.reason = (f"Not enough finished runs to fit the law: {len(usable)} of the {_runs(len(table))} "
                       f"{have} a loss, fewer than the {n_params} parameters of the law.")
        return _without_fit(part, usable, plots, progress)
    try:
        part.result = run_fit(table, starts=starts, bootstrap=bootstrap, seed=seed, huber_delta=huber_delta,
                              resample=resample, workers=workers, progress=progress)
    except UserError as e:
        part.reason = f"No fit: {str(e).rstrip('.')}."
        return _without_fit(part, usable, plots, progress)
    if part.result.diagnostics is not None:
        part.diagnostics = part.result.diagnostics.to_json()
    fitted = part.result.runs
    predicted = predict_loss(part.result.fit.theta, FitData.from_table(fitted))
    ids = fitted["run_id"].astype(str).to_numpy() if "run_id" in fitted else np.arange(len(fitted)).astype(str)
    loss = fitted["loss"].to_numpy(dtype=float)
    part.residuals = pd.DataFrame({"run_id": ids, "r": fitted["r"].to_numpy(), "loss": loss,
                                   "predicted": predicted, "resid": loss - predicted})
    if plots:
        from loopscale.analysis.fit_plots import render

        part.figures = _staged("figures", render, part.result, progress)
        part.figures.update(_staged("compute-optimal figures", optima_figures, (fitted, part.result.fit.theta),
                                    progress))
    return part


def _without_fit(part: FitPart, usable: pd.DataFrame, plots: bool, progress) -> FitPart:
    """A fit part without a fit still judges the design (regime diagnostics without fit checks) and
    draws the iso-FLOP cells' minima."""
    if len(usable) == 0:
        return part
    part.diagnostics = regime_diagnostics(usable).to_json()
    part.design_only = True
    if plots:
        part.figures.update(_staged("compute-optimal figures", optima_figures, (usable, None), progress))
    return part


def optima_figures(args) -> dict[str, bytes]:
    """The iso-FLOP minima, N* against C and loss-gap figures of the fitted runs; args = (runs, θ or None)."""
    from loopscale.analysis.optimal import optima
    from loopscale.analysis.paper_plots import render_optima

    table, theta = args
    return render_optima(optima(table, theta))


def probe_part(runs: pd.DataFrame, probe: str, *, starts: int, bootstrap: int, seed: int, huber_delta: float,
               workers: int | None = None, plots: bool = True, progress=None) -> ProbePart:
    """Compare ``probe`` with the baseline (compare.compare); a comparison that cannot be made says why."""
    part = ProbePart(probe)
    try:
        part.result = compare(runs, probe, BASELINE, starts=starts, bootstrap=bootstrap, seed=seed,
                              huber_delta=huber_delta, workers=workers, progress=progress)
    except UserError as e:
        part.reason = f"No comparison for probe {probe}: {str(e).rstrip('.')}."
        return part
    part.doc = part.result.to_json()
    if plots:
        from loopscale.analysis.compare_plots import render

        part.figure = _staged("figure", render, part.result, progress)
    return part


def _staged(stage: str, render, result, progress):
    """Render figures as one progress stage (progress: the (stage, done, total) callback, or None)."""
    say = progress or (lambda stage, done, total: None)
    say(stage, 0, 1)
    out = render(result)
    say(stage, 1, 1)
    return out


def cost_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Compute spent per (probe, r): ``runs`` (in the grid), ``finished`` (with a result: done or
    diverged), ``tokens`` and ``flops`` trained by the finished runs, ``planned_flops`` of every run
    (FLOPs NaN where a run's are unknown), and hours from result.json's wall_time_s: ``wall_h`` in all, ``gpu_h`` of
    runs on a GPU, ``cpu_h`` of runs on the CPU (wall-clock, one device per run). Failed attempts
    leave no wall time and are not counted."""
    df = pd.DataFrame({"probe": probe_labels(runs), "r": runs["r"]})
    finished = runs["status"].isin(FINISHED).to_numpy()
    df["finished"] = finished.astype(int)

    def col(name: str) -> np.ndarray:
        if name not in runs:
            return np.full(len(runs), np.nan)
        return pd.to_numeric(runs[name], errors="coerce").to_numpy(dtype=float)

    flops = col("flops_total")
    flops = np.where(np.isnan(flops), col("tokens") * col("flops_per_token"), flops)
    df["tokens"] = np.where(finished, col("tokens"), 0.0)
    df["flops"] = np.where(finished, flops, 0.0)
    df["planned_flops"] = flops
    wall = np.where(finished, np.nan_to_num(col("wall_time_s")), 0.0) / 3600
    device = runs["device"].fillna("").astype(str).str.lower() if "device" in runs else pd.Series("", index=runs.index)
    on_cpu = (device == "cpu").to_numpy()
    df["wall_h"] = wall
    df["gpu_h"] = np.where(~on_cpu & (device != "").to_numpy(), wall, 0.0)
    df["cpu_h"] = np.where(on_cpu, wall, 0.0)
    df["runs"] = 1
    known = lambda s: s.sum(min_count=len(s))  # noqa: E731 - NaN unless every run's value is known
    agg = {"runs": "sum", "finished": "sum", "tokens": "sum", "flops": known, "wall_h": "sum", "gpu_h": "sum",
           "cpu_h": "sum", "planned_flops": known}
    rows = df.groupby(["probe", "r"], as_index=False).agg(agg)
    total = df.agg(agg).to_frame().T.assign(probe="all", r=np.nan)
    return pd.concat([rows, total], ignore_index=True)[["probe", "r"] + list(agg)]


def _grid(sweep_dir: Path) -> tuple[str | None, str, str]:
    """The kept grid.yaml: (its text, the grid's name, its description)."""
    try:
        text = (sweep_dir / GRID_FILE).read_text()
        raw = yaml.safe_load(text)
    except (OSError, yaml.YAMLError):
        return None, sweep_dir.name, ""
    raw = raw if isinstance(raw, dict) else {}
    return text, str(raw.get("name") or sweep_dir.name), str(raw.get("description") or "")


def status_counts(status: pd.Series) -> dict[str, int]:
    """{state: runs}, in the order of store.STATES (then any other), without zeros."""
    c = status.fillna("unknown").astype(str).value_counts()
    order = [s for s in STATES if s in c] + sorted(set(c.index) - set(STATES))
    return {s: int(c[s]) for s in order}


def _prefixed(say, prefix: str):
    return lambda stage, done, total: say(f"{prefix}: {stage}", done, total)


def _runs(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"
