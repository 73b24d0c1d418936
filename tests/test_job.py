"""The submitit callable: a finished run ignores SLURM's late warning signal; the cancel marker and submitit's
warning stop it at a step boundary; its pickled shape; the one bridge to the trainer (submit.job.train)."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from loopscale.store import RESULT_FILE

SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    from loopscale.submit.job import TrainJob
    # stands in for submitit's requeue handler, which its worker process installs before calling the job
    signal.signal(signal.SIGUSR2, lambda *_: sys.exit(3))
    result = TrainJob(sys.argv[1])()
    assert result["status"] == "done", result
    os.kill(os.getpid(), signal.SIGUSR2)  # SLURM's warning, after the run finished
    time.sleep(0.2)
    print("handler", signal.getsignal(signal.SIGUSR2))
""")


def _run(tmp_path, submitit_worker: bool):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / RESULT_FILE).write_text(json.dumps({"run_id": "x", "status": "done", "val_loss": 1.0}))
    env = {k: v for k, v in os.environ.items() if k != "SUBMITIT_FOLDER"}
    if submitit_worker:
        env["SUBMITIT_FOLDER"] = str(tmp_path)
    return subprocess.run([sys.executable, "-c", SCRIPT, str(run_dir)], capture_output=True, text=True, env=env,
                          timeout=120)


def test_a_done_run_in_a_submitit_worker_ignores_the_warning_signal(tmp_path):
    # Ignored, not merely handled: Python puts handled signals back to "terminate" while it shuts down,
    # and a signal then would end the job as FAILED in SLURM's accounting.
    out = _run(tmp_path, submitit_worker=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"handler {signal.SIG_IGN}" in out.stdout, out.stdout


def test_outside_a_submitit_worker_the_signal_handlers_are_left_alone(tmp_path):
    out = _run(tmp_path, submitit_worker=False)
    assert out.returncode == 3, out.stdout + out.stderr


# --- the bridge and the cancel marker, with a stand-in trainer (no torch) ------------------------------

def stand_in(calls, steps=200):
    """A trainer that takes 10 ms steps until its stop event is set (then "checkpoints" at that step)."""
    def train(run_dir, stop=None, threads=None):
        calls.append({"run_dir": str(run_dir), "threads": threads})
        for step in range(1, steps + 1):
            if stop is not None and stop.wait(0.01):
                return {"run_id": Path(run_dir).name, "status": "stopped", "step": step}
        return {"run_id": Path(run_dir).name, "status": "done", "val_loss": 1.0}
    return train


def test_the_train_job_keeps_its_pickled_shape_and_loads_from_the_old_path(tmp_path):
    from loopscale.job import TrainJob as OldPath
    from loopscale.submit.job import TrainJob

    job = TrainJob(tmp_path / "run")
    assert OldPath is TrainJob and job.__getstate__() == {"run_dir": str(tmp_path / "run")}
    again = pickle.loads(pickle.dumps(job))
    assert type(again) is TrainJob and again.run_dir == job.run_dir and again._stop is None


def test_the_train_job_stops_at_the_cancel_marker_and_marks_it_released(tmp_path, monkeypatch):
    """`loopscale cancel` on a SLURM run: the job sees the marker (submit.cancel.watch_cancel), the trainer
    stops at a step boundary, and the marker says where."""
    from loopscale.submit import job
    from loopscale.submit.cancel import write_marker

    calls = []
    monkeypatch.setattr(job, "train", stand_in(calls))
    run = tmp_path / "run"
    run.mkdir()
    threading.Timer(0.1, write_marker, (run, "test")).start()
    t0 = time.monotonic()
    got = job.TrainJob(run)()
    assert got["status"] == "stopped" and time.monotonic() - t0 < 1.5, got
    assert calls == [{"run_dir": str(run), "threads": None}]
    mark = json.loads((run / "cancel.json").read_text())
    assert mark["reason"] == "test" and mark["stopped_at_step"] == got["step"] and mark["released"]


def test_submitits_warning_signal_stops_the_train_job_at_once_and_requeues_it(tmp_path, monkeypatch):
    from loopscale.submit import job

    monkeypatch.setattr(job, "train", stand_in([]))
    tj = job.TrainJob(tmp_path)
    requeued = []
    threading.Timer(0.1, lambda: requeued.append(tj.checkpoint())).start()  # submitit calls it on the signal
    got = tj()
    assert got["status"] == "stopped" and not (tmp_path / "cancel.json").exists()  # a preemption, not a cancel
    (again,) = requeued
    assert type(again.function) is job.TrainJob and again.function.run_dir == str(tmp_path)


def test_run_job_trains_through_the_bridge_with_its_threads(tmp_path, monkeypatch):
    """The local workers' run_job reaches the trainer only through submit.job.train, threads included."""
    from loopscale.submit import job, run_job

    calls = []
    monkeypatch.setattr(job, "train", stand_in(calls, steps=1))
    run = tmp_path / "r1"
    run.mkdir()
    got = run_job(str(run), raise_errors=False, info={"threads": 3})
    assert got["status"] == "done" and calls == [{"run_dir": str(run), "threads": 3}]
    assert json.loads((run / "started.json").read_text())["threads"] == 3
