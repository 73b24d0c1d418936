"""The user's text files, found and read lazily, one document at a time.

Inputs are files, folders (searched recursively, hidden entries skipped) or glob patterns, of four kinds:
- ``.jsonl`` and ``.jsonl.gz``: one document per line, a JSON object whose ``text_field`` (default ``text``)
  holds the text;
- ``.parquet``: one document per row of the ``text_field`` column (read in row batches, never whole);
- ``.txt``: the whole file is one document.
Documents are taken verbatim (no cleaning); empty or all-blank ones, and null parquet cells, are skipped.
Each document has an index within its file (its line or row number, from 0) that never depends on which
others were skipped; the split (``loopscale.data.stream``) hashes it with the file's ``key``.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from loopscale.errors import UserError

KINDS = (".jsonl.gz", ".jsonl", ".parquet", ".txt")
PARQUET_BATCH_ROWS = 1024


@dataclass(frozen=True)
class InputFile:
    path: Path  # absolute
    key: str  # the name the split hashes: relative to the folder given, else the file name
    kind: str  # one of KINDS
    size: int  # bytes on disk (compressed for .gz): the progress unit
    mtime_ns: int

    def identity(self) -> list:
        """What a resumed or reused prepare checks is unchanged."""
        return [str(self.path), self.size, self.mtime_ns]


def kind_of(path: str | Path) -> str | None:
    name = str(path).lower()
    return next((k for k in KINDS if name.endswith(k)), None)


def _input_file(path: Path, key: str) -> InputFile:
    kind = kind_of(path)
    if kind is None:
        raise UserError(f"input {path}: unknown kind of file; use {', '.join(KINDS)}")
    st = path.stat()
    return InputFile(path.resolve(), key, kind, st.st_size, st.st_mtime_ns)


def _folder(folder: Path) -> list[InputFile]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith(".") and kind_of(name):
                p = Path(root) / name
                found.append(_input_file(p, p.relative_to(folder).as_posix()))
    if not found:
        raise UserError(f"input folder {folder} holds no {', '.join(KINDS)} files")
    return sorted(found, key=lambda f: f.key)


def expand_inputs(inputs: Sequence[str | Path]) -> list[InputFile]:
    """The input files, each argument expanded in sorted order, arguments in the order given.
    A file listed twice (directly or through folders and globs) is an error."""
    if not inputs:
        raise UserError("no --input given")
    files: list[InputFile] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            files += _folder(p)
        elif p.is_file():
            files.append(_input_file(p, p.name))
        elif glob.has_magic(str(p)):
            matches = sorted(Path(m) for m in glob.glob(str(p), recursive=True))
            matches = [m for m in matches if m.is_file()]
            if not matches:
                raise UserError(f"input pattern {p} matches no files")
            files += [_input_file(m, m.name) for m in matches]
        else:
            raise UserError(f"input {p} does not exist")
    seen: set[Path] = set()
    for f in files:
        if f.path in seen:
            raise UserError(f"input file {f.path} is listed twice")
        seen.add(f.path)
    return files


# --- Reading ---

def read_documents(f: InputFile, text_field: str = "text") -> Iterator[tuple[int, str, int]]:
    """(index, text, bytes of the file consumed so far) for each non-blank document of ``f``, lazily."""
    if f.kind == ".parquet":
        yield from _parquet(f, text_field)
    elif f.kind == ".txt":
        text = f.path.read_bytes().decode("utf-8", errors="replace")
        if text.strip():
            yield 0, text, f.size
    else:
        yield from _jsonl(f, text_field)


def check_readable(f: InputFile, text_field: str = "text") -> bool:
    """Fail on a file that cannot be read, before anything is written: open it and read up to its first
    document (parquet: the footer and the column's type). Whether it seems to hold one (parquet: rows)."""
    if f.kind == ".parquet":
        return _open_parquet(f, text_field).metadata.num_rows > 0
    if f.kind == ".txt":
        with open(f.path, "rb") as fh:
            return any(block.strip() for block in iter(lambda: fh.read(1 << 16), b""))
    return next(_jsonl(f, text_field), None) is not None


def _open_parquet(f: InputFile, text_field: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(f.path)
    except (OSError, pa.ArrowException) as e:
        raise UserError(f"{f.path}: not a readable parquet file ({_first_line(e)})") from None
    schema = pf.schema_arrow
    if schema.get_field_index(text_field) < 0:
        raise UserError(f"{f.path}: no column {text_field!r} (columns: {', '.join(schema.names)}); "
                        "name the text column with --text-field")
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise UserError(f"{f.path}: column {text_field!r} holds {kind}, not text")
    return pf


def _parquet(f: InputFile, text_field: str) -> Iterator[tuple[int, str, int]]:
    import pyarrow as pa

    pf = _open_parquet(f, text_field)
    rows = max(pf.metadata.num_rows, 1)
    i = 0
    try:
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[text_field]):
            texts = batch.column(0).to_pylist()
            done = min(f.size, f.size * (i + len(texts)) // rows)
            for text in texts:
                if text is not None and text.strip():
                    yield i, text, done
                i += 1
    except (OSError, pa.ArrowException) as e:
        raise UserError(f"{f.path}: not a readable parquet file ({_first_line(e)})") from None


def _jsonl(f: InputFile, text_field: str) -> Iterator[tuple[int, str, int]]:
    raw = open(f.path, "rb", buffering=1 << 20)
    try:
        lines = io.BufferedReader(gzip.GzipFile(fileobj=raw, mode="rb"), 1 << 20) if f.kind == ".jsonl.gz" else raw
        i = 0
        while True:
            try:
                line = lines.readline()
            except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
                raise UserError(f"{f.path}: not a readable gzip file ({_first_line(e)})") from None
            if not line:
                return
            if line.strip():
                text = _field(line, f.path, i + 1, text_field)
                if text.strip():
                    yield i, text, raw.tell()
            i += 1
    finally:
        raw.close()


def _field(line: bytes, path: Path, lineno: int, text_field: str) -> str:
    try:
        try:
            obj = json.loads(line)
        except UnicodeDecodeError:
            obj = json.loads(line.decode("utf-8", errors="replace"))
    except json.JSONDecodeError:
        raise UserError(f"{path}:{lineno}: not a JSON object") from None
    if not isinstance(obj, dict) or text_field not in obj:
        raise UserError(f"{path}:{lineno}: expected a JSON object with a {json.dumps(text_field)} field "
                        "(name the field with --text-field)")
    text = obj[text_field]
    if not isinstance(text, str):
        raise UserError(f"{path}:{lineno}: {json.dumps(text_field)} is not a string")
    return text


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
