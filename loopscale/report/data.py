"""What a report holds: the sweep, its runs and cost, the fit of the baseline and one comparison per
probe. Plain data: :mod:`loopscale.report.build` fills it, :mod:`loopscale.report.sections` lays it out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from loopscale.analysis.compare import Comparison
    from loopscale.analysis.fit import FitReport

BASELINE = "none"  # the probe of the baseline runs


@dataclass
class FitPart:
    """The fit of the baseline runs, or why there is none (one sentence in ``reason``)."""

    probe: str | None  # the probe whose runs were fitted; None when the sweep holds one probe only
    n_usable: int  # finished runs with a loss among them
    result: FitReport | None = None
    reason: str | None = None
    notes: list[str] = field(default_factory=list)  # which runs were fitted
    figures: dict[str, bytes] = field(default_factory=dict)  # fit_*.png and the compute-optimal figures by name
    residuals: pd.DataFrame | None = None  # run_id, predicted, resid (nats), one row per fitted run
    # regime.Diagnostics.to_json() of the fitted runs: the fit's own, or, when there is no fit, the
    # design's alone (cells, tokens per parameter; no fit checks), flagged by ``design_only``
    diagnostics: dict | None = None
    design_only: bool = False


@dataclass
class TrainingPart:
    """The training curves (loss against tokens from each run's metrics.jsonl)."""

    figure: bytes | None = None
    n_runs: int = 0  # runs with a curve
    kind: str = "flops"  # panels per FLOP budget, or per token budget ("tokens")
    probes: list[str] = field(default_factory=list)  # a row of panels each
    notes: list[str] = field(default_factory=list)  # metrics files that could not be read


@dataclass
class ProbePart:
    """One probe against the baseline: the comparison (and its JSON document), or why there is none."""

    probe: str
    result: Comparison | None = None
    doc: dict | None = None  # Comparison.to_json(): what compare-<probe>.json holds
    reason: str | None = None
    figure: bytes | None = None


@dataclass
class Report:
    sweep_dir: Path
    name: str
    description: str
    grid_text: str | None  # the sweep's grid.yaml, as kept
    created: str  # local time the report was made
    runs: pd.DataFrame  # every run (results store columns), ``status`` with the scheduler's word
    counts: dict[str, int]  # {state: runs}
    cost: pd.DataFrame  # see :func:`loopscale.report.build.cost_table`
    fit: FitPart
    probes: list[ProbePart]  # one per probe with looped runs in the sweep, besides the baseline
    settings: dict  # fit settings: starts, bootstrap, seed, huber_delta, resample
    training: TrainingPart = field(default_factory=TrainingPart)

    @property
    def n_figures(self) -> int:
        """Figures in the HTML report."""
        return (len(self.fit.figures) + sum(p.figure is not None for p in self.probes)
                + (self.training.figure is not None))
