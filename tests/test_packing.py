"""The packed loader (BOS-aligned best-fit), the windows loader's slices, the document index, the setting."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from loopscale.config import ConfigError, run_config_from_dict
from loopscale.data.dataset import doc_starts, load_data
from loopscale.data.format import DOCS_INDEX
from loopscale.data.prepare import import_bin
from loopscale.data.stream import prepare_stream
from loopscale.errors import UserError
from loopscale.training.loaders import _PACK_STREAM, PackedLoader, WindowLoader, make_loader

BOS = 0


def corpus(lens: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Documents of the given lengths (BOS included); document d's other tokens are all d + 1."""
    docs = [np.array([BOS] + [d + 1] * (n - 1), dtype=np.uint16) for d, n in enumerate(lens)]
    tokens = np.concatenate(docs)
    return tokens, np.flatnonzero(tokens == BOS).astype(np.int64)


def reference_rows(lens, cap, n_rows, steps, seed, buffer):
    """nanochat's best-fit written plainly: a buffer in arrival order; take the largest document that fits
    (the first among equals), else crop the shortest (the first among equals)."""
    order = (d for epoch in range(10**6)
             for d in np.random.default_rng([seed, _PACK_STREAM, epoch]).permutation(len(lens)))
    buf, out = [], []
    for _ in range(steps * n_rows):
        row, room = [], cap
        while room:
            while len(buf) < buffer:
                buf.append(int(next(order)))
            fits = [i for i, d in enumerate(buf) if lens[d] <= room]
            if fits:
                i = max(fits, key=lambda i: (lens[buf[i]], -i))
                n = lens[buf[i]]
            else:
                i = min(range(len(buf)), key=lambda i: (lens[buf[i]], i))
                n = room
            d = buf.pop(i)
            row += [BOS] + [d + 1] * (n - 1)
            room -= n
        out.append(row)
    return np.array(out).reshape(steps, n_rows, cap)


LENS = [int(x) for x in np.random.default_rng(1).integers(2, 40, size=60)]


@pytest.mark.parametrize("buffer", [1, 7, 1000])
def test_packed_rows_are_best_fit_bos_aligned(buffer):
    tokens, starts = corpus(LENS)
    loader = PackedLoader(tokens, starts, seq_len=24, rows=4, seed=3, buffer_docs=buffer)
    got = np.stack([loader.rows(s, 0, 4) for s in range(12)])  # 12·4·25 tokens: several epochs
    assert np.array_equal(got, reference_rows(LENS, 25, 4, 12, 3, min(buffer, len(LENS))))
    assert (got[:, :, 0] == BOS).all()  # every row starts at a document
    stats = loader.stats()
    assert stats["epochs"] > 1 and 0 < stats["cropped_frac"] < 1


def test_packed_state_dict_resumes_exactly():
    tokens, starts = corpus(LENS)
    a = PackedLoader(tokens, starts, seq_len=16, rows=3, seed=0, buffer_docs=8)
    rows_a, saved = [], None
    for s in range(10):
        if s == 4:
            buf = io.BytesIO()
            torch.save(a.state_dict(), buf)  # as in a checkpoint
            saved = buf.getvalue()
        rows_a.append(a.rows(s, 0, 3))
    b = PackedLoader(tokens, starts, seq_len=16, rows=3, seed=0, buffer_docs=8)
    b.load_state_dict(torch.load(io.BytesIO(saved), weights_only=False))
    for s in range(4, 10):
        assert np.array_equal(b.rows(s, 0, 3), rows_a[s])
    assert b.stats() == a.stats()
    with pytest.raises(RuntimeError, match="in order"):
        b.rows(3, 0, 3)
    other = PackedLoader(*corpus(LENS[:-1]), seq_len=16, rows=3, seed=0)
    with pytest.raises(RuntimeError, match="does not match"):
        other.load_state_dict(a.state_dict())


def test_rank_slices_partition_the_batch():
    tokens, starts = corpus(LENS)
    full = PackedLoader(tokens, starts, 16, 4, seed=5, buffer_docs=10)
    halves = [PackedLoader(tokens, starts, 16, 4, seed=5, buffer_docs=10) for _ in range(2)]
    win = WindowLoader(tokens, 16, 4, seed=5)
    for s in range(5):
        parts = [h.rows(s, 2 * k, 2 * k + 2) for k, h in enumerate(halves)]
        assert np.array_equal(np.concatenate(parts), full.rows(s, 0, 4))
        assert np.array_equal(np.concatenate([win.rows(s, 0, 1), win.rows(s, 1, 4)]), win.rows(s, 0, 4))


def test_documents_longer_than_a_row_are_cropped_and_stray_tokens_skipped():
    tokens, starts = corpus([50, 60, 3])
    tokens = np.concatenate([np.array([7, 7], dtype=np.uint16), tokens])  # tokens before the first BOS
    starts = starts + 2
    loader = PackedLoader(tokens, starts, seq_len=9, rows=2, seed=0)
    for s in range(6):
        rows = loader.rows(s, 0, 2)
        assert rows.shape == (2, 10) and (rows[:, 0] == BOS).all() and not (rows == 7).any()


# --- the document index of a data dir ---

def _texts(tmp_path, n=6):
    src = tmp_path / "text"
    src.mkdir()
    for i in range(n):
        (src / f"d{i}.txt").write_text(f"document {i} " * (10 + 5 * i))
    return src


def test_doc_index_written_at_prepare_and_rebuilt_when_missing_or_stale(tmp_path):
    out = tmp_path / "data"
    prepare_stream([_texts(tmp_path)], out, tokenizer="bytes", val_fraction=0.3)
    ds = load_data(out)
    want = np.flatnonzero(np.asarray(ds.train) == ds.bos_id)
    assert np.array_equal(np.load(out / DOCS_INDEX), want) and len(want) == ds.meta["train_docs"]
    (out / DOCS_INDEX).unlink()  # a data dir made before the index existed
    assert np.array_equal(doc_starts(ds), want) and (out / DOCS_INDEX).exists()
    np.save(out / DOCS_INDEX, want + 1)  # stale: does not point at BOS tokens
    assert np.array_equal(doc_starts(ds), want)
    assert np.array_equal(np.load(out / DOCS_INDEX), want)


def test_imported_bins_index_by_bos_and_refuse_packing_without_it(tmp_path):
    tokens, _ = corpus(LENS)
    (tmp_path / "t.bin").write_bytes(tokens.tobytes())
    (tmp_path / "v.bin").write_bytes(tokens[:100].tobytes())
    with_bos = import_bin(tmp_path / "t.bin", tmp_path / "v.bin", tmp_path / "a", vocab_size=256, bos_id=BOS)
    assert len(np.load(with_bos.dir / DOCS_INDEX)) == len(LENS)
    without = import_bin(tmp_path / "t.bin", tmp_path / "v.bin", tmp_path / "b", vocab_size=256)
    assert not (without.dir / DOCS_INDEX).exists()
    with pytest.raises(UserError, match="no BOS id.*loader windows"):
        make_loader("packed", load_data(without.dir).train, 16, 2, 0, load_data(without.dir))
    from loopscale.training.train import check_data_fits

    raw = {"model": {"d_model": 32, "r": 1, "n_layers_eff": 2, "head_dim": 16},
           "train": {"tokens": 64, "seq_len": 16, "batch_tokens": 32},
           "data": {"dir": str(without.dir), "eval_tokens": 50, "loader": "packed"}, "vocab_size": 256}
    with pytest.raises(ConfigError, match="packed needs document boundaries"):  # before any run folder is made
        check_data_fits(run_config_from_dict(raw), load_data(without.dir))


# --- the setting ---

def test_loader_setting_enters_the_run_id_only_when_packed():
    raw = {"model": {"d_model": 32, "r": 2, "n_layers_eff": 4, "n_prelude": 1, "n_coda": 1, "head_dim": 16},
           "train": {"tokens": 2048, "seq_len": 32, "batch_tokens": 256},
           "data": {"dir": "/data/x", "eval_tokens": 1024}, "vocab_size": 256}
    default = run_config_from_dict(raw)
    assert "loader" not in default.semantic_dict()["data"] and default.data.loader == "windows"
    windows = run_config_from_dict({**raw, "data": {**raw["data"], "loader": "windows"}})
    packed = run_config_from_dict({**raw, "data": {**raw["data"], "loader": "packed"}})
    assert windows.run_id() == default.run_id() != packed.run_id()
    assert json.loads(json.dumps(packed.to_dict()))["data"]["loader"] == "packed"
    with pytest.raises(ConfigError, match="data.loader: unknown 'bestfit'"):
        run_config_from_dict({**raw, "data": {**raw["data"], "loader": "bestfit"}})
