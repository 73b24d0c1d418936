"""One writer per data folder at a time: ``with prepare_lock(out_dir): ...``.

The lock is a file in the folder (``.prepare.lock``), created exclusively, holding the pid, its start time,
the host and when it was taken. A second writer (a prepare, or the one-time hashing of a data dir made before
data identities existed) is refused at once with one line naming the pid and host that hold it. A lock whose
process is gone on this host is taken over, with a note; a lock held on another host is never second-guessed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from pathlib import Path
from typing import Callable, Iterator

from loopscale.errors import UserError
from loopscale.fmt import timestamp
from loopscale.schedule import alive, process_start

LOCK_FILE = ".prepare.lock"


class PrepareLocked(UserError):
    """Another process is writing this data folder."""


def _note(line: str) -> None:
    print(line, file=sys.stderr)


def _read(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # being written, or damaged: a holder we cannot name
    return holder if isinstance(holder, dict) else {}


def holder_gone(holder: dict) -> bool:
    """The lock's process has ended: same host, and no live process with its pid and start time."""
    return holder.get("host") == socket.gethostname() and not alive(holder.get("pid"), holder.get("pid_start"))


def _take(path: Path, me: dict) -> bool:
    """Create the lock holding ``me``, whole: written beside it, then hard-linked into place (which fails if it
    exists), so another process never reads it half-written; created exclusively where links are not allowed."""
    tmp = path.with_name(f"{LOCK_FILE}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(me))
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links
            pass
    finally:
        tmp.unlink(missing_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(me, f)
    return True


@contextlib.contextmanager
def prepare_lock(out_dir: str | Path, what: str = "prepare",
                 note: Callable[[str], None] = _note) -> Iterator[Path]:
    """Hold ``out_dir``'s lock for the block (the folder is made if missing). PrepareLocked when another live
    process holds it; OSError when the folder cannot be written. A folder made here and left empty (a
    prepare that failed before writing) is removed with the lock."""
    out_dir = Path(out_dir)
    made = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_FILE
    me = {"pid": os.getpid(), "pid_start": process_start(os.getpid()), "host": socket.gethostname(),
          "what": what, "since": timestamp()}
    while not _take(path, me):
        holder = _read(path)
        if holder is None:
            continue  # released between our two looks
        if not holder_gone(holder):
            who = (f"pid {holder.get('pid')} on {holder.get('host')} ({holder.get('what', 'prepare')} since "
                   f"{holder.get('since')})") if holder else "another process (its lock file is being written)"
            raise PrepareLocked(f"{out_dir} is being written by {who}; wait for it to finish, or remove {path} "
                                "if that process is gone")
        stale = path.with_name(f"{LOCK_FILE}.stale-{os.getpid()}")
        try:
            os.replace(path, stale)  # of several takers of a dead lock, one moves it away
        except FileNotFoundError:
            continue
        if _read(stale) != holder:  # another taker replaced the dead lock with its own meanwhile: give it back
            with contextlib.suppress(FileExistsError):
                os.link(stale, path)
            stale.unlink(missing_ok=True)
            continue
        stale.unlink(missing_ok=True)
        note(f"note: took over {path}: its process (pid {holder.get('pid')} on {holder.get('host')}) is gone")
    try:
        yield path
    finally:
        if (_read(path) or {}).get("pid") == os.getpid():
            path.unlink(missing_ok=True)
        if made:
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # only if empty
