"""`loopscale compare --probe`: the probe grids, the token-side gain of truncation, recovery of a known
Δφ with a paired bootstrap, the verdict sentence, and the command line (method.md §6).

Synthetic stores are the real grids expanded (grids/paper*.yaml, grids/tiny*.yaml) with losses drawn from a
known law per probe. Small start and resample counts keep it fast."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from loopscale.analysis.compare import bootstrap_p_value, compare, split_tables, verdict
from loopscale.analysis.law import PAPER_LAW, Law
from loopscale.counting import Arch, flops_per_token, injection_params
from loopscale.errors import UserError
from loopscale.grid import load_grid
from loopscale.runs_table import PAPER_GRID
from sweep_fixtures import cli_in_process

REPO = Path(__file__).resolve().parents[1]
GRIDS = REPO / "grids"
LOWER4 = dict(list(PAPER_GRID.items())[:4])  # the probes' four lower budgets (method.md §6)
BASE_PHI = 0.45
PROBE_PHI = {"tbptt": 0.38, "hyperconn": 0.65}


def law_with(phi: float) -> Law:
    return Law(**{**PAPER_LAW.to_dict(), "phi": phi})


def grid_specs(*names: str) -> list:
    """The runs of several grids in one sweep folder: shared run ids expand once."""
    specs = {}
    for name in names:
        for s in load_grid(GRIDS / f"{name}.yaml", cwd=REPO).runs:
            specs.setdefault(s.run_id, s)
    return list(specs.values())


def runs_table(specs, phis: dict[str, float], sigma: float = 0.01, seed: int = 0) -> pd.DataFrame:
    """One row per run as the results store has it, loss = the probe's law + N(0, σ²) nats."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in specs:
        law = law_with(phis[s.probe])
        loss = law.predict(s.n_once, s.n_rec, s.r, s.tokens) + sigma * rng.standard_normal()
        rows.append(dict(run_id=s.run_id, status="done", r=s.r, width=s.d_model, probe=s.probe, seed=s.seed,
                         n_once=s.n_once, n_rec=s.n_rec, tokens=s.tokens, budget_flops=s.budget_flops, loss=loss))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def paper_runs() -> pd.DataFrame:
    specs = grid_specs("paper", "paper-tbptt", "paper-hyperconn")
    return runs_table(specs, {"none": BASE_PHI, **PROBE_PHI})


# ---------------------------------------------------------------------------------------------
# Grids


@pytest.mark.parametrize("probe", ["tbptt", "hyperconn", "additive"])
def test_paper_probe_grids_expand_to_the_paper_runs(probe):
    paper = {s.run_id: s for s in load_grid(GRIDS / "paper.yaml", cwd=REPO).runs}
    grid = load_grid(GRIDS / f"paper-{probe}.yaml", cwd=REPO)
    r1 = [s for s in grid.runs if s.r == 1]
    looped = [s for s in grid.runs if s.r > 1]
    assert len(grid.runs) == 80 and len(r1) == 20 and len(looped) == 60
    # r = 1: the baseline's own runs (same ids), so a sweep into the paper's folder does not train them again.
    assert all(s.run_id in paper and s.probe == "none" for s in r1)
    assert grid.name == "paper"  # default folder sweeps/paper, where those runs already are
    assert not any(s.run_id in paper for s in looped) and {s.probe for s in looped} == {probe}
    design = {(s.budget_flops, s.r, s.d_model) for s in looped}
    assert design == {(c, r, 64 * w) for c, ws in LOWER4.items() for r in (2, 4, 8) for w in ws}
    assert {(s.budget_flops, s.d_model) for s in r1} == {(c, 64 * w) for c, ws in LOWER4.items() for w in ws}
    if probe == "tbptt":
        assert {(s.r, s.config.model.k_grad) for s in looped} == {(2, 1), (4, 2), (8, 4)}
    elif probe == "hyperconn":
        assert {s.config.model.hc_lanes for s in looped} == {2}
    else:  # additive: no injection weights, full backprop
        assert all(injection_params(s.config.model) == 0 and s.config.model.k_grad == s.r for s in looped)
    # The three grids in one folder: 116 + 60 + 60 runs, nothing trained twice.
    assert len(grid_specs("paper", "paper-tbptt", "paper-hyperconn")) == 236


@pytest.mark.parametrize("probe", ["tbptt", "hyperconn", "additive"])
def test_tiny_probe_grids_share_tiny_runs(probe):
    tiny = load_grid(GRIDS / "tiny.yaml", cwd=REPO)
    grid = load_grid(GRIDS / f"tiny-{probe}.yaml", cwd=REPO)
    ids = {s.run_id for s in tiny.runs}
    r1 = [s for s in grid.runs if s.r == 1]
    looped = [s for s in grid.runs if s.r > 1]
    assert r1 and all(s.run_id in ids for s in r1) and grid.name == tiny.name
    assert looped and not any(s.run_id in ids for s in looped) and {s.probe for s in looped} == {probe}
    assert {s.budget_flops for s in grid.runs} < {s.budget_flops for s in tiny.runs}  # a subset of budgets
    same = lambda a: {k: v for k, v in a.items() if k not in ("probe", "tbptt_k", "hc_lanes", "d_model", "r")}
    assert same(looped[0].config.model.__dict__) == same(tiny.runs[0].config.model.__dict__)
    assert looped[0].config.train == next(s for s in tiny.runs if s.budget_flops == looped[0].budget_flops
                                          and s.d_model == looped[0].d_model and s.r == looped[0].r).config.train


def test_tbptt_token_ratio_at_equal_compute_is_the_papers():
    """At equal compute truncated runs see ≈1.3× the tokens (paper: median D_trunc/D_full = 1.315)."""
    ratios = []
    for budget, widths in LOWER4.items():
        for r in (2, 4, 8):
            for s in widths:
                full = flops_per_token(Arch(d_model=64 * s, r=r), 2048, 32064)
                trunc = flops_per_token(Arch(d_model=64 * s, r=r, probe="tbptt"), 2048, 32064)
                ratios.append((budget / trunc) / (budget / full))
    assert len(ratios) == 60
    assert np.median(ratios) == pytest.approx(1.315, abs=0.005)
    assert 1.28 < min(ratios) and max(ratios) < 1.34


# ---------------------------------------------------------------------------------------------
# The comparison


def test_tables_share_r1_runs_and_cells(paper_runs):
    t = split_tables(paper_runs, "tbptt")
    # Baseline refit on the probes' design: "those 80 runs" of the paper (method.md §6).
    assert len(t.baseline) == len(t.probe) == 80 and t.n_shared == 20
    r1 = lambda df: df[df.r == 1].sort_values("run_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(r1(t.baseline), r1(t.probe))
    assert set(t.baseline[t.baseline.r > 1].probe) == {"none"} and set(t.probe[t.probe.r > 1].probe) == {"tbptt"}
    assert len(t.cells) == 16 and "left out 27 run(s) in 6 cell(s)" in " ".join(t.notes)
    # Probe against probe: the plain r = 1 runs (filed under none) still count for both.
    t = split_tables(paper_runs, "hyperconn", baseline="tbptt")
    assert len(t.baseline) == len(t.probe) == 80 and t.n_shared == 20
    assert t.notes == ["left out 9 r = 1 run(s) at budgets without looped cells in both"]


@pytest.mark.parametrize("probe", ["tbptt", "hyperconn"])
def test_compare_recovers_delta_phi(paper_runs, probe):
    """Baseline φ = 0.45, probe φ = 0.38 (tbptt) or 0.65 (hyperconn), 0.01-nat noise, paper's probe grid.

    Over 12 noise draws (100 resamples, 20 starts) the Δφ CI covered the truth 12/12 for both probes and
    excluded 0 in 12/12 (hyperconn, Δφ = +0.20) and 10/12 (tbptt, Δφ = −0.07, CI width ≈0.11): the
    small tbptt effect sits near this design's resolution, so this draw (seed 0) is one where it shows."""
    c = compare(paper_runs, probe, starts=20, bootstrap=30, seed=0, workers=1)
    doc = c.to_json()
    truth = PROBE_PHI[probe] - BASE_PHI
    lo, hi = doc["baseline"]["ci"]
    assert lo < BASE_PHI < hi
    lo, hi = doc["probe"]["ci"]
    assert lo < PROBE_PHI[probe] < hi
    lo, hi = doc["delta_phi_ci"]
    assert np.sign(doc["delta_phi"]) == np.sign(truth) and abs(doc["delta_phi"] - truth) < 0.05
    assert lo < truth < hi and (hi < 0 if truth < 0 else lo > 0)  # the CI excludes 0
    assert doc["p_value"] == pytest.approx(2 / 31)  # every resample on the true side: the smallest p
    assert doc["bootstrap"]["n_used"] == 30 and doc["bootstrap"]["n_units"] == 16
    assert doc["baseline"]["r2"] > 0.99 and doc["probe"]["r2"] > 0.99
    assert doc["loss_change"]["all"]["n_runs"] == 60 and doc["loss_change"]["all"]["mean"] < 0
    assert set(doc["loss_change"]) == {"2", "4", "8", "all"}
    v = doc["verdict"]
    if probe == "tbptt":
        assert doc["token_gain"]["median"] == pytest.approx(1.315, abs=0.005)
        assert v["moved"] == "both" and v["phi"] == "fell" and v["loss"] == "fell"
        assert "but φ fell: the gain is token-side" in v["text"]
    else:
        assert doc["token_gain"]["median"] == pytest.approx(1.0, abs=0.05)
        assert v["moved"] == "capacity" and "a capacity gain" in v["text"]
    json.dumps(doc, allow_nan=False)


def test_bootstrap_p_value_is_two_sided():
    assert bootstrap_p_value(np.full(99, 0.1)) == pytest.approx(2 / 100)
    assert bootstrap_p_value(np.full(99, -0.1)) == pytest.approx(2 / 100)
    x = np.r_[np.full(75, 0.1), np.full(25, -0.1)]
    assert bootstrap_p_value(x) == pytest.approx(2 * 26 / 101)
    assert bootstrap_p_value(np.r_[x, np.nan]) == bootstrap_p_value(x)
    assert bootstrap_p_value(np.linspace(-1, 1, 101)) == 1.0
    assert bootstrap_p_value(np.array([np.nan])) is None


def test_verdict_says_which_moved():
    fell = {"all": {"mean": -0.03, "best": -0.04}}
    rose = {"all": {"mean": 0.02, "best": 0.02}}
    more, same = {"median": 1.31}, {"median": 1.0}
    v = verdict(-0.07, [-0.12, -0.03], fell, more)
    assert v["moved"] == "both" and "Loss fell" in v["text"] and "the gain is token-side (1.31×" in v["text"]
    v = verdict(-0.01, [-0.05, 0.03], fell, more)
    assert v["moved"] == "tokens" and "did not change detectably" in v["text"] and "token-side" in v["text"]
    v = verdict(0.2, [0.15, 0.25], fell, same)
    assert v["moved"] == "capacity" and "capacity gain" in v["text"]
    v = verdict(-0.1, [-0.2, -0.05], rose, same)
    assert v["moved"] == "capacity" and "costs capacity" in v["text"]
    v = verdict(-0.1, None, fell, more)
    assert "untested" in v["text"]
    v = verdict(0.0, [-3.7, 5.4], fell, more, phi_at_bound=("baseline", "probe"))
    assert v["phi"] == "unidentified" and v["moved"] == "tokens" and "cannot tell whether capacity moved" in v["text"]


# ---------------------------------------------------------------------------------------------
# Command line


def test_cli_compare_json(tmp_path, capsys, paper_runs):
    paper_runs.to_csv(tmp_path / "runs.csv", index=False)
    code, out, err = cli_in_process(["compare", tmp_path / "runs.csv", "--probe", "hyperconn", "--json", "--starts", 10,
                           "--bootstrap", 8, "--workers", 1, "--no-plots"], capsys)
    assert code == 0, err
    doc = json.loads(out)  # stdout is the JSON and nothing else
    for key in ("delta_phi", "delta_phi_ci", "p_value", "p_value_method", "loss_change", "token_gain", "verdict"):
        assert key in doc
    for side in ("baseline", "probe"):
        assert isinstance(doc[side]["phi"], float) and len(doc[side]["ci"]) == 2 and "r2" in doc[side]
    assert doc["baseline"]["name"] == "none" and doc["probe"]["name"] == "hyperconn"
    assert doc["delta_phi"] == pytest.approx(doc["probe"]["phi"] - doc["baseline"]["phi"])
    assert json.loads((tmp_path / "compare-hyperconn.json").read_text()) == doc
    assert not list(tmp_path.glob("*.png"))


def _write_sweep(sweep: Path, specs, phis, finished=lambda s: True, seed=0) -> None:
    """A sweep folder as the trainer leaves it: runs/<id>/config.yaml and, for finished runs, result.json."""
    from loopscale.submit import write_config

    rng = np.random.default_rng(seed)
    for s in specs:
        d = sweep / "runs" / s.run_id
        d.mkdir(parents=True, exist_ok=True)
        write_config(d, s)
        if not finished(s):
            continue
        loss = law_with(phis[s.probe]).predict(s.n_once, s.n_rec, s.r, s.tokens) + 0.01 * rng.standard_normal()
        rec = {"run_id": s.run_id, "status": "done", "val_loss": float(loss), "r": s.r, "d_model": s.d_model,
               "probe": s.probe, "seed": s.seed, "n_once": s.n_once, "n_rec": s.n_rec, "tokens": s.tokens,
               "iterations": s.iterations, "flops_per_token": s.flops_per_token, "budget_flops": s.budget_flops,
               "config": s.config.to_dict()}
        (d / "result.json").write_text(json.dumps(rec))


def test_cli_compare_sweep_folder_table_and_plot(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich reads the width here: one table row per line
    sweep = tmp_path / "sweep"
    _write_sweep(sweep, grid_specs("tiny", "tiny-tbptt"), {"none": BASE_PHI, "tbptt": 0.38})
    code, out, err = cli_in_process(["compare", sweep, "--probe", "tbptt", "--starts", 10, "--bootstrap", 6,
                           "--workers", 1], capsys)
    assert code == 0, err
    assert "Δφ = probe − baseline" in out and "D_probe/D_base" in out and "at matched compute" in out
    assert (sweep / "compare-tbptt.json").exists() and (sweep / "compare-tbptt.png").exists()
    doc = json.loads((sweep / "compare-tbptt.json").read_text())
    tiny, probe = (load_grid(GRIDS / f"{name}.yaml", cwd=REPO) for name in ("tiny", "tiny-tbptt"))
    budgets = {s.budget_flops for s in probe.runs}
    baseline = [s for s in tiny.runs if s.budget_flops in budgets]  # seed repeats included
    shared = [s for s in baseline if s.r == 1]
    assert doc["n_shared_r1_runs"] == len(shared) and doc["baseline"]["n_runs"] == len(baseline)
    assert doc["probe"]["n_runs"] == len(shared) + sum(s.r > 1 for s in probe.runs)
    assert doc["token_gain"]["median"] > 1.1


def test_cli_compare_additive_probe_on_a_tiny_sweep(tmp_path, capsys):
    """`loopscale compare SWEEP --probe additive` on tiny + tiny-additive in one folder: the shared r = 1 runs,
    the probe's own looped runs, and slightly more tokens (no 2d² injection weights to pay for)."""
    sweep = tmp_path / "sweep"
    _write_sweep(sweep, grid_specs("tiny", "tiny-additive"), {"none": BASE_PHI, "additive": 0.40})
    code, out, err = cli_in_process(["compare", sweep, "--probe", "additive", "--json", "--no-plots", "--starts", 10,
                                     "--bootstrap", 6, "--workers", 1], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["baseline"]["name"] == "none" and doc["probe"]["name"] == "additive"
    tiny, probe = (load_grid(GRIDS / f"{name}.yaml", cwd=REPO) for name in ("tiny", "tiny-additive"))
    budgets = {s.budget_flops for s in probe.runs}  # tiny's r = 1 runs there, its seed repeat included
    assert doc["n_shared_r1_runs"] == sum(s.r == 1 and s.budget_flops in budgets for s in tiny.runs) == 7
    assert doc["probe"]["n_looped_runs"] == sum(s.r > 1 for s in probe.runs) == 6
    assert 1.0 < doc["token_gain"]["median"] < 1.1
    assert json.loads((sweep / "compare-additive.json").read_text()) == doc


@pytest.mark.parametrize("case", ["unknown_probe", "no_probe_runs", "not_collected", "too_few_cells", "same",
                                  "no_budgets"])
def test_cli_compare_errors_exit_2_with_one_line(tmp_path, capsys, paper_runs, case):
    source = tmp_path / "runs.csv"
    probe = "tbptt"
    runs = paper_runs
    if case == "unknown_probe":
        probe = "dropout"
    elif case == "no_probe_runs":
        runs = runs[runs.probe != "tbptt"]
    elif case == "too_few_cells":
        c = min(runs.budget_flops)
        runs = runs[(runs.budget_flops == c) & (runs.r <= 2)]
    elif case == "same":
        probe = "none"
    elif case == "no_budgets":
        runs = runs.drop(columns="budget_flops")
    if case == "not_collected":
        source = tmp_path / "sweep"
        _write_sweep(source, grid_specs("tiny", "tiny-tbptt"), {"none": BASE_PHI}, finished=lambda s: s.probe == "none")
    else:
        runs.to_csv(source, index=False)
    code, out, err = cli_in_process(["compare", source, "--probe", probe, "--json", "--no-plots", "--bootstrap", 4,
                           "--starts", 5, "--workers", 1], capsys)
    assert code == 2, err
    assert out == ""
    assert err.strip().startswith("error:") and len(err.strip().splitlines()) == 1
    expect = {"unknown_probe": "unknown probe 'dropout'", "no_probe_runs": "no looped (r > 1) runs with probe 'tbptt'",
              "not_collected": f"have no results yet ({sum(s.r > 1 for s in load_grid(GRIDS / 'tiny-tbptt.yaml', cwd=REPO).runs)} new)", "too_few_cells": "too few (budget × r) cells",
              "same": "are both 'none'", "no_budgets": "needs budget_flops"}[case]
    assert expect in err


def test_split_tables_errors_are_user_errors(paper_runs):
    with pytest.raises(UserError, match="unknown probe"):
        split_tables(paper_runs, "tbptt", baseline="nope")
    pending = paper_runs.copy()
    looped = (pending.probe == "hyperconn").to_numpy()
    pending.loc[looped, "loss"] = math.nan
    pending.loc[looped, "status"] = "running"
    with pytest.raises(UserError, match="60 running"):
        split_tables(pending, "hyperconn")
