"""`loopscale plan`: simulated φ precision, cost, probe power, greedy cell suggestions and the CLI.
Small grids and few replicates keep it fast; the checks are on orders of magnitude and directions,
the exact parts (cost, the batched refits) exactly."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from loopscale import schedule
from loopscale.analysis.bootstrap import bootstrap_fits, bootstrap_plan, unit_labels
from loopscale.analysis.law import PAPER_LAW, Law
from loopscale.analysis.plan import (
    DEFAULT_CPU_GFLOPS,
    baseline_and_probes,
    bootstrap_many,
    candidate_cells,
    check_pick,
    cost_summary,
    design_table,
    fit_data,
    greedy_suggestions,
    plan_grid,
    point_fits,
    simulate_losses,
)
from loopscale.counting import flops_per_token
from loopscale.grid import find_grid, grid_from_dict, load_grid
from sweep_fixtures import cli_in_process, fake_result

SMALL = """\
name: small
model: {n_layers_eff: 10, n_prelude: 1, n_coda: 1, head_dim: 32}
train: {seq_len: 128, batch_tokens: 2048}
vocab_size: 4096
r: [1, 2, 4, 8]
probes: [PROBES]
flops:
  1.0e14: [64, 96, 128]
  3.0e14: [96, 128, 160]
  1.0e15: [128, 160, 192]
"""
QUICK = dict(replicates=12, bootstrap=30, suggest=0, workers=1)


def small_grid(tmp_path, probes: str = "none"):
    path = tmp_path / f"small-{probes}.yaml"
    path.write_text(SMALL.replace("PROBES", probes))
    return load_grid(path)


def test_cost_is_exact_against_counting(tmp_path):
    grid = small_grid(tmp_path)
    cost = cost_summary(design_table(grid.runs), peak_tflops=500.0, mfu=0.5)
    # Σ tokens·F, with F recomputed from the architecture by counting.py and D = iterations·B.
    expected = [flops_per_token(s.config.model, 128, 4096) * s.iterations * 2048 for s in grid.runs]
    assert cost["total_flops"] == pytest.approx(float(sum(expected)), rel=1e-12)
    assert cost["total_flops"] == pytest.approx(grid.total_flops, rel=1e-12)
    assert cost["gpu_hours"] == pytest.approx(sum(expected) / (500e12 * 0.5) / 3600, rel=1e-12)
    assert [row["r"] for row in cost["per_r"]] == [1, 2, 4, 8] and cost["runs"] == 36
    assert sum(row["flops"] for row in cost["per_r"]) == pytest.approx(cost["total_flops"], rel=1e-12)
    assert sum(row["gpu_hours"] for row in cost["per_r"]) == pytest.approx(cost["gpu_hours"], rel=1e-12)


def test_more_noise_gives_a_wider_ci(tmp_path):
    grid = small_grid(tmp_path)
    quiet = plan_grid(grid, PAPER_LAW, noise=0.005, **QUICK).to_json()
    loud = plan_grid(grid, PAPER_LAW, noise=0.02, **QUICK).to_json()
    for key in ("phi_ci_width", "phi_ci_width_spread", "phi_ci_width_fisher"):
        assert loud[key] > 2 * quiet[key], key
    assert quiet["phi_ci_width"] == quiet["phi_ci_width_bootstrap"]
    assert abs(quiet["phi_mean"] - PAPER_LAW.phi) < 0.02


def test_paper_grid_ci_is_in_the_papers_ballpark():
    grid = load_grid(Path(__file__).resolve().parents[1] / "grids" / "paper.yaml")
    doc = plan_grid(grid, PAPER_LAW, noise=0.01, replicates=16, bootstrap=40, suggest=0, workers=1).to_json()
    assert doc["n_runs"] == 116
    # The paper's CI is [0.41, 0.53] (width 0.12) on real runs; iid noise of 0.01 nats gives ≈0.07.
    assert 0.04 < doc["phi_ci_width"] < 0.13
    assert 0.06 < doc["phi_ci_width_fisher"] < 0.09
    assert abs(doc["phi_mean"] - 0.459) < 0.02
    assert doc["p_ci_excludes_0"] == 1.0 and doc["p_ci_excludes_1"] == 1.0
    assert doc["total_flops"] == pytest.approx(grid.total_flops)


def test_one_gpu_grid_meets_its_design_targets():
    """grids/one-gpu.yaml as issue 13 asks: ≤ 8 GPU-hours at 40% MFU of an H100, and under the paper's law at the
    paper's 0.015-nat scatter a φ CI narrower than 0.15 that excludes 0 and 1, with ≥ 2/3 of its cells bracketed.
    (Full plan, 100 replicates × 200 resamples: CI width 0.122, 16/16 cells; here 24 × 100, to keep it quick:
    0.115, while the 9-cell design the grid file describes measures 0.153 with these settings and fails.)"""
    grid = load_grid(find_grid("one-gpu"))
    doc = plan_grid(grid, PAPER_LAW, noise=0.015, replicates=24, bootstrap=100, suggest=0, workers=1,
                    peak_tflops=989.0, mfu=0.4).to_json()
    assert doc["cost"]["gpu_hours"] <= 8.0
    assert doc["phi_ci_width"] < 0.15
    assert doc["p_ci_excludes_0"] == 1.0 and doc["p_ci_excludes_1"] == 1.0
    cells = doc["diagnostics"]["cells"]
    assert len(cells) == 16 and doc["diagnostics"]["cells_bracketed"] >= 2 / 3 * len(cells)
    assert {(c["r"]) for c in cells} == {1, 2, 4, 8}


def test_batched_bootstrap_refits_land_on_fits_optima(tmp_path):
    design = design_table(small_grid(tmp_path).runs)
    losses = simulate_losses(design, PAPER_LAW, 0.01, 1, 0)
    thetas, _ = point_fits(design, losses, PAPER_LAW, starts=4, seed=0)
    ours, _ = bootstrap_many([design], [losses], [thetas], 6, seed=3)
    plan = bootstrap_plan([unit_labels(design, "cells")], 6, 3)  # the same draws
    theirs = bootstrap_fits([fit_data(design, losses[0])], plan, starts=8, seed=0, warm=[thetas[0]], workers=1)
    assert np.allclose(ours[0, 0], theirs.params[0, :, 5], atol=1e-4)


def test_greedy_pick_really_reduces_the_variance(tmp_path):
    grid = small_grid(tmp_path)
    base = design_table(grid.runs)
    cand = candidate_cells(grid, base)
    assert len(cand) > len(base) and cand["exists"].sum() == len(base)
    picks = greedy_suggestions(base, cand, PAPER_LAW, 0.01, k=3)
    assert len(picks) == 3
    assert all(p["fisher_width_after"] < p["fisher_width_before"] for p in picks)
    sim = check_pick(base, picks[0], PAPER_LAW, 0.01, seed=0, replicates=1000)
    assert sim["sd_ratio"] < 1 - 3 * sim["sd_ratio_se"]  # really smaller, by simulation
    assert abs(sim["sd_ratio"] - sim["fisher_ratio"]) < 0.04  # and as much as the sandwich says
    assert sim["phi_sd_before"] == pytest.approx(picks[0]["fisher_width_before"] / 3.92, rel=0.1)
    # Per FLOP, the pick beats the most expensive candidate.
    costly = cand.loc[cand["flops"].idxmax()]
    assert picks[0]["flops"] < costly["flops"]


def test_probe_grid_resolves_a_large_delta(tmp_path):
    grid = small_grid(tmp_path, "tbptt")
    base, probes, built = baseline_and_probes(grid)
    assert list(probes) == ["tbptt"] and built == 27 and len(base) == 36 and len(probes["tbptt"]) == 36
    doc = plan_grid(grid, PAPER_LAW, noise=0.01, probe_delta=0.3, **QUICK).to_json()
    probe = doc["probes"]["tbptt"]
    assert abs(probe["delta_mean"] - 0.3) < 0.1
    assert probe["p_resolved"] >= 0.8 and probe["n_shared_r1"] == 9
    assert probe["min_detectable_delta"] < 0.3
    assert doc["cost"]["runs"] == 36 and any("not in this grid" in n for n in doc["notes"])


def test_cli_json_keys_and_fit_json_law(tmp_path, capsys):
    small_grid(tmp_path)
    fit_json = tmp_path / "fit.json"
    fit_json.write_text(json.dumps({"params": {**PAPER_LAW.to_dict(), "phi": 0.7}}))
    code, out, err = cli_in_process(["plan", tmp_path / "small-none.yaml", "--law", fit_json, "--json", "--replicates", 10,
                           "--bootstrap", 20, "--suggest", 1, "--workers", 1], capsys)
    assert code == 0, err
    doc = json.loads(out)  # stdout is the JSON and nothing else
    for key in ("phi_mean", "phi_ci_width", "total_flops", "phi_ci_width_spread", "phi_ci_width_fisher",
                "p_ci_excludes_0", "p_ci_excludes_1", "cost", "suggestions", "low_information", "probes", "diagnostics",
                "law_source", "noise_source", doc["cost"]["unit"]):
        assert key in doc, key
    assert doc["law_source"] == str(fit_json) and doc["noise_source"].startswith("default 0.01")
    assert doc["phi_true"] == 0.7 and abs(doc["phi_mean"] - 0.7) < 0.05
    assert doc["suggestions"][0]["simulated"]["replicates"] == 1000


def test_cli_defaults_are_plans_own_settings():
    """The options spell plan's defaults as literals (importing the plan package would load the fit's imports at
    every CLI start-up): they must stay plan's own settings (loopscale.analysis.plan.settings)."""
    import typer

    from loopscale.analysis.plan import settings
    from loopscale.cli import app

    params = typer.main.get_command(app).commands["plan"].params
    options = {p.name: p.default for p in params}
    assert options["replicates"] == settings.PLAN_REPLICATES
    assert options["bootstrap"] == settings.PLAN_RESAMPLES
    assert options["starts"] == settings.PLAN_STARTS
    assert options["fit_starts"] == settings.SWEEP_FIT_STARTS
    assert options["probe_delta"] == settings.PROBE_DELTA
    assert options["suggest"] == settings.SUGGEST
    assert options["noise"] is None  # PLAN_NOISE unless --from measures it
    assert f"else {settings.DEFAULT_CPU_GFLOPS:g})" in next(p.help for p in params if p.name == "cpu_gflops")


def test_cli_prints_tables(tmp_path, capsys):
    small_grid(tmp_path, "hyperconn")
    code, out, err = cli_in_process(["plan", tmp_path / "small-hyperconn.yaml", "--replicates", 10, "--bootstrap", 20,
                           "--suggest", 2, "--workers", 1, "--cost-unit", "gpu"], capsys)
    assert code == 0, err
    for text in ("95% CI width", "GPU-hours", "hyperconn", "cells to add", "checked by simulation"):
        assert text in out, text


@pytest.mark.parametrize("case", ["no-grid", "noise", "law", "mfu", "replicates", "only-r1", "bad-yaml", "law-and-from",
                                  "from-missing", "from-not-a-sweep", "from-no-finished", "from-too-few",
                                  "cpu-gflops", "cost-unit"])
def test_cli_errors_exit_2_with_one_line(tmp_path, capsys, case):
    grid = small_grid(tmp_path).path
    argv = ["plan", grid, "--replicates", 10, "--bootstrap", 0, "--suggest", 0, "--workers", 1]
    if case == "no-grid":
        argv[1] = tmp_path / "missing.yaml"
    elif case == "noise":
        argv += ["--noise", 0]
    elif case == "law":
        argv += ["--law", tmp_path / "nofit.json"]
    elif case == "mfu":
        argv += ["--mfu", 1.5]
    elif case == "replicates":
        argv[3] = 3
    elif case == "only-r1":
        argv[1] = tmp_path / "r1.yaml"
        argv[1].write_text(SMALL.replace("PROBES", "none").replace("r: [1, 2, 4, 8]", "r: [1]"))
    elif case == "bad-yaml":
        argv[1] = tmp_path / "bad.yaml"
        argv[1].write_text("flops: [1, 2\n")
    elif case == "law-and-from":
        argv += ["--law", "paper", "--from", tmp_path]
    elif case == "from-missing":
        argv += ["--from", tmp_path / "no-sweep"]
    elif case == "from-not-a-sweep":
        argv += ["--from", tmp_path]
    elif case in ("from-no-finished", "from-too-few"):
        sweep = tmp_path / "sweep"
        for i in range(3 if case == "from-too-few" else 2):
            run = sweep / "runs" / f"run{i}"
            if case == "from-too-few":
                fake_result(run, f"run{i}", loss=3.0 + i)
            else:
                run.mkdir(parents=True)  # submitted, never finished
        argv += ["--from", sweep]
    elif case == "cpu-gflops":
        argv += ["--cpu-gflops", -1, "--cost-unit", "cpu"]
    elif case == "cost-unit":
        argv += ["--cost-unit", "tpu"]
    code, out, err = cli_in_process(argv, capsys)
    assert code == 2
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1, err
    want = {"law-and-from": "give --law or --from, not both", "from-missing": "no such sweep folder",
            "from-not-a-sweep": "not a sweep folder", "from-no-finished": "no finished runs to fit",
            "from-too-few": "cannot fit the law (3 usable runs, fewer than the 6", "cpu-gflops": "--cpu-gflops",
            "cost-unit": "--cost-unit must be auto, gpu or cpu"}.get(case)
    assert want is None or want in err, err


# --- regime: does each iso-FLOP cell bracket its compute-optimal width under the law? ----------------

CONSTRUCTED = Law(E=1.6, A=28.0, alpha=0.2, B=900.0, beta=0.37, phi=0.5)
FAMILY = """model: {n_layers_eff: 10, n_prelude: 1, n_coda: 1, head_dim: 32}
train: {seq_len: 128, batch_tokens: 2048, device: cpu}
vocab_size: 4096
r: [1, 2]
"""


def _optimal_widths(law: Law, budgets) -> dict:
    """Compute-optimal width per budget by brute force: the law on every width 32..1024 (step 32)."""
    raw = yaml.safe_load(FAMILY)
    raw["flops"] = {c: list(range(32, 1025, 32)) for c in budgets}
    d = design_table(grid_from_dict(raw, "scan").runs)
    d["loss"] = law.predict(d["n_once"], d["n_rec"], d["r"], d["tokens"])
    best = {}
    for (c, r), rows in d.groupby(["budget_flops", "r"]):
        best.setdefault(c, set()).add(int(rows.loc[rows["loss"].idxmin(), "width"]))
    assert all(len(v) == 1 for v in best.values())  # one optimum per budget, whatever r
    return {c: v.pop() for c, v in best.items()}


def _grid_file(tmp_path, name: str, flops: dict):
    path = tmp_path / f"{name}.yaml"
    path.write_text(FAMILY + yaml.safe_dump({"flops": {f"{c:.1e}": w for c, w in flops.items()}}))
    return path


def test_plan_warns_when_the_grid_misses_the_compute_optimal_widths(tmp_path, capsys):
    fit_json = tmp_path / "fit.json"
    fit_json.write_text(json.dumps({"params": CONSTRUCTED.to_dict()}))
    best = _optimal_widths(CONSTRUCTED, (1e14, 1e15))
    assert all(d >= 64 for d in best.values()), best
    around = _grid_file(tmp_path, "around", {c: [d - 32, d, d + 32] for c, d in best.items()})
    wide = _grid_file(tmp_path, "wide", {c: [d + 384, d + 512, d + 640] for c, d in best.items()})
    args = ["--law", fit_json, "--replicates", 10, "--bootstrap", 0, "--suggest", 0, "--workers", 1]
    docs = {}
    for path in (around, wide):
        code, out, err = cli_in_process(["plan", path, "--json", *args], capsys)
        assert code == 0, err
        docs[path.stem] = (json.loads(out), err)
    good, good_err = docs["around"]
    bad, bad_err = docs["wide"]
    for doc in (good, bad):
        diag = doc["diagnostics"]
        assert diag["n_cells"] == 4 and len(diag["cells"]) == 4  # 2 budgets × 2 r, 3 widths each
        assert {(c["budget"], c["r"]) for c in diag["cells"]} == {(c, r) for c in (1e14, 1e15) for r in (1, 2)}
    assert good["diagnostics"]["cells_bracketed"] == 4 and good["warnings"] == [] and "warning" not in good_err
    assert all(c["where"] == "inside" and c["n_min"] < c["n_star"] < c["n_max"] for c in good["diagnostics"]["cells"])
    assert bad["diagnostics"]["cells_bracketed"] == 0
    assert all(c["where"] in ("below", "flat") for c in bad["diagnostics"]["cells"])
    text = bad["diagnostics"]["warning"]
    assert bad["warnings"] == [text] and text.startswith(f"under the {fit_json} law only 0 of 4 iso-FLOP cells")
    assert "bracket their compute-optimal width" in text and "train narrower models" in text
    assert bad_err.startswith("warning: under the") and bad_err.count("warning:") == 1  # before the simulation
    code, out, err = cli_in_process(["plan", wide, *args], capsys)  # the tables say it too
    assert code == 0 and "0/4 with ≥ 3 widths bracket" in out and "below smallest N" in out
    assert err.startswith("warning:") and "warning: under the" in out


# --- cost in the executor's unit ---------------------------------------------------------------------


def test_cpu_grid_costs_core_hours_and_wall_time(tmp_path, capsys):
    best = _optimal_widths(CONSTRUCTED, (1e14,))
    path = _grid_file(tmp_path, "cpu", {1e14: [best[1e14] - 32, best[1e14], best[1e14] + 32], 3e14: [96, 128, 160]})
    path.write_text(path.read_text() + "executor: {kind: local, local_jobs: 3, threads_per_job: 2}\n")
    grid = load_grid(path)
    args = ["plan", path, "--replicates", 10, "--bootstrap", 0, "--suggest", 1, "--workers", 1]
    code, out, err = cli_in_process([*args, "--json", "--cpu-gflops", 5], capsys)
    assert code == 0, err
    doc = json.loads(out)
    cost = doc["cost"]
    assert cost["unit"] == "cpu_hours" and "gpu_hours" not in doc and "gpu_hours" not in cost
    assert cost["unit_reason"] == "train.device is cpu" and cost["rate_source"] == "--cpu-gflops 5"
    expected = grid.total_flops / 5e9 / 3600
    assert doc["cpu_hours"] == cost["cpu_hours"] == cost["hours"] == pytest.approx(expected, rel=1e-12) and expected > 0
    assert sum(row["cpu_hours"] for row in cost["per_r"]) == pytest.approx(expected, rel=1e-12)
    # wall clock: runs in the local queue's order (longest first, as submit starts them) on 3 jobs of 2 cores
    by_id = {s.run_id: s for s in grid.runs}
    queue = [by_id[d.name] for d in schedule.longest_first([tmp_path / s.run_id for s in grid.runs], grid.runs)]
    assert queue != list(grid.runs)  # the order matters here
    slots = [0.0, 0.0, 0.0]
    for s in queue:
        i = slots.index(min(slots))
        slots[i] += s.flops / 5e9 / 2 / 3600
    assert (cost["parallel_jobs"], cost["per_job"]) == (3, 2)
    assert cost["wall_hours"] == pytest.approx(max(slots), rel=1e-12)
    assert expected / 6 <= cost["wall_hours"] < expected / 2
    assert doc["suggestions"][0]["cpu_hours"] == pytest.approx(doc["suggestions"][0]["flops"] / 5e9 / 3600)
    # the default rate, and the tables: core-hours, never GPU-hours
    code, out, err = cli_in_process(args, capsys)
    assert code == 0, err
    assert "CPU core-hours" in out and "GPU-h" not in out and "0.0 CPU" not in out
    assert f"default {DEFAULT_CPU_GFLOPS:g} GFLOP/s per core" in out and "wall clock ≈" in out
    # the same grid on GPUs (train.device cuda) costs GPU-hours at peak × MFU
    path.write_text(path.read_text().replace("device: cpu", "device: cuda"))
    code, out, err = cli_in_process([*args, "--json"], capsys)
    assert code == 0, err
    gpu = json.loads(out)["cost"]
    assert gpu["unit"] == "gpu_hours" and gpu["unit_reason"] == "train.device is cuda"
    assert gpu["gpu_hours"] == pytest.approx(grid.total_flops / (989e12 * 0.4) / 3600, rel=1e-12)


def test_plan_additive_probe_grid(tmp_path, capsys):
    """The shipped tiny-additive grid holds the probe's runs and tiny's r = 1 runs: plan builds the baseline's
    looped counterparts (linear injection, 2d² more weights each), simulates Δφ and suggests cells for the probe."""
    grid = load_grid(Path(__file__).resolve().parents[1] / "grids" / "tiny-additive.yaml")
    base, probes, built = baseline_and_probes(grid)
    assert list(probes) == ["additive"] and built == 6 and len(base) == len(probes["additive"]) == 12
    looped = probes["additive"][probes["additive"].r > 1].set_index(["budget_flops", "width"])
    plain = base[base.r > 1].set_index(["budget_flops", "width"]).loc[looped.index]
    assert ((plain.n_rec - looped.n_rec).to_numpy() == 2 * looped.index.get_level_values("width") ** 2).all()
    code, out, err = cli_in_process(["plan", grid.path, "--json", "--replicates", 10, "--bootstrap", 20, "--suggest", 1,
                                     "--workers", 1, "--cost-unit", "cpu"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert list(doc["probes"]) == ["additive"] and doc["suggestions_for"] == "additive"
    assert doc["probes"]["additive"]["n_shared_r1"] == 6 and doc["suggestions"]
