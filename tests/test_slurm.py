"""The slurm executor against a real SLURM cluster (`bash scripts/slurm-local.sh` starts a one-node one; CI
does). Outside CI these tests skip, naming the reason, when no controller answers `scontrol ping`; with CI
set they fail instead (conftest.py, `slurm_controller`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from loopscale import store
from sweep_fixtures import GRIDS, cli, cli_json, make_tiny_data

HAVE_SLURM = shutil.which("sbatch") is not None

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_controller")]


def job_ids(sweep_dir):
    return {p.parent.name: json.loads(p.read_text())["job_id"] for p in (sweep_dir / "runs").glob("*/job.json")}


def test_slurm_array_status_collect_rerun_cancel_and_retry(tmp_path):
    assert HAVE_SLURM, "sbatch is not on PATH: start the cluster with `bash scripts/slurm-local.sh`"
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
    assert HAVE_SLURM, "sbatch is not on PATH: start the cluster with `bash scripts/slurm-local.sh`"
    data = make_tiny_data(tmp_path / "data")
    out = cli("sweep", GRIDS / "smoke.yaml", "--data", data, "--out", tmp_path / "sweep", "--executor", "slurm",
              "--partition", "no-such-partition")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().count("\n") == 0 and "slurm submission failed" in out.stderr
    assert not (tmp_path / "sweep").exists()


TIMEOUT_GRID = """
name: requeue
model: {{n_layers_eff: 4, n_prelude: 1, n_coda: 1, head_dim: 16}}
train: {{seq_len: 64, batch_tokens: 1024, log_every: 1, threads: 1,
        checkpoint_every_steps: 0, checkpoint_every_min: 0}}   # no periodic checkpoints: only the signal's
data: {{eval_tokens: 2048}}
r: [2]
widths: [64]
tokens: [{tokens}]
executor: {{kind: slurm, time_min: 1, cpus_per_task: 1, mem_gb: 2}}
"""


def _job_state(job_id: str) -> tuple[str, str]:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T|%r"], capture_output=True, text=True).stdout
    return tuple(out.strip().split("|")) if "|" in out else ("", "")


def test_slurm_timeout_requeues_and_resumes_to_the_same_loss(tmp_path):
    """A 1-minute time limit hits a longer run: SLURM's warning signal makes it checkpoint at a step boundary,
    submitit requeues it, the requeued job resumes, and the final loss equals an uninterrupted run's, bitwise."""
    assert HAVE_SLURM, "sbatch is not on PATH: start the cluster with `bash scripts/slurm-local.sh`"
    data = make_tiny_data(tmp_path / "data")

    # Calibrate: size the run to ~90 s of training on this machine, longer than the 1-minute limit.
    (tmp_path / "calib.yaml").write_text(TIMEOUT_GRID.format(tokens=64 * 1024))
    cli_json("sweep", tmp_path / "calib.yaml", "--data", data, "--out", tmp_path / "calib", "--executor", "debug",
             "--json")
    tps = store.load_results(tmp_path / "calib").tokens_per_s.iloc[0]
    steps = max(1000, int(90 * tps / 1024))
    grid = tmp_path / "grid.yaml"
    grid.write_text(TIMEOUT_GRID.format(tokens=steps * 1024))

    rows = cli_json("sweep", grid, "--data", data, "--out", tmp_path / "sweep", "--executor", "slurm", "--json")
    job_id, run_id = rows[0]["job_id"], rows[0]["run_id"]
    # The uninterrupted reference, in a process of its own, while the SLURM job runs (1 thread each).
    ref = subprocess.Popen([sys.executable, "-m", "loopscale.cli", "sweep", str(grid), "--data", str(data),
                            "--out", str(tmp_path / "ref"), "--executor", "debug"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run_dir = tmp_path / "sweep" / "runs" / run_id
    deadline = time.time() + 600
    while not (run_dir / "result.json").exists():
        assert time.time() < deadline, "the requeued run did not finish in 10 minutes"
        state, reason = _job_state(job_id)
        if state == "PENDING" and reason == "BeginTime":
            # SLURM holds a requeued job ~2 minutes before it is eligible again; start it now.
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True)
        time.sleep(1)
    out, _ = ref.communicate(timeout=600)
    assert ref.returncode == 0, out

    result = json.loads((run_dir / "result.json").read_text())
    reference = json.loads(next((tmp_path / "ref" / "runs").glob("*/result.json")).read_text())
    assert result["status"] == "done" and result["run_id"] == reference["run_id"] == run_id
    assert result["resumed_from_step"] and 0 < result["resumed_from_step"] < steps, result["resumed_from_step"]
    assert result["tokens"] == reference["tokens"] == steps * 1024
    assert result["val_loss"] == reference["val_loss"]  # bitwise: same batches, same optimizer state
    log = (run_dir / "job.err").read_text()
    assert "this job is timed-out" in log, log[-2000:]
    while True:  # result.json is written before the job's process exits: wait for accounting to say so
        sacct = subprocess.run(["sacct", "-n", "-X", "-D", "-j", job_id, "-o", "State"], capture_output=True,
                               text=True).stdout.split()
        if sacct and sacct[-1] not in ("RUNNING", "COMPLETING") or time.time() > deadline:
            break
        time.sleep(1)
    detail = subprocess.run(["sacct", "-D", "-j", job_id, "-o", "JobID,State,Start,End,ExitCode"],
                            capture_output=True, text=True).stdout
    assert "REQUEUED" in sacct and sacct[-1] == "COMPLETED", detail + (run_dir / "job.err").read_text()[-3000:]
    logged = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, steps + 1))  # the resumed attempt did not log steps twice
    assert not (run_dir / "checkpoints").exists() or not any((run_dir / "checkpoints").iterdir())
    assert cli_json("status", tmp_path / "sweep", "--json")["counts"] == {"done": 1}


CANCEL_GRID = """
name: cancel
model: {{n_layers_eff: 4, n_prelude: 1, n_coda: 1, head_dim: 16}}
train: {{seq_len: 64, batch_tokens: 1024, log_every: 1, threads: 1}}
data: {{eval_tokens: 2048}}
r: [1]
widths: [32]
tokens: [{long}, {short}]
executor: {{kind: slurm, time_min: 10, cpus_per_task: 1, mem_gb: 2, array_parallelism: 1}}
"""


def test_loopscale_cancel_scancels_a_running_and_a_pending_run_and_retry_resumes_them(tmp_path):
    """`loopscale cancel` on SLURM: the pending array task is scancel'd before it runs, the running one stops at
    a step boundary (it watches its cancel marker) before scancel's kill; both read `cancelled` at once, and
    `sweep --retry-failed` resubmits them: the stopped one resumes from its checkpoint."""
    assert HAVE_SLURM, "sbatch is not on PATH: start the cluster with `bash scripts/slurm-local.sh`"
    data = make_tiny_data(tmp_path / "data")
    grid = tmp_path / "grid.yaml"
    grid.write_text(CANCEL_GRID.format(long=800 * 1024, short=8 * 1024))
    sweep_dir = tmp_path / "sweep"
    base = ("sweep", grid, "--data", data, "--out", sweep_dir)
    rows = cli_json(*base, "--json")
    task = {r["job_id"]: r for r in rows}
    running = next(r for r in rows if r["tokens"] == 800 * 1024)
    pending = next(r for r in rows if r["tokens"] == 8 * 1024)
    assert running["job_id"].endswith("_0") and pending["job_id"].endswith("_1"), task  # one task at a time
    run_dir = sweep_dir / "runs" / running["run_id"]
    deadline = time.time() + 300
    while not (run_dir / "metrics.jsonl").exists() or not (run_dir / "metrics.jsonl").read_text().strip():
        assert time.time() < deadline, "the first array task did not start training"
        time.sleep(0.5)

    # Both in one call, right after the first step: a second call would race the running task to its end.
    t0 = time.time()
    got = cli_json("cancel", sweep_dir, "--json")
    assert time.time() - t0 < 30
    outcome = {r["run_id"]: (r["was"], r["outcome"]) for r in got["runs"]}
    assert outcome == {pending["run_id"]: ("pending", "not started"),
                       running["run_id"]: ("running", "stopped")}, got
    assert got["retry"] == f"loopscale sweep {sweep_dir / 'grid.yaml'} --out {sweep_dir} --executor slurm --retry-failed", got
    while squeue := subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-j", running["job_id"].split("_")[0]],
                                   capture_output=True, text=True).stdout.split():
        assert time.time() - t0 < 30, f"scancel'd tasks still queued: {squeue}"  # the stopped task is completing
        time.sleep(0.5)
    mark = json.loads((run_dir / "cancel.json").read_text())
    step = mark["stopped_at_step"]
    assert 0 < step < 800 and (run_dir / "checkpoints" / f"step_{step:09d}.pt").exists(), mark
    got = cli_json("status", sweep_dir, "--json")
    assert got["counts"] == {"cancelled": 2}, got

    out = cli("cancel", sweep_dir, running["run_id"])  # not in flight any more
    assert out.returncode == 2 and "is cancelled, not in flight; nothing cancelled" in out.stderr, out.stderr

    rows = cli_json(*base, "--retry-failed", "--array-parallelism", "2", "--wait", "--poll", "1", "--json")
    assert {r["action"] for r in rows} == {"resubmit"}
    assert cli_json("status", sweep_dir, "--json")["counts"] == {"done": 2}
    result = json.loads((run_dir / "result.json").read_text())
    assert result["resumed_from_step"] == step and result["tokens"] == 800 * 1024
    assert (run_dir / "attempts" / "1" / "cancel.json").exists() and not (run_dir / "cancel.json").exists()
