"""`loopscale plan GRID --from SWEEP` on a real sweep: a pilot grid (2 FLOP budgets × r 1, 2 × 3 widths,
plus 2 seed repeats) trained by the real trainer through the debug executor on tiny generated data,
then planned from its own fit, noise and CPU rate. The tiny fit may be degenerate: the checks are the
plumbing and the numbers the test can compute on its own from the run folders."""

from __future__ import annotations

import json
import math
from collections import defaultdict

import numpy as np
import pytest

from loopscale.analysis.law import Law
from loopscale.grid import load_grid
from sweep_fixtures import cli, cli_json

pytestmark = pytest.mark.slow

PILOT = """\
name: pilot
model: {{n_layers_eff: 4, n_prelude: 1, n_coda: 1, head_dim: 16}}
train: {{seq_len: 32, batch_tokens: 256, log_every: 4, threads: 1, device: cpu}}
data: {{dir: {data}, eval_tokens: 512}}
vocab_size: 256
r: [1, 2]
flops:
  2.5e8: [16, 32, 48]
  5.0e8: [16, 32, 48]
repeats:
  - {{d_model: 32, budget_flops: 2.5e8, r: 2, seed: 1}}
  - {{d_model: 32, budget_flops: 5.0e8, r: 1, seed: 1}}
executor: {{kind: local, local_jobs: 2, threads_per_job: 1}}
"""
QUICK = ["--replicates", 10, "--bootstrap", 0, "--suggest", 0, "--starts", 0, "--fit-starts", 10, "--workers", 1]


@pytest.fixture(scope="module")
def pilot(tmp_path_factory, tiny_data):
    root = tmp_path_factory.mktemp("pilot")
    grid = root / "pilot.yaml"
    grid.write_text(PILOT.format(data=tiny_data))
    sweep = root / "sweep"
    out = cli("sweep", grid, "--out", sweep, "--executor", "debug")
    assert out.returncode == 0 and "done 14" in out.stdout, out.stdout + out.stderr
    results = [json.loads(p.read_text()) for p in sorted((sweep / "runs").glob("*/result.json"))]
    assert len(results) == 14 and all(r["status"] == "done" and r["device"] == "cpu" for r in results)
    return grid, sweep, results


def _pooled_seed_sd(results) -> float:
    groups = defaultdict(list)
    for r in results:
        groups[(r["budget_flops"], r["r"], r["d_model"])].append(r["val_loss"])
    repeated = [v for v in groups.values() if len(v) > 1]
    assert len(repeated) == 2 and all(len(v) == 2 for v in repeated)
    ss = sum(sum((x - np.mean(v)) ** 2 for x in v) for v in repeated)
    return math.sqrt(ss / sum(len(v) - 1 for v in repeated))


def test_plan_from_a_real_sweep_uses_its_law_noise_and_cpu_rate(pilot):
    grid_file, sweep, results = pilot
    doc = cli_json("plan", grid_file, "--from", sweep, "--json", *QUICK)
    assert doc["law_source"] == f"sweep:{sweep}" and doc["sweep"]["path"] == str(sweep)
    assert doc["sweep"]["fit"]["n_runs"] == 14 and doc["sweep"]["fit"]["starts"] == 10
    # the noise: max(pooled seed-to-seed sd, residual RMSE of the fitted law), both recomputed here
    sd = _pooled_seed_sd(results)
    law = Law.from_dict(doc["law"])
    pred = np.array([law.predict(r["n_once"], r["n_rec"], r["r"], r["tokens"]) for r in results])
    rmse = float(np.sqrt(np.mean((np.array([r["val_loss"] for r in results]) - pred) ** 2)))
    assert doc["sweep"]["seed_noise"]["sd"] == pytest.approx(sd, rel=1e-9)
    assert doc["sweep"]["seed_noise"]["n_groups"] == 2 and doc["sweep"]["residual_rmse"] == pytest.approx(rmse, rel=1e-6)
    assert doc["noise_nats"] == pytest.approx(max(sd, rmse), rel=1e-6)
    which = "seed-to-seed sd" if sd >= rmse else "the fit's residual RMSE"
    assert doc["noise_source"].startswith(f"measured on sweep:{sweep}: {which}")
    # the regime check under the sweep's law: 2 budgets × 2 r, 3 widths each
    diag = doc["diagnostics"]
    assert diag["n_cells"] == 4 and isinstance(diag["cells_bracketed"], int) and 0 <= diag["cells_bracketed"] <= 4
    assert diag["law_source"] == doc["law_source"] and (diag["warning"] is None) == (diag["cells_bracketed"] >= 3)
    # CPU cost at the sweep's measured rate: Σ wall·threads / Σ FLOPs (threads: 1 in the config)
    core_s_per_flop = sum(r["wall_time_s"] * 1 for r in results) / sum(r["flops_total"] for r in results)
    cost = doc["cost"]
    assert cost["unit"] == "cpu_hours" and cost["core_s_per_flop"] == pytest.approx(core_s_per_flop, rel=1e-9)
    grid = load_grid(grid_file)
    assert cost["cpu_hours"] == pytest.approx(grid.total_flops * core_s_per_flop / 3600, rel=1e-9)
    assert cost["cpu_hours"] > 0 and cost["rate_source"].startswith(f"measured on sweep:{sweep}")
    assert doc["sweep"]["cpu_rate"]["runs"] == 14 and cost["parallel_jobs"] == 2


def test_plan_from_a_sweep_with_explicit_noise_and_in_words(pilot):
    grid_file, sweep, _ = pilot
    out = cli("plan", grid_file, "--from", sweep, "--noise", 0.02, *QUICK)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert f"under the sweep:{sweep} law" in text and "noise 0.02 nats" in text and "noise: 0.02 nats, --noise" in text
    assert f"law: fitted to 14 finished runs of {sweep}" in text
    assert "CPU core-hours" in text and "GPU-h" not in text and f"CPU rate: measured on sweep:{sweep}" in text
