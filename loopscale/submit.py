"""Submitting a sweep through submitit: plan, run folders, executors, waiting.

- ``plan(specs, states)`` is pure: one row per run with its action (``submit`` a new run,
  ``resubmit`` a failed one under ``retry_failed``, ``skip`` a finished one, ``wait`` for one in
  flight, ``hold`` a failed one without ``retry_failed``).
- ``submit(sweep_dir, specs, executor)`` writes ``runs/<run_id>/config.yaml`` and submits:
  ``slurm`` as one job array (submitit AutoExecutor), ``local`` as ``local_jobs`` detached worker
  processes (submitit LocalExecutor) that take the runs in turn, one GPU each where GPUs exist, else
  ``threads_per_job`` CPU threads; ``debug`` in this process. Each run's ``job.json`` records its job;
  its stdout/stderr are ``job.out``/``job.err`` in the run folder (for slurm, links into ``<sweep>/jobs/``).
- A SLURM array task runs ``loopscale.job.TrainJob`` (checkpointable: timeouts and preemptions
  requeue and resume); a local worker runs ``run_queue``; the debug executor ``run_job``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import traceback
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from loopscale.atomic import write_bytes_atomic, write_json_atomic
from loopscale.errors import UserError
from loopscale.grid import ExecutorConfig, Grid, RunSpec, grid_changes, parse_yaml
from loopscale.schedule import LocalLayout, local_layout, longest_first, resolve_kind
from loopscale.store import (
    CONFIG_FILE,
    ERROR_FILE,
    FINISHED,
    GRID_FILE,
    IN_FLIGHT,
    JOB_FILE,
    JOBS_DIR,
    NEW,
    RESULT_FILE,
    RETRYABLE,
    STARTED_FILE,
    RunState,
    process_start,
    runs_root,
)

_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when present: 10x faster for big sweeps
ACTIONS = ("submit", "resubmit", "skip", "wait", "hold")
LOG_LINKS = ("job.out", "job.err")
METRICS_FILE = "metrics.jsonl"
ATTEMPT_FILES = (JOB_FILE, ERROR_FILE, RESULT_FILE, STARTED_FILE, METRICS_FILE) + LOG_LINKS


# --- plan --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PlanRow:
    """One run of the plan. tokens = D to be trained; flops = flops_per_token · tokens (FLOPs)."""

    run_id: str
    r: int
    probe: str
    d_model: int
    n_once: int
    n_rec: int
    tokens: int
    iterations: int
    flops_per_token: int
    flops: int
    budget_flops: float | None
    seed: int
    state: str
    detail: str
    action: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def action_for(state: str, retry_failed: bool) -> str:
    if state == NEW:
        return "submit"
    if state in FINISHED:
        return "skip"
    if state in IN_FLIGHT:
        return "wait"
    if state in RETRYABLE:
        return "resubmit" if retry_failed else "hold"
    raise ValueError(f"unknown run state {state!r}")


def plan(specs: Iterable[RunSpec], states: dict[str, RunState], retry_failed: bool = False) -> list[PlanRow]:
    """The plan of a sweep: each grid run with its current state and what submission will do."""
    rows = []
    for s in specs:
        st = states.get(s.run_id) or RunState(s.run_id, NEW)
        rows.append(PlanRow(s.run_id, s.r, s.probe, s.d_model, s.n_once, s.n_rec, s.tokens, s.iterations,
                            s.flops_per_token, s.flops, s.budget_flops, s.seed, st.state, st.detail,
                            action_for(st.state, retry_failed)))
    return rows


def plan_totals(rows: list[PlanRow]) -> dict[str, Any]:
    """Run counts per action and the compute (FLOPs) of the whole grid and of what will be submitted."""
    by_action = {a: sum(1 for r in rows if r.action == a) for a in ACTIONS}
    return {
        "runs": len(rows),
        "actions": {a: n for a, n in by_action.items() if n},
        "total_flops": float(sum(r.flops for r in rows)),
        "submit_flops": float(sum(r.flops for r in rows if r.action in ("submit", "resubmit"))),
        "total_tokens": int(sum(r.tokens for r in rows)),
    }


# --- the sweep folder ---------------------------------------------------------------------------

def sweep_changes(sweep_dir: Path, grid: Grid) -> list[str]:
    """What differs between the grid kept in the sweep folder and ``grid`` (empty when new or equal)."""
    kept = Path(sweep_dir) / GRID_FILE
    if not kept.exists():
        return []
    try:
        old = parse_yaml(kept.read_text(), str(kept))
    except (OSError, UserError) as e:
        return [f"the kept {kept} is unreadable ({e})"]
    return grid_changes(old, grid.raw)


def record_grid(sweep_dir: Path, grid: Grid) -> None:
    """Keep the grid in the sweep folder; an older, different one moves to grid-history/."""
    kept = Path(sweep_dir) / GRID_FILE
    if kept.exists():
        if kept.read_text() == grid.text:
            return
        history = Path(sweep_dir) / "grid-history"
        history.mkdir(exist_ok=True)
        os.replace(kept, history / f"grid-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.yaml")
    write_bytes_atomic(kept, grid.text.encode())


def unwritable(sweep_dir: Path, e: OSError) -> UserError:
    """One line saying why the sweep folder cannot be written (a file in the way, permissions, read-only fs)."""
    p = Path(sweep_dir).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    why = f"{p} is a file, not a folder" if p.exists() and not p.is_dir() else (e.strerror or str(e))
    return UserError(f"{sweep_dir}: cannot write the sweep folder ({why})")


def make_sweep_dir(sweep_dir: Path) -> None:
    try:
        (Path(sweep_dir) / "runs").mkdir(parents=True, exist_ok=True)
        probe = Path(sweep_dir) / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise unwritable(sweep_dir, e) from None


def check_data(grid: Grid) -> None:
    """The data dir exists, matches the grid's vocabulary and is long enough for every run."""
    from loopscale.data import load_data

    ds = load_data(grid.data_dir)
    if ds.vocab_size != grid.vocab_size:
        raise UserError(f"{grid.path or 'grid'}: vocab_size {grid.vocab_size} differs from the data's "
                        f"{ds.vocab_size} ({grid.data_dir})")
    for s in grid.runs:
        t, d = s.config.train, s.config.data
        if len(ds.val) < d.eval_tokens + 1:
            raise UserError(f"{grid.path or 'grid'}: data.eval_tokens {d.eval_tokens} exceeds the "
                            f"{len(ds.val):,} validation tokens of {grid.data_dir}")
        if len(ds.train) < t.seq_len + 2:
            raise UserError(f"{grid.path or 'grid'}: train.seq_len {t.seq_len} exceeds the training split of "
                            f"{grid.data_dir}")


def replace_file(path: Path, data: bytes) -> None:
    """Atomic for readers (temp file + rename) but not fsync'ed: batches of run files are made durable
    with one ``os.sync()`` (an fsync per file costs ~4 ms, minutes for a 10,000-run sweep)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    replace_file(path, (json.dumps(obj, indent=2) + "\n").encode())


def write_config(run_dir: Path, spec: RunSpec) -> None:
    """config.yaml as the trainer reads it (RunConfig.to_dict), written atomically."""
    text = yaml.dump(spec.config.to_dict(), Dumper=_Dumper, sort_keys=False).encode()
    path = run_dir / CONFIG_FILE
    if not path.exists() or path.read_bytes() != text:
        replace_file(path, text)


def archive_attempt(run_dir: Path) -> Path | None:
    """Move a failed attempt's records (job, error, corrupt result, logs; metrics unless a checkpoint
    will resume them) to attempts/<n>/. Checkpoints stay: the next attempt resumes from them."""
    resumes = any((run_dir / "checkpoints").glob("step_*.pt"))
    present = [f for f in ATTEMPT_FILES if ((run_dir / f).exists() or (run_dir / f).is_symlink())
               and not (resumes and f == METRICS_FILE)]
    if not present:
        return None
    n = 1
    while (run_dir / "attempts" / str(n)).exists():
        n += 1
    dest = run_dir / "attempts" / str(n)
    dest.mkdir(parents=True)
    for f in present:
        src = run_dir / f
        if src.is_symlink():  # re-point the relative link from its new place
            target = os.path.normpath(run_dir / os.readlink(src))
            os.symlink(os.path.relpath(target, dest), dest / f)
            src.unlink()
        else:
            os.replace(src, dest / f)
    return dest


def _attempts(run_dir: Path) -> int:
    return len(list((run_dir / "attempts").glob("*"))) + 1 if (run_dir / "attempts").exists() else 1


# --- executors ----------------------------------------------------------------------------------

def _job_record(kind: str, job_id: str, sweep_dir: Path, run_dir: Path, **extra: Any) -> dict[str, Any]:
    return {"executor": kind, "job_id": job_id, "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "submitted_unix": time.time(),
            "host": socket.gethostname(), "attempt": _attempts(run_dir), "folder": str(Path(sweep_dir) / JOBS_DIR),
            **extra}


def _link_logs(run_dir: Path, stdout: Path, stderr: Path) -> dict[str, str]:
    """job.out / job.err in the run folder, relative links to submitit's log files."""
    out = {}
    for name, target in zip(LOG_LINKS, (stdout, stderr)):
        link = run_dir / name
        if link.is_symlink() or link.exists():
            link.unlink()
        rel = os.path.relpath(target, run_dir)
        os.symlink(rel, link)
        out[name] = rel
    return out


def submit(sweep_dir: str | Path, specs: list[RunSpec], ex: ExecutorConfig, job_name: str = "loopscale",
           on_finish: Callable[[str, RunState], None] | None = None) -> dict[str, dict[str, Any]]:
    """Write the run folders of ``specs`` and submit them; returns {run_id: job record}.

    slurm and local return at once (the jobs run on); debug runs each spec here, in order, calling
    ``on_finish`` after each. Earlier attempts of resubmitted runs move to ``attempts/<n>/``.
    """
    sweep_dir = Path(sweep_dir)
    kind = resolve_kind(ex.kind)
    if not specs:
        return {}
    if kind not in ("slurm", "local", "debug"):
        raise UserError(f"unknown executor {kind!r}; choose one of auto, slurm, local, debug")
    root = runs_root(sweep_dir)
    run_dirs, fresh = [], []
    for s in specs:
        d = root / s.run_id
        if not d.exists():
            fresh.append(d)
        d.mkdir(parents=True, exist_ok=True)
        archive_attempt(d)
        write_config(d, s)
        run_dirs.append(d)
    (sweep_dir / JOBS_DIR).mkdir(exist_ok=True)
    _sync()
    try:
        if kind == "slurm":
            records = _submit_slurm(sweep_dir, run_dirs, ex, job_name)
        elif kind == "local":
            records = _submit_local(sweep_dir, longest_first(run_dirs, specs), ex)
        else:
            records = _run_debug(sweep_dir, run_dirs, on_finish)
    except UserError:
        for d in fresh:  # nothing was submitted: leave no trace of the new runs
            shutil.rmtree(d, ignore_errors=True)
        raise
    _sync()
    return records


def _sync() -> None:
    if hasattr(os, "sync"):
        os.sync()


def _submission_error(kind: str, e: Exception) -> UserError:
    text = str(e).strip()
    lines = [line for line in text.splitlines() if "error" in line.lower()] or text.splitlines() or [type(e).__name__]
    return UserError(f"{kind} submission failed: {lines[0].strip()}")


MAX_TIMEOUT_REQUEUES = 20


def _submit_slurm(sweep_dir: Path, run_dirs: list[Path], ex: ExecutorConfig, job_name: str) -> dict[str, dict]:
    import submitit

    if not shutil.which("sbatch") or not shutil.which("srun"):
        raise UserError("executor slurm: sbatch/srun not found on PATH (use --executor local on this machine)")
    from loopscale.job import TrainJob  # checkpointable: SLURM timeouts and preemptions requeue and resume

    # A run longer than its time limit is checkpointed and requeued at each limit (submitit's default: 3 times).
    executor = submitit.AutoExecutor(folder=sweep_dir / JOBS_DIR, cluster="slurm",
                                     slurm_max_num_timeout=MAX_TIMEOUT_REQUEUES)
    setup = list(ex.setup)
    if ex.cpus_per_task:  # torch's default thread count ignores the job's CPU allocation
        setup.append(f"export OMP_NUM_THREADS={ex.cpus_per_task} MKL_NUM_THREADS={ex.cpus_per_task}")
    params: dict[str, Any] = {
        # one task per GPU: a run on several GPUs trains data-parallel, its tasks the ranks (loopscale.distributed)
        "name": ex.job_name or job_name, "timeout_min": ex.time_min, "nodes": 1,
        "tasks_per_node": max(1, ex.gpus_per_node),
        # a rank that fails ends the job at once instead of leaving the others waiting in a collective
        "slurm_srun_args": ["--kill-on-bad-exit=1"] if ex.gpus_per_node > 1 else None,
        "cpus_per_task": ex.cpus_per_task, "mem_gb": ex.mem_gb,
        "gpus_per_node": ex.gpus_per_node or None,
        "slurm_partition": ex.partition, "slurm_account": ex.account, "slurm_qos": ex.qos,
        "slurm_constraint": ex.constraint, "slurm_array_parallelism": ex.array_parallelism,
        "slurm_setup": setup or None,
        # short jobs: the default 90 s warning would fire at once on a few-minute limit
        "slurm_signal_delay_s": min(90, max(10, ex.time_min * 60 // 10)),
    }
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit echoes sbatch's stderr; we report it once
            with executor.batch():
                jobs = [executor.submit(TrainJob(str(d.resolve()))) for d in run_dirs]
    except (subprocess.CalledProcessError, RuntimeError, OSError) as e:
        raise _submission_error("slurm", e) from None
    records = {}
    for d, job in zip(run_dirs, jobs):
        logs = _link_logs(d, job.paths.stdout, job.paths.stderr)
        rec = _job_record("slurm", job.job_id, sweep_dir, d, array_job_id=job.job_id.split("_")[0], logs=logs)
        write_json(d / JOB_FILE, rec)
        records[d.name] = rec
    return records


class _DetachedPopen(subprocess.Popen):
    """Popen in a new session: Ctrl-C in the terminal, or the end of `loopscale sweep`, leaves the job. It does
    not inherit the command's stdout/stderr (the job logs to its own files), so `loopscale sweep … | tee log`
    returns when the submission is done, not when the last run ends."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("start_new_session", True)
        for stream in ("stdin", "stdout", "stderr"):
            kwargs.setdefault(stream, subprocess.DEVNULL)
        super().__init__(*args, **kwargs)


def _local_executor(folder: Path):
    import submitit
    import submitit.local.local as local_mod

    class DetachedLocalExecutor(submitit.LocalExecutor):
        """submitit's LocalExecutor, its job controllers started in their own session."""

        def _submit_command(self, command: str):
            saved = local_mod.subprocess
            local_mod.subprocess = _PopenShim  # start_controller only calls subprocess.Popen
            try:
                return super()._submit_command(command)
            finally:
                local_mod.subprocess = saved

    return DetachedLocalExecutor(folder=folder)


class _PopenShim:
    Popen = _DetachedPopen


def _submit_local(sweep_dir: Path, run_dirs: list[Path], ex: ExecutorConfig) -> dict[str, dict]:
    """``layout.n`` submitit local jobs that take the runs in turn (far fewer processes than one job per run)."""
    layout = local_layout(ex)
    n = min(layout.n, len(run_dirs))
    token = uuid.uuid4().hex
    records = {}
    for d in run_dirs:  # the runs belong to this submission before any worker looks at them
        records[d.name] = _job_record("local", f"local-{token[:8]}", sweep_dir, d, submission=token,
                                      layout=asdict(layout), workers=[])
        write_json(d / JOB_FILE, records[d.name])
    executor = _local_executor(sweep_dir / JOBS_DIR)
    # the whole queue runs under submitit's local timeout: allow every wave its time
    executor.update_parameters(timeout_min=ex.time_min * math.ceil(len(run_dirs) / n) + 10, gpus_per_node=0)
    queue = [str(d.resolve()) for d in run_dirs]
    try:
        with executor.batch():
            jobs = [executor.submit(run_queue, queue, layout, i, token) for i in range(n)]
    except (subprocess.SubprocessError, RuntimeError, OSError) as e:
        for d in run_dirs:
            (d / JOB_FILE).unlink(missing_ok=True)
        raise _submission_error("local", e) from None
    workers = [{"pid": int(j.job_id), "pid_start": process_start(int(j.job_id)),
                "log": os.path.relpath(j.paths.stderr, sweep_dir)} for j in jobs]
    for d in run_dirs:
        records[d.name]["workers"] = workers
        write_json(d / JOB_FILE, records[d.name])
    return records


def _run_debug(sweep_dir: Path, run_dirs: list[Path], on_finish) -> dict[str, dict]:
    import submitit

    from loopscale.store import file_state

    executor = submitit.DebugExecutor(folder=sweep_dir / JOBS_DIR)
    pid = os.getpid()
    records, jobs = {}, []
    for d in run_dirs:
        job = executor.submit(run_job, str(d.resolve()), True, False)
        rec = _job_record("debug", job.job_id, sweep_dir, d, workers=[{"pid": pid, "pid_start": process_start(pid)}])
        write_json(d / JOB_FILE, rec)
        records[d.name] = rec
        jobs.append((d, job))
    for d, job in jobs:
        job.result()  # runs it here; run_job records failures in error.json instead of raising
        if on_finish:
            on_finish(d.name, file_state(d))
    return records


# --- inside the job -----------------------------------------------------------------------------

def _claim(run_dir: Path, token: str | None) -> bool:
    """Take a run for this process: it must still belong to this submission and not have started."""
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
    return True


@contextlib.contextmanager
def _captured(run_dir: Path):
    """stdout/stderr into job.out/job.err of the run folder (for runs sharing a process)."""
    with open(run_dir / "job.out", "a") as out, open(run_dir / "job.err", "a") as err:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield


def _use_threads(threads: int | None) -> None:
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(threads)


def run_job(run_dir: str, capture: bool = False, raise_errors: bool = True,
            info: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Train the run in ``run_dir`` (its config.yaml) in this process and return its result record.

    Writes started.json, then calls ``loopscale.train.train_run``. A failure is recorded in error.json
    (by the trainer, or here if it never got that far) and re-raised unless ``raise_errors`` is False
    (debug and local workers: no post-mortem debugger, the next run goes on).
    """
    path = Path(run_dir)
    try:
        threads = info.get("threads") if info else None
        write_json_atomic(path / STARTED_FILE, {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(), "pid": os.getpid(),
            "pid_start": process_start(os.getpid()), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "threads": threads, "python": sys.executable,
            **(info or {})})
        with _captured(path) if capture else contextlib.nullcontext():
            import torch

            from loopscale.train import train_run

            if threads:
                torch.set_num_threads(threads)
            return train_run(path)
    except BaseException as e:
        if not (path / ERROR_FILE).exists():  # failed before the trainer could record it
            write_json_atomic(path / ERROR_FILE, {
                "status": "failed", "error": (f"{type(e).__name__}: {e}".splitlines() or [type(e).__name__])[0],
                "traceback": traceback.format_exc(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            })
        if raise_errors or not isinstance(e, Exception):
            raise
        return None


def run_queue(run_dirs: list[str], layout: LocalLayout, worker: int, token: str) -> dict[str, int]:
    """A local worker job: one GPU (if any) and ``layout.threads`` threads; trains every run of the
    queue that no other worker of the submission has taken, in order. Returns counts of what it did."""
    if layout.gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = layout.gpus[worker % len(layout.gpus)]
    _use_threads(layout.threads)
    done = {"trained": 0, "failed": 0}
    for d in run_dirs:
        if not _claim(Path(d), token):
            continue
        info = {"worker": worker, "threads": layout.threads, "submission": token}
        ok = run_job(d, capture=True, raise_errors=False, info=info) is not None
        done["trained" if ok else "failed"] += 1
    return done


# --- waiting ------------------------------------------------------------------------------------

def wait(sweep_dir: str | Path, ids: list[str], on_update: Callable[[dict[str, RunState]], None] | None = None,
         poll_s: float = 5.0) -> dict[str, RunState]:
    """Poll the runs' states until none is in flight; ``on_update`` sees every poll. Returns the end states."""
    from loopscale.store import run_states

    while True:
        states = run_states(sweep_dir, ids)
        if on_update:
            on_update(states)
        if not any(st.state in IN_FLIGHT for st in states.values()):
            return states
        time.sleep(poll_s)


class SweepLock:
    """An exclusive, non-blocking flock beside the sweep folder: two `loopscale sweep` calls on the
    same sweep never plan and submit at once. Released explicitly, or when the process ends."""

    def __init__(self, sweep_dir: Path):
        import fcntl

        self._fd: int | None = None
        sweep_dir = Path(sweep_dir).resolve()
        self.path = sweep_dir.parent / f".{sweep_dir.name}.lock"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise unwritable(sweep_dir, e) from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()
            raise UserError(
                f"{sweep_dir}: another `loopscale sweep` is submitting to this sweep right now; "
                "try again when it has finished"
            ) from None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.release()


def sweep_lock(sweep_dir: str | Path) -> SweepLock:
    return SweepLock(Path(sweep_dir))
