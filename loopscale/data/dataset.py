"""A prepared data directory, read: ``load_data`` opens it as a ``Dataset`` (train and val token memmaps and
its meta.json), checked against the format (``loopscale.data.format``). Also the document index that the
packed loader reads (``doc_starts``, kept in ``train.docs.npy``) and the unigram entropy of a token stream.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from loopscale.data.format import (DOCS_INDEX, FORMAT_VERSION, META_JSON, TOKEN_FILES, TOKENIZER_JSON, TRAIN_BIN,
                                   read_meta)
from loopscale.data.tokenizer import BPETokenizer, ByteTokenizer
from loopscale.errors import UserError


@dataclass
class Dataset:
    """A prepared data directory: ``train`` and ``val`` are read-only memmaps of token ids."""

    dir: Path
    meta: dict[str, Any]
    train: np.memmap = field(repr=False)
    val: np.memmap = field(repr=False)

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def bos_id(self) -> int | None:
        return self.meta["bos_id"]

    def decode(self, ids: Iterable[int]) -> str:
        """Token ids back to text (BOS dropped); for looking at samples."""
        kind = self.meta["tokenizer"]
        if kind == "bytes":
            return ByteTokenizer().decode(ids)
        if kind.startswith("bpe:"):
            return BPETokenizer.load(self.dir / TOKENIZER_JSON).decode(ids)
        if kind != "imported" and (self.dir / TOKENIZER_JSON).is_file():  # a pretrained tokenizer's copy
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(self.dir / TOKENIZER_JSON))
            return tok.decode([int(i) for i in ids], skip_special_tokens=True)
        raise UserError(f"{self.dir} was imported from .bin files and has no tokenizer to decode with")


def load_data(data_dir: str | Path) -> Dataset:
    """Open a prepared data directory; a clear UserError if it is missing, incomplete or inconsistent."""
    d = Path(data_dir).expanduser().resolve()
    fix = f"run `loopscale data prepare --out {d}`"
    refix = f"run `loopscale data prepare --out {d} --force`"
    if not d.is_dir():
        raise UserError(f"data directory {d} does not exist; {fix}")
    try:
        meta = read_meta(d)
    except FileNotFoundError:
        raise UserError(f"{d} holds no complete dataset (no {META_JSON}); {fix}") from None
    except ValueError as e:  # not JSON, or not UTF-8
        raise UserError(f"{d / META_JSON} is not valid JSON ({e}); {refix}") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{d / META_JSON} is not loopscale data format {FORMAT_VERSION}; {refix}")
    try:
        itemsize = np.dtype(meta["dtype"]).itemsize
        splits = {}
        for split, name in TOKEN_FILES.items():
            path, n = d / name, int(meta[f"{split}_tokens"])
            if not path.is_file():
                raise UserError(f"{path} is missing; {refix}")
            if n <= 0 or path.stat().st_size != n * itemsize:
                raise UserError(f"{path} has {path.stat().st_size} bytes but {META_JSON} says {n} {meta['dtype']} "
                                f"tokens; {refix}")
            splits[split] = np.memmap(path, dtype=meta["dtype"], mode="r")
        if int(meta["vocab_size"]) <= 0 or "bos_id" not in meta:
            raise ValueError("vocab_size or bos_id")
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{d / META_JSON} lacks or garbles {e}; {refix}") from None
    return Dataset(d, meta, splits["train"], splits["val"])


# --- Document index (for the packed loader) ---

def find_bos(tokens: np.ndarray, bos_id: int, chunk: int = 1 << 24) -> np.ndarray:
    """Positions of ``bos_id`` in ``tokens`` (int64, ascending), read in chunks."""
    parts = [np.flatnonzero(np.asarray(tokens[i : i + chunk]) == bos_id) + i for i in range(0, len(tokens), chunk)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def write_doc_index(out_dir: Path, train: np.ndarray, bos_id: int) -> np.ndarray:
    """Write ``train.docs.npy`` (the BOS positions of ``train``) atomically; returns it."""
    starts = find_bos(train, bos_id)
    _save_index(Path(out_dir), starts)
    return starts


def _save_index(out_dir: Path, starts: np.ndarray) -> None:
    tmp = out_dir / f".{DOCS_INDEX}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            np.save(f, starts)
        os.replace(tmp, out_dir / DOCS_INDEX)
    finally:
        tmp.unlink(missing_ok=True)


def _index_matches(starts: np.ndarray, ds: "Dataset") -> bool:
    """Cheap check that a stored index belongs to this train.bin: shape, order, range, BOS at sampled starts."""
    n = len(ds.train)
    if starts.ndim != 1 or starts.dtype != np.int64 or not len(starts) or starts[0] < 0 or starts[-1] >= n:
        return False
    if len(starts) > 1 and not (np.diff(starts) > 0).all():
        return False
    sample = starts[np.unique(np.linspace(0, len(starts) - 1, min(len(starts), 1000)).astype(np.int64))]
    return bool((np.asarray(ds.train[sample]) == ds.bos_id).all())


def doc_starts(ds: "Dataset") -> np.ndarray:
    """Start offsets of the training documents (the BOS positions of ``train.bin``), int64, ascending.

    Read from ``train.docs.npy`` when it matches the data; otherwise found by scanning for BOS and cached
    there (best effort: a read-only data dir just scans again next time)."""
    if ds.bos_id is None:
        raise UserError(f"{ds.dir}: no BOS id in {META_JSON}, so no document boundaries for data.loader packed; "
                        "re-import the .bin files with their document separator (bos_id) or use data.loader windows")
    try:
        starts = np.load(ds.dir / DOCS_INDEX, allow_pickle=False)
        if _index_matches(starts, ds):
            return starts
    except (OSError, ValueError):
        pass
    starts = find_bos(ds.train, int(ds.bos_id))
    if not len(starts):
        raise UserError(f"{ds.dir}: {TRAIN_BIN} holds no BOS token (id {ds.bos_id}): no documents for "
                        "data.loader packed")
    try:
        _save_index(ds.dir, starts)
    except OSError:
        pass  # a read-only data dir: scan again next time
    return starts


def unigram_entropy(tokens: np.ndarray, vocab_size: int) -> float:
    """Entropy (nats/token) of the tokens' own unigram distribution: the loss of the best context-free
    model of exactly these tokens, so a language model must go below it to have learned anything."""
    return entropy_of_chunks((tokens[i : i + (1 << 24)] for i in range(0, len(tokens), 1 << 24)), vocab_size)


def entropy_of_chunks(chunks: Iterable[np.ndarray], vocab_size: int) -> float:
    """``unigram_entropy`` of the tokens of all ``chunks`` together, counted one chunk at a time."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for chunk in chunks:
        c = np.bincount(np.asarray(chunk), minlength=vocab_size)
        if len(c) > vocab_size:
            raise ValueError(f"token id {len(c) - 1} is not below vocab_size {vocab_size}")
        counts += c
    total = counts.sum()
    if total == 0:
        raise ValueError("no tokens")
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum())
