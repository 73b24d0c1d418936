"""The real sweep path end to end on grids/smoke.yaml, through the debug and local executors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from loopscale import schedule, store, submit
from loopscale.errors import UserError
from loopscale.grid import ExecutorConfig, load_grid
from sweep_fixtures import GRIDS, cli, cli_json

pytestmark = pytest.mark.slow


def check_finished_sweep(sweep_dir, n=4):
    got = cli_json("status", sweep_dir, "--json")
    assert got["counts"] == {"done": n}
    runs = {r["run_id"]: r for r in got["runs"]}
    for rid, r in runs.items():
        run = sweep_dir / "runs" / rid
        assert r["loss"] > 0 and (run / "result.json").exists() and (run / "config.yaml").exists()
        assert "step" in (run / "job.err").read_text()  # the job's stderr lands in the run folder
    out = cli("collect", sweep_dir, "--export", sweep_dir / "results.csv")
    assert out.returncode == 0, out.stderr
    df = store.load_results(sweep_dir)
    assert len(df) == n and (df.status == "done").all() and df.loss.notna().all()
    assert sorted(df.r.unique()) == [1, 2] and sorted(df.width.unique()) == [32, 64]
    return runs


def rerun_submits_nothing(sweep_dir, tiny_data, *extra):
    rows = cli_json("sweep", GRIDS / "smoke.yaml", "--data", tiny_data, "--out", sweep_dir, "--dry-run", "--json", *extra)
    assert {r["action"] for r in rows} == {"skip"}
    out = cli("sweep", GRIDS / "smoke.yaml", "--data", tiny_data, "--out", sweep_dir, *extra)
    assert out.returncode == 0 and "nothing to submit (skip 4)" in out.stdout, out.stdout + out.stderr


def test_debug_executor_end_to_end(tmp_path, tiny_data):
    sweep_dir = tmp_path / "sweep"
    out = cli("sweep", GRIDS / "smoke.yaml", "--data", tiny_data, "--out", sweep_dir, "--executor", "debug")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ran 4 run(s) in this process" in out.stdout and "done 4" in out.stdout
    runs = check_finished_sweep(sweep_dir)
    assert {json.loads((sweep_dir / "runs" / rid / "job.json").read_text())["executor"] for rid in runs} == {"debug"}
    kept = yaml.safe_load((sweep_dir / "grid.yaml").read_text())  # the grid, with the --data override
    assert kept == {**yaml.safe_load((GRIDS / "smoke.yaml").read_text()),
                    "data": {"eval_tokens": 2048, "dir": str(tiny_data.resolve())}}
    rerun_submits_nothing(sweep_dir, tiny_data, "--executor", "debug")


def test_local_executor_end_to_end(tmp_path, tiny_data):
    sweep_dir = tmp_path / "sweep"
    out = cli("sweep", GRIDS / "smoke.yaml", "--data", tiny_data, "--out", sweep_dir, "--executor", "local",
              "--jobs", "2", "--threads-per-job", "1", "--wait", "--poll", "0.5")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "submitted 4 run(s) to 2 local worker job(s)" in out.stdout
    runs = check_finished_sweep(sweep_dir)
    workers = set()
    for rid in runs:
        rec = json.loads((sweep_dir / "runs" / rid / "job.json").read_text())
        started = json.loads((sweep_dir / "runs" / rid / "started.json").read_text())
        assert rec["executor"] == "local" and len(rec["workers"]) == 2 and started["threads"] == 1
        workers.add(started["worker"])
    assert workers == {0, 1}  # both workers took runs
    rerun_submits_nothing(sweep_dir, tiny_data, "--executor", "local")


def test_failed_runs_are_recorded_held_and_retried_only_on_request(tmp_path, tiny_data):
    """A run that raises leaves error.json; status says failed with the reason; --retry-failed resubmits it."""
    raw = yaml.safe_load((GRIDS / "smoke.yaml").read_text())
    raw["data"] = {"dir": str(tiny_data), "eval_tokens": 10**9}  # more than the validation split: the trainer raises
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw))
    grid = load_grid(tmp_path / "bad.yaml")
    sweep_dir = tmp_path / "sweep"
    submit.make_sweep_dir(sweep_dir)
    submit.submit(sweep_dir, grid.runs[:1], ExecutorConfig(kind="debug"))
    states = store.run_states(sweep_dir)
    (st,) = states.values()
    assert st.state == "failed" and "eval_tokens" in st.detail
    assert (sweep_dir / "runs" / st.run_id / "error.json").exists()
    assert [r.action for r in submit.plan(grid.runs[:1], states)] == ["hold"]
    assert [r.action for r in submit.plan(grid.runs[:1], states, retry_failed=True)] == ["resubmit"]
    # the CLI checks the data up front, so the same grid is refused before anything is submitted
    out = cli("sweep", tmp_path / "bad.yaml", "--out", sweep_dir, "--retry-failed", "--executor", "debug")
    assert out.returncode == 2 and "exceeds the" in out.stderr and "Traceback" not in out.stderr
    assert not (sweep_dir / "runs" / st.run_id / "attempts").exists()


def test_a_changed_grid_says_what_changed(tmp_path, tiny_data):
    sweep_dir = tmp_path / "sweep"
    out = cli("sweep", GRIDS / "smoke.yaml", "--data", tiny_data, "--out", sweep_dir, "--executor", "debug")
    assert out.returncode == 0
    raw = yaml.safe_load((GRIDS / "smoke.yaml").read_text())
    raw["train"]["lr_matrix"] = 0.02
    raw["widths"] = [32]
    (tmp_path / "smoke.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    out = cli("sweep", tmp_path / "smoke.yaml", "--data", tiny_data, "--out", sweep_dir, "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "the grid changed" in out.stdout and "train.lr_matrix added (0.02)" in out.stdout
    assert "widths: [32, 64] → [32]" in out.stdout
    assert "4 run folder(s)" in out.stdout and "not in this grid" in out.stdout and "submit 2" in out.stdout
    assert "data.dir" not in out.stdout  # the same --data both times
    assert yaml.safe_load((sweep_dir / "grid.yaml").read_text())["widths"] == [32, 64]  # a dry run keeps the old


def test_ctrl_c_while_following_leaves_the_runs_going(tmp_path, tiny_data):
    """Ctrl-C during `sweep --wait` stops following (exit 130) but not the runs; `status` picks them up."""
    sweep_dir = tmp_path / "sweep"
    # Its own process group, like a shell's foreground job: Ctrl-C signals the whole group.
    proc = subprocess.Popen([sys.executable, "-m", "loopscale.cli", "sweep", str(GRIDS / "smoke.yaml"), "--data",
                             str(tiny_data), "--out", str(sweep_dir), "--executor", "local", "--jobs", "2",
                             "--threads-per-job", "1", "--wait", "--poll", "0.5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            # as a shell's foreground job: Ctrl-C is not ignored, even when this test's own
                            # process inherited SIGINT ignored (a background job); Python then raises nothing
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not list((sweep_dir / "runs").glob("*/started.json")):  # a run is in flight
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "stopped following; the submitted runs go on" in out and "Traceback" not in err, out + err
    states = cli_json("status", sweep_dir, "--json")["counts"]
    assert set(states) <= {"done", "running", "pending"} and sum(states.values()) == 4, states
    while cli_json("status", sweep_dir, "--json")["counts"] != {"done": 4}:
        assert time.time() < deadline, cli_json("status", sweep_dir, "--json")
        time.sleep(0.5)
    check_finished_sweep(sweep_dir)
    rerun_submits_nothing(sweep_dir, tiny_data, "--executor", "local")


def test_a_killed_run_is_lost_with_the_reason_and_retried(tmp_path, tiny_data):
    """SIGKILL of a running job (what the OOM killer or a dying node does) leaves the run `lost`, with why."""
    raw = yaml.safe_load((GRIDS / "smoke.yaml").read_text())
    raw["tokens"] = [16384 * 1000]  # far longer than the test: it is killed early
    raw["widths"], raw["r"] = [32], [2]
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(raw))
    sweep_dir = tmp_path / "sweep"
    base = ("sweep", tmp_path / "long.yaml", "--data", tiny_data, "--out", sweep_dir, "--executor", "local", "--jobs", "1")
    out = cli(*base)
    assert out.returncode == 0, out.stdout + out.stderr
    (run,) = (sweep_dir / "runs").iterdir()
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text():
        assert time.time() < deadline
        time.sleep(0.1)
    os.kill(json.loads((run / "started.json").read_text())["pid"], signal.SIGKILL)
    while (got := cli_json("status", sweep_dir, "--json"))["counts"] != {"lost": 1}:
        assert time.time() < deadline, got
        time.sleep(0.2)
    assert "its process ended without result.json" in got["runs"][0]["detail"]
    assert not (run / "result.json").exists()
    out = cli(*base)
    assert "nothing to submit (hold 1)" in out.stdout, out.stdout + out.stderr
    rows = cli_json(*base, "--retry-failed", "--json")
    assert [r["action"] for r in rows] == ["resubmit"]
    assert (run / "attempts" / "1" / "started.json").exists()  # the lost attempt is kept
    for worker in json.loads((run / "job.json").read_text())["workers"]:  # do not leave the retry training
        os.killpg(worker["pid"], signal.SIGKILL)  # its own session: the controller and the job


def test_a_data_file_missing_on_the_compute_node_fails_the_run_with_the_reason(tmp_path, tiny_data):
    copy = tmp_path / "data"
    shutil.copytree(tiny_data, copy)
    grid = load_grid(GRIDS / "smoke.yaml", data_dir=copy)
    (copy / "train.bin").unlink()  # after the sweep's own check: as if the node cannot see the file
    sweep_dir = tmp_path / "sweep"
    submit.make_sweep_dir(sweep_dir)
    submit.submit(sweep_dir, grid.runs[:1], ExecutorConfig(kind="debug"))
    (st,) = store.run_states(sweep_dir).values()
    assert st.state == "failed" and "train.bin" in st.detail, st.detail


def test_the_local_queue_starts_the_longest_runs_first(tmp_path):
    """Local workers take runs in queue order: longest expected first, so a sweep does not end with one
    worker training a long run while the other idles (grid order would put the largest budget last)."""
    grid = load_grid(GRIDS / "tiny.yaml")
    dirs = [tmp_path / s.run_id for s in grid.runs]
    order = schedule.longest_first(dirs, grid.runs)
    assert sorted(order) == sorted(dirs)
    by_id = {s.run_id: s for s in grid.runs}
    first, last = by_id[order[0].name], by_id[order[-1].name]
    assert first.budget_flops == max(s.budget_flops for s in grid.runs)
    assert last.budget_flops == min(s.budget_flops for s in grid.runs) and last.tokens < first.tokens
    # a narrow run at a small budget can outlast a wide one at twice the budget (per-token overhead)
    cost = lambda s: s.tokens * (s.flops_per_token + schedule.PER_TOKEN_OVERHEAD_FLOPS)
    assert all(schedule.queue_cost(s.tokens, s.flops_per_token) == cost(s) for s in grid.runs)
    assert [cost(by_id[d.name]) for d in order] == sorted((cost(s) for s in grid.runs), reverse=True)


def one_run_grid(tmp_path, tiny_data, **data_keys):
    """grids/smoke.yaml cut to its smallest run (width 32, r 1), on the tiny data set."""
    raw = yaml.safe_load((GRIDS / "smoke.yaml").read_text())
    raw["widths"], raw["r"] = [32], [1]
    raw["data"] = {"dir": str(tiny_data), "eval_tokens": 2048, **data_keys}
    path = tmp_path / f"one-{len(list(tmp_path.glob('one-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_grid(path)


class Recorder(submit.SweepProgress):
    def __init__(self):
        self.events = []

    def planned(self, plan):
        self.events.append(("planned", [r.action for r in plan.rows]))

    def submitting(self, plan):
        self.events.append(("submitting", [s.run_id for s in plan.todo]))

    def run_ended(self, run_id, state):
        self.events.append(("run_ended", run_id, state.state))

    def submitted(self, outcome):
        self.events.append(("submitted", sorted(outcome.records)))

    def polled(self, states):
        self.events.append(("polled", sorted(st.state for st in states.values())))


def test_run_sweep_is_a_library_call(tmp_path, tiny_data):
    """run_sweep without the command line: lock, plan, data check, folder, submit, keep the grid, end states;
    a second call skips the finished run and submits nothing."""
    grid = one_run_grid(tmp_path, tiny_data)
    (rid,) = [s.run_id for s in grid.runs]
    sweep_dir = tmp_path / "sweep"
    seen = Recorder()
    got = submit.run_sweep(grid, sweep_dir, ExecutorConfig(kind="debug"), progress=seen)
    assert seen.events == [("planned", ["submit"]), ("submitting", [rid]), ("run_ended", rid, "done"),
                           ("submitted", [rid])]
    assert got.plan.kind == "debug" and list(got.records) == [rid] and got.records[rid]["executor"] == "debug"
    assert {r: st.state for r, st in got.final.items()} == {rid: "done"}
    assert (sweep_dir / "grid.yaml").read_text() == grid.text
    with submit.sweep_lock(sweep_dir):  # released on return
        pass
    again = submit.run_sweep(grid, sweep_dir, ExecutorConfig(kind="debug"))
    assert [r.action for r in again.plan.rows] == ["skip"] and again.records == {}


def test_run_sweep_waits_for_local_runs_and_reports_each_poll(tmp_path, tiny_data):
    grid = one_run_grid(tmp_path, tiny_data)
    seen = Recorder()
    got = submit.run_sweep(grid, tmp_path / "sweep", ExecutorConfig(kind="local", local_jobs=1, threads_per_job=1),
                           wait=True, poll_s=0.2, progress=seen)
    assert {st.state for st in got.final.values()} == {"done"}
    polls = [e for e in seen.events if e[0] == "polled"]
    assert polls and polls[-1] == ("polled", ["done"])
    assert [e[0] for e in seen.events[:3]] == ["planned", "submitting", "submitted"]  # the runs end elsewhere


def test_run_sweep_releases_the_lock_when_it_fails_midway(tmp_path, tiny_data):
    """A call that fails after taking the lock (the data check, the submission) leaves the sweep unlocked:
    the next call on the same folder plans and submits. A first submission that fails leaves no folder."""
    sweep_dir = tmp_path / "sweep"
    bad_data = one_run_grid(tmp_path, tiny_data, eval_tokens=10**9)  # more than the validation split
    with pytest.raises(UserError, match="exceeds the") as data_failure:
        submit.run_sweep(bad_data, sweep_dir, ExecutorConfig(kind="debug"))
    grid = one_run_grid(tmp_path, tiny_data)
    with pytest.raises(UserError, match="unknown executor") as submit_failure:
        submit.run_sweep(grid, sweep_dir, ExecutorConfig(kind="nonesuch"))
    assert not sweep_dir.exists()
    # the failures' tracebacks are still alive here: the lock must not depend on their frames being freed
    assert data_failure.traceback and submit_failure.traceback
    got = submit.run_sweep(grid, sweep_dir, ExecutorConfig(kind="debug"))
    assert {st.state for st in got.final.values()} == {"done"}
