"""How every prepare writes a data directory (``write_prepared``): one writer per folder at a time, the dataset
already there reused, meta.json written last with the data's identity, and ``--force`` written beside the old
data and swapped in at the end.

- Lock: the folder's prepare lock (``loopscale.data.lock``) is taken before anything is fetched, trained or
  written; a second prepare into the same folder is refused at once, with one line naming the pid and host
  that hold it. A prepare whose dataset is already there (same settings, identity recorded) returns without
  the lock, so it neither waits for nor is refused by a writer; under the lock, the check is made again.
- Reuse: a complete dataset made with the same settings is kept; a folder made before data identities existed
  gets its identity added to meta.json then (its token files hashed once, under the lock).
- Where: a folder without a complete dataset is written in place (meta.json, which marks it complete, is
  removed first and written last). With ``force`` over a complete dataset, the new files go to ``STAGING``, a
  folder inside it (same file system), and are swapped in at the end (``swap_in``): meta.json removed, each
  file renamed over the old one (train.bin, val.bin, tokenizer.json, train.docs.npy; one the new data lacks is
  removed), meta.json last. A job that has the old files open (np.memmap) keeps reading the old inodes; the
  old data stays whole until the swap, so an interrupted ``--force`` leaves it as it was (rerun it with
  ``--force`` to continue: a streaming prepare resumes from the staging folder's journal).
- Identity: once the token files are final, they are hashed (``loopscale.data.identity.compute_data_id``, about
  1 GB/s) and the identity goes into meta.json with the rest. Hashing at the end, not while writing, keeps the
  streaming prepare's resume (a hash state cannot be journaled) and the move of a document between splits.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from loopscale.data.dataset import load_data
from loopscale.data.format import (DOCS_INDEX, META_JSON, TOKENIZER_JSON, TRAIN_BIN, VAL_BIN, mark_incomplete,
                                   rewrite_meta, write_meta)
from loopscale.data.identity import ID_KEY, compute_data_id, data_id
from loopscale.data.lock import PrepareLocked, prepare_lock
from loopscale.errors import UserError

STAGING = ".prepare.staging"
SWAPPED = (TRAIN_BIN, VAL_BIN, TOKENIZER_JSON, DOCS_INDEX)  # renamed into place in this order, meta.json after


@dataclass
class Prepared:
    """What ``prepare_*`` did: the data directory's meta, and whether it was already there (nothing written)."""

    dir: Path
    meta: dict[str, Any]
    reused: bool = False
    seconds: float = 0.0


@dataclass
class Target:
    """Where a prepare writes: ``dir`` is the data directory ``out`` itself, or its staging folder."""

    out: Path
    dir: Path

    @property
    def staged(self) -> bool:
        return self.dir != self.out

    def start(self, resume: bool = False) -> None:
        """Mark the folder being written incomplete; a staging folder is emptied first, unless ``resume``."""
        if self.staged and not resume:
            shutil.rmtree(self.dir, ignore_errors=True)
        mark_incomplete(self.dir)


def existing_meta(out_dir: Path, settings: dict, force: bool) -> dict | None:
    """The meta of a complete dataset in ``out_dir`` made with exactly ``settings`` (to reuse), else None.
    A complete dataset made otherwise is only replaced with ``force``."""
    if force:
        return None
    try:
        meta = load_data(out_dir).meta
    except UserError:
        return None  # nothing complete there
    if meta.get("settings") != settings:
        raise UserError(f"{out_dir} already holds another dataset ({meta.get('tokenizer')}, "
                        f"{meta.get('settings', {}).get('corpus')}); pass --force to replace it")
    return meta


def swap_in(staging: Path, out_dir: Path) -> None:
    """Move the complete dataset in ``staging`` over the one in ``out_dir`` (see the module docstring)."""
    (out_dir / META_JSON).unlink(missing_ok=True)  # incomplete while its files change
    for name in SWAPPED:
        src = staging / name
        if src.exists() or src.is_symlink():
            os.replace(src, out_dir / name)
        else:
            (out_dir / name).unlink(missing_ok=True)
    os.replace(staging / META_JSON, out_dir / META_JSON)
    shutil.rmtree(staging, ignore_errors=True)


def write_prepared(out_dir: Path, settings: dict, force: bool, build: Callable[[Target], dict[str, Any]],
                   scratch: Sequence[str] = (), t0: float | None = None) -> Prepared:
    """Prepare ``out_dir`` with ``build`` under its lock (see the module docstring). ``build(target)`` writes the
    token files (and tokenizer.json, train.docs.npy) into ``target.dir``, calling ``target.start()`` before its
    first write, and returns meta.json's fields (``loopscale.data.format.write_meta``) but the identity; the
    files named in ``scratch`` are removed once meta.json is written."""
    t0 = time.perf_counter() if t0 is None else t0
    if (meta := existing_meta(out_dir, settings, force)) and isinstance(meta.get(ID_KEY), str):
        return Prepared(out_dir, meta, reused=True)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(prepare_lock(out_dir))
        except PrepareLocked:
            # the dataset is there, its identity not stored yet, and another process writes: in memory
            if meta is None or (found := data_id(out_dir)) is None:
                raise
            return Prepared(out_dir, {**meta, ID_KEY: found}, reused=True)
        if meta := existing_meta(out_dir, settings, force):
            if not isinstance(meta.get(ID_KEY), str):  # made before identities existed: add it
                meta = {**meta, ID_KEY: compute_data_id(out_dir, meta)}
                rewrite_meta(out_dir, meta)
            return Prepared(out_dir, meta, reused=True)
        staged = force and (out_dir / META_JSON).exists()
        target = Target(out_dir, out_dir / STAGING if staged else out_dir)
        if not staged:
            shutil.rmtree(out_dir / STAGING, ignore_errors=True)  # an interrupted --force of data now gone
        fields = build(target)
        meta = write_meta(target.dir, **fields, data_id=compute_data_id(target.dir, fields))
        for name in scratch:
            (target.dir / name).unlink(missing_ok=True)
        if staged:
            swap_in(target.dir, out_dir)
    return Prepared(out_dir, meta, seconds=time.perf_counter() - t0)
