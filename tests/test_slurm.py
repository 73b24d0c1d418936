"""The slurm executor against a real SLURM cluster (CI starts one with ../shared/slurm/single-node.sh).

Skipped only where `sbatch` is absent and CI is not "true"; under CI=true a missing SLURM fails the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from loopscale import store
from sweep_fixtures import GRIDS, cli, cli_json, make_tiny_data

HAVE_SLURM = shutil.which("sbatch") is not None
UNDER_CI = os.environ.get("CI") == "true"

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(not HAVE_SLURM and not UNDER_CI, reason="no sbatch on PATH (CI starts a one-node cluster)"),
]


def job_ids(sweep_dir):
    return {p.parent.name: json.loads(p.read_text())["job_id"] for p in (sweep_dir / "runs").glob("*/job.json")}


def test_slurm_array_status_collect_rerun_cancel_and_retry(tmp_path):
    assert HAVE_SLURM, "CI=true but sbatch is not on PATH: start the cluster with ../shared/slurm/single-node.sh"
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    assert "UP" in ping.stdout, f"the SLURM controller is not up: {ping.stdout}{ping.stderr}"
    data = make_tiny_data(tmp_path / "data")
    sweep_dir = tmp_path / "sweep"
    base = ("sweep", GRIDS / "smoke.yaml", "--data", data, "--out", sweep_dir, "--executor", "slurm")

    # One job array for the 4 runs, one task at a time, so the last task is still pending when cancelled.
    rows = cli_json(*base, "--array-parallelism", "1", "--json")
    assert [r["action"] for r in rows] == ["submit"] * 4
    arrays = {r["job_id"].split("_")[0] for r in rows}
    assert len(arrays) == 1 and sorted(int(r["job_id"].split("_")[1]) for r in rows) == [0, 1, 2, 3]
    victim = rows[-1]
    subprocess.run(["scancel", victim["job_id"]], check=True)
    # scancel returns before the controller has dropped the task: wait until status sees it cancelled.
    deadline = time.time() + 60
    while time.time() < deadline:
        runs = {r["run_id"]: r["state"] for r in cli_json("status", sweep_dir, "--json")["runs"]}
        if runs[victim["run_id"]] == "cancelled":
            break
        time.sleep(0.5)

    # Follow to the end: three finish, the cancelled one is reported cancelled (exit 1: not all finished).
    out = cli(*base, "--wait", "--poll", "1")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "nothing to submit" in out.stdout and "hold 1" in out.stdout
    got = cli_json("status", sweep_dir, "--json")
    assert got["counts"] == {"done": 3, "cancelled": 1}, got
    states = {r["run_id"]: r for r in got["runs"]}
    assert states[victim["run_id"]]["state"] == "cancelled"
    for rid, r in states.items():
        if r["state"] == "done":  # the job's stdout/stderr are in the run folder
            assert "step 16/16" in (sweep_dir / "runs" / rid / "job.err").read_text()

    out = cli("collect", sweep_dir)
    assert out.returncode == 0 and "collected 4 runs" in out.stdout, out.stdout + out.stderr
    df = store.load_results(sweep_dir, refresh=False).set_index("run_id")
    assert df.loss.notna().sum() == 3 and df.loc[victim["run_id"], "status"] == "cancelled"

    # Running it again resubmits nothing: finished runs are skipped, the cancelled one is held.
    before = job_ids(sweep_dir)
    out = cli(*base)
    assert out.returncode == 0 and "nothing to submit (skip 3, hold 1)" in out.stdout, out.stdout + out.stderr
    assert job_ids(sweep_dir) == before

    # --retry-failed resubmits only the cancelled run.
    rows = cli_json(*base, "--retry-failed", "--wait", "--poll", "1", "--json")
    assert {r["run_id"]: r["action"] for r in rows} == {
        r: ("resubmit" if r == victim["run_id"] else "skip") for r in before}
    after = job_ids(sweep_dir)
    assert {r for r in before if after[r] != before[r]} == {victim["run_id"]}
    assert (sweep_dir / "runs" / victim["run_id"] / "attempts" / "1" / "job.json").exists()
    got = cli_json("status", sweep_dir, "--json")
    assert got["counts"] == {"done": 4}
    assert store.collect(sweep_dir).counts == {"done": 4}

    rows = cli_json(*base, "--dry-run", "--json")
    assert {r["action"] for r in rows} == {"skip"}


def test_a_rejected_submission_is_one_line_and_leaves_no_sweep(tmp_path):
    assert HAVE_SLURM, "CI=true but sbatch is not on PATH: start the cluster with ../shared/slurm/single-node.sh"
    data = make_tiny_data(tmp_path / "data")
    out = cli("sweep", GRIDS / "smoke.yaml", "--data", data, "--out", tmp_path / "sweep", "--executor", "slurm",
              "--partition", "no-such-partition")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().count("\n") == 0 and "slurm submission failed" in out.stderr
    assert not (tmp_path / "sweep").exists()
