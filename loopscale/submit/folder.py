"""The sweep folder: its kept grid, its data check, its run folders (config.yaml, earlier attempts)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import yaml

from loopscale.atomic import write_bytes_atomic
from loopscale.errors import UserError
from loopscale.grid import Grid, RunSpec, grid_changes, parse_yaml
from loopscale.store import (
    ATTEMPTS_DIR,
    CANCEL_FILE,
    CONFIG_FILE,
    ERROR_FILE,
    GRID_FILE,
    GRID_HISTORY_DIR,
    JOB_FILE,
    METRICS_FILE,
    RESULT_FILE,
    RUNS_DIR,
    STARTED_FILE,
    checkpoint_paths,
)
from loopscale.submit.records import LOG_LINKS, replace_file

_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when present: 10x faster for big sweeps
ATTEMPT_FILES = (JOB_FILE, ERROR_FILE, RESULT_FILE, STARTED_FILE, METRICS_FILE, CANCEL_FILE) + LOG_LINKS


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
        history = Path(sweep_dir) / GRID_HISTORY_DIR
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
        (Path(sweep_dir) / RUNS_DIR).mkdir(parents=True, exist_ok=True)
        probe = Path(sweep_dir) / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise unwritable(sweep_dir, e) from None


def check_data(grid: Grid) -> None:
    """The data dir exists, holds the data the grid's runs were keyed by (its identity), matches the grid's
    vocabulary and is long enough for every run."""
    from loopscale.data import identity
    from loopscale.data.dataset import load_data

    ds = load_data(grid.data_dir)
    now = identity.data_id(grid.data_dir)
    if grid.data_id is None or now != grid.data_id:
        raise UserError(f"{grid.data_dir}: the data changed while the sweep was planned (its identity is "
                        f"{now and now[:12]}, the runs were keyed by {grid.data_id and grid.data_id[:12]}); "
                        "run the sweep again")
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


def write_config(run_dir: Path, spec: RunSpec) -> None:
    """config.yaml of a run spec, as the trainer reads it (:func:`write_run_config`)."""
    write_run_config(run_dir, spec.config)


def write_run_config(run_dir: Path, cfg) -> None:
    """config.yaml as the trainer reads it (RunConfig.to_dict), written atomically (not rewritten when the same)."""
    text = yaml.dump(cfg.to_dict(), Dumper=_Dumper, sort_keys=False).encode()
    path = run_dir / CONFIG_FILE
    if not path.exists() or path.read_bytes() != text:
        replace_file(path, text)


def archive_attempt(run_dir: Path) -> Path | None:
    """Move a failed attempt's records (job, error, corrupt result, cancel marker, logs; metrics unless a
    checkpoint will resume them) to attempts/<n>/. Checkpoints stay: the next attempt resumes from them."""
    resumes = bool(checkpoint_paths(run_dir))
    present = [f for f in ATTEMPT_FILES if ((run_dir / f).exists() or (run_dir / f).is_symlink())
               and not (resumes and f == METRICS_FILE)]
    if not present:
        return None
    n = 1
    while (run_dir / ATTEMPTS_DIR / str(n)).exists():
        n += 1
    dest = run_dir / ATTEMPTS_DIR / str(n)
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
