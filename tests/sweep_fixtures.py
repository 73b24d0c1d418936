"""Shared helpers for the sweep tests (imported explicitly by the tests; conftest.py's `tiny_data` fixture makes its
data dir with make_tiny_data)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GRIDS = REPO / "grids"
WORDS = ("the loop block runs again and the prelude feeds it while the coda reads out a token "
         "scaling laws fit loss against parameters and data under a fixed budget of compute").split()


def make_tiny_data(out: Path, docs: int = 24, words_per_doc: int = 900, seed: int = 0) -> Path:
    """A small byte-tokenized data dir (vocab 256) from generated text: ~100 kB, prepared in well under a second."""
    from loopscale.data.stream import prepare_stream

    rng = random.Random(seed)
    src = out.parent / f"{out.name}-text"
    src.mkdir(parents=True, exist_ok=True)
    for i in range(docs):
        words = [rng.choice(WORDS) for _ in range(words_per_doc)]
        (src / f"doc{i:03d}.txt").write_text(" ".join(words) + ".\n")
    prepare_stream([src], out, tokenizer="bytes", val_fraction=0.2)
    return out


def cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real `loopscale` command line in a subprocess."""
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "loopscale.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=env)


def cli_in_process(argv, capsys) -> tuple[int, str, str]:
    """Run the command line in this process (pytest's capsys captures it): (exit code, stdout, stderr)."""
    from loopscale.cli import main

    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def cli_json(*args: str, cwd: Path | None = None, timeout: float = 600):
    out = cli(*args, cwd=cwd, timeout=timeout)
    assert out.returncode == 0, out.stderr + out.stdout
    return json.loads(out.stdout)


def fake_result(run_dir: Path, run_id: str, loss: float = 3.0, status: str = "done", **extra) -> dict:
    """A result.json as the trainer writes it (for store tests and benchmarks, not for real runs)."""
    rec = {"run_id": run_id, "status": status, "diverged_step": None, "r": 2, "d_model": 64, "probe": "none",
           "seed": 0, "n_once": 1000, "n_rec": 2000, "tokens": 16384, "iterations": 16, "flops_per_token": 10**6,
           "flops_total": 16384 * 10**6, "budget_flops": None, "val_loss": loss, "wall_time_s": 1.5,
           "tokens_per_s": 1e4, "device": "cpu", "torch_version": "x", "git_commit": None,
           "finished_at": "2026-01-01T00:00:00+0000",
           "config": {"model": {"d_model": 64, "r": 2}, "train": {"tokens": 16384, "betas": [0.8, 0.95]},
                      "data": {"dir": "/data"}, "vocab_size": 256}, **extra}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "result.json").write_text(json.dumps(rec))
    return rec
