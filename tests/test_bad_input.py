"""Bad input across commands, tried: one line naming the problem, exit code 2, no traceback, and no file in
the sweep (or anywhere else under the test folder) created, changed or removed."""

from __future__ import annotations

import hashlib
import json

import pytest
import yaml

from loopscale.cli import main
from sweep_fixtures import GRIDS, fake_result

SMOKE = yaml.safe_load((GRIDS / "smoke.yaml").read_text())

# Grids that are wrong in one way each, submitted for real (`sweep GRID --out SWEEP`) into an existing sweep.
GRID_CASES = {
    "malformed YAML": ("name: x\nr: [1\n", "not valid YAML"),
    "grid is a list": ("- r: 1\n", "expected a mapping of grid keys"),
    "unknown grid key": ({"bogus": 1}, "bogus: unknown key"),
    "unknown train key": ({"train": {"lr": 1}}, "train: unknown key 'lr'"),
    "wrong type": ({"train": {"seq_len": "long"}}, "train.seq_len: expected a number, got 'long'"),
    "r = 0": ({"r": [0]}, "r: expected positive integers, got 0"),
    "negative width": ({"widths": [-64]}, "widths: expected positive integers, got -64"),
    "width not a number": ({"widths": ["abc"]}, "widths: expected positive integers, got 'abc'"),
    "zero token budget": ({"tokens": [0]}, "tokens: must be a positive finite number, got 0"),
    "negative FLOP budget": ({"tokens": None, "widths": None, "flops": {-1e12: [32]}}, "must be a positive"),
    "r not dividing the loop depth": ({"r": [3]}, "r = 3 does not divide the loop depth 2"),
    "width not divisible by head dim": ({"widths": [40]}, "width 40 is not divisible by head_dim 16"),
    "budget too small for one step": ({"tokens": [10]}, "tokens 10 buys no optimizer step"),
    "unknown probe": ({"probes": ["nope"]}, "probes: unknown probe 'nope'"),
    "negative seed": ({"seeds": [-1]}, "seeds: expected non-negative integers, got -1"),
    "unknown optimizer": ({"train": {"optimizer": "sgd"}}, "train.optimizer: unknown 'sgd'"),
    "unknown orthogonalisation": ({"train": {"optimizer": "muonh", "muon_ns": "cubic"}},
                                  "train.muon_ns: unknown 'cubic'; choose polar_express or quintic"),
    "one hyperconnection lane": ({"model": {"hc_lanes": 1}, "probes": ["hyperconn"]},
                                 "model.hc_lanes: expected an integer ≥ 2, got 1"),
    "zero hyperconnection lanes": ({"model": {"hc_lanes": 0}, "probes": ["hyperconn"]},
                                   "model.hc_lanes: expected an integer ≥ 2, got 0"),
    "eval tokens beyond the data": ({"data": {"eval_tokens": 10**9}}, "exceeds the"),
}

# Other commands and flags. {d}: the test folder; {data}: a prepared data dir; {sweep}: an existing sweep.
CLI_CASES = {
    "missing grid": (["sweep", "{d}/none.yaml", "--out", "{sweep}"], "no such grid file"),
    "missing data": (["sweep", GRIDS / "smoke.yaml", "--data", "{d}/nodata", "--out", "{sweep}"],
                     "holds no prepared data"),
    "sweep folder under a file": (["sweep", GRIDS / "smoke.yaml", "--data", "{data}", "--out", "{d}/afile/sw"],
                                  "afile is a file, not a folder"),
    "sweep folder on a read-only filesystem": (
        ["sweep", GRIDS / "smoke.yaml", "--data", "{data}", "--out", "/proc/loopscale-test-sweep"],
        "cannot write the sweep folder"),
    "unknown executor": (["sweep", GRIDS / "smoke.yaml", "--data", "{data}", "--out", "{sweep}", "--executor", "bogus"],
                         "unknown executor 'bogus'"),
    "zero local jobs": (["sweep", GRIDS / "smoke.yaml", "--data", "{data}", "--out", "{sweep}", "--jobs", "0"],
                        "local_jobs: must be at least 1"),
    "zero time limit": (["sweep", GRIDS / "smoke.yaml", "--data", "{data}", "--out", "{sweep}", "--time-min", "0"],
                        "time_min: must be at least 1"),
    "wrong CSV columns": (["fit", "{d}/bad.csv"], "missing columns"),
    "empty CSV": (["fit", "{d}/empty.csv"], "cannot read runs table"),
    "non-numeric loss in CSV": (["fit", "{d}/nonnumeric.csv"], "column loss is not numeric"),
    "too few runs to fit": (["fit", "{d}/one.csv"], "fewer than the 5 parameters"),
    "negative bootstrap": (["fit", "{d}/one.csv", "--bootstrap", "-5"], "must be non-negative"),
    "missing fit source": (["fit", "{d}/nothing"], "no such file or sweep folder"),
    "unknown compare probe": (["compare", "{d}/bad.csv", "--probe", "nope"], "unknown probe 'nope'"),
    "compare without probe runs": (["compare", "{d}/one.csv", "--probe", "tbptt"], "no looped (r > 1) runs"),
    "plan of a bad grid": (["plan", "{d}/bad2.yaml"], "unknown key"),
    "status of no sweep": (["status", "{d}/nothing"], "no such sweep folder"),
    "status of a plain folder": (["status", "{d}/plain"], "not a sweep folder"),
    "collect of no sweep": (["collect", "{d}/nothing"], "no such sweep folder"),
    "data info of no dir": (["data", "info", "{d}/nothing"], "does not exist"),
    "unknown tokenizer": (["data", "prepare", "--tokenizer", "foo", "--out", "{d}/x"], "unknown tokenizer"),
    "tiny BPE vocabulary": (["data", "prepare", "--tokenizer", "bpe:10", "--out", "{d}/x"], "a BPE vocabulary needs"),
    "missing text input": (["data", "prepare", "--input", "{d}/nothing", "--out", "{d}/x"], "does not exist"),
    "text input of unknown kind": (["data", "prepare", "--input", "{d}/bad.csv", "--out", "{d}/x"],
                                   "unknown kind of file"),
    "text input glob matching nothing": (["data", "prepare", "--input", "{d}/*.parquet", "--out", "{d}/x"],
                                         "matches no files"),
    "text input without its text field": (["data", "prepare", "--input", "{d}/notext.jsonl", "--out", "{d}/x"],
                                          'notext.jsonl:1: expected a JSON object with a "text" field'),
    "tokenizer.json that does not parse": (["data", "prepare", "--input", "{d}/notext.jsonl", "--tokenizer",
                                            "{d}/bad.json", "--out", "{d}/x"], "not a tokenizer.json"),
    "train with r = 0": (["train", "--r", "0", "--width", "64", "--head-dim", "16", "--tokens", "4096",
                          "--data", "{data}"], "r must be a positive integer, got 0"),
    "train width vs head dim": (["train", "--r", "2", "--width", "40", "--head-dim", "16", "--tokens", "4096",
                                 "--data", "{data}"], "width 40 is not divisible by head_dim 16"),
    "missing law file": (["equiv", "--law", "{d}/none.json"], "no such fit file"),
    "unparsable law file": (["equiv", "--law", "{d}/bad.json"], "cannot read fit JSON"),
}


def grid_text(change) -> str:
    if isinstance(change, str):
        return change
    raw = json.loads(json.dumps(SMOKE))
    for key, value in change.items():
        if value is None:
            raw.pop(key, None)
        elif isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key].update(value)
        else:
            raw[key] = value
    return yaml.safe_dump(raw, sort_keys=False)


@pytest.fixture
def world(tmp_path, tiny_data):
    """A test folder with bad inputs and an existing sweep (its grid, a finished run, its lock file)."""
    (tmp_path / "bad2.yaml").write_text("name: x\nbogus: 1\n")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "nonnumeric.csv").write_text("r,width,tokens,n_once,n_rec,loss\n1,64,1000,10,20,abc\n")
    (tmp_path / "one.csv").write_text("r,width,tokens,n_once,n_rec,loss\n1,64,1000,10,20,3.0\n")
    (tmp_path / "bad.json").write_text("{bad json")
    (tmp_path / "notext.jsonl").write_text('{"body": "no text field"}\n')
    (tmp_path / "afile").write_text("a file where a folder would go\n")
    (tmp_path / "plain").mkdir()
    sweep = tmp_path / "sweep"
    (sweep / "runs").mkdir(parents=True)
    (sweep / "grid.yaml").write_text(yaml.safe_dump(SMOKE))
    fake_result(sweep / "runs" / "0123456789ab", "0123456789ab")
    (tmp_path / ".sweep.lock").write_text("")
    return tmp_path


def snapshot(root):
    return {str(p.relative_to(root)): (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            if p.is_file() else "dir" for p in sorted(root.rglob("*"))}


def run_bad(argv, words, root, capsys):
    before = snapshot(root)
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert words in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert snapshot(root) == before  # nothing created, changed or removed


def test_the_table_is_large_enough():
    assert len(GRID_CASES) + len(CLI_CASES) >= 40


@pytest.mark.parametrize("name", sorted(GRID_CASES))
def test_bad_grid_one_line_exit_2_sweep_unchanged(name, world, tiny_data, capsys):
    change, words = GRID_CASES[name]
    (world / "g.yaml").write_text(grid_text(change))
    run_bad(["sweep", world / "g.yaml", "--data", tiny_data, "--out", world / "sweep", "--executor", "debug"],
            words, world, capsys)


@pytest.mark.parametrize("name", sorted(CLI_CASES))
def test_bad_input_one_line_exit_2(name, world, tiny_data, capsys):
    args, words = CLI_CASES[name]
    argv = [a.format(d=world, data=tiny_data, sweep=world / "sweep") if isinstance(a, str) else a for a in args]
    run_bad(argv, words, world, capsys)
