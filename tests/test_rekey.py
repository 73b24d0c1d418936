"""Re-keying a sweep folder made before data identities (loopscale.submit.rekey, `loopscale sweep`, `loopscale rekey`).

The fixture tests/data/old_sweep_smoke is a real sweep folder made by the code before identities (e82f5f4), with
the debug executor on a data dir of generated text: grids/smoke.yaml (4 runs) and grid-smoke-tbptt.yaml (its
tbptt probe run at r = 2; the r = 1 run is shared), then `loopscale collect` (results.db). Its run ids hash the
path of that data dir. How it was made: tests/data/old_sweep_smoke/README.md.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from loopscale import schedule, store
from loopscale.config import run_config_from_dict
from loopscale.data.identity import data_id
from loopscale.fmt import TIMESTAMP
from sweep_fixtures import GRIDS, cli, make_tiny_data

FIXTURE = Path(__file__).parent / "data" / "old_sweep_smoke"
OLD_IDS = sorted(p.name for p in (FIXTURE / "runs").iterdir())
PROBE_GRID = FIXTURE / "grid-smoke-tbptt.yaml"


def _started(run_dir: Path) -> float:
    return datetime.strptime(json.loads((run_dir / "started.json").read_text())["time"], TIMESTAMP).timestamp()


def prepared_before_the_runs(data: Path) -> Path:
    """Date the data dir's token files back to before the fixture's runs started (as when it was prepared first)."""
    t = min(_started(FIXTURE / "runs" / rid) for rid in OLD_IDS) - 3600
    for name in ("train.bin", "val.bin"):
        os.utime(data / name, (t, t))
    return data


def old_sweep(tmp_path: Path, data: Path, ids=OLD_IDS, name: str = "smoke") -> tuple[Path, dict[str, str]]:
    """A copy of the fixture as the old code would have made it over ``data``: its runs name ``data`` (config.yaml,
    result.json, results.db) and have the path-based ids of that path. Returns (sweep, {fixture id: id here})."""
    sweep = tmp_path / "sweeps" / name
    shutil.copytree(FIXTURE, sweep, ignore=shutil.ignore_patterns("grid-smoke-tbptt.yaml", "README.md"))
    here = {}
    con = sqlite3.connect(sweep / store.DB_FILE)
    for rid in OLD_IDS:
        run = sweep / "runs" / rid
        if rid not in ids:
            shutil.rmtree(run)
            con.execute("DELETE FROM runs WHERE run_id = ?", (rid,))
            continue
        text = (run / "config.yaml").read_text()
        text = text.replace(yaml.safe_load(text)["data"]["dir"], str(data))
        (run / "config.yaml").write_text(text)
        here[rid] = run_config_from_dict(yaml.safe_load(text)).run_id()  # the old code's id at this path
        rec = json.loads((run / "result.json").read_text())
        rec["config"]["data"]["dir"], rec["run_id"] = str(data), here[rid]
        (run / "result.json").write_text(json.dumps(rec, indent=2))
        run.rename(sweep / "runs" / here[rid])
        con.execute('UPDATE runs SET run_id = ?, "data.dir" = ? WHERE run_id = ?', (here[rid], str(data), rid))
    con.commit()
    con.close()
    return sweep, here


@pytest.fixture
def data(tmp_path):
    return prepared_before_the_runs(make_tiny_data(tmp_path / "data" / "bytes"))


def db_ids(sweep: Path) -> set[str]:
    with sqlite3.connect(sweep / store.DB_FILE) as con:
        return {r[0] for r in con.execute("SELECT run_id FROM runs")}


def test_the_fixture_is_an_old_sweep_folder():
    """Path-based ids: each folder's name is its config's id with the data dir in it, and no run records data_id."""
    for rid in OLD_IDS:
        cfg = run_config_from_dict(yaml.safe_load((FIXTURE / "runs" / rid / "config.yaml").read_text()))
        assert cfg.data.data_id is None and cfg.run_id() == rid
        assert "data_id" not in json.loads((FIXTURE / "runs" / rid / "result.json").read_text())
    assert db_ids(FIXTURE) == set(OLD_IDS)
    assert sum(yaml.safe_load((FIXTURE / "runs" / rid / "config.yaml").read_text())["model"]["probe"] == "tbptt"
               for rid in OLD_IDS) == 1


def test_sweep_rekeys_an_old_sweep_folder_probe_runs_included(tmp_path, data):
    sweep, here = old_sweep(tmp_path, data)
    identity = data_id(data)
    olds = sorted(here.values())
    before = {rid: json.loads((sweep / "runs" / rid / "result.json").read_text()) for rid in olds}

    dry = cli("sweep", GRIDS / "smoke.yaml", "--data", data, "--out", sweep, "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "5 run folder(s) have path-based ids" in dry.stdout and "submit 4" in dry.stdout  # the dry run reads only
    assert sorted(p.name for p in (sweep / "runs").iterdir()) == olds

    out = cli("sweep", GRIDS / "smoke.yaml", "--data", data, "--out", sweep, "--executor", "debug", cwd=tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    line = next(x for x in out.stdout.splitlines() if "re-keyed" in x)
    assert "re-keyed 5 run(s) from path-based ids" in line and "left" not in line
    assert "nothing to submit (skip 4)" in out.stdout  # the grid's ids are the re-keyed runs' ids: nothing trains

    new = sorted(p.name for p in (sweep / "runs").iterdir())
    assert len(new) == 5 and not set(new) & set(olds)
    formers = {}
    for rid in new:
        run = sweep / "runs" / rid
        cfg = run_config_from_dict(yaml.safe_load((run / "config.yaml").read_text()))
        assert cfg.data.data_id == identity and cfg.run_id() == rid and cfg.data.dir == str(data)
        rec = json.loads((run / "result.json").read_text())
        assert rec["run_id"] == rid and rec["data_id"] == identity and rec["config"]["data"]["data_id"] == identity
        mark = json.loads((run / store.REKEYED_FILE).read_text())
        assert mark["run_id"] == rid and mark["data_id"] == identity
        formers[mark["former_run_id"]] = rid
        old = before[mark["former_run_id"]]
        assert rec["val_loss"] == old["val_loss"] and cfg.path_keyed_id() == mark["former_run_id"]
        assert (run / "metrics.jsonl").exists() and (run / "started.json").exists() and (run / "job.json").exists()
    assert sorted(formers) == olds
    assert db_ids(sweep) == set(new)  # results.db: rows moved, none left under the old ids

    probe = cli("sweep", PROBE_GRID, "--data", data, "--out", sweep, "--dry-run", "--json", cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    rows = json.loads(probe.stdout)
    assert [r["action"] for r in rows] == ["skip", "skip"] and {r["probe"] for r in rows} == {"none", "tbptt"}

    status = json.loads(cli("status", sweep, "--json").stdout)
    assert status["counts"] == {"done": 5}
    again = cli("rekey", sweep)
    assert again.returncode == 0 and "nothing to re-key" in again.stdout


def test_runs_whose_data_was_prepared_again_are_left_stale(tmp_path, data):
    """Two runs name a data dir written after they started (re-prepared): left as they are, stale, never fitted."""
    fresh = make_tiny_data(tmp_path / "other" / "bytes", seed=1)
    sweep, here = old_sweep(tmp_path, data)
    moved_away = sorted(here.values())[:2]
    for rid in moved_away:
        run = sweep / "runs" / rid
        (run / "config.yaml").write_text((run / "config.yaml").read_text().replace(str(data), str(fresh)))
        rec = json.loads((run / "result.json").read_text())
        rec["config"]["data"]["dir"] = str(fresh)
        (run / "result.json").write_text(json.dumps(rec))
    out = cli("rekey", sweep)
    assert out.returncode == 0, out.stderr
    assert ("re-keyed 3 run(s)" in out.stdout and "left 2 as they are: 2 because their data was prepared again "
            "after they started (stale)" in out.stdout), out.stdout
    assert all((sweep / "runs" / rid).is_dir() for rid in moved_away)
    states = store.run_states(sweep)
    assert {rid: states[rid].state for rid in moved_away} == {rid: "stale" for rid in moved_away}
    assert "prepared again after the run started" in states[moved_away[0]].detail
    assert sorted(st.state for st in states.values()) == ["done"] * 3 + ["stale"] * 2
    store.collect(sweep)
    assert not db_ids(sweep) & set(moved_away) and len(db_ids(sweep)) == 3  # stale rows dropped from results.db

    from loopscale.runs_table import load_runs, usable_rows

    table = load_runs(sweep)
    kept, warnings = usable_rows(table)
    assert len(kept) == 3 and not set(kept["run_id"]) & set(moved_away)
    assert any(w.startswith("left out 2 run(s) stale") for w in warnings), warnings


def test_rekey_refuses_while_runs_are_in_flight(tmp_path, data):
    sweep, here = old_sweep(tmp_path, data)
    busy = sweep / "runs" / "0123456789ab"
    busy.mkdir()
    shutil.copy(sweep / "runs" / here[OLD_IDS[0]] / "config.yaml", busy / "config.yaml")
    me = {"pid": os.getpid(), "pid_start": schedule.process_start(os.getpid())}
    (busy / "job.json").write_text(json.dumps({"executor": "local", "job_id": "1", "host": socket.gethostname(),
                                               "workers": [me]}))
    for args in (("rekey", sweep), ("sweep", GRIDS / "smoke.yaml", "--data", data, "--out", sweep, "--executor",
                                    "debug")):
        out = cli(*args, cwd=tmp_path)
        assert out.returncode == 2, out.stdout + out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot be re-keyed while 1 run(s) are in flight (0123456789ab)" in lines[0]
        assert "Traceback" not in out.stderr
    assert sorted(p.name for p in (sweep / "runs").iterdir()) == sorted([*here.values(), "0123456789ab"])


def test_unfinished_runs_keep_their_checkpoints_and_records(tmp_path, data):
    """A cancelled run with a checkpoint, a run never started: re-keyed; the checkpoint moves along (the trainer
    resumes it by the run's path-keyed id), the cancel marker stays as it was; a cut-short re-key is finished."""
    sweep, here = old_sweep(tmp_path, data, ids=OLD_IDS[:1])
    old = here[OLD_IDS[0]]
    run = sweep / "runs" / old
    (run / "result.json").unlink()
    (run / "cancel.json").write_text(json.dumps({"user": "me", "reason": "test", "stopped_at_step": 8}))
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / store.checkpoint_name(8)).write_bytes(b"not loaded by the re-key")
    never = sweep / "runs" / "00000000000a"
    never.mkdir()
    text = (run / "config.yaml").read_text().replace("seed: 0", "seed: 7")
    (never / "config.yaml").write_text(text)
    out = cli("rekey", sweep)
    assert out.returncode == 0 and "re-keyed 2 run(s)" in out.stdout, out.stdout + out.stderr
    states = store.run_states(sweep)
    assert sorted(st.state for st in states.values()) == ["cancelled", "new"]
    moved = next(rid for rid, st in states.items() if st.state == "cancelled")
    assert store.latest_step(sweep / "runs" / moved) == 8
    assert json.loads((sweep / "runs" / moved / "cancel.json").read_text())["reason"] == "test"
    cfg = run_config_from_dict(yaml.safe_load((sweep / "runs" / moved / "config.yaml").read_text()))
    assert cfg.path_keyed_id() == old and cfg.run_id() == moved  # the id the checkpoint carries: resumed

    # cut short before the rename: config.yaml already holds the identity; the next re-key finishes it
    os.rename(sweep / "runs" / moved, sweep / "runs" / old)
    out = cli("rekey", sweep)
    assert "re-keyed 1 run(s)" in out.stdout, out.stdout + out.stderr
    assert (sweep / "runs" / moved).is_dir() and not (sweep / "runs" / old).exists()
    assert json.loads((sweep / "runs" / moved / store.REKEYED_FILE).read_text())["former_run_id"] == old


def test_a_new_id_already_taken_is_left_alone(tmp_path, data):
    sweep, here = old_sweep(tmp_path, data, ids=OLD_IDS[:1])
    cfg = run_config_from_dict(yaml.safe_load((sweep / "runs" / here[OLD_IDS[0]] / "config.yaml").read_text()))
    import dataclasses

    taken = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, data_id=data_id(data))).run_id()
    (sweep / "runs" / taken).mkdir()
    out = cli("rekey", sweep)
    assert "re-keyed 0 run(s)" in out.stdout and "1 because their new id is another run folder's" in out.stdout
    assert (sweep / "runs" / here[OLD_IDS[0]] / "result.json").exists()
