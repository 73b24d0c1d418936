"""Shared fixtures. `real_corpus` is the embedded default corpus (Brown + Shakespeare, bpe:4096),
prepared once per machine under the loopscale cache and reused by every test that trains for real."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def real_corpus() -> Path:
    from loopscale.corpus import default_cache_dir
    from loopscale.data import prepare_default

    out = Path(os.environ.get("LOOPSCALE_TEST_DATA", default_cache_dir().parent / "test-data" / "bpe-4096"))
    prepare_default(out, tokenizer="bpe:4096")  # a no-op when already prepared with these settings
    return out
