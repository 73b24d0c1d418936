"""A data dir's identity and its one writer at a time, with real processes and real files (tiny generated text):
the identity every prepare writes (same tokens, one identity wherever they lie; other tokens, another), a folder
made before identities existed identified on first use (stored; in memory, with a note, where it cannot be
written), two concurrent `loopscale data prepare` into one folder (the second refused at once, the first's output
byte-identical to a solo prepare), a stale lock taken over, and --force swapped in under a reader that keeps
the old tokens."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from loopscale.data.format import META_JSON, TOKENIZER_JSON, read_meta
from loopscale.data.identity import ID_KEY, compute_data_id, data_id
from loopscale.data.lock import LOCK_FILE, PrepareLocked, prepare_lock
from loopscale.data.prepare import import_bin
from loopscale.data.stream import prepare_stream
from loopscale.data.writing import STAGING
from loopscale.schedule import process_start

WORDS = ("the loop block runs again while the prelude feeds it and the coda reads a token out of the state "
         "scaling laws fit the loss against parameters and data").split()
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "COLUMNS": "200"}


def texts(d: Path, docs: int = 12, words: int = 300, seed: int = 0) -> Path:
    """``docs`` .txt files of generated words in ``d``."""
    rng = random.Random(seed)
    d.mkdir(parents=True, exist_ok=True)
    for i in range(docs):
        (d / f"doc{i:03d}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(words)) + ".\n")
    return d


def files_of(d: Path) -> dict[str, bytes | None]:
    """Every entry of ``d``: a file's bytes, None for a folder."""
    return {p.name: None if p.is_dir() else p.read_bytes() for p in sorted(d.iterdir())}


def cli(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loopscale.cli", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=timeout)


def cli_popen(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "loopscale.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)


def strip_identity(d: Path) -> None:
    """Make ``d`` look prepared before identities existed: its meta.json as that version wrote it."""
    meta = read_meta(d)
    del meta[ID_KEY]
    (d / META_JSON).write_text(json.dumps(meta, indent=2) + "\n")


# --- the identity ---

def test_every_prepare_writes_the_identity_of_its_tokens(tmp_path):
    a = prepare_stream([texts(tmp_path / "in")], tmp_path / "a", tokenizer="bytes").meta
    assert a[ID_KEY] == compute_data_id(tmp_path / "a", a) and list(a)[-2:] == [ID_KEY, "created_by"]
    moved = tmp_path / "elsewhere" / "a"
    shutil.copytree(tmp_path / "a", moved)
    assert data_id(moved) == a[ID_KEY]  # a moved or copied folder keeps its identity
    b = prepare_stream([tmp_path / "in"], tmp_path / "b", tokenizer="bytes").meta
    assert b[ID_KEY] == a[ID_KEY]  # same tokens in another folder
    other = prepare_stream([texts(tmp_path / "in2", seed=1)], tmp_path / "c", tokenizer="bytes").meta
    assert other[ID_KEY] != a[ID_KEY]  # other tokens
    bpe = prepare_stream([tmp_path / "in"], tmp_path / "d", tokenizer="bpe:300").meta
    assert len({bpe[ID_KEY], a[ID_KEY], other[ID_KEY]}) == 3
    # the same token files imported: same tokens, but another tokenizer file (none) and no other setting differs
    imported = import_bin(tmp_path / "a" / "train.bin", tmp_path / "a" / "val.bin", tmp_path / "e", vocab_size=256,
                          bos_id=0).meta
    assert imported[ID_KEY] == a[ID_KEY]
    without_bos = import_bin(tmp_path / "a" / "train.bin", tmp_path / "a" / "val.bin", tmp_path / "f",
                             vocab_size=256).meta
    assert without_bos[ID_KEY] != a[ID_KEY]  # no document separator: the tokens mean something else


def test_a_folder_from_before_identities_gets_one_on_first_use_and_stores_it(tmp_path, capsys):
    fresh = prepare_stream([texts(tmp_path / "in")], tmp_path / "fresh", tokenizer="bpe:300").meta
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "fresh", old)
    strip_identity(old)
    before = read_meta(old)
    notes = []
    assert data_id(old, note=notes.append) == fresh[ID_KEY]
    assert len(notes) == 1 and "hashing its token files once" in notes[0], notes
    assert read_meta(old) == {**before, ID_KEY: fresh[ID_KEY]}  # stored; every other key as it was
    assert list(read_meta(old)) == list(fresh)  # in the format's key order
    assert data_id(old, note=notes.append) == fresh[ID_KEY] and len(notes) == 1  # once
    assert not (old / LOCK_FILE).exists()
    # `data info` and a prepare that finds the same dataset identify such a folder too
    for again in ("info", "prepare"):
        shutil.rmtree(old)
        shutil.copytree(tmp_path / "fresh", old)
        strip_identity(old)
        if again == "info":
            got = cli("data", "info", old)
            assert got.returncode == 0 and fresh[ID_KEY] in got.stdout, got.stdout + got.stderr
        else:
            assert prepare_stream([tmp_path / "in"], old, tokenizer="bpe:300").reused
        assert read_meta(old)[ID_KEY] == fresh[ID_KEY]


# A process of an unprivileged user (uid 65534, after the interpreter started as root: this venv may lie where
# that user cannot read) asks the identity of a folder it cannot write.
READ_ONLY = """
import os, sys
from loopscale.data.identity import data_id
if os.getuid() == 0:
    os.setgid(65534); os.setuid(65534)
print(data_id(sys.argv[1]))
"""


def test_a_folder_that_cannot_be_written_is_identified_in_memory_with_a_note(tmp_path):
    fresh = prepare_stream([texts(tmp_path / "in")], tmp_path / "fresh", tokenizer="bytes").meta
    root = Path(tempfile.mkdtemp(prefix="loopscale-ro-"))  # outside pytest's private tmp, readable by all
    try:
        os.chmod(root, 0o755)
        old = root / "old"
        shutil.copytree(tmp_path / "fresh", old)
        strip_identity(old)
        for p in old.iterdir():
            os.chmod(p, 0o444)
        os.chmod(old, 0o555)  # for root, uid 65534 is what makes it unwritable
        meta_before = (old / META_JSON).read_bytes()
        got = subprocess.run([sys.executable, "-c", READ_ONLY, str(old)], capture_output=True, text=True, env=ENV,
                             timeout=120)
        assert got.returncode == 0, got.stderr
        assert got.stdout.strip() == fresh[ID_KEY]
        assert "cannot be written" in got.stderr and "computed in memory" in got.stderr, got.stderr
        assert len(got.stderr.strip().splitlines()) == 1, got.stderr
        assert (old / META_JSON).read_bytes() == meta_before and not (old / LOCK_FILE).exists()
    finally:
        os.chmod(root / "old", 0o755) if (root / "old").exists() else None
        shutil.rmtree(root, ignore_errors=True)


# --- one prepare per folder ---

def wait_for(path: Path, proc: subprocess.Popen, within: float = 60) -> None:
    """Until ``path`` exists (a lock appears whole: it is hard-linked into place)."""
    deadline = time.monotonic() + within
    while not path.exists():
        assert proc.poll() is None, f"the prepare ended before taking its lock: {proc.communicate()}"
        assert time.monotonic() < deadline, f"no {path} after {within} s"
        time.sleep(0.002)


def test_a_second_concurrent_prepare_is_refused_at_once_and_the_first_is_intact(tmp_path):
    src = texts(tmp_path / "in", docs=40, words=4000)
    args = ("data", "prepare", "--input", src, "--tokenizer", "bpe:300")
    first = cli_popen(*args, "--out", tmp_path / "out")
    try:
        wait_for(tmp_path / "out" / LOCK_FILE, first)
        first.send_signal(signal.SIGSTOP)  # holds the lock, mid-prepare, however fast this machine is
        t0 = time.monotonic()
        second = cli(*args, "--out", tmp_path / "out", timeout=60)
        took = time.monotonic() - t0
        first.send_signal(signal.SIGCONT)
        err = second.stderr.strip()
        assert second.returncode == 2 and took < 10, (second.returncode, took, err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert f"pid {first.pid} on {socket.gethostname()}" in err and "being written" in err, err
        out, err = first.communicate(timeout=300)
    finally:
        first.kill() if first.poll() is None else None
    assert first.returncode == 0, err
    solo = cli(*args, "--out", tmp_path / "solo")
    assert solo.returncode == 0, solo.stderr
    assert files_of(tmp_path / "out") == files_of(tmp_path / "solo")


def test_a_prepare_with_nothing_to_do_is_not_refused_by_a_writer(tmp_path):
    out = tmp_path / "out"
    done = prepare_stream([texts(tmp_path / "in")], out, tokenizer="bytes")
    me = {"pid": os.getpid(), "pid_start": process_start(os.getpid()), "host": socket.gethostname(),
          "what": "prepare", "since": "now"}
    (out / LOCK_FILE).write_text(json.dumps(me))  # held by a live process (this one)
    try:
        assert prepare_stream([tmp_path / "in"], out, tokenizer="bytes").meta == done.meta  # reused, no lock
        with pytest.raises(PrepareLocked, match=f"pid {os.getpid()} on"):
            prepare_stream([tmp_path / "in"], out, tokenizer="bytes", force=True)
        with pytest.raises(PrepareLocked):
            with prepare_lock(out):
                pass
        strip_identity(out)  # made before identities existed, and locked: identified in memory, not stored
        before = (out / META_JSON).read_bytes()
        again = prepare_stream([tmp_path / "in"], out, tokenizer="bytes")
        assert again.reused and again.meta == done.meta and (out / META_JSON).read_bytes() == before
    finally:
        (out / LOCK_FILE).unlink()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_stale_lock_is_taken_over_with_a_note_one_of_another_host_is_not(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    pid = dead_pid()
    lock = {"pid": pid, "pid_start": 12345, "host": socket.gethostname(), "what": "prepare",
            "since": "2025-01-01 00:00:00"}
    (out / LOCK_FILE).write_text(json.dumps(lock))
    got = cli("data", "prepare", "--input", texts(tmp_path / "in"), "--tokenizer", "bytes", "--out", out)
    assert got.returncode == 0, got.stderr
    assert f"took over {out / LOCK_FILE}" in got.stderr and f"pid {pid} " in got.stderr, got.stderr
    assert not (out / LOCK_FILE).exists() and ID_KEY in read_meta(out)

    (out / LOCK_FILE).write_text(json.dumps({**lock, "host": "another-host.invalid"}))
    got = cli("data", "prepare", "--input", tmp_path / "in", "--tokenizer", "bpe:300", "--out", out, "--force")
    err = got.stderr.strip()
    assert got.returncode == 2 and len(err.splitlines()) == 1 and f"pid {pid} on another-host.invalid" in err, err
    assert (out / LOCK_FILE).exists() and read_meta(out)["tokenizer"] == "bytes"


def test_a_failed_prepare_releases_its_lock_and_leaves_no_folder(tmp_path):
    got = cli("data", "prepare", "--input", texts(tmp_path / "in", docs=1), "--tokenizer", "bytes", "--out",
              tmp_path / "out")  # one document: refused after the lock was taken
    assert got.returncode == 2 and "1 document" in got.stderr, got.stderr
    assert not (tmp_path / "out").exists()


# --- --force: written beside the old data, swapped in ---

READER = """
import hashlib, sys
import numpy as np
tokens = np.memmap(sys.argv[1], dtype=np.uint16, mode="r")
print("ready", flush=True)
sys.stdin.readline()
print(hashlib.sha256(np.asarray(tokens).tobytes()).hexdigest(), len(tokens), flush=True)
"""


def test_force_swaps_the_new_data_in_and_a_reader_keeps_the_old_tokens(tmp_path):
    import hashlib

    out = tmp_path / "out"
    old = prepare_stream([texts(tmp_path / "old-in")], out, tokenizer="bpe:300")
    assert (out / TOKENIZER_JSON).exists()
    old_train = (out / "train.bin").read_bytes()
    reader = subprocess.Popen([sys.executable, "-c", READER, str(out / "train.bin")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert reader.stdout.readline().strip() == "ready"
        new_in = texts(tmp_path / "new-in", docs=15, words=400, seed=7)
        got = cli("data", "prepare", "--input", new_in, "--tokenizer", "bytes", "--out", out, "--force")
        assert got.returncode == 0, got.stderr
        said, _ = reader.communicate("go\n", timeout=60)
    finally:
        reader.kill() if reader.poll() is None else None
    digest, n = said.split()
    assert digest == hashlib.sha256(old_train).hexdigest() and int(n) * 2 == len(old_train)  # the old inode
    solo = prepare_stream([new_in], tmp_path / "solo", tokenizer="bytes")
    assert files_of(out) == files_of(tmp_path / "solo")  # bytes: no tokenizer.json left; no staging, no lock
    assert read_meta(out)[ID_KEY] == solo.meta[ID_KEY] != old.meta[ID_KEY]
    assert not (out / STAGING).exists()


def test_force_of_the_same_files_over_themselves_keeps_them(tmp_path):
    """--force importing a folder's own train.bin/val.bin into it: staged as hard links, not links to itself."""
    rng = np.random.default_rng(0)
    rng.integers(1, 300, 5000, dtype=np.uint16).tofile(tmp_path / "t.bin")
    rng.integers(1, 300, 1000, dtype=np.uint16).tofile(tmp_path / "v.bin")
    out = tmp_path / "out"
    first = import_bin(tmp_path / "t.bin", tmp_path / "v.bin", out, vocab_size=300).meta
    again = import_bin(out / "train.bin", out / "val.bin", out, vocab_size=300, force=True).meta
    assert again[ID_KEY] == first[ID_KEY] == data_id(out)
    assert not (out / "train.bin").is_symlink() and (out / "train.bin").read_bytes() == (tmp_path / "t.bin").read_bytes()
