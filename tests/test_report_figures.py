"""The report's paper figures: the data behind them (training curves, iso-FLOP parabolas and their
minima, the law's compute-optimal N* and loss gap) checked as numbers, and the figures drawn for
the sweeps that have little to show (no finished run, one budget, token budgets, probes)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from loopscale.analysis.curves import MAX_POINTS, curve_panels, downsample_index, read_curve, sweep_curves
from loopscale.analysis.law import Law
from loopscale.analysis.optimal import (cell_parabolas, law_gaps, law_optima, law_optimum, measured_gaps,
                                        measured_optima, optima, run_costs)
from loopscale.analysis.paper_plots import render_optima, training_curves

PNG = b"\x89PNG\r\n\x1a\n"
LAW = Law(E=1.5, A=28.0, alpha=0.2, B=900.0, beta=0.37, phi=0.5)
V = 256  # vocabulary of the synthetic runs' head cost


def law_theta(law: Law = LAW) -> np.ndarray:
    return np.array([math.log(law.E), math.log(law.A), law.alpha, math.log(law.B), law.beta, law.phi])


def design(budgets, widths, rs=(1, 2)) -> pd.DataFrame:
    """Runs of an iso-depth design of 4 effective layers: r = 1 has 4 plain layers (N_once), r = 2 a prelude
    and coda layer (N_once) and one layer looped twice (N_rec); FLOPs per token 6·(4 layers + head), the
    same at every r. Loss exactly the law's."""
    rows = []
    for c in budgets:
        for d in widths:
            layer = 12.0 * d * d
            fpt = 6 * (4 * layer + d * V)
            for r in rs:
                n_once, n_rec = (4 * layer, 0.0) if r == 1 else (2 * layer, layer)
                tokens = c / fpt
                n_eff = n_once + r**LAW.phi * n_rec
                loss = LAW.E + LAW.A * n_eff**-LAW.alpha + LAW.B * tokens**-LAW.beta
                rows.append({"run_id": f"C{c:g}-d{d}-r{r}", "r": r, "width": d, "n_once": n_once, "n_rec": n_rec,
                             "tokens": tokens, "flops_per_token": fpt, "flops_total": c, "budget_flops": c,
                             "loss": loss, "status": "done", "detail": None, "probe": "none", "seed": 0})
    return pd.DataFrame(rows)


# --- training curves ----------------------------------------------------------------------------------

def write_metrics(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))


def test_read_curve_downsamples_long_files_keeping_first_and_last(tmp_path):
    n = 2000
    write_metrics(tmp_path / "a" / "metrics.jsonl",
                  [{"step": i, "tokens": 1024 * i, "loss": 5.0 / i, "lr_factor": 1, "tokens_per_s": 1, "mfu": None}
                   for i in range(1, n + 1)])
    curve, why = read_curve(tmp_path / "a" / "metrics.jsonl")
    assert why is None and curve.run_id == "a" and curve.n_lines == n and curve.n_bad == 0
    assert len(curve.tokens) <= MAX_POINTS and len(curve.tokens) > MAX_POINTS - 5
    assert curve.tokens[0] == 1024 and curve.tokens[-1] == 1024 * n and np.all(np.diff(curve.tokens) > 0)
    assert np.allclose(curve.loss, 5.0 * 1024 / curve.tokens)  # each point keeps its own loss
    assert list(downsample_index(5, 300)) == [0, 1, 2, 3, 4]


def test_garbled_and_missing_metrics_are_noted_never_fatal(tmp_path):
    runs = pd.DataFrame({"run_id": ["good", "torn", "junk", "empty", "absent"]})
    root = tmp_path / "runs"
    write_metrics(root / "good" / "metrics.jsonl", [{"step": 1, "tokens": 10, "loss": 3.0}, {"step": 2, "tokens": 20,
                                                                                           "loss": 2.5}])
    # a resumed run repeats step 2 (the later line wins); a killed run leaves a torn last line; a NaN loss
    write_metrics(root / "torn" / "metrics.jsonl", [{"step": 1, "tokens": 10, "loss": 3.0}, {"step": 2, "tokens": 20,
                  "loss": 2.9}, {"step": 2, "tokens": 20, "loss": 2.7}, {"step": 3, "tokens": 30, "loss": float("nan")},
                  '{"step": 4, "tokens": 40, "lo'])
    write_metrics(root / "junk" / "metrics.jsonl", ["not json", "[1, 2]"])
    (root / "empty").mkdir()
    (root / "empty" / "metrics.jsonl").write_text("")
    curves, notes = sweep_curves(tmp_path, runs)
    assert set(curves) == {"good", "torn"}
    assert list(curves["torn"].tokens) == [10, 20] and list(curves["torn"].loss) == [3.0, 2.7]
    assert curves["torn"].n_bad == 2
    assert notes == ["run torn: skipped 2 unreadable line(s) of metrics.jsonl",
                     "run junk: metrics.jsonl has no usable line (2 unreadable); no training curve",
                     "run empty: metrics.jsonl is empty; no training curve"]  # absent: not started, no note


def curve_of(rid, final=3.0):
    from loopscale.analysis.curves import Curve

    return Curve(rid, np.array([1e3, 1e4]), np.array([5.0, final]), 2)


def test_curve_panels_per_budget_a_row_per_probe_sharing_the_r1_runs():
    runs = pd.DataFrame({
        "run_id": ["a", "b", "c", "d", "e", "f"], "r": [1, 2, 2, 1, 2, 2], "probe": ["none", "none", "tbptt"] * 2,
        "budget_flops": [1e9] * 3 + [2e9] * 3, "tokens": [1.0] * 6, "n_once": [10.0] * 6, "n_rec": [5.0] * 6,
        "status": ["done", "done", "running", "done", "done", "done"]})
    curves = {rid: curve_of(rid) for rid in "abcdef"}
    panels = curve_panels(runs, curves)
    assert [(p.probe, p.key, p.run_ids) for p in panels] == [
        ("none", 1e9, ["a", "b"]), ("none", 2e9, ["d", "e"]), ("tbptt", 1e9, ["a", "c"]), ("tbptt", 2e9, ["d", "f"])]
    assert panels[2].finished == [True, False] and panels[2].r == [1, 2] and {p.kind for p in panels} == {"flops"}
    png = training_curves(panels)
    assert png[:8] == PNG

    tokens = runs.assign(budget_flops=np.nan, tokens=[100.0, 100.0, 100.0, 200.0, 200.0, 200.0], probe="none")
    panels = curve_panels(tokens, {k: v for k, v in curves.items() if k != "e"})
    assert [(p.kind, p.key, p.run_ids) for p in panels] == [("tokens", 100.0, ["a", "b", "c"]),
                                                           ("tokens", 200.0, ["d", "f"])]
    assert curve_panels(runs, {}) == [] and training_curves([]) is None


# --- iso-FLOP parabolas and measured optima ------------------------------------------------------------

def test_cell_parabola_through_its_runs_and_its_vertex():
    n_star, floor, c = 1e5, 3.0, 0.08
    n = np.array([2e4, 5e4, 2e5, 4e5, 4e5])
    x = np.log(n) - math.log(n_star)
    table = pd.DataFrame({"n_once": n, "n_rec": 0.0, "r": 1, "budget_flops": 1e12, "loss": floor + c * x * x})
    table.loc[4, "loss"] += 0.01  # a seed repeat: the parabola goes through the mean of the two
    table.loc[3, "loss"] -= 0.01
    (cell,) = cell_parabolas(table)
    m = cell.minimum
    assert m.bracketed and m.where == "inside" and m.n_star == pytest.approx(n_star, rel=1e-9)
    assert m.loss_star == pytest.approx(floor) and m.curvature == pytest.approx(c)
    assert cell.curve_n[0] == pytest.approx(2e4) and cell.curve_n[-1] == pytest.approx(4e5)
    xs = np.log(cell.curve_n) - math.log(n_star)
    assert np.allclose(cell.curve_loss, floor + c * xs * xs)
    assert len(cell.n) == 5  # every run kept for the scatter


def test_measured_optima_and_gap_to_r1():
    rows = []
    for r, n_star, floor in ((1, 1e5, 3.0), (2, 4e4, 3.05), (4, 1e7, 3.2)):  # r = 4: vertex far above the range
        for n in (2e4, 5e4, 2e5, 5e5):
            rows.append({"n_once": n, "n_rec": 0.0, "r": r, "budget_flops": 1e12,
                         "loss": floor + 0.05 * (math.log(n) - math.log(n_star)) ** 2})
    rows.append({"n_once": 1e5, "n_rec": 0.0, "r": 2, "budget_flops": 2e12, "loss": 2.9})  # one width: no vertex
    opt = measured_optima(cell_parabolas(pd.DataFrame(rows)))
    assert list(zip(opt["r"], opt["bracketed"], opt["where"])) == [(1, True, "inside"), (2, True, "inside"),
                                                                   (4, False, "above")]
    assert opt["reach"].iloc[0] == 1.0 and opt["reach"].iloc[2] == pytest.approx(1e7 / 5e5)
    gaps = measured_gaps(opt)
    assert list(gaps["r"]) == [2, 4] and list(gaps["bracketed"]) == [True, False]
    assert gaps["gap"].to_numpy() == pytest.approx([0.05, 0.2])
    assert measured_gaps(opt[opt["r"] != 1]).empty  # no r = 1 cell: no gap


# --- the law's compute-optimal point --------------------------------------------------------------------

def chinchilla_n_star(law: Law, k: float, c: float, fpt_per_n: float) -> float:
    """argmin_N of E + A·(k·N)^−α + B·(C / (f·N))^−β: N* = (α·A·k^−α / (β·B·(f/C)^β))^(1/(α+β))."""
    return (law.alpha * law.A * k**-law.alpha / (law.beta * law.B * (fpt_per_n / c) ** law.beta)) ** (
        1 / (law.alpha + law.beta))


@pytest.mark.parametrize("r", [1, 2])
def test_law_optimum_matches_the_closed_form_when_flops_are_proportional_to_n(r):
    """With F = 6·(N_once + r·N_rec) (no head, no attention) and a fixed N_once share the optimum has a closed
    form; run_costs must recover F(N) and the share from the runs alone."""
    share = 1.0 if r == 1 else 2 / 3
    n = np.geomspace(1e5, 1e7, 5)
    fpt = 6 * (share * n + r * (1 - share) * n)
    table = pd.DataFrame({"n_once": share * n, "n_rec": (1 - share) * n, "r": r, "flops_per_token": fpt})
    cost = run_costs(table)[r]
    assert cost.flops_per_token(3e6) == pytest.approx(6 * (share + r * (1 - share)) * 3e6, rel=1e-9)
    assert cost.n_once(3e6) == pytest.approx(share * 3e6)
    k = share + r**LAW.phi * (1 - share)  # N_eff = k·N
    for c in (1e15, 1e16):
        expect = chinchilla_n_star(LAW, k, c, 6 * (share + r * (1 - share)))
        assert 1e4 < expect < 1e8  # inside the searched range (a decade around the N trained)
        o = law_optimum(law_theta(), cost, c)
        assert o.n_star == pytest.approx(expect, rel=1e-5)
        d = c / (6 * (share + r * (1 - share)) * expect)
        assert o.tokens == pytest.approx(d, rel=1e-5)
        assert o.loss_star == pytest.approx(LAW.E + LAW.A * (k * expect) ** -LAW.alpha + LAW.B * d**-LAW.beta, rel=1e-9)
    assert law_optimum(law_theta(), cost, 1e30) is None  # optimum far beyond the N trained: not resolved


def test_law_gap_is_the_difference_of_the_optima_and_r_costs_come_from_each_rs_runs():
    runs = design([1e12, 4e12], [16, 24, 32, 48])
    costs = run_costs(runs)
    assert set(costs) == {1, 2}
    d = 32
    assert costs[2].flops_per_token(36 * d * d) == pytest.approx(6 * (48 * d * d + d * V), rel=1e-3)  # N at r = 2
    assert costs[1].flops_per_token(48 * d * d) == pytest.approx(6 * (48 * d * d + d * V), rel=1e-3)
    law = law_optima(law_theta(), costs, [1e12, 2e12])
    gaps = law_gaps(law)
    assert list(gaps["r"]) == [2, 2]
    for _, g in gaps.iterrows():
        one = law[(law.r == 1) & (law.budget == g.budget)].loss_star.item()
        two = law[(law.r == 2) & (law.budget == g.budget)].loss_star.item()
        assert g.gap == pytest.approx(two - one) and g.gap > 0  # at φ < 1 looping costs loss at equal compute


def test_the_papers_law_on_the_papers_design_gives_the_papers_gaps_and_widths():
    """method.md §7: compute-optimal loss gap to r = 1 of 0.03–0.06 (r = 2), 0.05–0.08 (r = 4), 0.09–0.12 (r = 8)
    nats over 4.64e17–2.15e19 FLOPs; the project page's r = 1 cell minimum at 4.64e17 is N* = 67.8M. F(N) comes
    from the design's own tokens (D = C / F), as it would from a sweep's runs."""
    from loopscale.analysis.law import PAPER_LAW
    from loopscale.runs_table import paper_design

    runs = paper_design()
    runs["flops_per_token"] = runs["budget_flops"] / runs["tokens"]
    law = law_optima(law_theta(PAPER_LAW), run_costs(runs), [4.64e17, 2.15e19])
    assert len(law) == 8
    gaps = law_gaps(law).groupby("r")["gap"]
    lo, hi = gaps.min(), gaps.max()
    for r, (a, b) in {2: (0.02, 0.06), 4: (0.045, 0.09), 8: (0.07, 0.13)}.items():
        assert a < lo[r] < hi[r] < b, (r, lo[r], hi[r])
    n1 = law[(law.r == 1) & (law.budget == 4.64e17)].n_star.item()
    assert n1 == pytest.approx(67.8e6, rel=0.15)


# --- the figures for sweeps with little to show ----------------------------------------------------------

def test_optima_figures_for_full_one_budget_token_budget_and_empty_sweeps():
    runs = design([1e12, 4e12, 1.6e13], [8, 16, 32, 64])
    opt = optima(runs, law_theta())
    assert len(opt.cells) == 6 and not opt.law.empty and set(opt.law_gaps["r"]) == {2}
    # noise-free losses from the law: each cell's vertex lies near the law's own N* at that budget
    for _, m in opt.measured[opt.measured["bracketed"]].iterrows():
        law_n = law_optimum(law_theta(), run_costs(runs)[int(m.r)], m.budget).n_star
        assert m.n_star == pytest.approx(law_n, rel=0.5)
    pngs = render_optima(opt)
    assert list(pngs) == ["isoflop_minima.png", "optimal_n.png", "loss_gap.png"]
    assert all(p[:8] == PNG for p in pngs.values())

    one = optima(design([4e12], [8, 16, 32, 64]), None)  # one budget, no fit: points only, no law lines
    assert one.law.empty and len(one.measured) == 2
    assert list(render_optima(one)) == ["isoflop_minima.png", "optimal_n.png", "loss_gap.png"]

    only_r2 = optima(design([4e12], [8, 16, 32, 64], rs=(2,)), law_theta())
    assert list(render_optima(only_r2)) == ["isoflop_minima.png", "optimal_n.png"]  # no r = 1: no gap

    tokens = design([4e12], [8, 16, 32]).assign(budget_flops=np.nan)
    assert optima(tokens, law_theta()).cells == [] and render_optima(optima(tokens, law_theta())) == {}
    assert render_optima(optima(design([], []), None)) == {}


# --- the report -------------------------------------------------------------------------------------------

def report_md(runs, tmp_path, part):
    from loopscale.report.build import cost_table, status_counts, training_part
    from loopscale.report.data import Report
    from loopscale.report.md import to_markdown
    from loopscale.report.sections import layout

    settings = {"starts": 10, "bootstrap": 0, "seed": 0, "huber_delta": 1e-3, "resample": "cells"}
    rep = Report(sweep_dir=tmp_path, name="t", description="", grid_text=None, created="now", runs=runs,
                 counts=status_counts(runs["status"]), cost=cost_table(runs), fit=part, probes=[], settings=settings,
                 training=training_part(tmp_path, runs))
    return rep, to_markdown(rep, layout(rep))


def test_report_places_the_optimal_figures_after_the_isoflop_and_the_cells_beside_them(tmp_path):
    from loopscale.report.build import fit_part

    runs = design([1e12, 4e12, 1.6e13], [8, 16, 32, 64])
    for rid in runs["run_id"][:3]:
        write_metrics(tmp_path / "runs" / rid / "metrics.jsonl", [{"step": 1, "tokens": 100, "loss": 5.0},
                                                                  {"step": 2, "tokens": 200, "loss": 4.0}])
    part = fit_part(runs, starts=10, bootstrap=0, seed=0, huber_delta=1e-3, workers=1)
    assert {"isoflop_minima.png", "optimal_n.png", "loss_gap.png"} <= set(part.figures)
    assert part.diagnostics == part.result.diagnostics.to_json() and not part.design_only
    rep, md = report_md(runs, tmp_path, part)
    assert rep.n_figures == len(part.figures) + 1
    assert [h[3:] for h in md.splitlines() if h.startswith("## ")][3:5] == ["Training", "Fit"]
    training = md[md.index("## Training"):md.index("## Fit")]
    assert "Training loss of 3 runs" in training and "one panel per FLOP budget" in training
    fit = md[md.index("## Fit"):md.index("## Residuals")]
    assert fit.split("\n\n")[1].startswith(("Fit verdict", "> **Warning:** Fit verdict"))  # the verdict leads
    order = [fit.index(s) for s in ("`fit_isoflop.png`", "`isoflop_minima.png`", "### Iso-FLOP cells",
                                    "`optimal_n.png`", "`loss_gap.png`")]
    assert order == sorted(order)
    assert "0.03–0.12 nats" in fit and "No fit, so no law lines" not in fit


def test_report_without_a_fit_still_judges_the_design_and_draws_the_cells(tmp_path):
    from loopscale.report.build import fit_part

    runs = design([1e12], [8, 16, 32, 64], rs=(1,)).head(4)  # 4 runs: fewer than the 5 parameters
    part = fit_part(runs, starts=10, bootstrap=0, seed=0, huber_delta=1e-3, workers=1)
    assert part.result is None and part.reason.startswith("Not enough finished runs")
    assert part.design_only and part.diagnostics["n_cells"] == 1
    assert list(part.figures) == ["isoflop_minima.png", "optimal_n.png"]  # no r = 2: no gap; no fit: no law
    _, md = report_md(runs, tmp_path, part)
    fit = md[md.index("## Fit"):md.index("## Residuals")]
    assert "Regime of the runs (no fit to judge): " in fit and "### Iso-FLOP cells" in fit
    assert "No fit, so no law lines." in fit and "Fit verdict" not in fit
    assert "No training curves: no run has written a readable metrics.jsonl yet." in md


def test_report_of_a_sweep_with_no_finished_run(tmp_path):
    from loopscale.report.build import fit_part

    runs = design([1e12], [8, 16], rs=(1, 2)).assign(loss=np.nan, status="submitted")
    write_metrics(tmp_path / "runs" / runs["run_id"][0] / "metrics.jsonl", [{"step": 1, "tokens": 100, "loss": 5.0}])
    part = fit_part(runs, starts=10, bootstrap=0, seed=0, huber_delta=1e-3, workers=1)
    assert part.result is None and part.diagnostics is None and part.figures == {}
    rep, md = report_md(runs, tmp_path, part)
    assert rep.training.figure[:8] == PNG and rep.training.n_runs == 1 and rep.n_figures == 1
    assert "dashed: runs not finished yet" in md
