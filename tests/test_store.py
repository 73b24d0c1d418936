"""Run states from run folders, the SQLite results store, idempotent collect, export."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from loopscale import schedule, store
from loopscale.errors import UserError
from loopscale.grid import grid_from_dict
from loopscale.submit import action_for, archive_attempt, plan, scheduler, write_config
from sweep_fixtures import GRIDS, cli, fake_result


def smoke_specs():
    raw = yaml.safe_load((GRIDS / "smoke.yaml").read_text())
    return grid_from_dict({**raw, "vocab_size": 256, "data": {"dir": "/data/smoke", "eval_tokens": 2048}},
                          "smoke.yaml").runs


def job(run_dir, **rec):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "job.json").write_text(json.dumps({"executor": "local", "job_id": "1", "host": socket.gethostname(),
                                                  **rec}))


@pytest.fixture
def sweep(tmp_path):
    """A sweep folder with one run in every state that files alone can tell."""
    runs = tmp_path / "runs"
    fake_result(runs / "aaaaaaaaaaa1", "aaaaaaaaaaa1", loss=3.25)
    fake_result(runs / "aaaaaaaaaaa2", "aaaaaaaaaaa2", status="diverged", loss=None, diverged_step=7)
    (runs / "aaaaaaaaaaa3").mkdir()
    (runs / "aaaaaaaaaaa3" / "result.json").write_text('{"run_id": "aaaaaaaaaaa3", "status": "do')  # truncated
    fake_result(runs / "aaaaaaaaaaa4", "somebodyelse")  # not this run's result
    job(runs / "aaaaaaaaaaa5")
    (runs / "aaaaaaaaaaa5" / "error.json").write_text(json.dumps({"status": "failed", "error": "ValueError: boom\nmore"}))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    me = {"pid": os.getpid(), "pid_start": schedule.process_start(os.getpid())}
    job(runs / "aaaaaaaaaaa6", workers=[me])
    (runs / "aaaaaaaaaaa6" / "started.json").write_text(json.dumps({"pid": dead.pid}))  # it died mid-run: lost
    job(runs / "aaaaaaaaaaa7", workers=[me])  # its worker is alive, nobody took it yet: pending
    job(runs / "aaaaaaaaaaa8", workers=[me])
    (runs / "aaaaaaaaaaa8" / "started.json").write_text(json.dumps(me))  # taken by a live process: running
    job(runs / "aaaaaaaaaaa9", host="some-other-host", workers=[{"pid": 1}])
    (runs / "aaaaaaaaaa10").mkdir()  # written but never submitted
    job(runs / "aaaaaaaaaa11", workers=[{"pid": dead.pid}, {"pid": os.getpid(), "pid_start": 1}])  # workers gone
    return tmp_path


WANT = {"aaaaaaaaaaa1": "done", "aaaaaaaaaaa2": "diverged", "aaaaaaaaaaa3": "corrupt", "aaaaaaaaaaa4": "corrupt",
        "aaaaaaaaaaa5": "failed", "aaaaaaaaaaa6": "lost", "aaaaaaaaaaa7": "pending", "aaaaaaaaaaa8": "running",
        "aaaaaaaaaaa9": "unknown", "aaaaaaaaaa10": "new", "aaaaaaaaaa11": "lost"}


def test_states_come_from_the_run_files_first(sweep):
    states = store.run_states(sweep, scheduler=scheduler.states)
    assert {rid: st.state for rid, st in states.items()} == WANT
    assert states["aaaaaaaaaaa5"].detail == "ValueError: boom"
    assert "belongs to run 'somebodyelse'" in states["aaaaaaaaaaa4"].detail
    assert "unreadable" in states["aaaaaaaaaaa3"].detail
    assert states["aaaaaaaaaaa2"].detail == "diverged at step 7"
    files_only = store.run_states(sweep)
    assert {rid for rid, st in files_only.items() if st.state == "submitted"} == {
        "aaaaaaaaaaa6", "aaaaaaaaaaa7", "aaaaaaaaaaa8", "aaaaaaaaaaa9", "aaaaaaaaaa11"}


def test_plan_actions_follow_the_states(sweep):
    assert {st: action_for(st, False) for st in store.STATES} == {
        "done": "skip", "diverged": "skip", "failed": "hold", "corrupt": "hold", "cancelled": "hold",
        "timeout": "hold", "lost": "hold", "submitted": "wait", "pending": "wait", "running": "wait",
        "unknown": "wait", "new": "submit", "stale": "skip"}
    specs = smoke_specs()
    states = {}
    states[specs[0].run_id] = store.RunState(specs[0].run_id, "cancelled")
    states[specs[1].run_id] = store.RunState(specs[1].run_id, "done")
    rows = plan(specs, states, retry_failed=True)
    assert [r.action for r in rows] == ["resubmit", "skip", "submit", "submit"]


def test_collect_is_idempotent_and_load_results_has_the_fit_columns(sweep):
    got = store.collect(sweep, scheduler=scheduler.states)
    assert got.counts == {s: list(WANT.values()).count(s) for s in store.STATES if s in WANT.values()}
    db = sweep / store.DB_FILE
    first = pd.read_sql_query("SELECT * FROM runs ORDER BY run_id", sqlite3.connect(db))
    store.collect(sweep, scheduler=scheduler.states)
    again = pd.read_sql_query("SELECT * FROM runs ORDER BY run_id", sqlite3.connect(db))
    pd.testing.assert_frame_equal(first, again)
    assert len(again) == 11
    df = store.load_results(sweep)
    for col in ("run_id", "n_once", "n_rec", "r", "tokens", "loss", "budget_flops", "width", "probe", "seed",
                "status", "model.d_model", "train.betas", "data.dir", "wall_time_s"):
        assert col in df.columns, col
    done = df[df.run_id == "aaaaaaaaaaa1"].iloc[0]
    assert done.loss == 3.25 and done.width == 64 and done.n_rec == 2000 and done.status == "done"
    assert json.loads(done["train.betas"]) == [0.8, 0.95]
    assert df[df.run_id == "aaaaaaaaaaa5"].iloc[0].detail == "ValueError: boom"
    assert df["loss"].isna().sum() == 10


def test_collect_reports_its_progress_stage_by_stage(sweep):
    seen = []
    store.collect(sweep, scheduler=scheduler.states, progress=lambda *a: seen.append(a))
    stages = list(dict.fromkeys(stage for stage, _, _ in seen))
    assert stages == ["read run states", "read runs", "write results.db"]
    reads = [(done, total) for stage, done, total in seen if stage == "read runs"]
    assert reads[0] == (0, 11) and reads[-1] == (11, 11)
    assert ("write results.db", 1, 1) == seen[-1]
    seen.clear()
    store.collect(sweep, write=False, progress=lambda *a: seen.append(a))
    assert "write results.db" not in {stage for stage, _, _ in seen}


def test_collect_keeps_rows_of_vanished_runs_and_adds_new_columns(sweep):
    store.collect(sweep)
    import shutil

    shutil.rmtree(sweep / "runs" / "aaaaaaaaaaa1")
    fake_result(sweep / "runs" / "bbbbbbbbbbb1", "bbbbbbbbbbb1", loss=2.5,
                config={"model": {"d_model": 64}, "train": {"new_knob": 3}})
    store.collect(sweep)
    df = store.load_results(sweep)
    assert set(df.run_id) >= {"aaaaaaaaaaa1", "bbbbbbbbbbb1"} and len(df) == 12
    assert df.set_index("run_id").loc["bbbbbbbbbbb1", "train.new_knob"] == 3


def test_rows_of_runs_without_results_are_counted_from_config_yaml(tmp_path):
    specs = smoke_specs()
    for s in specs:
        (tmp_path / "runs" / s.run_id).mkdir(parents=True)
        write_config(tmp_path / "runs" / s.run_id, s)
    df = store.load_results(tmp_path).set_index("run_id")
    for s in specs:
        row = df.loc[s.run_id]
        assert (row.status, row.r, row.width, row.n_once, row.n_rec, row.tokens) == (
            "new", s.r, s.d_model, s.n_once, s.n_rec, s.tokens)
        assert row["train.seq_len"] == 64 and pd.isna(row.loss)


def test_fit_reads_the_store_through_runs_table(sweep):
    from loopscale.runs_table import load_runs, usable_rows

    df = load_runs(sweep)
    kept, warnings = usable_rows(df)
    assert list(kept.run_id) == ["aaaaaaaaaaa1"] and warnings


def test_export_csv_and_parquet_round_trip(sweep, tmp_path):
    store.collect(sweep)
    df = store.load_results(sweep, refresh=False)
    csv = store.export(sweep, tmp_path / "out" / "runs.csv")
    pq = store.export(sweep, tmp_path / "out" / "runs.parquet")
    back_csv, back_pq = pd.read_csv(csv), pd.read_parquet(pq)
    assert list(back_csv.columns) == list(df.columns) == list(back_pq.columns)
    assert back_pq.set_index("run_id").loc["aaaaaaaaaaa1", "loss"] == 3.25
    assert not list((tmp_path / "out").glob(".*tmp"))
    with pytest.raises(UserError, match="use .csv or .parquet"):
        store.export(sweep, tmp_path / "runs.xlsx")


def test_missing_sweep_and_cli_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="no results store"):
        store.load_results(tmp_path)
    with pytest.raises(UserError, match="no such sweep folder"):
        store.collect(tmp_path / "nope")
    for args in (("status", tmp_path / "nope"), ("collect", tmp_path), ("status",)):
        out = cli(*args, cwd=tmp_path)
        assert out.returncode == 2 and "Traceback" not in out.stderr and out.stderr.strip().count("\n") == 0, out


def test_cli_status_and_collect(sweep):
    out = cli("status", sweep, "--json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert {r["run_id"]: r["state"] for r in got["runs"]} == WANT and sum(got["counts"].values()) == 11
    out = cli("collect", sweep, "--export", sweep / "x.csv")
    assert out.returncode == 0 and "collected 11 runs" in out.stdout and (sweep / "x.csv").exists()


def test_a_retried_attempt_is_archived_not_lost(sweep):
    run = sweep / "runs" / "aaaaaaaaaaa5"
    (run / "job.out").symlink_to("../../jobs/1_0_log.out")
    dest = archive_attempt(run)
    assert dest == run / "attempts" / "1"
    assert json.loads((dest / "error.json").read_text())["error"].startswith("ValueError")
    assert os.readlink(dest / "job.out") == "../../../../jobs/1_0_log.out"
    assert store.file_state(run).state == "new"
    assert archive_attempt(run) is None


def test_second_sweep_call_is_refused_while_one_submits(tmp_path):
    from loopscale.errors import UserError
    from loopscale.submit import sweep_lock

    with sweep_lock(tmp_path / "sw"):
        with pytest.raises(UserError, match="another `loopscale sweep` is submitting"):
            with sweep_lock(tmp_path / "sw"):
                pass
    with sweep_lock(tmp_path / "sw"):  # free again once the first caller is done
        pass
    with pytest.raises(RuntimeError, match="midway"):  # released when the block raises, too
        with sweep_lock(tmp_path / "sw"):
            raise RuntimeError("midway")
    with sweep_lock(tmp_path / "sw"):
        pass


def test_the_store_reads_files_and_sqlite_only():
    """No scheduler, subprocess or process table in the store: runs in flight get the scheduler's word
    only from a caller that passes it in (loopscale.submit.scheduler.states)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(store))
    imported = {a.name.split(".")[0] if not a.name.startswith("loopscale") else a.name
                for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"subprocess", "socket", "signal", "submitit", "loopscale.submit", "loopscale.submit.job"}
    assert not any(isinstance(node, ast.Attribute) and node.attr in ("kill", "getpid", "sched_getaffinity")
                   for node in ast.walk(tree))
    assert "/proc" not in inspect.getsource(store)


def test_run_states_asks_the_given_scheduler_once_for_the_runs_in_flight(sweep):
    asked = []

    def answer(sweep_dir, jobs):
        asked.append((sweep_dir, sorted(jobs)))
        return {rid: ("running", "on the moon") for rid in jobs}

    states = store.run_states(sweep, scheduler=answer)
    flying = ["aaaaaaaaaa11", "aaaaaaaaaaa6", "aaaaaaaaaaa7", "aaaaaaaaaaa8", "aaaaaaaaaaa9"]
    assert asked == [(sweep, flying)]
    assert {rid: st.state for rid, st in states.items() if rid in flying} == dict.fromkeys(flying, "running")
    assert states["aaaaaaaaaaa8"].detail == "on the moon" and states["aaaaaaaaaaa8"].job["executor"] == "local"
    assert {rid: st.state for rid, st in states.items() if rid not in flying} == {
        rid: s for rid, s in WANT.items() if rid not in flying}
