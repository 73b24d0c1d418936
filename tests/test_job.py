"""The submitit callable: a finished run ignores SLURM's late warning signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

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
