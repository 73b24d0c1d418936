"""Checkpoint and resume: an interrupted run ends with the same loss and tokens as an uninterrupted one."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from loopscale.training.checkpoint import checkpoint_paths, load_latest_checkpoint, save_checkpoint
from loopscale.config import ConfigError, run_config_from_dict
from loopscale.data import identity
from loopscale.training.train import train_run, write_run_config


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from loopscale.data.stream import prepare_stream

    rng = np.random.default_rng(0)
    words = ["the", "loop", "block", "cat", "sat", "on", "a", "mat", "and", "ran", "far", "away"]
    src = tmp_path_factory.mktemp("text")
    for i in range(12):
        (src / f"doc{i}.txt").write_text(" ".join(rng.choice(words, 3000)) + ".\n")
    out = tmp_path_factory.mktemp("data")
    prepare_stream([src], out, tokenizer="bytes", val_fraction=0.25, force=True)
    return out


@pytest.fixture(scope="module")
def short_docs(tmp_path_factory) -> Path:
    """Many documents of 2 to 60 words: rows of 33 bytes hold whole ones, so packing has choices to make."""
    from loopscale.data.stream import prepare_stream

    rng = np.random.default_rng(1)
    words = ["the", "loop", "block", "cat", "sat", "on", "a", "mat", "and", "ran", "far", "away"]
    src = tmp_path_factory.mktemp("short")
    for i in range(300):
        (src / f"doc{i}.txt").write_text(" ".join(rng.choice(words, int(rng.integers(2, 60)))) + ".")
    out = tmp_path_factory.mktemp("short-data")
    prepare_stream([src], out, tokenizer="bytes", val_fraction=0.25, force=True)
    return out


def make_run(corpus: Path, run_dir: Path, steps: int = 12, every: int = 1, loader: str = "windows",
             keyed: bool = False) -> Path:
    """A run folder; ``keyed``: its config names the identity of the data its dir holds now (as a sweep or
    `loopscale train` writes it), else none (a config written before identities)."""
    raw = {"model": {"d_model": 32, "r": 2, "n_layers_eff": 4, "n_prelude": 1, "n_coda": 1, "head_dim": 16},
           "train": {"tokens": steps * 256, "seq_len": 32, "batch_tokens": 256, "threads": 1,
                     "checkpoint_every_steps": every, "log_every": 1},
           "data": {"dir": str(corpus), "eval_tokens": 1024, "loader": loader}, "vocab_size": 256}
    if keyed:
        raw["data"]["data_id"] = identity.data_id(corpus)
    write_run_config(run_dir, run_config_from_dict(raw))
    return run_dir


class StopAfter(threading.Event):
    """A stop request that arrives after ``n`` step boundaries."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def is_set(self) -> bool:
        self.n -= 1
        return self.n < 0


@pytest.mark.slow
@pytest.mark.parametrize("loader, data", [("windows", "corpus"), ("packed", "short_docs")])
def test_stop_and_resume_is_bitwise_identical(loader, data, request, tmp_path):
    corpus = request.getfixturevalue(data)
    ref = train_run(make_run(corpus, tmp_path / "ref", loader=loader))
    run = make_run(corpus, tmp_path / "int", loader=loader)
    stopped = train_run(run, stop=StopAfter(5))
    assert stopped["status"] == "stopped" and stopped["step"] == 5
    assert not (run / "result.json").exists()
    done = train_run(run)
    assert done["val_loss"] == ref["val_loss"] and done["tokens"] == ref["tokens"]
    assert done["resumed_from_step"] == 5 and done["loader_stats"] == ref["loader_stats"]
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))  # no step logged twice
    assert checkpoint_paths(run) == []  # pruned once the result is written


@pytest.mark.slow
def test_killed_process_resumes_to_same_loss(corpus, tmp_path):
    ref = train_run(make_run(corpus, tmp_path / "ref", steps=40))
    run = make_run(corpus, tmp_path / "killed", steps=40)
    code = f"from loopscale.training.train import train_run; train_run({str(run)!r})"
    p = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 60
    while time.time() < deadline and not any(
        load_latest_checkpoint(run) and load_latest_checkpoint(run)["step"] >= 3 for _ in [0]
    ):
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (run / "result.json").exists(), "the run finished before it could be killed"
    done = train_run(run)
    assert done["resumed_from_step"] >= 3
    assert done["val_loss"] == ref["val_loss"] and done["tokens"] == ref["tokens"]


def test_checkpoints_atomic_keep_previous_and_fall_back(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"x": step})
    names = [p.name for p in checkpoint_paths(tmp_path)]
    assert names == ["step_000000003.pt", "step_000000002.pt"]
    checkpoint_paths(tmp_path)[0].write_bytes(b"torn write")  # newest damaged
    assert load_latest_checkpoint(tmp_path)["x"] == 2
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.suffix == ".tmp"]


@pytest.mark.slow
def test_checkpoint_of_another_run_is_refused(corpus, tmp_path):
    a = make_run(corpus, tmp_path / "a")
    train_run(a, stop=StopAfter(2))
    b = make_run(corpus, tmp_path / "b", steps=13)
    shutil.copytree(a / "checkpoints", b / "checkpoints")
    with pytest.raises(RuntimeError, match="belongs to run"):
        train_run(b)
    assert "belongs to run" in json.loads((b / "error.json").read_text())["error"]


def prepare_words(out: Path, seed: int) -> str:
    """Prepare ``out`` (again) from generated text, other text for another seed; its identity."""
    from loopscale.data.stream import prepare_stream

    rng = np.random.default_rng(seed)
    words = ["the", "loop", "block", "cat", "sat", "on", "a", "mat", "and", "ran", "far", "away"]
    src = out.parent / f"text-{seed}"
    src.mkdir()
    for i in range(12):
        (src / f"doc{i}.txt").write_text(" ".join(rng.choice(words, 3000)) + ".\n")
    prepare_stream([src], out, tokenizer="bytes", val_fraction=0.25, force=True)
    return identity.data_id(out)


@pytest.mark.slow
@pytest.mark.parametrize("keyed", [True, False], ids=["config-with-identity", "config-from-before-identities"])
def test_checkpoint_made_before_a_reprepare_is_not_resumed(keyed, tmp_path, capsys):
    """Checkpoints record the data's identity; after the data dir is re-prepared from other text, the run starts
    from scratch (one line says why), whether its config names the new identity (as `loopscale train --out`
    rewrites it) or none (a config written before identities, which the trainer does not refuse)."""
    data = tmp_path / "data"
    before = prepare_words(data, seed=0)
    run = make_run(data, tmp_path / "run", keyed=keyed)
    assert train_run(run, stop=StopAfter(5))["status"] == "stopped"
    assert load_latest_checkpoint(run, report=False)["data_id"] == before
    after = prepare_words(data, seed=1)
    assert after != before
    make_run(data, run, keyed=keyed)  # keyed: the config names the data the dir holds now
    capsys.readouterr()
    done = train_run(run)
    lines = [line for line in capsys.readouterr().err.splitlines() if "not resuming" in line]
    assert len(lines) == 1 and "trained on other data" in lines[0] and before[:12] in lines[0], lines
    assert f"holds now ({after[:12]}; re-prepared since); starting from scratch" in lines[0]
    assert done["status"] == "done" and done["resumed_from_step"] is None and done["data_id"] == after
    ref = train_run(make_run(data, tmp_path / "ref", keyed=keyed))
    assert done["val_loss"] == ref["val_loss"] and done["tokens"] == ref["tokens"]
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))  # the old data's lines are gone
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step_000000004.pt.stale", "step_000000005.pt.stale"]  # set aside, never listed again


def test_a_run_planned_on_other_data_is_refused_before_training(tmp_path):
    """A config naming the identity of data its dir no longer holds (re-prepared since the sweep planned it):
    one clear error, in error.json as well, and nothing trained."""
    data = tmp_path / "data"
    prepare_words(data, seed=0)
    run = make_run(data, tmp_path / "run", keyed=True)
    prepare_words(data, seed=1)
    with pytest.raises(ConfigError, match="the data changed since this run was planned"):
        train_run(run)
    error = json.loads((run / "error.json").read_text())["error"]
    assert "re-prepared since" in error and "\n" not in error
    assert not (run / "metrics.jsonl").exists() and not (run / "checkpoints").exists()
