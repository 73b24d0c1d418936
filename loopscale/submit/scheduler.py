"""The scheduler's word on runs in flight: SLURM (sacct through submitit, squeue) and local processes.

The results store reads files only; a run whose files say it is in flight (``submitted``) gets its
state from here. :func:`states` is the one interface: ``states(sweep_dir, jobs)`` answers
``{run_id: (state, detail)}`` for the job records (job.json) of runs in flight, one sacct call for
all SLURM jobs. :func:`run_states` is the store's ``run_states`` with that answer folded in, as
`loopscale status`, `sweep` and `report` show it; :func:`wait` polls it until no run is in flight.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from loopscale import store
from loopscale.schedule import alive
from loopscale.store import IN_FLIGHT, STARTED_FILE, RunState, read_json, runs_root

SLURM_STATES = {
    "PENDING": "pending", "REQUEUED": "pending", "REQUEUE_HOLD": "pending", "REQUEUE_FED": "pending",
    "CONFIGURING": "pending", "RESIZING": "pending", "SUSPENDED": "pending",
    "RUNNING": "running", "COMPLETING": "running", "SIGNALING": "running", "STAGE_OUT": "running",
    "CANCELLED": "cancelled", "TIMEOUT": "timeout", "COMPLETED": "lost",
    "FAILED": "failed", "NODE_FAIL": "failed", "OUT_OF_MEMORY": "failed", "BOOT_FAIL": "failed",
    "DEADLINE": "failed", "PREEMPTED": "failed", "REVOKED": "failed",
}


def states(sweep_dir: str | Path, jobs: dict[str, dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """{run_id: (state, detail)} for runs in flight of ``sweep_dir``, from their job records (job.json)."""
    root = runs_root(sweep_dir)
    out: dict[str, tuple[str, str]] = {}
    slurm = {rid: j for rid, j in jobs.items() if j.get("executor") == "slurm"}
    if slurm:
        out.update(_slurm_states(slurm))
    for rid, j in jobs.items():
        if rid not in slurm:
            out[rid] = _process_state(j, root / rid)
    return out


def run_states(sweep_dir: str | Path, ids: Iterable[str] | None = None) -> dict[str, RunState]:
    """States of the given runs (default: every run folder): their files, and for runs in flight the
    scheduler's word (:func:`states`)."""
    return store.run_states(sweep_dir, ids, scheduler=states)


def wait(sweep_dir: str | Path, ids: list[str], on_update: Callable[[dict[str, RunState]], None] | None = None,
         poll_s: float = 5.0) -> dict[str, RunState]:
    """Poll the runs' states until none is in flight; ``on_update`` sees every poll. Returns the end states."""
    while True:
        now = run_states(sweep_dir, ids)
        if on_update:
            on_update(now)
        if not any(st.state in IN_FLIGHT for st in now.values()):
            return now
        time.sleep(poll_s)


# --- SLURM -------------------------------------------------------------------------------------

def _slurm_states(jobs: dict[str, dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """One sacct call through submitit's watcher for all jobs; squeue for jobs sacct does not know."""
    from submitit.slurm.slurm import SlurmJob

    log = logging.getLogger("submitit")
    level = log.level
    log.setLevel(logging.ERROR)  # submitit warns on every sacct hiccup; we report "unknown" instead
    try:
        # The watcher is process-wide and keeps old answers: a job that vanished from sacct (a pending array
        # task removed by scancel) would stay "PENDING" forever in a long `sweep --wait`. Ask afresh each poll.
        SlurmJob.watcher.clear()
        handles = {rid: SlurmJob(folder=j.get("folder", "."), job_id=str(j["job_id"])) for rid, j in jobs.items()}
        SlurmJob.watcher.update()
        raw = {rid: SlurmJob.watcher.get_state(h.job_id, mode="cache") for rid, h in handles.items()}
    finally:
        log.setLevel(level)
    unknown = [str(jobs[rid]["job_id"]) for rid, s in raw.items() if s.upper() == "UNKNOWN"]
    queued = _squeue(unknown) if unknown else {}
    known_arrays = _sacct_arrays({j.split("_")[0] for j in unknown if "_" in j}) if unknown else set()
    out = {}
    for rid, s in raw.items():
        word = s.split()[0].upper() if s.strip() else "UNKNOWN"
        jid = str(jobs[rid]["job_id"])
        if word == "UNKNOWN":
            if queued is None:
                out[rid] = ("unknown", f"slurm job {jid}: sacct and squeue do not answer")
                continue
            if jid not in queued:
                if jid.split("_")[0] in known_arrays:
                    # an array task cancelled while pending never gets an accounting record of its own
                    out[rid] = ("cancelled", f"slurm array task {jid} was removed before it ran (scancel)")
                else:
                    out[rid] = ("lost", f"slurm job {jid} is neither in sacct nor in the queue")
                continue
            word = queued[jid]
        state = SLURM_STATES.get(word, "unknown")
        detail = f"slurm job {jid} {s.strip().lower() or word.lower()}"
        if state == "lost":
            detail = f"slurm job {jid} completed without result.json"
        out[rid] = (state, detail)
    return out


def _sacct_arrays(array_ids: set[str]) -> set[str]:
    """The array job ids among ``array_ids`` that accounting knows (any of their tasks)."""
    if not array_ids:
        return set()
    try:
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID", "-j", ",".join(sorted(array_ids))],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return set()
    return {line.split("_")[0] for line in out.stdout.split() if "_" in line} & array_ids


def queued(job_ids: list[str]) -> dict[str, str] | None:
    """{job_id: STATE} of the jobs among ``job_ids`` (array tasks as A_a) that SLURM still has in its queue,
    pending or running; None when squeue does not answer."""
    return _squeue(job_ids) if job_ids else {}


def _squeue(job_ids: list[str]) -> dict[str, str] | None:
    """{job_id: STATE} of queued/running jobs among ``job_ids`` (array tasks as A_a), None if squeue fails."""
    mains = sorted({j.split("_")[0] for j in job_ids})
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(mains)],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0 and "Invalid job id" not in out.stderr:
        return None
    found = {}
    for line in out.stdout.splitlines():
        jid, _, st = line.partition("|")
        found[jid.strip()] = st.strip().upper()
    return found


# --- local and debug jobs: processes on this host ----------------------------------------------

def _process_state(job: dict[str, Any], run_dir: Path) -> tuple[str, str]:
    """Local and debug jobs: the process that took the run (started.json) or, before that, the
    submission's workers (job.json) decide: alive → running / pending; gone → lost."""
    kind, jid = job.get("executor", "?"), job.get("job_id")
    if job.get("host") != socket.gethostname():
        return "unknown", f"{kind} job on host {job.get('host')}; run status there"
    started, why = read_json(run_dir / STARTED_FILE)
    if isinstance(started, dict) and "pid" in started:
        if alive(started.get("pid"), started.get("pid_start")):
            return "running", f"{kind} job {jid}, pid {started['pid']}"
        return "lost", f"{kind} job {jid}: its process ended without result.json or error.json"
    workers = job.get("workers") or []
    if not workers:  # between writing the run's record and starting the workers
        if time.time() - float(job.get("submitted_unix") or 0) < 120:
            return "pending", f"{kind} job {jid} being submitted"
        return "lost", f"{kind} job {jid}: its submission never started a worker"
    if any(alive(w.get("pid"), w.get("pid_start")) for w in workers):
        return ("running" if why != "missing" else "pending"), f"{kind} job {jid}"
    return "lost", f"{kind} job {jid}: its workers ended before it started"
