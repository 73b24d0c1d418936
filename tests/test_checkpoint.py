"""Checkpoints load with weights_only: a planted pickle runs nothing, and an unreadable file (planted, torn,
corrupt, or written by an older loopscale) is ignored with one line; the run resumes from the previous
checkpoint, or starts from scratch."""

from __future__ import annotations

import pathlib
import warnings

import numpy as np
import pytest
import torch

from loopscale.training.checkpoint import checkpoint_paths, load_latest_checkpoint, save_checkpoint
from loopscale.training.train import train_run
from sweep_fixtures import cli_in_process
from test_resume import StopAfter, corpus, make_run  # noqa: F401 - corpus is a fixture

IGNORED = "ignored unreadable checkpoint"


class Touch:
    """Unpickling this creates ``marker``: what a planted checkpoint could do on a trusting load."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def plant(path: pathlib.Path, marker: pathlib.Path) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"step": 1, "rng_torch": torch.get_rng_state(), "model": Touch(marker)}, path)
    return path


def ignored_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if IGNORED in ln]


def test_the_planted_file_would_run_code_on_a_trusting_load(tmp_path):
    """The payload is live: loading it the old way (weights_only=False) creates the marker."""
    marker = tmp_path / "marker"
    torch.load(plant(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.exists()


@pytest.mark.slow
def test_planted_checkpoint_in_fresh_run_runs_nothing_and_starts_from_scratch(corpus, tmp_path, capsys):  # noqa: F811
    run = make_run(corpus, tmp_path / "run")
    marker = tmp_path / "marker"
    planted = plant(run / "checkpoints" / "step_000000001.pt", marker)
    done = train_run(run)
    assert not marker.exists()
    assert done["status"] == "done" and done["resumed_from_step"] is None
    lines = ignored_lines(capsys.readouterr().err)
    assert len(lines) == 1 and str(planted) in lines[0] and "starting from scratch" in lines[0]
    assert (run / "checkpoints" / "step_000000001.pt.unreadable").exists()  # set aside, not deleted


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["planted", "truncated", "garbage", "old pickle format"])
def test_unreadable_newest_checkpoint_falls_back_to_the_older_one(damage, corpus, tmp_path, capsys):  # noqa: F811
    ref = train_run(make_run(corpus, tmp_path / "ref"))
    run = make_run(corpus, tmp_path / "run")
    assert train_run(run, stop=StopAfter(4))["step"] == 4
    newest = checkpoint_paths(run)[0]
    assert newest.name == "step_000000004.pt"
    marker = tmp_path / "marker"
    if damage == "planted":
        newest = plant(run / "checkpoints" / "step_000000007.pt", marker)
    elif damage == "truncated":
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    elif damage == "garbage":
        newest.write_bytes(b"\x80\x04not a checkpoint" * 100)
    else:  # what loopscale wrote before weights_only loading: a numpy array in the packed loader state
        state = torch.load(newest, weights_only=True)
        torch.save({**state, "loader": {"kind": "packed", "buffer": np.zeros((2, 3), dtype=np.int64)}}, newest)
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        done = train_run(run)
    assert not marker.exists()
    assert not [w for w in caught if "pickle" in str(w.message).lower()]  # no torch warning beside the line
    lines = ignored_lines(capsys.readouterr().err)
    assert len(lines) == 1 and str(newest) in lines[0]
    older = 4 if damage == "planted" else 3
    assert f"resuming from step {older}" in lines[0]
    assert done["resumed_from_step"] == older
    assert done["val_loss"] == ref["val_loss"] and done["tokens"] == ref["tokens"]


@pytest.mark.slow
def test_cli_train_ignores_a_planted_checkpoint_in_a_fresh_out_folder(corpus, tmp_path, capsys):  # noqa: F811
    out, marker = tmp_path / "out", tmp_path / "marker"
    planted = plant(out / "checkpoints" / "step_000000001.pt", marker)
    code, stdout, err = cli_in_process(
        ["train", "--data", corpus, "--width", 32, "--r", 2, "--layers", 4, "--prelude", 1, "--coda", 1,
         "--head-dim", 16, "--tokens", 2048, "--seq-len", 32, "--batch-tokens", 256, "--threads", 1,
         "--eval-tokens", 1024, "--out", out], capsys)
    assert code == 0, err
    assert not marker.exists()
    lines = ignored_lines(err)
    assert len(lines) == 1 and str(planted) in lines[0] and "starting from scratch" in lines[0]
    assert "val_loss" in stdout and (out / "result.json").exists()


def test_every_checkpoint_unreadable_gives_none_and_one_line(tmp_path, capsys):
    marker = tmp_path / "marker"
    for step in (1, 2):
        save_checkpoint(tmp_path, step, {"x": step})
    a, b = checkpoint_paths(tmp_path)
    plant(a, marker)
    b.write_bytes(b"")
    assert load_latest_checkpoint(tmp_path) is None
    assert not marker.exists()
    lines = ignored_lines(capsys.readouterr().err)
    assert len(lines) == 1 and str(a) in lines[0] and str(b) in lines[0] and "starting from scratch" in lines[0]
    assert checkpoint_paths(tmp_path) == []
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step_000000001.pt.unreadable", "step_000000002.pt.unreadable"]


def test_unreporting_process_leaves_the_files_and_says_nothing(tmp_path, capsys):
    """Ranks other than 0 skip an unreadable file too, but leave renaming and reporting to rank 0."""
    save_checkpoint(tmp_path, 1, {"x": 1})
    planted = plant(tmp_path / "checkpoints" / "step_000000002.pt", tmp_path / "marker")
    assert load_latest_checkpoint(tmp_path, report=False)["x"] == 1
    assert capsys.readouterr().err == "" and planted.exists() and not (tmp_path / "marker").exists()


def test_state_is_stored_as_tensors_and_plain_values(tmp_path):
    """numpy values become tensors and Python numbers; RNG states round-trip through weights_only loading."""
    import random

    random.seed(7)
    torch.manual_seed(7)
    save_checkpoint(tmp_path, 3, {"buf": np.arange(6).reshape(2, 3), "n": np.int64(5),
                                  "nested": [{"f": np.float32(0.5)}]})
    expect_py, expect_torch = random.random(), torch.rand(3)
    random.seed(0)
    torch.manual_seed(0)
    state = load_latest_checkpoint(tmp_path)
    assert torch.equal(state["buf"], torch.arange(6).reshape(2, 3))
    assert type(state["n"]) is int and state["n"] == 5 and state["nested"] == [{"f": 0.5}]
    assert random.random() == expect_py and torch.equal(torch.rand(3), expect_torch)


def test_checkpoint_from_before_python_rng_was_saved_still_loads(tmp_path):
    """A windows-loader checkpoint of the previous format holds only tensors and plain values: it resumes."""
    d = tmp_path / "checkpoints"
    d.mkdir()
    torch.save({"x": 1, "loader": {"kind": "windows"}, "step": 5, "rng_torch": torch.get_rng_state()},
               d / "step_000000005.pt")
    assert load_latest_checkpoint(tmp_path)["step"] == 5

