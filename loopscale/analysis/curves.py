"""Training curves of a sweep: each run's loss against tokens, read from runs/<id>/metrics.jsonl.

The trainer appends one JSON line every ``log_every`` steps ({"step", "tokens", "loss", "lr_factor",
"tokens_per_s", "mfu"}). :func:`read_curve` reads one whole file and keeps at most ``max_points``
of its lines (evenly spaced, first and last kept); :func:`sweep_curves` does so for every run of a
runs table and says, in one note per file, which could not be read. Nothing here draws
(analysis.paper_plots does).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from loopscale.store import FINISHED, METRICS_FILE, RUNS_DIR

MAX_POINTS = 300  # per run, after downsampling


@dataclass(frozen=True)
class Curve:
    """One run's training loss against tokens seen (downsampled), and how many lines the file had."""

    run_id: str
    tokens: np.ndarray
    loss: np.ndarray
    n_lines: int  # valid lines read, before downsampling
    n_bad: int = 0  # lines skipped: not JSON, or without a finite tokens/loss


def read_curve(path: str | Path, run_id: str = "", max_points: int = MAX_POINTS) -> tuple[Curve | None, str | None]:
    """(curve, None), or (None, why) when the file is missing, unreadable or holds no usable line.

    Lines that are not JSON objects with a finite ``tokens`` > 0 and a finite ``loss`` are skipped
    and counted (a run killed mid-write leaves a torn last line). Points are sorted by tokens; a
    resumed run's repeated steps keep their last value."""
    path = Path(path)
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return None, "no metrics.jsonl"
    except OSError as e:
        return None, f"metrics.jsonl unreadable ({e.strerror or type(e).__name__})"
    by_tokens: dict[float, float] = {}
    bad = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            tokens, loss = float(rec["tokens"]), float(rec["loss"])
        except (ValueError, TypeError, KeyError):
            bad += 1
            continue
        if not (math.isfinite(tokens) and math.isfinite(loss) and tokens > 0):
            bad += 1
            continue
        by_tokens[tokens] = loss
    if not by_tokens:
        why = f"metrics.jsonl has no usable line ({bad} unreadable)" if bad else "metrics.jsonl is empty"
        return None, why
    tokens = np.array(sorted(by_tokens))
    loss = np.array([by_tokens[t] for t in tokens])
    keep = downsample_index(len(tokens), max_points)
    return Curve(run_id or path.parent.name, tokens[keep], loss[keep], len(tokens), bad), None


def downsample_index(n: int, max_points: int = MAX_POINTS) -> np.ndarray:
    """Indices of at most ``max_points`` of ``n`` points, evenly spaced, first and last included."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, max(2, max_points))).astype(int))


def sweep_curves(sweep_dir: str | Path, runs: pd.DataFrame, max_points: int = MAX_POINTS
                 ) -> tuple[dict[str, Curve], list[str]]:
    """The curve of every run in ``runs`` (column run_id) by run id, and one note per run whose
    metrics could not be read (a run not started yet has no file and gets no note)."""
    root = Path(sweep_dir) / RUNS_DIR
    curves: dict[str, Curve] = {}
    notes: list[str] = []
    for rid in runs["run_id"].astype(str):
        curve, why = read_curve(root / rid / METRICS_FILE, rid, max_points)
        if curve is not None:
            curves[rid] = curve
            if curve.n_bad:
                notes.append(f"run {rid}: skipped {curve.n_bad} unreadable line(s) of metrics.jsonl")
        elif why != "no metrics.jsonl":
            notes.append(f"run {rid}: {why}; no training curve")
    return curves, notes


def panel_key(runs: pd.DataFrame) -> tuple[pd.Series, str]:
    """Which panel each run goes in: its FLOP budget when every run has one, else its token budget
    (planned tokens D). Returns (key per run, "flops" | "tokens")."""
    budget = pd.to_numeric(runs["budget_flops"], errors="coerce") if "budget_flops" in runs else None
    if budget is not None and len(runs) and budget.notna().all():
        return budget.astype(float), "flops"
    return pd.to_numeric(runs["tokens"], errors="coerce").astype(float), "tokens"


@dataclass(frozen=True)
class CurvePanel:
    """The curves of one panel: one probe's runs at one FLOP budget (or token budget)."""

    probe: str
    key: float  # the budget: FLOPs, or tokens when ``kind`` is "tokens"
    kind: str  # flops | tokens
    run_ids: list[str]
    r: list[int]
    finished: list[bool]  # done or diverged (unfinished runs' curves are partial)
    curves: list[Curve]


def curve_panels(runs: pd.DataFrame, curves: dict[str, Curve], baseline: str = "none") -> list[CurvePanel]:
    """Panels of training curves: a row per probe (the baseline first), a panel per budget (see
    :func:`panel_key`), the runs with a curve in each, sorted by r then N. A probe without r = 1
    runs of its own shows the baseline's r = 1 runs beside its own (at r = 1 there is no loop to
    change, as runs_table.select_probe reuses them)."""
    if runs.empty or not curves or "r" not in runs:
        return []
    df = runs.copy()
    df["_probe"] = df["probe"].fillna(baseline).astype(str).replace("", baseline) if "probe" in df else baseline
    df["_key"], kind = panel_key(df)
    df["_n"] = pd.to_numeric(df["n_once"], errors="coerce") + pd.to_numeric(df["n_rec"], errors="coerce") \
        if {"n_once", "n_rec"} <= set(df.columns) else 0.0
    df = df[df["run_id"].astype(str).isin(list(curves)) & df["_key"].notna() & df["r"].notna()]
    probes = sorted(set(df["_probe"]), key=lambda p: (p != baseline, p))
    keys = sorted(set(df["_key"]))
    status = df["status"].astype(str) if "status" in df else pd.Series("done", index=df.index)
    df["_finished"] = status.isin(FINISHED)
    panels = []
    for p in probes:
        mine = df["_probe"] == p
        if p != baseline and not ((df["r"] == 1) & mine).any():
            mine |= (df["_probe"] == baseline) & (df["r"] == 1)
        for k in keys:
            sub = df[mine & (df["_key"] == k)].sort_values(["r", "_n", "run_id"], kind="stable")
            if sub.empty:
                continue
            ids = sub["run_id"].astype(str).tolist()
            panels.append(CurvePanel(p, float(k), kind, ids, [int(v) for v in sub["r"]],
                                     [bool(v) for v in sub["_finished"]], [curves[i] for i in ids]))
    return panels
