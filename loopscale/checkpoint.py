"""Training checkpoints in a run folder: atomic, the previous one kept until the new one is complete.

``<run_dir>/checkpoints/step_<n>.pt`` holds model, optimizer, step, tokens, timings and RNG states.
Data positions need no saving: a step's batch is a pure function of (seed, step).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CKPT_DIR = "checkpoints"
KEEP = 2  # the newest complete checkpoint and the one before it


def checkpoint_paths(run_dir: Path) -> list[Path]:
    """Complete checkpoints, newest first."""
    d = Path(run_dir) / CKPT_DIR
    if not d.is_dir():
        return []
    found = []
    for p in d.glob("step_*.pt"):
        try:
            found.append((int(p.stem.split("_")[1]), p))
        except (IndexError, ValueError):
            continue
    return [p for _, p in sorted(found, reverse=True)]


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any]) -> Path:
    """Write ``step_<step>.pt`` atomically (temp file, fsync, rename), then prune older ones."""
    d = Path(run_dir) / CKPT_DIR
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"step_{step:09d}.pt"
    fd, tmp = tempfile.mkstemp(prefix=".step_", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({**state, "step": step, "rng_torch": torch.get_rng_state()}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for old in checkpoint_paths(run_dir)[KEEP:]:
        old.unlink(missing_ok=True)
    return path


def load_latest_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The newest checkpoint that loads; a damaged newest one falls back to the previous."""
    for p in checkpoint_paths(run_dir):
        try:
            state = torch.load(p, map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001 - a torn or corrupt file: try the previous one
            continue
        torch.set_rng_state(state["rng_torch"])
        return state
    return None


def remove_checkpoints(run_dir: Path) -> None:
    """Once result.json exists the checkpoints are no longer needed."""
    for p in checkpoint_paths(run_dir):
        p.unlink(missing_ok=True)
    d = Path(run_dir) / CKPT_DIR
    if d.is_dir() and not any(d.iterdir()):
        d.rmdir()
