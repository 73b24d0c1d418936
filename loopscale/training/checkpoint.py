"""Training checkpoints in a run folder: atomic, the previous one kept until the new one is complete.

``<run_dir>/checkpoints/step_<n>.pt`` holds model, optimizer, step, tokens, timings and RNG states.
Data positions need no saving: a step's batch is a pure function of (seed, step).

A checkpoint holds only tensors and plain values (dicts, lists, tuples, str, int, float, bool, None) and
is read with ``torch.load(weights_only=True)``: run folders live on shared storage, so a planted pickle
must run nothing. A file that does not load that way (torn, corrupt, written by an older loopscale, or
planted) is ignored: the run resumes from the previous checkpoint, or starts from scratch.

A checkpoint records the identity of the data it trained on (``data_id``, loopscale.data.identity). One whose
identity differs from the data now in the run's data dir (re-prepared since) is not resumed either: it is set
aside as ``<name>.stale`` and the run starts from scratch. A checkpoint without one (written before identities
existed) is resumed as before.

torch is imported where a checkpoint is written or read, not with the module. The listing (the folder, the
file names, :func:`~loopscale.store.checkpoint_paths`, :func:`~loopscale.store.latest_step`) is the run
folder's, in :mod:`loopscale.store`, which torch-free callers (`loopscale cancel`, resubmission) read.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from loopscale.store import CKPT_DIR, checkpoint_name, checkpoint_paths

KEEP = 2  # the newest complete checkpoint and the one before it
UNREADABLE = ".unreadable"  # suffix an ignored checkpoint is renamed with, out of the step_*.pt listing
STALE = ".stale"  # suffix of a checkpoint trained on other data than its data dir now holds


def plain(obj: Any) -> Any:
    """``obj`` with numpy arrays as tensors and numpy scalars as Python numbers, so that
    ``torch.load(weights_only=True)`` accepts it (e.g. the packed loader's buffer). Containers without
    numpy inside are returned as they are (a state dict keeps its ``_metadata``)."""
    if isinstance(obj, np.ndarray):
        import torch

        return torch.from_numpy(np.ascontiguousarray(obj).copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        items = {k: plain(v) for k, v in obj.items()}
        return obj if all(items[k] is v for k, v in obj.items()) else items
    if isinstance(obj, (list, tuple)):
        items = [plain(v) for v in obj]
        if all(a is b for a, b in zip(items, obj)):
            return obj
        return tuple(items) if isinstance(obj, tuple) else items
    return obj


def rng_states() -> dict[str, Any]:
    """Torch CPU (and current CUDA device) and Python ``random`` generator states, as tensors and plain values."""
    import torch

    version, internal, gauss = random.getstate()
    states: dict[str, Any] = {"rng_torch": torch.get_rng_state(), "rng_python": [version, list(internal), gauss]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["rng_cuda"] = torch.cuda.get_rng_state()
    return states


def set_rng_states(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["rng_torch"])
    if "rng_python" in state:  # checkpoints before the python state was saved lack it
        version, internal, gauss = state["rng_python"]
        random.setstate((version, tuple(internal), gauss))
    if "rng_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["rng_cuda"])


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any]) -> Path:
    """Write ``step_<step>.pt`` atomically (temp file, fsync, rename), then prune older ones."""
    import torch

    d = Path(run_dir) / CKPT_DIR
    d.mkdir(parents=True, exist_ok=True)
    path = d / checkpoint_name(step)
    fd, tmp = tempfile.mkstemp(prefix=".step_", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({**plain(state), "step": step, **rng_states()}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for old in checkpoint_paths(run_dir)[KEEP:]:
        old.unlink(missing_ok=True)
    return path


def _set_aside(path: Path, suffix: str = UNREADABLE) -> Path | None:
    """Rename an unreadable (or stale) checkpoint to ``<name>.unreadable`` (``.unreadable.1``, … if taken), so it
    is kept for inspection but no longer listed; None when it cannot be renamed."""
    for i in range(100):
        target = path.with_name(path.name + suffix + (f".{i}" if i else ""))
        if target.exists():
            continue
        try:
            path.rename(target)
        except OSError:
            return None
        return target
    return None


def load_latest_checkpoint(run_dir: Path, report: bool = True, data_id: str | None = None) -> dict[str, Any] | None:
    """The newest checkpoint that loads (weights only), with the RNG states it holds restored.

    Unreadable newer ones are skipped in favour of the previous one. With ``report`` (the one process
    of a run that writes its folder), they are renamed to ``<name>.unreadable`` and one line on stderr
    names them and says what the run starts from. Given the ``data_id`` of the data the run reads now, those
    trained on other data are skipped too (renamed to ``<name>.stale``, with a line of their own).
    """
    import torch

    skipped: list[str] = []  # each unreadable file, and what became of it
    stale: list[str] = []  # each checkpoint of other data, and what became of it
    stale_ids: set[str] = set()
    found = None
    for p in checkpoint_paths(run_dir):
        try:
            with warnings.catch_warnings():  # torch warns about odd files; the one line below says it all
                warnings.simplefilter("ignore")
                state = torch.load(p, map_location="cpu", weights_only=True)
        except FileNotFoundError:  # pruned by a newer save since it was listed
            continue
        except OSError as e:  # cannot be read now (permissions, storage): skip it, but leave it in place
            skipped.append(f"{p} (cannot be read: {e.strerror or type(e).__name__})")
            continue
        except Exception:  # noqa: BLE001 - torn, corrupt, old format, or objects other than tensors/plain values
            state = None
        if not (isinstance(state, dict) and isinstance(state.get("step"), int)
                and isinstance(state.get("rng_torch"), torch.Tensor)):
            moved = _set_aside(p) if report else None
            skipped.append(f"{p} (renamed to {moved.name})" if moved else str(p))
            continue
        if data_id is not None and state.get("data_id") not in (None, data_id):
            moved = _set_aside(p, STALE) if report else None
            stale.append(f"{p} (renamed to {moved.name})" if moved else str(p))
            stale_ids.add(str(state["data_id"]))
            continue
        set_rng_states(state)
        found = state
        break
    then = f"resuming from step {found['step']}" if found is not None else "starting from scratch"
    if skipped and report:
        print(f"ignored unreadable checkpoint{'s' if len(skipped) > 1 else ''} {', '.join(skipped)}: torn, corrupt, "
              f"from an older loopscale, or not only tensors and plain values; {then}", file=sys.stderr, flush=True)
    if stale and report:
        print(f"not resuming checkpoint{'s' if len(stale) > 1 else ''} {', '.join(stale)}: trained on other data "
              f"(data_id {', '.join(sorted(i[:12] for i in stale_ids))}) than the run's data dir holds now "
              f"({str(data_id)[:12]}; re-prepared since); {then}", file=sys.stderr, flush=True)
    return found


def remove_checkpoints(run_dir: Path) -> None:
    """Once result.json exists the checkpoints are no longer needed (files set aside as unreadable stay)."""
    for p in checkpoint_paths(run_dir):
        p.unlink(missing_ok=True)
    d = Path(run_dir) / CKPT_DIR
    if d.is_dir() and not any(d.iterdir()):
        d.rmdir()
