"""Bad input across commands: one line naming the problem, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import pytest

from loopscale.cli import main

CASES = {
    "malformed YAML": (["sweep", "{d}/bad1.yaml", "--dry-run"], "not valid YAML"),
    "unknown grid key": (["sweep", "{d}/bad2.yaml", "--dry-run"], "bogus: unknown key"),
    "missing grid": (["sweep", "{d}/none.yaml", "--dry-run"], "no such grid file"),
    "wrong CSV columns": (["fit", "{d}/bad.csv"], "missing columns"),
    "empty CSV": (["fit", "{d}/empty.csv"], "cannot read runs table"),
    "missing fit source": (["fit", "{d}/nothing"], "no such file or sweep folder"),
    "unknown probe": (["compare", "{d}/bad.csv", "--probe", "nope"], "unknown probe 'nope'"),
    "plan of a bad grid": (["plan", "{d}/bad2.yaml"], "unknown key"),
    "status of no sweep": (["status", "{d}/nothing"], "no such sweep folder"),
    "collect of no sweep": (["collect", "{d}/nothing"], "no such sweep folder"),
    "data info of no dir": (["data", "info", "{d}/nothing"], "does not exist"),
    "unknown tokenizer": (["data", "prepare", "--tokenizer", "foo", "--out", "{d}/x"], "unknown tokenizer"),
    "missing law file": (["equiv", "--law", "{d}/none.json"], "no such fit file"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_one_line_exit_2(name, tmp_path, capsys):
    (tmp_path / "bad1.yaml").write_text("name: x\nr: [1\n")
    (tmp_path / "bad2.yaml").write_text("name: x\nbogus: 1\n")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    (tmp_path / "empty.csv").write_text("")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    args, words = CASES[name]
    with pytest.raises(SystemExit) as exc:
        main([a.format(d=tmp_path) for a in args])
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert words in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written
