"""Inside the job: train one run (``run_job``, the debug executor's callable) or a local worker's queue
of runs (``run_queue``), each run taken at most once (started.json) and recorded in its own folder.

A run being trained stops at its next step boundary, checkpointed, once its cancel marker appears
(`loopscale cancel`, loopscale.submit.cancel). A SIGTERM to a local worker does the same to its current
run and ends the worker: submitit's job process only logs SIGTERM ("Bypassing signal SIGTERM") and its
local controller forwards the SIGTERM it gets to that process, so without our handler neither stopped."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

from loopscale.fmt import timestamp
from loopscale.atomic import write_json_atomic
from loopscale.schedule import LocalLayout
from loopscale.store import ERROR_FILE, JOB_ERR, JOB_FILE, JOB_OUT, STARTED_FILE
from loopscale.submit.cancel import cancel_requested, mark_released, watch_cancel
from loopscale.schedule import process_start


def _claim(run_dir: Path, token: str | None) -> bool:
    """Take a run for this process: it must still belong to this submission, not have started and not be
    cancelled. The marker is looked for again once the run is taken: `loopscale cancel` writes it before it
    looks for started.json, so one of the two sees the other."""
    if cancel_requested(run_dir):
        return False
    if token is not None:
        try:
            with open(run_dir / JOB_FILE) as f:
                if json.load(f).get("submission") != token:
                    return False  # resubmitted since: no longer ours
        except (OSError, ValueError):
            return False
    try:
        os.close(os.open(run_dir / STARTED_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    if cancel_requested(run_dir):  # cancelled while being taken: let it go untrained
        mark_released(run_dir, None)
        return False
    return True


@contextlib.contextmanager
def _captured(run_dir: Path):
    """stdout/stderr into job.out/job.err of the run folder (for runs sharing a process)."""
    with open(run_dir / JOB_OUT, "a") as out, open(run_dir / JOB_ERR, "a") as err:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield


def _use_threads(threads: int | None) -> None:
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(threads)


def run_job(run_dir: str, capture: bool = False, raise_errors: bool = True,
            info: dict[str, Any] | None = None, halt: threading.Event | None = None) -> dict[str, Any] | None:
    """Train the run in ``run_dir`` (its config.yaml) in this process and return its result record.

    Writes started.json, then calls the trainer (through ``loopscale.submit.job.train``). A failure is recorded
    in error.json (by the trainer, or here if it never got that far) and re-raised unless ``raise_errors`` is False
    (debug and local workers: no post-mortem debugger, the next run goes on). The run stops at its next
    step boundary, checkpointed ({"status": "stopped"}), once it is cancelled or ``halt`` is set (the
    worker got SIGTERM); a run cancelled before it started is not trained ({"status": "cancelled"}).
    """
    path = Path(run_dir)
    if cancel_requested(path):  # the debug executor's queue: cancelled while waiting its turn
        mark_released(path, None)
        return {"run_id": path.name, "status": "cancelled"}
    try:
        threads = info.get("threads") if info else None
        write_json_atomic(path / STARTED_FILE, {
            "time": timestamp(), "host": socket.gethostname(), "pid": os.getpid(),
            "pid_start": process_start(os.getpid()), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "threads": threads, "python": sys.executable,
            **(info or {})})
        with _captured(path) if capture else contextlib.nullcontext():
            from loopscale.submit.job import train  # the bridge to the trainer (and torch), in the job only

            with watch_cancel(path, halt) as stop:
                result = train(path, stop=stop, threads=threads)
            if result.get("status") == "stopped":
                mark_released(path, result.get("step"), f"worker pid {os.getpid()} got SIGTERM")
            return result
    except BaseException as e:
        if not (path / ERROR_FILE).exists():  # failed before the trainer could record it
            write_json_atomic(path / ERROR_FILE, {
                "status": "failed", "error": (f"{type(e).__name__}: {e}".splitlines() or [type(e).__name__])[0],
                "traceback": traceback.format_exc(), "time": timestamp(),
            })
        if raise_errors or not isinstance(e, Exception):
            raise
        return None


def run_queue(run_dirs: list[str], layout: LocalLayout, worker: int, token: str) -> dict[str, int]:
    """A local worker job: one GPU (if any) and ``layout.threads`` threads; trains every run of the
    queue that no other worker of the submission has taken, in order. Returns counts of what it did.

    SIGTERM stops it: the current run at its next step boundary, checkpointed and marked cancelled; no
    further run is taken (the others' workers may still take them)."""
    if layout.gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = layout.gpus[worker % len(layout.gpus)]
    _use_threads(layout.threads)
    halt = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: halt.set())  # replaces submitit's bypass
    done = {"trained": 0, "failed": 0, "stopped": 0}
    try:
        for d in run_dirs:
            if halt.is_set():
                break
            if not _claim(Path(d), token):
                continue
            info = {"worker": worker, "threads": layout.threads, "submission": token}
            result = run_job(d, capture=True, raise_errors=False, info=info, halt=halt)
            status = (result or {}).get("status")
            done["failed" if result is None else "stopped" if status in ("stopped", "cancelled") else "trained"] += 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    return done
