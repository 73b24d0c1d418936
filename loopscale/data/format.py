"""The data directory's format: its file names, its token dtype, and the one writer and reader of its meta.json.

A data directory holds
- ``train.bin``, ``val.bin``: token ids, flat, uint16 when the vocabulary fits (else uint32), read back as
  ``np.memmap``; every document starts with the BOS token, documents follow one another;
- ``tokenizer.json``: for ``bpe:<V>``, the Hugging Face ``tokenizers`` byte-level BPE, trained on the
  training split alone, ``<|bos|>`` id 0; for a pretrained tokenizer (a path to its tokenizer.json), a copy
  of that file; none for ``bytes``;
- ``meta.json``: tokenizer, vocab size, dtype, BOS id, token and document counts, sources with versions and
  sha256, the settings that produced it, and the identity of the tokens (``data_id``, see
  ``loopscale.data.identity``). It is written last, so a directory without it is incomplete;
- ``train.docs.npy``: the start offsets (int64, ascending) of the training documents, i.e. the positions of
  BOS in ``train.bin``, for the packed loader. Written at prepare/import time when there is a BOS id; a
  directory made before it existed gets it on first use (``loopscale.data.dataset.doc_starts``), cached when
  the folder is writable.

Neither the tokenizers library nor any token is loaded here: a grid reads a data dir's vocabulary through
this module (``read_vocab_size``) at the cost of one small JSON file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from loopscale import __version__
from loopscale.atomic import write_json_atomic
from loopscale.errors import UserError

FORMAT_VERSION = 1
TRAIN_BIN = "train.bin"
VAL_BIN = "val.bin"
TOKEN_FILES = {"train": TRAIN_BIN, "val": VAL_BIN}  # split -> its token file
META_JSON = "meta.json"
TOKENIZER_JSON = "tokenizer.json"
DOCS_INDEX = "train.docs.npy"
DEFAULT_DATA_DIR = "data/default"
DATA_ENV = "LOOPSCALE_DATA"

# meta.json's keys in the order they are written; the ones in OPTIONAL_META_KEYS only where a prepare has them
META_KEYS = ("format_version", "tokenizer", "vocab_size", "tokenizer_vocab_size", "tokenizer_sha256", "dtype",
             "bos_id", "bos_token", "train_tokens", "val_tokens", "train_docs", "val_docs", "train_chars",
             "val_chars", "val_unigram_entropy", "sources", "settings", "data_id", "created_by")
OPTIONAL_META_KEYS = ("tokenizer_vocab_size", "tokenizer_sha256", "bos_token", "train_chars", "val_chars",
                      "data_id")  # data_id: loopscale.data.identity; absent in folders made before it existed


def default_data_dir_setting() -> str:
    """``$LOOPSCALE_DATA`` or ``data/default``, as written (a grid resolves it against its own base)."""
    return os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR


def default_data_dir() -> Path:
    """``$LOOPSCALE_DATA`` or ``./data/default``, as an absolute path."""
    return Path(default_data_dir_setting()).expanduser().resolve()


def dtype_for(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 2**16 else "uint32"


def mark_incomplete(out_dir: Path) -> None:
    """Mark ``out_dir`` incomplete (no meta.json, no document index) before touching any file in it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / META_JSON).unlink(missing_ok=True)
    (out_dir / DOCS_INDEX).unlink(missing_ok=True)


def write_meta(out_dir: Path, **fields: Any) -> dict[str, Any]:
    """Write ``out_dir``'s meta.json, atomically and last (it marks the directory complete); returns it.

    ``fields`` are the keys of ``META_KEYS`` but ``format_version`` and ``created_by``, which this adds; the
    keys of ``OPTIONAL_META_KEYS`` may be left out. The file lists them in ``META_KEYS`` order."""
    meta = {"format_version": FORMAT_VERSION, **fields, "created_by": f"loopscale {__version__}"}
    unknown = sorted(set(meta) - set(META_KEYS))
    missing = [k for k in META_KEYS if k not in meta and k not in OPTIONAL_META_KEYS]
    if unknown or missing:
        raise ValueError(f"meta.json fields: unknown {unknown}, missing {missing}")
    meta = {k: meta[k] for k in META_KEYS if k in meta}
    write_json_atomic(Path(out_dir) / META_JSON, meta)
    return meta


def rewrite_meta(data_dir: str | Path, meta: dict[str, Any]) -> None:
    """Write back a meta.json read from ``data_dir`` with keys added (its data_id), every other key as it was,
    in ``META_KEYS`` order (keys this version does not know last), atomically."""
    ordered = {k: meta[k] for k in META_KEYS if k in meta}
    ordered.update({k: v for k, v in meta.items() if k not in ordered})
    write_json_atomic(Path(data_dir) / META_JSON, ordered)


def read_meta(data_dir: str | Path) -> Any:
    """The parsed meta.json of ``data_dir``, as it is: FileNotFoundError when there is none, ValueError
    (``json.JSONDecodeError``, ``UnicodeDecodeError``) when it is not JSON. Callers check its content."""
    return json.loads((Path(data_dir) / META_JSON).read_text())


def read_vocab_size(data_dir: Path, fix: str) -> int:
    """The vocabulary of a prepared data dir, from its meta.json (no tokens are read). A UserError names the
    problem; ``fix`` is what to do about a missing or unreadable file (e.g. run `loopscale data prepare`)."""
    meta = data_dir / META_JSON
    try:
        vocab = read_meta(data_dir).get("vocab_size")
    except FileNotFoundError:
        raise UserError(f"{data_dir} holds no prepared data (no {META_JSON}); {fix}") from None
    except (OSError, ValueError, AttributeError) as e:
        raise UserError(f"cannot read {meta} ({e}); {fix}") from None
    if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 1:
        raise UserError(f"{meta} has no valid vocab_size")
    return vocab
