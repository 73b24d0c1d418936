"""Regime diagnostics (loopscale/analysis/regime.py, cells.py) and their place in `fit`, `compare` and `report`: constructed
losses only, no training. Fits use few starts and resamples to stay fast."""

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from loopscale.analysis.fit import run_fit
from loopscale.analysis.law import PAPER_LAW, Law
from loopscale.analysis.cells import cell_minima
from loopscale.analysis.regime import (
    BRACKETED_SHARE,
    PAPER_TOKENS_PER_PARAM,
    FitSummary,
    regime_diagnostics,
    seed_noise,
)
from loopscale.runs_table import paper_design, synthetic_runs
from sweep_fixtures import cli_in_process

NO_FLOOR = Law(E=1e-3, A=28.0, alpha=0.2, B=900.0, beta=0.37, phi=0.5)  # no loss floor: E goes to its bound
ZERO_WIDTH = re.compile(r"\[(-?[0-9.]+), \1\]")  # "[0.0498, 0.0498]"


def parabola(n, n_star, c=0.1, floor=3.0):
    return floor + c * (np.log(n) - np.log(n_star)) ** 2


# ---------------------------------------------------------------------------------------------
# Cells


def test_cell_minima_bracketed_below_above_flat_few():
    widths = np.array([1e6, 2e6, 4e6, 8e6, 16e6])
    cells = {  # r → (N, loss)
        1: (widths, parabola(widths, 4e6)),  # vertex inside
        2: (widths, parabola(widths, 1e5)),  # monotone up: optimum below the smallest width
        4: (widths, parabola(widths, 1e9)),  # monotone down: above the largest
        8: (widths, 3.0 - 0.1 * (np.log(widths) - np.log(4e6)) ** 2),  # concave: no minimum
        16: (widths[:2], parabola(widths[:2], 4e6)),  # two widths only
    }
    n = np.concatenate([v[0] for v in cells.values()])
    loss = np.concatenate([v[1] for v in cells.values()])
    r = np.concatenate([[k] * len(v[0]) for k, v in cells.items()])
    got = {c.r: c for c in cell_minima(n, loss, np.full(len(n), 1e18), r)}
    assert [got[k].where for k in (1, 2, 4, 8, 16)] == ["inside", "below", "above", "flat", "few"]
    assert [got[k].bracketed for k in (1, 2, 4, 8, 16)] == [True, False, False, False, False]
    inside = got[1]
    assert inside.n_star == pytest.approx(4e6, rel=1e-6) and inside.loss_star == pytest.approx(3.0, abs=1e-9)
    assert inside.curvature == pytest.approx(0.1, rel=1e-6)
    assert (inside.n_widths, inside.n_min, inside.n_max) == (5, 1e6, 16e6)
    assert got[2].n_star == pytest.approx(1e5, rel=1e-6) and got[2].n_star < got[2].n_min
    assert got[8].n_star is None and got[8].curvature < 0
    assert got[16].n_star is None and got[16].curvature is None and got[16].n_widths == 2


def test_cell_minima_average_seed_repeats_and_group_by_budget_and_probe():
    widths = np.array([1e6, 2e6, 4e6, 8e6])
    clean = parabola(widths, 3e6)
    # Two extra seeds at 2e6, ±0.05 around the clean loss: the width's mean is unchanged.
    n = np.concatenate([widths, [2e6, 2e6]])
    loss = np.concatenate([clean, [clean[1] + 0.05, clean[1] - 0.05]])
    (one,) = cell_minima(n, loss, np.full(6, 1e18), np.full(6, 2))
    assert one.n_widths == 4 and one.n_runs == 6 and one.n_star == pytest.approx(3e6, rel=1e-6)
    # The same runs under another probe and another budget are other cells; NaN budgets belong to none.
    n2, loss2 = np.tile(widths, 3), np.tile(clean, 3)
    budget = np.repeat([1e18, 1e18, np.nan], 4)
    probe = ["none"] * 4 + ["tbptt"] * 4 + ["none"] * 4
    cells = cell_minima(n2, loss2, budget, np.full(12, 2), probe)
    assert [(c.probe, c.budget) for c in cells] == [("none", 1e18), ("tbptt", 1e18)]
    with pytest.raises(ValueError, match="equal lengths"):
        cell_minima(n, loss[:-1], np.full(6, 1e18), np.full(6, 2))


def test_undertrained_design_is_not_bracketed_and_says_train_narrower():
    """The paper's widths at 1/100 of its budgets: every cell's optimum lies below the widths trained."""
    design = paper_design()
    design["tokens"] /= 100
    design["budget_flops"] /= 100
    diag = regime_diagnostics(synthetic_runs(PAPER_LAW, 0.0, design=design))
    assert diag.n_cells == 24 and diag.cells_bracketed == 0
    assert {c["where"] for c in diag.cells} == {"below"}
    assert not diag.trustworthy and diag.checks["cells_bracketed"] is False
    assert diag.reasons[0].startswith("0/24 iso-FLOP cells bracket their optimum: the compute-optimal width lies "
                                      "below the smallest width trained in 24 cells (train narrower models")
    assert diag.tokens_per_param[1] < PAPER_TOKENS_PER_PARAM[0]
    assert any(r.startswith("tokens per parameter 0.0228–1.87 (the paper's runs span 2.3–187)") for r in diag.reasons)


def test_paper_design_tokens_per_param_span_is_the_constant():
    diag = regime_diagnostics(synthetic_runs(PAPER_LAW, 0.0))
    lo, hi = diag.tokens_per_param
    assert (round(lo, 1), round(hi)) == PAPER_TOKENS_PER_PARAM
    assert diag.cells_bracketed >= BRACKETED_SHARE * diag.n_cells  # the law's own design brackets (20/24)


# ---------------------------------------------------------------------------------------------
# Seed noise, epochs


def test_seed_noise_pools_groups_identical_but_for_seed():
    rows = [  # (width, seed, loss): width 64 repeated twice, width 96 three times, width 128 once
        (64, 0, 1.0), (64, 1, 1.2), (96, 0, 2.0), (96, 1, 2.1), (96, 2, 2.2), (128, 0, 5.0)]
    df = pd.DataFrame([{"n_once": w * 1000.0, "n_rec": w * 500.0, "r": 2, "tokens": 1e6, "budget_flops": 1e15,
                        "width": w, "seed": s, "loss": loss} for w, s, loss in rows])
    noise = seed_noise(df)
    # pooled: sqrt((1·0.02 + 2·0.01) / (1 + 2))
    assert noise["sd"] == pytest.approx(math.sqrt(0.04 / 3), rel=1e-9)
    assert (noise["n_groups"], noise["n_runs"], noise["source"]) == (2, 5, "repeats")
    assert [g["n_seeds"] for g in noise["groups"]] == [2, 3]
    # Another r at the same width is not a repeat; no seed column, no repeats.
    other = df.copy()
    other.loc[1, "r"] = 4
    assert seed_noise(other)["n_groups"] == 1
    assert seed_noise(df.drop(columns="seed"))["sd"] is None
    diag = regime_diagnostics(df.drop(columns="seed"))
    assert diag.seed_noise["sd"] is None and any("seed noise unknown" in n for n in diag.notes + diag.reasons)
    # A given noise overrides the repeats.
    assert regime_diagnostics(df, seed_noise=0.05).seed_noise == {"sd": 0.05, "n_groups": 0, "n_runs": 0,
                                                                   "source": "given", "groups": []}


def test_epochs_read_from_the_data_dirs_meta(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps({"train_tokens": 2_000_000}))
    df = synthetic_runs(PAPER_LAW, 0.0).head(4).copy()
    df["tokens"] = [1e6, 2e6, 3e6, 4e6]
    df["data.dir"] = str(tmp_path)
    diag = regime_diagnostics(df)
    assert diag.epochs == [0.5, 2.0] and [r["epochs"] for r in diag.per_run] == [0.5, 1.0, 1.5, 2.0]
    assert all(r["tokens_per_param"] == pytest.approx(r["tokens"] / r["n"]) for r in diag.per_run)
    assert any("up to 2 epochs" in line for line in diag.reasons + diag.notes)
    df["data.dir"] = str(tmp_path / "absent")
    assert regime_diagnostics(df).epochs is None
    assert regime_diagnostics(df, train_tokens=4e6).epochs == [0.25, 1.0]


# ---------------------------------------------------------------------------------------------
# Verdicts on fits


@pytest.fixture(scope="module")
def clean_fit():
    runs = synthetic_runs(PAPER_LAW, 0.0)
    return runs, run_fit(runs, starts=20, bootstrap=4, seed=0, workers=1)


def test_a_clean_fit_on_the_papers_design_is_trustworthy(clean_fit):
    runs, rep = clean_fit
    diag = rep.diagnostics
    assert diag.trustworthy, diag.reasons
    assert diag.at_bounds == [] and diag.reasons == [] and diag.r2 > 0.999
    assert diag.phi_ci_width is not None and diag.split_half_consistent is True
    # The same fit judged against a seed noise far below its residuals: the law misses structure.
    tight = regime_diagnostics(runs, rep.summary(), seed_noise=diag.residual_rmse / 10)
    assert not tight.trustworthy and tight.checks["residual_vs_noise"] is False
    assert any("the seed-to-seed noise" in r for r in tight.reasons)
    assert regime_diagnostics(runs, rep.summary(), seed_noise=diag.residual_rmse).checks["residual_vs_noise"] is True


def test_fit_json_dict_criteria_r2_phi_ci_split_half_and_bounds():
    runs = synthetic_runs(PAPER_LAW, 0.0)
    doc = {"params": PAPER_LAW.to_dict(), "r2": 0.99, "residuals": {"all": {"rmse": 0.01}},
           "ci": {"phi": [0.4, 0.5]}, "split_half": {"low": {"phi": 0.42}, "high": {"phi": 0.47}}}
    ok = regime_diagnostics(runs, FitSummary.from_json(doc))
    assert ok.checks == {"one_recipe": True, "no_parameter_at_bound": True, "cells_bracketed": True, "r2": True,
                         "phi_ci_width": True, "split_half": True, "residual_vs_noise": None}
    bad = dict(doc, r2=0.9, ci={"phi": [0.1, 0.9]}, split_half={"low": {"phi": 0.0}, "high": {"phi": 0.9}},
               params=dict(doc["params"], E=math.exp(-3.0), phi=3.0))
    diag = regime_diagnostics(runs, FitSummary.from_json(bad))
    assert not diag.trustworthy
    assert diag.at_bounds == ["E", "phi"] and diag.bounds_hit == {"E": "lower", "phi": "upper"}
    assert diag.bound_values["E"] == pytest.approx(math.exp(-3.0))
    text = "\n".join(diag.reasons)
    assert "E is at its lower bound (0.04979): the losses do not flatten within the trained range" in text
    assert "phi is at its upper bound (3)" in text
    assert "R² is 0.900, below 0.98" in text and "the 95% CI of φ is 0.80 wide" in text
    assert "φ refitted on the lower and the upper budgets disagrees" in text
    # Halves with CIs of their own: each φ inside the other's CI.
    halves = {"low": {"phi": 0.42, "ci": [0.40, 0.50]}, "high": {"phi": 0.47, "ci": [0.41, 0.55]}}
    assert regime_diagnostics(runs, FitSummary.from_json(dict(doc, split_half=halves))).split_half_consistent is True
    halves["high"]["ci"] = [0.45, 0.48]
    assert regime_diagnostics(runs, FitSummary.from_json(dict(doc, split_half=halves))).split_half_consistent is False


def test_no_floor_puts_e_on_its_bound_and_the_verdict_says_so(tmp_path, capsys):
    runs = synthetic_runs(NO_FLOOR, 0.0)
    runs.to_csv(tmp_path / "runs.csv", index=False)
    code, out, err = cli_in_process(["fit", tmp_path / "runs.csv", "--json", "--starts", 20, "--bootstrap", 4,
                           "--workers", 1, "--no-plots"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    diag = doc["diagnostics"]
    for key in ("cells", "cells_bracketed", "n_cells", "tokens_per_param", "at_bounds", "trustworthy", "reasons",
                "residual_rmse", "seed_noise", "epochs", "per_run"):
        assert key in diag, key
    assert "E" in diag["at_bounds"] and diag["trustworthy"] is False
    assert diag["reasons"][0].startswith("E is at its lower bound (0.04979)")
    assert len(diag["tokens_per_param"]) == 2 and diag["tokens_per_param"][0] < diag["tokens_per_param"][1]
    assert diag["seed_noise"]["sd"] is None and len(diag["per_run"]) == 116
    assert all(set(c) >= {"budget", "r", "n_widths", "n_star", "loss_star", "where", "bracketed"} for c in diag["cells"])
    assert doc["ci"]["E"] is not None and "E" in doc["ci_degenerate"]  # the CI stays, flagged
    # The human output leads with the verdict, shows the cells and never a zero-width CI.
    code, out, err = cli_in_process(["fit", tmp_path / "runs.csv", "--starts", 20, "--bootstrap", 4, "--workers", 1,
                           "--no-plots"], capsys)
    assert code == 0, err
    assert out.index("NOT trustworthy") < out.index("E is at its lower bound") < out.index("iso-FLOP cells: parabola") \
        < out.index("95% CI")
    assert "at lower bound (0.0498)" in out
    assert not ZERO_WIDTH.search(out), ZERO_WIDTH.search(out).group(0)
    assert "seed noise unknown" in out and "residual RMSE" in out


def test_fit_with_seed_repeats_reports_noise(tmp_path):
    runs = synthetic_runs(PAPER_LAW, 0.01, seed=0).assign(seed=0)
    again = synthetic_runs(PAPER_LAW, 0.01, seed=1).assign(seed=1).head(30)
    rep = run_fit(pd.concat([runs, again], ignore_index=True), starts=10, bootstrap=0, seed=0, workers=1)
    noise = rep.diagnostics.seed_noise
    assert noise["n_groups"] == 30 and 0.006 < noise["sd"] < 0.016  # drawn at 0.01
    assert rep.diagnostics.checks["residual_vs_noise"] is True
    assert rep.to_json()["diagnostics"]["seed_noise"]["sd"] == noise["sd"]


# ---------------------------------------------------------------------------------------------
# compare and report


def test_compare_carries_each_sides_diagnostics():
    from loopscale.analysis.compare import compare

    design = paper_design(grid={c: w for c, w in list(paper_design_grid().items())[:4]})
    base = synthetic_runs(PAPER_LAW, 0.005, seed=1, design=design).assign(probe="none")
    probe = synthetic_runs(Law(**{**PAPER_LAW.to_dict(), "phi": 0.6}), 0.005, seed=2, design=design)
    probe = probe[probe.r > 1].assign(probe="tbptt")
    result = compare(pd.concat([base, probe], ignore_index=True), "tbptt", starts=10, bootstrap=0, workers=1)
    doc = result.to_json()
    for key in ("baseline", "probe"):
        diag = doc[key]["diagnostics"]
        assert isinstance(diag["trustworthy"], bool) and isinstance(diag["reasons"], list)
        assert diag["n_cells"] == 16 and diag["cells_bracketed"] <= 16
    assert {c["probe"] for c in doc["probe"]["diagnostics"]["cells"]} == {"none", "tbptt"}  # shared r = 1 cells
    json.dumps(doc, allow_nan=False)


def test_report_fit_section_leads_with_the_verdict_cells_and_seed_spread(tmp_path):
    from loopscale.report.build import cost_table, fit_part, status_counts
    from loopscale.report.data import Report
    from loopscale.report.html import to_html
    from loopscale.report.md import to_markdown
    from loopscale.report.sections import layout

    runs = synthetic_runs(NO_FLOOR, 0.0).assign(seed=0)
    again = synthetic_runs(NO_FLOOR, 0.002, seed=1).assign(seed=1).head(8)
    runs = pd.concat([runs, again], ignore_index=True)
    runs["run_id"] = [f"run{i}" for i in range(len(runs))]
    runs = runs.assign(status="done", detail=None, probe="none")
    part = fit_part(runs, starts=10, bootstrap=4, seed=0, huber_delta=1e-3, workers=1, plots=False)
    settings = {"starts": 10, "bootstrap": 4, "seed": 0, "huber_delta": 1e-3, "resample": "cells"}
    rep = Report(sweep_dir=tmp_path, name="t", description="", grid_text=None, created="now", runs=runs,
                 counts=status_counts(runs["status"]), cost=cost_table(runs), fit=part, probes=[], settings=settings)
    md = to_markdown(rep, layout(rep))
    fit_md = md[md.index("## Fit"):md.index("## Residuals")]
    first = fit_md.split("\n\n")[1]
    assert first.startswith("> **Warning:** Fit verdict: NOT trustworthy"), first
    assert fit_md.index("- E is at its lower bound") < fit_md.index("### Joint fit")
    assert "### Iso-FLOP cells" in fit_md and "### Seed-to-seed loss spread" in fit_md
    assert "at lower bound (0.0498)" in fit_md and not ZERO_WIDTH.search(fit_md)
    assert "fit verdict**: NOT trustworthy" in md
    html = to_html(rep, layout(rep))
    assert "<li>E is at its lower bound" in html and "Seed-to-seed loss spread" in html


# ---------------------------------------------------------------------------------------------


def paper_design_grid():
    from loopscale.runs_table import PAPER_GRID

    return PAPER_GRID




def test_runs_of_two_recipes_are_not_one_fit(clean_fit):
    """Runs of an older loopscale left in a sweep folder (other ids, so both stay) would be fitted together."""
    runs, rep = clean_fit
    same = runs.assign(**{"train.optimizer": "muonh", "train.muon_ns": "polar_express", "data.loader": None})
    assert regime_diagnostics(same, rep.summary()).checks["one_recipe"] is True
    # Records from before a setting existed read as what it meant then: no loader key was windows.
    assert regime_diagnostics(same.assign(**{"data.loader": "windows"}), rep.summary()).checks["one_recipe"] is True
    old = same.copy()
    old.loc[old.index[::3], "train.muon_ns"] = None  # muonh before muon_ns existed: quintic
    diag = regime_diagnostics(old, rep.summary())
    assert not diag.trustworthy and diag.checks["one_recipe"] is False
    n_old = len(old.index[::3])
    assert f"train.muon_ns polar_express ×{len(old) - n_old}, quintic ×{n_old}" in diag.reasons[0], diag.reasons
    assert "move their run folders aside" in diag.reasons[0]


def test_one_recipe_compares_the_datas_identity_not_its_path(tmp_path):
    """A moved sweep (the same data under another path) is one recipe; other data under one path is two. A run
    recorded before identities counts by the identity its data dir holds now, or by its path when it has none."""
    from loopscale.analysis.regime import mixed_recipe
    from sweep_fixtures import make_tiny_data

    data = make_tiny_data(tmp_path / "data")
    same = json.loads((data / "meta.json").read_text())["data_id"]
    df = pd.DataFrame({"data.dir": ["/scratch/data", "/scratch/data", str(data), str(tmp_path / "gone")],
                       "data_id": [same, same, None, None]})
    assert mixed_recipe(df.head(3)) == {}  # moved: two paths, one identity (the third by its dir's identity now)
    other = df.head(3).assign(**{"data.dir": "/scratch/data", "data_id": [same, "f" * 64, same]})
    assert mixed_recipe(other) == {"data": {f"data_id {same[:12]}": 2, "data_id ffffffffffff": 1}}
    assert mixed_recipe(df)["data"] == {f"data_id {same[:12]}": 3, str(tmp_path / "gone"): 1}  # no data: its path
    config_col = df.rename(columns={"data_id": "data.data_id"}).head(3)  # the config's column serves as well
    assert mixed_recipe(config_col) == {}
