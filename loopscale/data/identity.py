"""A data dir's content identity (``data_id``): what a run trained on, independent of where the folder lies.

``data_id`` is the sha256 of the format version, the vocabulary, the token dtype, the BOS id, the sha256 of
the tokenizer file (none for bytes), and, for each split (train, then val), its byte length and the sha256 of
its token file. Input paths, the tokenizer's spec as typed, and modification times stay out of it: the same
tokens prepared in two folders, or a folder moved, have one identity; other tokens have another.

``data prepare`` writes it into meta.json once the token files are final (``compute_data_id`` reads them back
at about 1 GB/s). A data dir made before identities existed gets one on first use (``data_id``): its token files
are hashed once and the identity is added to its meta.json under the folder's prepare lock; where the folder
cannot be written, the identity is computed in memory each time and the user is told so.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Callable

from loopscale.data.format import FORMAT_VERSION, META_JSON, TOKEN_FILES, TOKENIZER_JSON, read_meta, rewrite_meta
from loopscale.data.lock import PrepareLocked, prepare_lock

ID_KEY = "data_id"
HASH_CHUNK = 8 << 20

_known: dict[tuple[str, int, int], str] = {}  # (meta.json path, mtime_ns, size) -> its identity, per process


def _note(line: str) -> None:
    print(line, file=sys.stderr)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def compute_data_id(data_dir: str | Path, meta: dict) -> str:
    """The identity of the tokens in ``data_dir`` as ``meta`` (its meta.json's content) describes them."""
    data_dir = Path(data_dir)
    tokenizer = data_dir / TOKENIZER_JSON
    head = {"format_version": meta.get("format_version", FORMAT_VERSION), "vocab_size": meta.get("vocab_size"),
            "dtype": meta.get("dtype"), "bos_id": meta.get("bos_id"),
            "tokenizer_sha256": _sha256_file(tokenizer) if tokenizer.is_file() else None}
    h = hashlib.sha256(json.dumps(head, sort_keys=True, separators=(",", ":")).encode())
    for split, name in TOKEN_FILES.items():
        path = data_dir / name
        h.update(f"\n{split} {path.stat().st_size} {_sha256_file(path)}".encode())
    return h.hexdigest()


def _stat_key(data_dir: Path) -> tuple[str, int, int] | None:
    try:
        st = os.stat(data_dir / META_JSON)
    except OSError:
        return None
    return (str((data_dir / META_JSON).resolve()), st.st_mtime_ns, st.st_size)


def data_id(data_dir: str | Path, note: Callable[[str], None] = _note) -> str | None:
    """The identity of a prepared data dir; None when it holds no readable meta.json (not prepared, or being
    prepared) or, made before identities, lacks a token file. Read from meta.json; for a folder prepared before identities existed, computed once and stored
    there (see the module docstring)."""
    data_dir = Path(data_dir).expanduser()
    key = _stat_key(data_dir)
    if key is None:
        return None
    if key in _known:
        return _known[key]
    try:
        meta = read_meta(data_dir)
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    found = meta.get(ID_KEY)
    if not isinstance(found, str):
        if not all((data_dir / name).is_file() for name in TOKEN_FILES.values()):
            return None  # a meta.json without its token files: not a prepared data dir
        found = _identify_old(data_dir, meta, note)
    key = _stat_key(data_dir)  # after a rewrite: the file it is now
    if key is not None:
        _known[key] = found
    return found


def _identify_old(data_dir: Path, meta: dict, note: Callable[[str], None]) -> str:
    """Hash a data dir made before identities existed; store the result beside it when the folder allows."""
    size = sum((data_dir / name).stat().st_size for name in TOKEN_FILES.values() if (data_dir / name).exists())
    try:
        with prepare_lock(data_dir, what="identify"):
            again = read_meta(data_dir)  # another process may have done it while we waited
            if isinstance(again, dict) and isinstance(again.get(ID_KEY), str):
                return again[ID_KEY]
            note(f"{data_dir}: prepared before data identities existed; hashing its token files once "
                 f"({size / 1e9:.2g} GB) and adding the identity to its {META_JSON}")
            found = compute_data_id(data_dir, meta)
            rewrite_meta(data_dir, {**meta, ID_KEY: found})
            return found
    except (PrepareLocked, OSError) as e:
        why = "it is locked by another writer" if isinstance(e, PrepareLocked) else f"it cannot be written ({e})"
        note(f"{data_dir}: prepared before data identities existed and {why}: its identity is computed in "
             f"memory ({size / 1e9:.2g} GB hashed) and not stored")
        return compute_data_id(data_dir, meta)
