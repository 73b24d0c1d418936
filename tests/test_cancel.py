"""`loopscale cancel` and SIGTERM on the real local executor: runs stop at a step boundary, checkpointed,
read `cancelled`, and `sweep --retry-failed` resumes them. (SLURM: tests/test_slurm.py.)"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import yaml

from loopscale import store
from loopscale.grid import load_grid
from loopscale.submit import archive_attempt, run_job, run_sweep
from loopscale.submit.cancel import cancel_runs
from loopscale.schedule import alive
from loopscale.submit.scheduler import run_states
from sweep_fixtures import cli, cli_in_process, cli_json, fake_result

STEP = 1024  # tokens per optimizer step in these grids
GRID = {
    "name": "cancel",
    "model": {"n_layers_eff": 4, "n_prelude": 1, "n_coda": 1, "head_dim": 16},
    "train": {"seq_len": 64, "batch_tokens": STEP, "log_every": 1, "threads": 1},
    "data": {"eval_tokens": 2048},
    "r": [1],
    "widths": [32],
    "executor": {"kind": "local", "time_min": 10, "local_jobs": 1, "threads_per_job": 1},
}


def start_sweep(tmp_path, tiny_data, steps: list[int]):
    """A local sweep of one run per entry of ``steps`` (optimizer steps); returns (sweep dir, {steps: run id},
    the `sweep` command's arguments). The queue starts the longest run first."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({**GRID, "tokens": [s * STEP for s in steps]}))
    sweep_dir = tmp_path / "sweep"
    base = ("sweep", grid, "--data", tiny_data, "--out", sweep_dir, "--executor", "local", "--jobs", "1",
            "--threads-per-job", "1")
    g = load_grid(grid, data_dir=tiny_data)
    run_sweep(g, sweep_dir, g.executor)  # what `loopscale sweep *base` does, without a second interpreter's start
    return sweep_dir, {s.tokens // STEP: s.run_id for s in g.runs}, base


def wait_training(run_dir, deadline):
    """Until the run has logged a step (its worker is training it); returns its started.json."""
    while not (run_dir / "metrics.jsonl").exists() or not (run_dir / "metrics.jsonl").read_text().strip():
        assert time.time() < deadline, "the run did not start training"
        time.sleep(0.1)
    return json.loads((run_dir / "started.json").read_text())


def wait_states(sweep_dir, want, deadline):
    """Until the runs' states (as `loopscale status` reads them) count ``want``; returns {run_id: RunState}."""
    while store.counts((got := run_states(sweep_dir)).values()) != want:
        assert time.time() < deadline, got
        time.sleep(0.3)
    return got


def workers(run_dir):
    return json.loads((run_dir / "job.json").read_text())["workers"]


def kill_workers(run_dir):
    for w in workers(run_dir):  # do not leave a worker training after a failed test
        if alive(w["pid"], w["pid_start"]):
            os.killpg(w["pid"], signal.SIGKILL)


@pytest.mark.slow
def test_cancelling_a_running_run_stops_it_and_the_others_go_on_then_retry_resumes_it(tmp_path, tiny_data):
    sweep_dir, ids, base = start_sweep(tmp_path, tiny_data, [100, 6, 8])
    long_dir = sweep_dir / "runs" / ids[100]
    deadline = time.time() + 180
    try:
        started = wait_training(long_dir, deadline)
        got = cancel_runs(sweep_dir, [ids[100]], reason="testing")
        assert got.seconds < 10, got
        (run,) = got.runs
        assert (run.run_id, run.was, run.outcome) == (ids[100], "running", "stopped"), got
        step = run.step
        assert 0 < step < 100
        assert (long_dir / "checkpoints" / f"step_{step:09d}.pt").exists()
        runs = wait_states(sweep_dir, {"done": 2, "cancelled": 1}, deadline)  # the worker went on to the others
        detail = runs[ids[100]].detail
        assert "cancelled by" in detail and "(testing)" in detail and f"stopped at step {step}" in detail, detail
        mark = json.loads((long_dir / "cancel.json").read_text())
        assert mark["stopped_at_step"] == step and mark["released_by"].startswith(f"pid {started['pid']} ")

        rows = cli_json(*base, "--retry-failed", "--json")
        assert {r["run_id"]: r["action"] for r in rows} == {ids[100]: "resubmit", ids[6]: "skip", ids[8]: "skip"}
        assert (long_dir / "attempts" / "1" / "cancel.json").exists() and not (long_dir / "cancel.json").exists()
        wait_states(sweep_dir, {"done": 3}, deadline)
        result = json.loads((long_dir / "result.json").read_text())
        assert result["resumed_from_step"] == step and result["tokens"] == 100 * STEP
        logged = [json.loads(line)["step"] for line in (long_dir / "metrics.jsonl").read_text().splitlines()]
        assert logged == list(range(1, 101))  # the resumed attempt did not log steps twice
    finally:
        kill_workers(long_dir)


@pytest.mark.slow
def test_cancelling_a_whole_sweep_stops_the_running_run_and_the_queue(tmp_path, tiny_data, capsys):
    sweep_dir, ids, _ = start_sweep(tmp_path, tiny_data, [400, 300, 200])
    first = sweep_dir / "runs" / ids[400]
    deadline = time.time() + 120
    try:
        wait_training(first, deadline)
        # a pending run by id: it never starts, the running one goes on
        got = cli_json("cancel", sweep_dir, ids[200], "--json")
        assert [(r["run_id"], r["was"], r["outcome"]) for r in got["runs"]] == [(ids[200], "pending", "not started")]
        t0 = time.time()
        out = cli("cancel", sweep_dir)
        assert out.returncode == 0, out.stdout + out.stderr
        assert time.time() - t0 < 10
        assert "cancelled 2 run(s)" in out.stdout and "running → cancelled: stopped at step" in out.stdout
        assert "pending → cancelled: never started" in out.stdout, out.stdout
        assert (f"`loopscale sweep {sweep_dir / 'grid.yaml'} --out {sweep_dir} --executor local --retry-failed`"
                in out.stdout), out.stdout
        while any(alive(w["pid"], w["pid_start"]) for w in workers(first)):  # the worker finds nothing left to do
            assert time.time() - t0 < 15, "the local worker did not end"
            time.sleep(0.2)
        runs = wait_states(sweep_dir, {"cancelled": 3}, deadline)
        assert not (sweep_dir / "runs" / ids[300] / "started.json").exists()
        assert "stopped at step" in runs[ids[400]].detail
        code, out, _ = cli_in_process(["cancel", sweep_dir], capsys)
        assert code == 0 and "no run in flight; nothing cancelled" in out, out
    finally:
        kill_workers(first)


@pytest.mark.slow
def test_sigterm_to_a_local_worker_checkpoints_its_run_and_ends_it(tmp_path, tiny_data):
    """submitit's job process only logs SIGTERM and its controller forwards SIGTERM to it: the worker now
    stops its run at the next step boundary, checkpointed and cancelled, and both processes end."""
    sweep_dir, ids, _ = start_sweep(tmp_path, tiny_data, [400, 300])
    run_dir = sweep_dir / "runs" / ids[400]
    deadline = time.time() + 120
    try:
        started = wait_training(run_dir, deadline)
        (worker,) = workers(run_dir)  # the pid `sweep` printed: the job's controller
        t0 = time.time()
        os.kill(worker["pid"], signal.SIGTERM)
        while alive(worker["pid"], worker["pid_start"]) or alive(started["pid"], started["pid_start"]):
            assert time.time() - t0 < 10, "the local worker did not end within 10 s of SIGTERM"
            time.sleep(0.1)
        mark = json.loads((run_dir / "cancel.json").read_text())
        assert mark["reason"] == f"worker pid {started['pid']} got SIGTERM" and mark["stopped_at_step"] > 0
        assert (run_dir / "checkpoints" / f"step_{mark['stopped_at_step']:09d}.pt").exists()
        runs = wait_states(sweep_dir, {"cancelled": 1, "lost": 1}, deadline)  # the other run was never taken
        assert "got SIGTERM" in runs[ids[400]].detail
        assert "its workers ended before it started" in runs[ids[300]].detail
        assert not (run_dir / "error.json").exists()
    finally:
        kill_workers(run_dir)


@pytest.mark.slow
def test_a_run_that_does_not_let_go_within_the_grace_is_killed(tmp_path, tiny_data):
    sweep_dir, ids, _ = start_sweep(tmp_path, tiny_data, [400])
    run_dir = sweep_dir / "runs" / ids[400]
    deadline = time.time() + 120
    try:
        started = wait_training(run_dir, deadline)
        got = cancel_runs(sweep_dir, grace_s=0)
        (run,) = got.runs
        assert run.outcome == "killed" and got.killed == [started["pid"]], got
        while alive(started["pid"], started["pid_start"]):
            assert time.time() < deadline
            time.sleep(0.1)
        (st,) = store.run_states(sweep_dir).values()
        assert st.state == "cancelled", st
    finally:
        kill_workers(run_dir)


# --- without training --------------------------------------------------------------------------------

def test_bad_run_ids_are_one_line_and_cancel_nothing(tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    fake_result(sweep_dir / "runs" / "aaa", "aaa")
    (sweep_dir / "runs" / "bbb").mkdir()
    (sweep_dir / "runs" / "bbb" / "job.json").write_text(json.dumps(
        {"executor": "local", "job_id": "local-x", "host": "elsewhere", "workers": []}))
    for args, said in [(("nope",), "no run nope in this sweep"), (("bbb", "aaa"), "aaa is done, not in flight"),
                       (("bbb", "nope", "zzz"), "no run nope, zzz in this sweep")]:
        code, out, err = cli_in_process(["cancel", sweep_dir, *args], capsys)
        assert code == 2 and said in err and "nothing cancelled" in err and not out, err
        assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert not list(sweep_dir.glob("runs/*/cancel.json"))
    code, _, err = cli_in_process(["cancel", tmp_path / "missing"], capsys)
    assert code == 2 and "no such sweep folder" in err
    for grace in ("-1", "nan"):  # a NaN deadline is never reached: it would wait forever
        code, _, err = cli_in_process(["cancel", sweep_dir, "--grace", grace], capsys)
        assert code == 2 and f"--grace {grace}: must be 0 or more seconds" in err, err


def test_the_marker_makes_a_run_cancelled_a_result_wins_and_resubmission_moves_it(tmp_path):
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "job.json").write_text(json.dumps({"executor": "slurm", "job_id": "7_1"}))
    assert store.file_state(run).state == "submitted"
    (run / "error.json").write_text(json.dumps({"error": "KeyboardInterrupt"}))
    (run / "cancel.json").write_text(json.dumps({"user": "ann", "host": "h", "time": "T", "reason": "oops"}))
    st = store.file_state(run)
    assert st.state == "cancelled" and st.detail == "cancelled by ann@h at T (oops)" and st.job["job_id"] == "7_1"
    (run / "cancel.json").write_text("{")  # unreadable: still cancelled
    assert store.file_state(run).state == "cancelled"
    dest = archive_attempt(run)
    assert (dest / "cancel.json").exists() and not (run / "cancel.json").exists()
    fake_result(run, "r1")
    (run / "cancel.json").write_text("{}")
    assert store.file_state(run).state == "done"  # result.json landed first: the run stays done


def test_a_run_cancelled_before_its_turn_is_not_trained(tmp_path):
    """The debug executor's queue (run_job directly): a cancelled run is let go untrained."""
    run = tmp_path / "r1"
    run.mkdir()
    (run / "cancel.json").write_text(json.dumps({"reason": "x"}))
    assert run_job(str(run)) == {"run_id": "r1", "status": "cancelled"}
    assert not (run / "started.json").exists()
    mark = json.loads((run / "cancel.json").read_text())
    assert mark["reason"] == "x" and mark["released"] and mark["stopped_at_step"] is None
