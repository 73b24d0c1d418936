"""Prepare a data directory from the user's text files, streaming: memory does not grow with the corpus.

What it writes is the format of ``loopscale.data.format`` (train.bin, val.bin, train.docs.npy, tokenizer.json,
meta.json last). How:
- Order: the input files (``loopscale.data.sources``) are processed in a seeded hash order of their keys, so
  both splits mix the inputs at file granularity; documents keep their order within a file.
- Split: a document goes to validation iff ``val_share(file key, document index, seed) < val_fraction``,
  a seeded hash, decided as the document is read (so validation holds about ``val_fraction`` of the
  documents, and of the text, in expectation). If no document (or every one) falls to validation, the
  last one written is moved to the empty split; fewer than 2 documents is an error.
- Tokens: BOS then the document's tokens, for every document. ``bytes`` drops NUL (byte 0 is BOS);
  ``bpe:N`` first learns its merges from the training documents, up to ``BPE_SAMPLE_CHARS`` characters
  of them in processing order; a pretrained tokenizer.json is used as it is (``loopscale.data.tokenizer``).
- Work: the files are read, decompressed and parsed into batches of about ``BATCH_CHARS`` characters; each
  batch is encoded with one ``encode_batch`` call (the tokenizers library spreads it over every core, outside
  the GIL); the result becomes token arrays appended to the files. With ``STAGES_MIN_CORES`` cores or more
  these are three overlapping stages (``loopscale.data.threaded``: a reader thread, an encoding thread, the main
  thread), since the Python work (about 0.1 us a token) would otherwise cap the encoding; on fewer cores
  the encoding alone keeps every core busy, the extra threads only compete with it (measured on 2 cores:
  0.90 of the serial loop's rate), and the stages run one after another in the main thread.
- Memory: a few batches, the tokenizer, and unigram counts of the vocabulary. The document index goes to
  a side file as it is found and becomes ``train.docs.npy`` by a chunked copy; the validation entropy is
  counted by chunked reads.
- Resume: after input files are done (at least ``commit_bytes`` of input since the last commit, and at the
  last file) the token files are fsynced and a journal (``loopscale.data.journal``) records the files and the
  file lengths. A rerun with the same settings and committed files unchanged (path, size, mtime) cuts the
  token files back to the last commit and continues with the next file; anything else starts afresh.
  Until meta.json is written the directory is incomplete for ``load_data``. A ``--force`` over a complete
  dataset writes (and journals) in the staging folder of ``loopscale.data.writing``, the old data untouched
  until the swap: rerun it with ``--force`` to resume.
"""

from __future__ import annotations

import array
import hashlib
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from loopscale.data import journal
from loopscale.data.corpus import sha256_file
from loopscale.data.dataset import entropy_of_chunks
from loopscale.data.format import DOCS_INDEX, TOKEN_FILES, TOKENIZER_JSON, TRAIN_BIN, VAL_BIN, dtype_for
from loopscale.data.prepare import DEFAULT_TOKENIZER, DEFAULT_VAL_FRACTION, Log, quiet
from loopscale.data.sources import InputFile, check_readable, expand_inputs, read_documents
from loopscale.data.threaded import threaded
from loopscale.data.tokenizer import (BOS_TOKEN, BPETokenizer, ByteTokenizer, PretrainedTokenizer,
                                      is_tokenizer_path, parse_tokenizer)
from loopscale.data.writing import Prepared, Target, write_prepared
from loopscale.errors import UserError
from loopscale.schedule import cpu_count


BATCH_CHARS = max(1 << 20, cpu_count() << 16)  # characters per encode_batch call: 64k per core, 1M at least
STAGES_MIN_CORES = 6  # from this many cores on, reading and array-making run beside the encoding (see _encoded)
BATCH_DOCS = 8192
QUEUE_BATCHES = 4
COMMIT_BYTES = 16 << 20  # of input between journal commits (each costs a few fsyncs)
BPE_SAMPLE_CHARS = 1 << 28
READ_CHUNK = 1 << 22  # tokens per read when moving a document, bytes per copy of the document index
COUNT_CHUNK = 1 << 20  # tokens per read when counting the validation unigrams (bincount widens them to 8 bytes)
_U32 = next(t for t in "IL" if array.array(t).itemsize == 4)  # array.array's code for 32-bit unsigned
JOURNAL = ".prepare.journal"
DOCS_PARTIAL = ".train.docs.partial"
Progress = Callable[[str, int, int, int], None]  # (phase, bytes done, bytes in all, tokens written)


def _no_progress(phase: str, done: int, total: int, tokens: int) -> None:
    pass


# --- Order and split ---

def _unit(data: bytes) -> float:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") / 2**64


def val_share(key: str, index: int, seed: int = 0) -> float:
    """The document's place in [0, 1): it is held out for validation iff this is below val_fraction."""
    return _unit(f"{seed}\0{key}\0{index}".encode())


def order_files(files: Sequence[InputFile], seed: int = 0) -> list[InputFile]:
    """Processing order: by a seeded hash of each file's key (ties keep the order given)."""
    return sorted(files, key=lambda f: _unit(f"{seed}\0order\0{f.key}".encode()))


# --- Counts, as the journal records them ---

@dataclass
class Counts:
    files: int = 0  # input files done, in processing order
    train_tokens: int = 0
    val_tokens: int = 0
    train_docs: int = 0
    val_docs: int = 0
    train_chars: int = 0
    val_chars: int = 0
    last_train: list = field(default_factory=lambda: [-1, 0])  # [start, chars] of the last document
    last_val: list = field(default_factory=lambda: [-1, 0])


# --- Reading and encoding, each stage in its own thread ---

@dataclass
class _Batch:
    texts: list = field(default_factory=list)
    val: list = field(default_factory=list)
    ends: list = field(default_factory=list)  # (documents before the end, file index) where files end
    bytes_done: int = 0
    chars: int = 0


def _batches(files: Sequence[InputFile], start: int, text_field: str, strip_nul: bool, val_fraction: float,
             seed: int) -> Iterator[_Batch]:
    """The documents of ``files[start:]`` in batches of about ``BATCH_CHARS`` characters, each marked for
    its split; a batch may span files and records where they end."""
    base = sum(f.size for f in files[:start])
    b = _Batch(bytes_done=base)
    for fi in range(start, len(files)):
        f = files[fi]
        prefix = hashlib.blake2b(f"{seed}\0{f.key}\0".encode(), digest_size=8)  # val_share, incrementally
        for index, text, done in read_documents(f, text_field):
            if strip_nul and "\0" in text:
                text = text.replace("\0", "")
                if not text.strip():
                    continue
            h = prefix.copy()
            h.update(str(index).encode())
            b.texts.append(text)
            b.val.append(int.from_bytes(h.digest(), "big") / 2**64 < val_fraction)
            b.chars += len(text)
            b.bytes_done = base + done
            if b.chars >= BATCH_CHARS or len(b.texts) >= BATCH_DOCS:
                yield b
                b = _Batch(bytes_done=b.bytes_done)
        base += f.size
        b.ends.append((len(b.texts), fi))
        b.bytes_done = base
    yield b


def _encoder(tok) -> tuple[Callable, Callable]:
    """(encode, to_arrays): ``encode(texts)`` runs in the encoding thread (a tokenizers ``encode_batch``,
    outside the GIL), ``to_arrays`` turns its result into token arrays in the main thread meanwhile."""
    inner = getattr(tok, "tok", None)  # the tokenizers.Tokenizer of a BPE or pretrained tokenizer
    if inner is None:
        return list, tok.encode
    # no post-processor specials (the BOS is ours); the pretrained tokenizer encodes special-token text as text.
    # array.array reads the list of ids about twice as fast as np.array does; the array then shares its buffer.
    return (lambda texts: inner.encode_batch(texts, add_special_tokens=False),
            lambda encodings: [np.frombuffer(array.array(_U32, e.ids), dtype=np.uint32) for e in encodings])


def _encoded(batches: Iterator[_Batch], encode: Callable) -> Iterator[tuple[_Batch, object]]:
    """(batch, its encoding) in order: read and encoded in threads of their own on ``STAGES_MIN_CORES`` cores
    or more, in the caller's thread otherwise (see the module docstring)."""
    if cpu_count() < STAGES_MIN_CORES:
        return ((b, encode(b.texts)) for b in batches)
    read_ahead = threaded(batches, QUEUE_BATCHES, "loopscale-reader")
    return threaded(((b, encode(b.texts)) for b in read_ahead), 2, "loopscale-encoder")


# --- Token files ---

class _Out:
    """train.bin, val.bin and the side file of training document starts, open for appending."""

    def __init__(self, out_dir: Path, dtype: str, bos_id: int, counts: Counts, fresh: bool):
        self.dir, self.dtype, self.counts = out_dir, np.dtype(dtype), counts
        self.bos = np.array([bos_id], dtype=self.dtype)
        sizes = {TRAIN_BIN: counts.train_tokens * self.dtype.itemsize,
                 VAL_BIN: counts.val_tokens * self.dtype.itemsize, DOCS_PARTIAL: counts.train_docs * 8}
        self.files = {}
        for name, size in sizes.items():
            f = open(out_dir / name, "wb" if fresh else "r+b")
            f.truncate(size)
            f.seek(size)
            self.files[name] = f

    def write(self, arrays: Sequence[np.ndarray], val: Sequence[bool], texts: Sequence[str]) -> int:
        """Append documents (BOS, then tokens) to their splits; returns the tokens written."""
        c, written = self.counts, 0
        for split, name in TOKEN_FILES.items():
            pick = [i for i, v in enumerate(val) if v == (split == "val")]
            if not pick:
                continue
            lengths = np.array([len(arrays[i]) + 1 for i in pick], dtype=np.int64)
            first = getattr(c, f"{split}_tokens")
            starts = first + np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(np.int64)
            parts = []
            for i in pick:
                parts += [self.bos, arrays[i]]
            tokens = np.concatenate(parts).astype(self.dtype, copy=False)
            self.files[name].write(tokens.tobytes())
            if split == "train":
                self.files[DOCS_PARTIAL].write(starts.tobytes())
            chars = [len(texts[i]) for i in pick]
            setattr(c, f"{split}_tokens", first + len(tokens))
            setattr(c, f"{split}_docs", getattr(c, f"{split}_docs") + len(pick))
            setattr(c, f"{split}_chars", getattr(c, f"{split}_chars") + sum(chars))
            setattr(c, f"last_{split}", [int(starts[-1]), chars[-1]])
            written += len(tokens)
        return written

    def sync(self) -> None:
        for f in self.files.values():
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def _move_last_document(out_dir: Path, dtype: str, counts: Counts, src: str, dst: str) -> None:
    """Move the last document of split ``src`` to the end of split ``dst`` (an empty split gets one).
    Appends to ``dst`` before cutting ``src``, so a kill in between leaves a state a rerun redoes."""
    itemsize = np.dtype(dtype).itemsize
    start, chars = getattr(counts, f"last_{src}")
    end = getattr(counts, f"{src}_tokens")
    dst_start = getattr(counts, f"{dst}_tokens")
    with open(out_dir / TOKEN_FILES[src], "r+b") as s, open(out_dir / TOKEN_FILES[dst], "r+b") as d:
        d.truncate(dst_start * itemsize)
        d.seek(dst_start * itemsize)
        s.seek(start * itemsize)
        left = (end - start) * itemsize
        while left:
            chunk = s.read(min(left, READ_CHUNK * itemsize))
            d.write(chunk)
            left -= len(chunk)
        d.flush()
        os.fsync(d.fileno())
        s.truncate(start * itemsize)
    with open(out_dir / DOCS_PARTIAL, "r+b") as p:
        if src == "train":
            p.truncate((counts.train_docs - 1) * 8)
        else:
            p.seek(counts.train_docs * 8)
            p.truncate(counts.train_docs * 8)
            p.write(np.array([dst_start], dtype=np.int64).tobytes())
    setattr(counts, f"{src}_tokens", start)
    setattr(counts, f"{src}_docs", getattr(counts, f"{src}_docs") - 1)
    setattr(counts, f"{src}_chars", getattr(counts, f"{src}_chars") - chars)
    setattr(counts, f"{dst}_tokens", dst_start + end - start)
    setattr(counts, f"{dst}_docs", getattr(counts, f"{dst}_docs") + 1)
    setattr(counts, f"{dst}_chars", getattr(counts, f"{dst}_chars") + chars)


def _write_index(out_dir: Path, n_docs: int) -> None:
    """train.docs.npy from the side file of starts: the .npy header, then the starts copied in chunks."""
    tmp = out_dir / f".{DOCS_INDEX}.tmp"
    try:
        with open(tmp, "wb") as f, open(out_dir / DOCS_PARTIAL, "rb") as src:
            np.lib.format.write_array_header_1_0(f, {"descr": "<i8", "fortran_order": False, "shape": (n_docs,)})
            shutil.copyfileobj(src, f, READ_CHUNK)
        os.replace(tmp, out_dir / DOCS_INDEX)
    finally:
        tmp.unlink(missing_ok=True)


def _val_entropy(path: Path, dtype: str, vocab_size: int) -> float:
    def chunks():
        with open(path, "rb") as f:
            while (chunk := np.fromfile(f, dtype=dtype, count=COUNT_CHUNK)).size:
                yield chunk
    return entropy_of_chunks(chunks(), vocab_size)


# --- Tokenizer ---

def _open_tokenizer(spec: str, bos_token: str | None):
    """(kind, display name, vocab size, tokenizer or None for a BPE still to train)."""
    if is_tokenizer_path(spec):
        tok = PretrainedTokenizer(spec, bos_token)
        return "pretrained", str(tok.path), tok.vocab_size, tok
    kind, vocab_size = parse_tokenizer(spec)
    if bos_token is not None:
        raise UserError(f"--bos-token names the BOS of a pretrained tokenizer.json; {spec} has its own")
    return kind, spec, vocab_size, (ByteTokenizer() if kind == "bytes" else None)


def _train_bpe(files: Sequence[InputFile], vocab_size: int, text_field: str, val_fraction: float, seed: int,
               progress: Progress) -> BPETokenizer:
    total = min(sum(f.size for f in files), BPE_SAMPLE_CHARS)

    def texts():
        chars = 0
        for f in files:
            for index, text, _ in read_documents(f, text_field):
                if val_share(f.key, index, seed) >= val_fraction:
                    yield text
                    chars += len(text)
                    progress("learning the BPE", min(chars, total), total, 0)
                    if chars >= BPE_SAMPLE_CHARS:
                        return
    return BPETokenizer.train(texts(), vocab_size)


def _tokenizers_parallelism_note() -> str | None:
    value = os.environ.get("TOKENIZERS_PARALLELISM", "")
    if value.strip().lower() in ("0", "false", "no", "off"):
        return f"TOKENIZERS_PARALLELISM={value}: the tokenizer runs on one core; unset it to use all of them"
    return None


# --- The whole prepare ---

def _resume_state(out_dir: Path, header: dict, files: Sequence[InputFile], itemsize: int):
    """(counts, trained tokenizer's sha256 or None, bytes of whole records) of the journal in ``out_dir`` if
    this prepare may continue it: same settings, the files it records done the first of ``files`` and
    unchanged, the token files at least as long as it records. Else None."""
    records, valid = journal.read(out_dir / JOURNAL)
    if not records or records[0].get("settings") != header["settings"]:
        return None
    done: list = []
    counts = Counts()
    tokenizer_sha = None
    for r in records[1:]:
        if "tokenizer_sha256" in r:
            tokenizer_sha = r["tokenizer_sha256"]
        if "counts" in r:
            done += r["done"]
            counts = Counts(**r["counts"])
    if done != [f.identity() for f in files[: len(done)]] or len(done) != counts.files:
        return None
    sizes = {TRAIN_BIN: counts.train_tokens * itemsize, VAL_BIN: counts.val_tokens * itemsize,
             DOCS_PARTIAL: counts.train_docs * 8}
    for name, size in sizes.items():
        p = out_dir / name
        if not p.is_file() or p.stat().st_size < size:
            return None
    return counts, tokenizer_sha, valid


def prepare_stream(inputs: Sequence[str | Path], out_dir: str | Path, tokenizer: str = DEFAULT_TOKENIZER,
                   val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = 0, force: bool = False,
                   log: Log = quiet, text_field: str = "text", bos_token: str | None = None,
                   progress: Progress = _no_progress, commit_bytes: int = COMMIT_BYTES) -> Prepared:
    """Tokenize the documents of ``inputs`` (files, folders, globs: see ``loopscale.data.sources``) into
    ``out_dir``, streaming (see the module docstring), under the folder's lock (``loopscale.data.writing``).
    A complete dataset made with the same settings is reused unless ``force``; an interrupted one with the
    same settings is resumed."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir).resolve()
    if not 0 < val_fraction < 1:
        raise UserError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    kind, name, vocab_size, tok = _open_tokenizer(tokenizer, bos_token)
    files = order_files(expand_inputs(inputs), seed)
    if not any([check_readable(f, text_field) for f in files]):
        raise UserError(f"the inputs ({', '.join(map(str, inputs))}) hold no text: empty corpus")
    settings = {"corpus": "text", "tokenizer": name, "val_fraction": val_fraction, "seed": seed,
                "text_field": text_field, "files": [f.identity() for f in files]}
    if kind == "pretrained":
        settings.update(tokenizer_sha256=tok.sha256, bos_token=tok.bos_token)

    def build(target: Target) -> dict:
        nonlocal tok
        if note := _tokenizers_parallelism_note():
            log(note)
        out_dir = target.dir
        dtype = dtype_for(vocab_size)
        itemsize = np.dtype(dtype).itemsize
        header = {"settings": {k: v for k, v in settings.items() if k != "files"}}
        state = _resume_state(out_dir, header, files, itemsize)
        tok_path = out_dir / TOKENIZER_JSON
        if state and kind == "bpe":
            if state[1] is None or not tok_path.is_file() or sha256_file(tok_path) != state[1]:
                state = None
            else:
                tok = BPETokenizer.load(tok_path)
        target.start(resume=state is not None)
        if state:
            counts, _, valid = state
            jr = journal.Journal.reopen(out_dir / JOURNAL, valid)
            log(f"resuming after {counts.files} of {len(files)} input files "
                f"({counts.train_tokens + counts.val_tokens:,} tokens already written)")
        else:
            counts = Counts()
            jr = journal.Journal.start(out_dir / JOURNAL, header)
            if kind == "bpe":
                log(f"learning {tokenizer} from the training documents (up to {BPE_SAMPLE_CHARS:,} characters)")
                tok = _train_bpe(files, vocab_size, text_field, val_fraction, seed, progress)
                tok.save(tok_path)
                jr.append({"tokenizer_sha256": sha256_file(tok_path)})
        if kind == "pretrained":
            log(f"BOS: {tok.bos_token!r} = id {tok.bos_id} ({tok.bos_from})")
        if kind != "bpe":
            tok.save(tok_path)  # bytes: removes it; pretrained: a copy of the file
        total_bytes = _tokenize(out_dir, files, tok, kind, dtype, counts, jr, state is None, text_field,
                                val_fraction, seed, progress, commit_bytes)
        if counts.train_docs + counts.val_docs < 2:
            for p in (TRAIN_BIN, VAL_BIN, DOCS_PARTIAL, JOURNAL, TOKENIZER_JSON):
                (out_dir / p).unlink(missing_ok=True)
            if counts.train_docs + counts.val_docs == 0:
                raise UserError(f"the inputs ({', '.join(map(str, inputs))}) hold no text: empty corpus")
            raise UserError("1 document: the held-out split needs at least 2 (e.g. several .txt files)")
        if counts.val_docs == 0:
            _move_last_document(out_dir, dtype, counts, "train", "val")
        elif counts.train_docs == 0:
            _move_last_document(out_dir, dtype, counts, "val", "train")
        _write_index(out_dir, counts.train_docs)
        return dict(
            tokenizer=name,
            vocab_size=vocab_size,  # embedding rows; a BPE trained on a tiny corpus may use fewer
            tokenizer_vocab_size=tok.vocab_size,
            tokenizer_sha256=sha256_file(tok_path) if tok_path.is_file() else None,
            dtype=dtype,
            bos_id=tok.bos_id,
            bos_token={"bytes": None, "bpe": BOS_TOKEN}.get(kind, getattr(tok, "bos_token", None)),
            train_tokens=counts.train_tokens,
            val_tokens=counts.val_tokens,
            train_docs=counts.train_docs,
            val_docs=counts.val_docs,
            train_chars=counts.train_chars,
            val_chars=counts.val_chars,
            val_unigram_entropy=_val_entropy(out_dir / VAL_BIN, dtype, vocab_size),
            sources=[{"name": "text", "version": None, "files": len(files), "bytes": total_bytes,
                      "paths": [{"path": str(f.path), "bytes": f.size, "mtime_ns": f.mtime_ns} for f in files]}],
            settings=settings,
        )

    return write_prepared(out_dir, settings, force, build, scratch=(JOURNAL, DOCS_PARTIAL), t0=t0)


def _tokenize(out_dir: Path, files: Sequence[InputFile], tok, kind: str, dtype: str, counts: Counts,
              jr: journal.Journal, fresh: bool, text_field: str, val_fraction: float, seed: int,
              progress: Progress, commit_bytes: int) -> int:
    """Append the documents of the files not yet committed to the token files, committing to the journal as
    the module docstring says; ``counts`` follows. Returns the input's bytes."""
    out = _Out(out_dir, dtype, tok.bos_id, counts, fresh=fresh)
    total_bytes = sum(f.size for f in files)
    tokens, pending, pending_bytes = 0, [], 0
    encode, to_arrays = _encoder(tok)
    pipeline = _encoded(_batches(files, counts.files, text_field, kind == "bytes", val_fraction, seed), encode)
    try:
        progress("tokenizing", sum(f.size for f in files[: counts.files]), total_bytes, 0)
        for b, encoded in pipeline:
            arrays = to_arrays(encoded)
            del encoded
            pos = 0
            for end, fi in b.ends + [(len(b.texts), None)]:
                tokens += out.write(arrays[pos:end], b.val[pos:end], b.texts[pos:end])
                pos = end
                if fi is None:
                    continue
                pending.append(files[fi].identity())
                pending_bytes += files[fi].size
                if pending_bytes >= commit_bytes or fi == len(files) - 1:
                    counts.files = fi + 1
                    out.sync()
                    jr.append({"done": pending, "counts": asdict(counts)})
                    pending, pending_bytes = [], 0
            progress("tokenizing", b.bytes_done, total_bytes, tokens)
    finally:
        pipeline.close()  # stops the reader and encoder threads, if any, before the files close
        out.close()
        jr.close()
    return total_bytes
