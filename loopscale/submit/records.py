"""What a submission leaves in each run folder: its job record (job.json) and links to the job's
logs (job.out, job.err); and the one line a failed submission says."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from loopscale.fmt import timestamp
from loopscale.errors import UserError
from loopscale.store import ATTEMPTS_DIR, JOB_ERR, JOB_OUT, JOBS_DIR

LOG_LINKS = (JOB_OUT, JOB_ERR)


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


def sync() -> None:
    if hasattr(os, "sync"):
        os.sync()


def attempts(run_dir: Path) -> int:
    """The number of this attempt at the run: earlier ones are kept in attempts/<n>/."""
    return len(list((run_dir / ATTEMPTS_DIR).glob("*"))) + 1 if (run_dir / ATTEMPTS_DIR).exists() else 1


def job_record(kind: str, job_id: str, sweep_dir: Path, run_dir: Path, **extra: Any) -> dict[str, Any]:
    return {"executor": kind, "job_id": job_id, "submitted_at": timestamp(),
            "submitted_unix": time.time(),
            "host": socket.gethostname(), "attempt": attempts(run_dir), "folder": str(Path(sweep_dir) / JOBS_DIR),
            **extra}


def link_logs(run_dir: Path, stdout: Path, stderr: Path) -> dict[str, str]:
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


def submission_error(kind: str, e: Exception) -> UserError:
    text = str(e).strip()
    lines = [line for line in text.splitlines() if "error" in line.lower()] or text.splitlines() or [type(e).__name__]
    return UserError(f"{kind} submission failed: {lines[0].strip()}")
