"""The journal of a streaming prepare: what is committed to the token files, so a rerun can resume.

One JSON object a line, appended and fsynced: first a header (the settings that decide the output), then
records (a trained tokenizer's hash; after input files are done, the files and the counts and file offsets
they bring the output to). A line cut short by a kill is no record: reading stops at the first line that
does not parse, and resuming cuts the file back to the lines before it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from loopscale.atomic import write_bytes_atomic

VERSION = 1


def _line(obj: dict) -> bytes:
    return (json.dumps(obj, separators=(",", ":"), allow_nan=False) + "\n").encode()


def read(path: Path) -> tuple[list[dict], int]:
    """The whole records of the journal at ``path`` (header first) and the bytes they take; ([], 0) if none."""
    try:
        data = path.read_bytes()
    except OSError:
        return [], 0
    records, end = [], 0
    for raw in data.splitlines(keepends=True):
        if not raw.endswith(b"\n"):
            break
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            break
        if not isinstance(obj, dict):
            break
        records.append(obj)
        end += len(raw)
    if records and records[0].get("journal") != VERSION:
        return [], 0
    return records, end


class Journal:
    """An open journal for appending records (each fsynced before ``append`` returns)."""

    def __init__(self, path: Path):
        self.path = path
        self._f = open(path, "ab")

    @classmethod
    def start(cls, path: Path, header: dict[str, Any]) -> "Journal":
        """A new journal holding only ``header`` (replacing any old one atomically)."""
        write_bytes_atomic(path, _line({"journal": VERSION, **header}))
        return cls(path)

    @classmethod
    def reopen(cls, path: Path, valid_bytes: int) -> "Journal":
        """Continue an existing journal, dropping anything after its ``valid_bytes`` of whole records."""
        with open(path, "r+b") as f:
            f.truncate(valid_bytes)
            os.fsync(f.fileno())
        return cls(path)

    def append(self, record: dict[str, Any]) -> None:
        self._f.write(_line(record))
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()
