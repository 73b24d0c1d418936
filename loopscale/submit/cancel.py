"""Cancelling runs in flight: a cancel marker in each run folder first, then the executor that started them.

- The marker (``cancel.json``: when, who, where, why) is written first, atomically. The store reads a run
  with it and no result.json as ``cancelled`` (retryable); resubmission (`sweep --retry-failed`) moves
  it to ``attempts/<n>/`` with the attempt's other records. A result.json that landed first wins.
- local and debug runs: the process training a run watches its folder for the marker (:func:`watch_cancel`,
  every 0.5 s) and stops the run at the next step boundary, checkpointed; it writes where it stopped into
  the marker (:func:`mark_released`) and a local worker takes its next run that is not cancelled. A
  SIGTERM to a local worker does the same for its current run and ends the worker (loopscale.submit.worker).
- slurm runs: ``scancel`` of the run's job (array task) id, running or pending; a running job watches the
  marker too (loopscale.submit.job), so it checkpoints before SLURM's KillWait runs out.

:func:`cancel_runs` does all of it and waits up to ``grace_s`` seconds until the runs' processes have let
go; past it, local processes still training a cancelled run are killed (SIGKILL).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from loopscale.fmt import timestamp
from loopscale.errors import UserError
from loopscale.schedule import alive
from loopscale.store import (
    CANCEL_FILE,
    IN_FLIGHT,
    RESULT_FILE,
    STARTED_FILE,
    RunState,
    latest_step,
    read_json,
    runs_root,
)
from loopscale.submit import scheduler
from loopscale.submit.records import sync, write_json

WATCH_EVERY_S = 0.5  # how often a training process looks for the marker
GRACE_S = 30.0


# --- the marker ----------------------------------------------------------------------------------

def cancel_requested(run_dir: str | Path) -> bool:
    return (Path(run_dir) / CANCEL_FILE).exists()


def _now() -> dict[str, Any]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return {"time": timestamp(), "unix": time.time(), "user": user,
            "host": socket.gethostname(), "pid": os.getpid()}


def write_marker(run_dir: Path, reason: str | None = None, **extra: Any) -> dict[str, Any]:
    """cancel.json in ``run_dir`` (atomic for readers; made durable by the caller's ``sync()``)."""
    rec = {**_now(), "reason": reason, **extra}
    write_json(Path(run_dir) / CANCEL_FILE, rec)
    return rec


def mark_released(run_dir: str | Path, step: int | None, reason: str | None = None) -> None:
    """The process that held the run has let go of it (stopped at ``step``, checkpointed; None: it never
    trained). Adds that to the marker, or writes one giving ``reason`` when there is none (a SIGTERM)."""
    path = Path(run_dir) / CANCEL_FILE
    mark, why = read_json(path)
    if not isinstance(mark, dict):
        mark = {**_now(), "reason": reason or "stopped by its worker"} if why == "missing" else {"reason": why}
    mark.update(released=timestamp(), released_unix=time.time(),
                released_by=f"pid {os.getpid()} on {socket.gethostname()}", stopped_at_step=step)
    write_json(path, mark)


@contextlib.contextmanager
def watch_cancel(run_dir: str | Path, halt: threading.Event | None = None,
                 every_s: float = WATCH_EVERY_S) -> Iterator[threading.Event]:
    """Yields the stop event for ``train_run``: set once the run's cancel marker appears, or ``halt`` is set
    (a SIGTERM to the worker). A daemon thread looks every ``every_s`` seconds while the block runs."""
    stop, over = threading.Event(), threading.Event()

    def look() -> None:
        while not over.is_set():
            if (halt is not None and halt.is_set()) or cancel_requested(run_dir):
                stop.set()
                return
            over.wait(every_s)

    watcher = threading.Thread(target=look, name="loopscale-cancel-watch", daemon=True)
    watcher.start()
    try:
        yield stop
    finally:
        over.set()
        watcher.join(timeout=every_s + 1)


# --- cancel_runs -----------------------------------------------------------------------------------

@dataclass
class CancelledRun:
    """One run cancelled: its state before, and how it ended (``outcome``):

    - ``stopped``: its process stopped it at a step boundary (``step``; the checkpoint is kept);
    - ``not started``: it was waiting its turn and never trained;
    - ``ended``: its process or SLURM job is gone (``step``: its newest checkpoint, if any);
    - ``finished``: its result.json landed before the cancel reached it: it stays done;
    - ``killed``: still training past the grace: its process was killed (SIGKILL);
    - ``still ending``: still going past the grace, and not this command's to kill (a SLURM job
      SLURM is ending, a run on another host, the debug executor's own `loopscale sweep`).
    """

    run_id: str
    executor: str
    job_id: str
    was: str
    outcome: str = "still ending"
    step: int | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CancelOutcome:
    sweep_dir: Path
    runs: list[CancelledRun]
    seconds: float
    killed: list[int] = field(default_factory=list)  # pids killed past the grace

    @property
    def executors(self) -> list[str]:
        return sorted({r.executor for r in self.runs})


def _targets(states: dict[str, RunState], ids: list[str] | None, sweep_dir: Path) -> list[RunState]:
    """The runs to cancel: every run in flight, or exactly ``ids`` (each must be a run in flight)."""
    if not ids:
        return [st for st in states.values() if st.state in IN_FLIGHT]
    ids = list(dict.fromkeys(ids))
    unknown = [i for i in ids if i not in states]
    if unknown:
        raise UserError(f"{sweep_dir}: no run {', '.join(unknown)} in this sweep; nothing cancelled")
    idle = [f"{i} is {states[i].state}" for i in ids if states[i].state not in IN_FLIGHT]
    if idle:
        raise UserError(f"{sweep_dir}: {'; '.join(idle)}, not in flight; nothing cancelled")
    return [states[i] for i in ids]


def scancel(job_ids: Iterable[str]) -> None:
    """scancel the given SLURM job / array task ids. Jobs that have already ended are no error; any other
    failure is one line (UserError)."""
    ids = sorted(set(job_ids))
    if not ids:
        return
    try:
        out = subprocess.run(["scancel", *ids], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise UserError("scancel not found on PATH: cannot cancel SLURM jobs from this machine") from None
    except (OSError, subprocess.SubprocessError) as e:
        raise UserError(f"scancel failed: {e}") from None
    if out.returncode == 0:
        return
    benign = ("already completing or completed", "invalid job id specified", "job has already finished")
    errors = [line.strip() for line in out.stderr.splitlines()
              if line.strip() and not any(b in line.lower() for b in benign)]
    if errors or not out.stderr.strip():
        raise UserError(f"scancel {' '.join(ids)} failed (exit {out.returncode}): "
                        f"{errors[0] if errors else 'no message'}")


def _let_go(run: CancelledRun, run_dir: Path, queued: dict[str, str] | None) -> bool:
    """Whether the run's process has let go of it; sets its outcome and step when it has."""
    if (run_dir / RESULT_FILE).exists():
        run.outcome, run.detail = "finished", "its result.json landed first: it stays done"
        return True
    mark, _ = read_json(run_dir / CANCEL_FILE)
    if isinstance(mark, dict) and mark.get("released"):
        step = mark.get("stopped_at_step")
        run.outcome, run.step = ("stopped", step) if step is not None else ("not started", None)
        if step is not None and run.was == "pending":
            run.was = "running"  # it trained: SLURM's accounting (sacct) had not yet caught up with its start
        return True
    if run.executor == "slurm":
        if queued is None or run.job_id in queued:
            return False
        run.outcome, run.step = "ended", latest_step(run_dir)
        if run.was == "pending":
            run.outcome = "not started"
        return True
    started, why = read_json(run_dir / STARTED_FILE)
    if why == "missing":  # a worker that takes it later sees the marker first (worker._claim)
        run.outcome = "not started"
        return True
    if isinstance(started, dict) and started.get("host") not in (None, socket.gethostname()):
        return False  # only the marker can tell
    if not isinstance(started, dict) or not alive(started.get("pid"), started.get("pid_start")):
        run.outcome, run.step = "ended", latest_step(run_dir)
        return True
    return False


def _kill_if_ours(run: CancelledRun, run_dir: Path) -> int | None:
    """Past the grace: SIGKILL the local worker process still training ``run`` (the debug executor's is
    the user's own `loopscale sweep`, a run on another host not ours to reach). Returns the pid killed."""
    if run.executor != "local":
        return None
    started, _ = read_json(run_dir / STARTED_FILE)
    if not isinstance(started, dict) or started.get("host") != socket.gethostname():
        return None
    pid = started.get("pid")
    if not alive(pid, started.get("pid_start")):
        return None
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        return None
    run.outcome, run.step = "killed", latest_step(run_dir)
    run.detail = f"did not stop within the grace: worker pid {pid} killed"
    return pid


def cancel_runs(sweep_dir: str | Path, ids: list[str] | None = None, grace_s: float = GRACE_S,
                reason: str | None = None, poll_s: float = 0.25,
                on_wait: Callable[[list[CancelledRun]], None] | None = None) -> CancelOutcome:
    """Cancel runs in flight of ``sweep_dir``: all of them, or exactly ``ids`` (an unknown id or a run not
    in flight: UserError, nothing cancelled). Runs finished are never touched.

    Writes each run's cancel marker, scancels the SLURM ones (a failing scancel takes their markers back
    and raises UserError), then waits up to ``grace_s`` seconds until every run's process has let go
    (``on_wait`` sees the runs still held, about once a second); past it, kills the local processes
    still training a cancelled run. Returns each run's outcome.
    """
    t0 = time.perf_counter()
    sweep_dir = Path(sweep_dir)
    root = runs_root(sweep_dir)
    targets = _targets(scheduler.run_states(sweep_dir), ids, sweep_dir)
    runs = [CancelledRun(st.run_id, str((st.job or {}).get("executor", "?")), str((st.job or {}).get("job_id", "?")),
                         st.state) for st in targets]
    for r in runs:
        write_marker(root / r.run_id, reason, executor=r.executor, job_id=r.job_id, was=r.was)
    sync()
    slurm = [r for r in runs if r.executor == "slurm"]
    try:
        scancel(r.job_id for r in slurm)
    except UserError:
        for r in slurm:  # the jobs go on: their runs are not cancelled
            (root / r.run_id / CANCEL_FILE).unlink(missing_ok=True)
        sync()
        raise
    held = list(runs)
    deadline = time.monotonic() + grace_s
    last_ask, last_report = 0.0, time.monotonic()
    queued: dict[str, str] | None = None
    while held:
        if slurm and time.monotonic() - last_ask >= 1.0:
            queued, last_ask = scheduler.queued([r.job_id for r in held if r.executor == "slurm"]), time.monotonic()
        held = [r for r in held if not _let_go(r, root / r.run_id, queued)]
        if not held or time.monotonic() >= deadline:
            break
        if on_wait and time.monotonic() - last_report >= 1.0:
            on_wait(held)
            last_report = time.monotonic()
        time.sleep(poll_s)
    killed = []
    for r in held:
        pid = _kill_if_ours(r, root / r.run_id)
        if pid is not None:
            killed.append(pid)
        elif r.executor == "slurm":
            r.detail = f"SLURM job {r.job_id} is still ending (SLURM kills it after its KillWait)"
        else:
            r.detail = "its process has not let go yet; it stops at its next step boundary"
    return CancelOutcome(sweep_dir, runs, time.perf_counter() - t0, killed)
