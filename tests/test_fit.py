"""`loopscale fit`: the objective, the multistart, recovery of known laws, the Chinchilla special
case, the bootstrap and the command line (method.md §5). Small start and resample counts keep it fast."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize
from scipy.special import huber, logsumexp

from loopscale.analysis.bootstrap import bootstrap_fits, bootstrap_plan, paired_bootstrap, percentile_ci, unit_labels
from loopscale.analysis.defaults import GRID_STARTS
from loopscale.analysis.fit import run_fit
from loopscale.analysis.law import LOWER, PAPER_LAW, UPPER, FitData, Law, evaluate, objective, params_of, theta_of
from loopscale.analysis.lawfit import fit_law
from loopscale.analysis.multistart import draw_starts, multistart
from loopscale.analysis.parallel import single_threaded_blas
from loopscale.errors import UserError
from loopscale.runs_table import PAPER_GRID, load_runs, paper_design, select_probe, synthetic_runs, usable_rows
from sweep_fixtures import cli_in_process

EPOCH = Path(__file__).resolve().parent / "data" / "epoch_chinchilla_svg_extracted_data.csv"  # tests/data/README.md


def law_with(phi: float) -> Law:
    return Law(**{**PAPER_LAW.to_dict(), "phi": phi})


# ---------------------------------------------------------------------------------------------
# Objective


def test_paper_design_is_the_paper_grid():
    design = paper_design()
    assert len(design) == 116
    assert design.groupby(["budget_flops", "r"]).ngroups == 24
    # Iso-FLOP: C = F·D on every run.
    from loopscale.counting import Arch, flops_per_token

    row = design.iloc[0]
    f = flops_per_token(Arch(d_model=int(row.width), r=int(row.r)), 2048, 32064)
    assert row.tokens * f == pytest.approx(row.budget_flops)


@pytest.mark.parametrize("delta", [1e-3, 10.0])
def test_gradient_matches_finite_differences(delta):
    data = FitData.from_table(synthetic_runs(PAPER_LAW, 0.01, seed=3))
    rng = np.random.default_rng(0)
    thetas = np.vstack([theta_of(PAPER_LAW), LOWER + rng.random((4, 6)) * (UPPER - LOWER)])
    _, g = objective(thetas, data, delta, grad=True)
    h = 1e-7
    for j in range(6):
        step = np.zeros(6)
        step[j] = h
        num = (objective(thetas + step, data, delta) - objective(thetas - step, data, delta)) / (2 * h)
        assert np.allclose(g[:, j], num, rtol=2e-4, atol=1e-9 * np.abs(g).max()), j


def test_objective_is_the_log_space_huber_of_method_md():
    runs = synthetic_runs(PAPER_LAW, 0.01, seed=1)
    data = FitData.from_table(runs)
    rng = np.random.default_rng(1)
    for theta in LOWER + rng.random((5, 6)) * (UPPER - LOWER):
        e, a, alpha, b, beta, phi = theta
        lne = np.log(runs.n_once + runs.r**phi * runs.n_rec)
        lse = logsumexp([a - alpha * lne, b - beta * np.log(runs.tokens), np.full(len(runs), e)], axis=0)
        want = huber(1e-3, lse - np.log(runs.loss)).sum()
        assert objective(theta, data) == pytest.approx(want, rel=1e-12)
    _, _, M = evaluate(LOWER + rng.random((3, 6)) * (UPPER - LOWER), data, need=2)
    assert np.allclose(M, M.transpose(0, 2, 1)) and (np.linalg.eigvalsh(M) > -1e-12).all()


# ---------------------------------------------------------------------------------------------
# Recovery of known laws


@pytest.mark.parametrize("phi", [0.0, 0.46, 1.0])
@pytest.mark.parametrize("seed", [1, 2])
def test_recovers_phi_within_its_ci(phi, seed):
    runs = synthetic_runs(law_with(phi), sigma=0.01, seed=seed)
    fit = fit_law(runs, starts=40, seed=seed)
    assert fit.converged
    assert fit.phi == pytest.approx(phi, abs=0.06)
    plan = bootstrap_plan([unit_labels(runs, "cells")], 40, seed=seed)
    draws = bootstrap_fits([runs], plan, starts=40, seed=seed, warm=[fit.theta], workers=1)
    lo, hi = percentile_ci(draws.params[0, :, 5])
    assert lo <= phi <= hi
    assert hi - lo < 0.2


def test_run_fit_restricted_per_r_and_split_half():
    runs = synthetic_runs(PAPER_LAW, 0.01, seed=0)
    rep = run_fit(runs, starts=40, bootstrap=0, seed=0)
    doc = rep.to_json()
    assert doc["n_runs"] == 116 and doc["converged"]
    assert doc["r2"] > 0.99
    # Looping is worth something but not a full block: both restrictions fit worse.
    for key in ("phi=0", "phi=1"):
        assert doc["restricted"][key]["objective"] > doc["objective"]
        assert doc["restricted"][key]["r2"] < doc["r2"]
    assert doc["restricted"]["phi=1"]["params"]["phi"] == 1.0
    assert sorted(doc["per_r"]) == ["1", "2", "4", "8"]
    assert all(v["params"]["phi"] is None and v["n_runs"] == 29 for v in doc["per_r"].values())
    res = doc["residuals"]
    assert res["all"]["n"] == 116 and 0.005 < res["all"]["rmse"] < 0.015
    assert all(res[k]["max_abs"] >= abs(res[k]["mean"]) for k in res)
    low, high = doc["split_half"]["low"], doc["split_half"]["high"]
    assert low["budgets"] == [4.64e17, 1e18, 2.15e18] and high["budgets"] == [4.64e18, 1e19, 2.15e19]
    assert abs(low["phi"] - 0.459) < 0.1 and abs(high["phi"] - 0.459) < 0.1
    assert doc["ci"]["phi"] is None  # no bootstrap asked


# ---------------------------------------------------------------------------------------------
# With N_rec = 0 the law is Chinchilla's: same objective, same optimum as a direct implementation


def direct_chinchilla(n, d, loss, delta=1e-3):
    """Hoffmann et al.'s Approach 3 written plainly: scipy L-BFGS-B from a grid of starts."""
    log_n, log_d, log_l = np.log(n), np.log(d), np.log(loss)

    def f(x):
        a, b, e, alpha, beta = x
        pred = logsumexp([a - alpha * log_n, b - beta * log_d, np.full(len(n), e)], axis=0)
        return huber(delta, pred - log_l).sum()

    def grad(x):
        a, b, e, alpha, beta = x
        t = np.array([a - alpha * log_n, b - beta * log_d, np.full(len(n), e)])
        w = np.exp(t - logsumexp(t, axis=0))
        psi = np.clip(logsumexp(t, axis=0) - log_l, -delta, delta)
        return np.array([psi @ w[0], psi @ w[1], psi @ w[2], -psi @ (w[0] * log_n), -psi @ (w[1] * log_d)])

    best = None
    for alpha in (0.2, 0.5):
        for beta in (0.2, 0.5):
            for e in (0.0, 0.5):
                res = minimize(f, [5 * alpha / 0.2, 8 * beta / 0.2, e, alpha, beta], jac=grad, method="L-BFGS-B",
                               bounds=[(-5, 35), (-5, 35), (-3, 2), (0, 2.5), (0, 2.5)],
                               options=dict(ftol=1e-15, gtol=1e-12, maxiter=10000))
                if best is None or res.fun < best.fun:
                    best = res
    return best, f


def test_nrec_zero_equals_direct_chinchilla_approach3():
    chin = Law(E=1.8, A=400.0, alpha=0.34, B=2000.0, beta=0.37, phi=0.0)
    design = paper_design()
    design["n_once"] = design["n_once"] + design["n_rec"]
    design["n_rec"] = 0.0  # looped rows with no looped parameters: φ has nothing to act on
    runs = synthetic_runs(chin, 0.01, seed=4, design=design)
    with single_threaded_blas():  # OpenBLAS threads only slow scipy's small L-BFGS-B down
        ref, ref_f = direct_chinchilla(runs.n_once.to_numpy(), runs.tokens.to_numpy(), runs.loss.to_numpy())
    fit = fit_law(runs, starts=100, seed=0)
    assert fit.phi is None and fit.converged
    e, a, alpha, b, beta, _ = fit.theta
    # Same objective at the same point …
    assert fit.objective == pytest.approx(ref_f([a, b, e, alpha, beta]), rel=1e-12)
    # … and the same optimum.
    assert fit.objective == pytest.approx(ref.fun, rel=1e-7)
    assert fit.objective <= ref.fun * (1 + 1e-9)
    assert np.allclose([a, b, e, alpha, beta], ref.x, rtol=1e-4, atol=1e-4)


def test_epoch_chinchilla_refit():
    """Besiroglu et al.'s refit of Hoffmann's data: A = 477.8, B = 2143, E = 1.8172, α = 0.3473, β = 0.3672."""
    raw = pd.read_csv(EPOCH, comment=None)  # colour columns start with '#'
    raw = raw.sort_values("loss").iloc[:-5]  # Epoch drops the 5 highest losses
    n, c = raw["Model Size"].to_numpy(), raw["Training FLOP"].to_numpy()
    runs = pd.DataFrame({"n_once": n, "n_rec": 0.0, "r": 1, "tokens": c / (6 * n), "loss": raw["loss"].to_numpy()})
    fit = fit_law(runs, starts=200, seed=0)
    p = fit.params
    assert len(runs) == 240 and fit.converged and p["phi"] is None
    assert p["A"] == pytest.approx(477.8, rel=0.02)
    assert p["B"] == pytest.approx(2143, rel=0.02)
    assert p["E"] == pytest.approx(1.8172, abs=0.005)
    assert p["alpha"] == pytest.approx(0.3473, abs=0.003)
    assert p["beta"] == pytest.approx(0.3672, abs=0.003)


def test_only_r1_rows_reduce_to_chinchilla_and_say_so():
    runs = synthetic_runs(PAPER_LAW, 0.01, seed=0)
    runs = runs[runs.r == 1].reset_index(drop=True)
    rep = run_fit(runs, starts=30, bootstrap=4, seed=0, workers=1)
    doc = rep.to_json()
    assert doc["params"]["phi"] is None and doc["ci"]["phi"] is None
    assert doc["phi_identifiable"] is False
    assert doc["restricted"] == {} and doc["split_half"] == {}
    assert any("not identifiable" in n for n in doc["notes"])
    assert all(v is not None for k, v in doc["ci"].items() if k != "phi")


def test_without_budgets_the_bootstrap_resamples_runs():
    runs = synthetic_runs(PAPER_LAW, 0.01, seed=0).drop(columns=["budget_flops"])
    doc = run_fit(runs, starts=10, bootstrap=3, seed=0, workers=1).to_json()
    assert doc["bootstrap"]["resample"] == "runs" and doc["bootstrap"]["n_units"] == 116
    assert doc["split_half"] == {}
    assert any("resamples runs" in n for n in doc["notes"]) and any("split-half" in n for n in doc["notes"])


def test_flat_direction_is_reported_as_multimodal():
    """One model size for every run: E and A·N^−α cannot be told apart, distinct optima tie."""
    runs = paper_design()
    runs = runs[runs.r == 1].copy()
    runs["n_once"], runs["n_rec"] = 0.0, 1e8
    runs = synthetic_runs(PAPER_LAW, 0.01, seed=0, design=runs)
    opt = multistart(FitData.from_table(runs), starts=60, seed=0, fixed={5: 0.0})
    assert opt.ties, "distinct optima with equal objective should be reported"
    rep = run_fit(runs, starts=60, bootstrap=0, seed=0)
    assert any(w.startswith("multimodal") for w in rep.warnings)


# ---------------------------------------------------------------------------------------------
# Bootstrap


def test_bootstrap_plan_pairs_tables_by_cell():
    base = synthetic_runs(PAPER_LAW, 0.01, seed=0)
    probe = base[base.r > 1].reset_index(drop=True)  # same cells minus r = 1
    labels = [unit_labels(base, "cells"), unit_labels(probe, "cells")]
    plan = bootstrap_plan(labels, 5, seed=7)
    assert plan[0][0].tolist() == bootstrap_plan(labels, 5, seed=7)[0][0].tolist()
    assert plan[0][0].tolist() != bootstrap_plan(labels, 5, seed=8)[0][0].tolist()
    for base_rows, probe_rows in plan:
        # How often each cell was drawn, read back from each table's rows.
        drawn_base = (pd.Series(labels[0][base_rows]).value_counts() / base.groupby(labels[0]).size()).fillna(0)
        drawn_probe = (pd.Series(labels[1][probe_rows]).value_counts() / probe.groupby(labels[1]).size()).fillna(0)
        assert drawn_base.sum() == 24 and set(drawn_base) <= set(range(25))
        # Every cell the probe has was drawn as often for the probe as for the baseline.
        assert (drawn_base.reindex(drawn_probe.index) == drawn_probe).all()


def test_paired_bootstrap_delta_phi():
    """A probe whose loop is worth more (φ 0.65 vs 0.46) on the probes' 4-budget design."""
    lower = {c: w for c, w in list(PAPER_GRID.items())[:4]}
    design = paper_design(grid=lower)
    base = synthetic_runs(law_with(0.46), 0.01, seed=1, design=design)
    probe = synthetic_runs(law_with(0.65), 0.01, seed=2, design=design)
    draws = paired_bootstrap([base, probe], 16, seed=0, starts=20, workers=1)
    assert draws.params.shape == (2, 16, 6) and draws.converged.all()
    lo, hi = percentile_ci(draws.params[1, :, 5] - draws.params[0, :, 5])
    assert 0.0 < lo < 0.19 < hi < 0.4


def test_bootstrap_by_runs_and_worker_count_do_not_change_results():
    runs = synthetic_runs(PAPER_LAW, 0.01, seed=5)
    assert len(set(unit_labels(runs, "runs"))) == 116
    plan = bootstrap_plan([unit_labels(runs, "runs")], 6, seed=1)
    one = bootstrap_fits([runs], plan, starts=20, seed=1, workers=1)
    two = bootstrap_fits([runs], plan, starts=20, seed=1, workers=2)
    assert np.array_equal(one.params, two.params) and np.isfinite(one.params).all()


def test_deterministic_to_the_last_digit():
    runs = synthetic_runs(PAPER_LAW, 0.01, seed=2)
    a = json.dumps(run_fit(runs, starts=20, bootstrap=6, seed=3, workers=1).to_json())
    b = json.dumps(run_fit(runs, starts=20, bootstrap=6, seed=3, workers=1).to_json())
    assert a == b
    c = json.dumps(run_fit(runs, starts=20, bootstrap=6, seed=4, workers=1).to_json())
    assert c != a


# ---------------------------------------------------------------------------------------------
# Runs tables


def test_usable_rows_names_what_it_leaves_out():
    runs = synthetic_runs(PAPER_LAW, 0.01, seed=0).head(12).copy()
    runs["status"] = "ok"
    runs.loc[1, "loss"] = np.nan
    runs.loc[2, "loss"] = np.inf
    runs.loc[3, "loss"] = -1.0
    runs.loc[4, "status"] = "diverged"
    runs.loc[5, "status"] = "FAILED"
    runs.loc[6, "tokens"] = 0.0
    ok, warnings = usable_rows(runs)
    assert len(ok) == 6
    text = " ".join(warnings)
    for i in range(1, 7):
        assert runs.run_id[i] in text
    _, warnings = usable_rows(runs.drop(columns="run_id"))
    assert "row 1" in " ".join(warnings)


def test_load_runs_csv_parquet_and_errors(tmp_path):
    runs = synthetic_runs(PAPER_LAW, 0.01, seed=0)
    runs["colour"] = "#faebdd"  # '#' is data, not a comment
    runs.to_csv(tmp_path / "runs.csv", index=False)
    got = load_runs(tmp_path / "runs.csv")
    assert len(got) == 116 and (got["colour"] == "#faebdd").all()
    assert np.array_equal(got["loss"].to_numpy(), runs["loss"].to_numpy())
    runs.to_parquet(tmp_path / "runs.parquet")
    assert len(load_runs(tmp_path / "runs.parquet")) == 116
    with pytest.raises(UserError, match="no such file"):
        load_runs(tmp_path / "nope.csv")
    runs.drop(columns=["tokens", "r"]).to_csv(tmp_path / "cols.csv", index=False)
    with pytest.raises(UserError, match="missing columns r, tokens"):
        load_runs(tmp_path / "cols.csv")
    runs.head(0).to_csv(tmp_path / "empty.csv", index=False)
    with pytest.raises(UserError, match="no rows"):
        load_runs(tmp_path / "empty.csv")
    (tmp_path / "runs.txt.gz").write_bytes(b"\x00\x01")
    with pytest.raises(UserError, match="unknown table format"):
        load_runs(tmp_path / "runs.txt.gz")


def test_select_probe_reuses_plain_r1_runs():
    runs = synthetic_runs(PAPER_LAW, 0.01, seed=0)
    runs["probe"] = "none"
    looped = runs[runs.r > 1].assign(probe="tbptt")
    both = pd.concat([runs, looped], ignore_index=True)
    with pytest.raises(UserError, match="mix probes"):
        select_probe(both)
    tbptt, notes = select_probe(both, "tbptt")
    assert len(tbptt) == 116 and (tbptt[tbptt.r == 1].probe == "none").all() and "reused the 29" in notes[0]
    plain, notes = select_probe(both, "none")
    assert len(plain) == 116 and notes == []
    with pytest.raises(UserError, match="no runs with probe 'hyperconn'"):
        select_probe(both, "hyperconn")


def test_too_few_rows_is_a_user_error():
    runs = synthetic_runs(PAPER_LAW, 0.01, seed=0).head(5)
    with pytest.raises(UserError, match="fewer than the 6 parameters"):
        run_fit(runs, starts=5, bootstrap=0)


# ---------------------------------------------------------------------------------------------
# Command line


def test_cli_fit_json(tmp_path, capsys):
    runs = synthetic_runs(PAPER_LAW, 0.01, seed=0)
    runs.loc[0, "loss"] = np.nan
    runs.to_csv(tmp_path / "runs.csv", index=False)
    code, out, err = cli_in_process(["fit", tmp_path / "runs.csv", "--json", "--starts", 20, "--bootstrap", 4,
                           "--workers", 1, "--no-plots", "--seed", 1], capsys)
    assert code == 0, err
    doc = json.loads(out)  # stdout is the JSON and nothing else
    keys = ("params", "ci", "r2", "objective", "converged", "n_runs", "restricted", "per_r", "split_half", "bootstrap")
    assert all(key in doc for key in keys)
    assert set(doc["params"]) == set(doc["ci"]) == {"E", "A", "alpha", "B", "beta", "phi"}
    assert doc["n_runs"] == 115 and doc["bootstrap"]["n_resamples"] == 4
    assert "left out 1 run(s)" in err and "C4.64e+17-s6-r1" in err
    assert json.loads((tmp_path / "fit.json").read_text()) == doc  # written beside the table
    assert not list(tmp_path.glob("*.png"))


def test_cli_fit_table_plots_and_sweep_folder(tmp_path, capsys, monkeypatch):
    runs = synthetic_runs(PAPER_LAW, 0.01, seed=0)
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    # The sweep's results store is another module; a folder source goes through its load_results.
    monkeypatch.setattr("loopscale.runs_table.load_results", lambda path: runs)
    code, out, err = cli_in_process(["fit", sweep, "--starts", 20, "--bootstrap", 6, "--workers", 1], capsys)
    assert code == 0, err
    assert "phi" in out and "restricted" in out
    assert (sweep / "fit.json").exists()
    pngs = sorted(p.name for p in sweep.glob("fit_*.png"))
    assert pngs == ["fit_isoflop.png", "fit_loss_vs_neff.png", "fit_phi_bootstrap.png", "fit_residuals.png"]


@pytest.mark.parametrize("case", ["missing_columns", "too_few_rows", "no_file", "not_csv", "bad_option", "bad_seed"])
def test_cli_fit_errors_exit_2_with_one_line(tmp_path, capsys, case):
    runs = synthetic_runs(PAPER_LAW, 0.01, seed=0)
    path = tmp_path / "runs.csv"
    extra = []
    if case == "missing_columns":
        runs.drop(columns=["loss"]).to_csv(path, index=False)
    elif case == "too_few_rows":
        runs.head(4).to_csv(path, index=False)
    elif case == "no_file":
        path = tmp_path / "absent.csv"
    elif case == "not_csv":
        path.write_text('n_once,n_rec,r,tokens,loss\n1,2,"3\n')
    else:
        runs.to_csv(path, index=False)
        extra = ["--resample", "weeks"] if case == "bad_option" else ["--seed", -1]
    code, out, err = cli_in_process(["fit", path, "--json", "--no-plots", "--bootstrap", 0, "--starts", 5, *extra], capsys)
    assert code == 2
    assert out == ""
    assert err.strip().startswith("error:") and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# The one parametrisation (analysis.law) and a fixed CSV's numbers before and after issue 20


def test_theta_and_coefficients_convert_one_way_and_back():
    theta = theta_of(PAPER_LAW)
    back = Law.from_dict(params_of(theta))
    assert np.allclose([getattr(back, k) for k in PAPER_LAW.to_dict()], list(PAPER_LAW.to_dict().values()),
                       rtol=1e-14, atol=0)
    assert params_of(theta, with_phi=False)["phi"] is None
    assert np.array_equal(theta_of({**PAPER_LAW.to_dict(), "phi": None})[:5], theta[:5])
    assert theta_of({**PAPER_LAW.to_dict(), "phi": None})[5] == 0.0
    data = FitData.from_table(synthetic_runs(PAPER_LAW, 0.0))
    assert draw_starts(data, 0, 0, {}).shape == (GRID_STARTS, 6)  # the grid the --starts help names


def test_evaluate_batches_loss_vectors_and_its_newton_matrix():
    """Many loss vectors on one design at once (plan's refits) give what one FitData per vector gives."""
    runs = synthetic_runs(PAPER_LAW, 0.01, seed=4)
    data = FitData.from_table(runs)
    rng = np.random.default_rng(4)
    thetas = theta_of(PAPER_LAW) + 0.05 * rng.standard_normal((3, 6))
    log_loss = data.log_loss + 0.002 * rng.standard_normal((3, len(data)))
    weight = rng.integers(0, 3, (3, len(data))).astype(float)
    f, g, M = evaluate(thetas, data, need=2, log_loss=log_loss, weight=weight)
    f0 = evaluate(thetas, data, need=0, log_loss=log_loss, weight=weight)
    _, _, N = evaluate(thetas, data, need=2, log_loss=log_loss, weight=weight, newton=True)
    assert np.array_equal(f, f0)
    for p in range(3):
        one = FitData(data.n_once, data.n_rec, data.r, data.log_tokens, log_loss[p], weight[p])
        fp, gp, Mp = evaluate(thetas[p : p + 1], one, need=2)
        assert f[p] == pytest.approx(fp[0], rel=1e-12) and np.allclose(g[p], gp[0], rtol=1e-12, atol=0)
        assert np.allclose(M[p], Mp[0], rtol=1e-12, atol=0)
    # Semismooth Newton: Gauss–Newton inside Huber's zone plus 1% of the IRLS matrix, symmetric and PSD.
    assert np.allclose(N, N.transpose(0, 2, 1)) and (np.linalg.eigvalsh(N) > -1e-12).all()
    assert not np.allclose(N, M)


# `loopscale fit --starts 20 --bootstrap 20 --workers 1` on tests/synthetic_runs.py's CSV, by the code before
# issue 20's restructure (e82f5f4): the fit must give these numbers to 1e-6.
FIXED_PARAMS = {"E": 1.369295092575972, "A": 15.97464622876254, "alpha": 0.15501363458899228,
                "B": 935.4883367506712, "beta": 0.37011392419820904, "phi": 0.46048330047745784}
FIXED_PHI_CI = [0.4335167335370153, 0.48031818646028707]
FIXED_R2 = 0.9977207547908782
FIXED_SPLIT_PHI = {"low": 0.4631564859283622, "high": 0.4505823645423086}


def test_a_fixed_csv_fits_as_before_the_restructure(tmp_path, capsys):
    from synthetic_runs import write_csv

    path = write_csv(tmp_path / "runs.csv")
    code, out, err = cli_in_process(["fit", path, "--json", "--no-plots", "--starts", 20, "--bootstrap", 20,
                                     "--workers", 1], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["n_runs"] == 116 and doc["settings"]["resample"] == "cells"
    assert doc["params"]["phi"] == pytest.approx(FIXED_PARAMS["phi"], abs=1e-6)
    assert doc["ci"]["phi"] == pytest.approx(FIXED_PHI_CI, abs=1e-6)
    assert doc["params"] == pytest.approx(FIXED_PARAMS, rel=1e-6)
    assert doc["r2"] == pytest.approx(FIXED_R2, abs=1e-9)
    assert {k: v["phi"] for k, v in doc["split_half"].items()} == pytest.approx(FIXED_SPLIT_PHI, abs=1e-6)
