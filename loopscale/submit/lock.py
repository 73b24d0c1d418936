"""The sweep lock: two `loopscale sweep` calls on the same sweep never plan and submit at once.

``with sweep_lock(sweep_dir): ...`` holds an exclusive, non-blocking flock on ``.<name>.lock`` beside
the sweep folder and releases it when the block ends, however it ends (return or exception). A second
caller meanwhile gets a one-line UserError. The kernel drops the lock if the process dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from loopscale.errors import UserError
from loopscale.submit.folder import unwritable


def lock_path(sweep_dir: str | Path) -> Path:
    sweep_dir = Path(sweep_dir).resolve()
    return sweep_dir.parent / f".{sweep_dir.name}.lock"


@contextlib.contextmanager
def sweep_lock(sweep_dir: str | Path) -> Iterator[Path]:
    """Hold the sweep's lock for the ``with`` block (yields the lock file's path)."""
    sweep_dir = Path(sweep_dir).resolve()
    path = lock_path(sweep_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise unwritable(sweep_dir, e) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"{sweep_dir}: another `loopscale sweep` is submitting to this sweep right now; "
                "try again when it has finished"
            ) from None
        yield path
    finally:
        os.close(fd)  # closing the only descriptor of this open file drops its flock
