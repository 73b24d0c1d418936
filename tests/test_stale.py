"""Stale runs: finished on data that has changed since (loopscale.store's state "stale").

A finished run whose recorded data_id differs from the identity of the data dir its config names is stale: `status`
shows it, results.db drops its row, a fit leaves it out with one line, `sweep --retry-failed` never resurrects it.
A run whose data dir is gone keeps its state (unknown, not stale). The end-to-end test re-prepares a swept data dir
from another corpus: the old runs turn stale and `sweep` trains the new ids.
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from loopscale import store
from loopscale.data.identity import data_id
from loopscale.runs_table import load_runs, usable_rows
from loopscale.submit import action_for
from sweep_fixtures import GRIDS, cli, fake_result, make_tiny_data

OTHER = "f" * 64  # an identity no data dir here has


def run_on(sweep, run_id, data_dir, recorded, loss=3.0):
    """A finished run of ``data_dir`` that recorded the identity ``recorded``."""
    return fake_result(sweep / "runs" / run_id, run_id, loss=loss, data_id=recorded,
                       config={"model": {"d_model": 64, "r": 2}, "train": {"tokens": 16384},
                               "data": {"dir": str(data_dir), "data_id": recorded}, "vocab_size": 256})


@pytest.fixture
def sweep(tmp_path):
    data = make_tiny_data(tmp_path / "data")
    sweep = tmp_path / "sweep"
    same = data_id(data)
    run_on(sweep, "aaaaaaaaaaa1", data, same)
    run_on(sweep, "aaaaaaaaaaa2", data, OTHER)  # trained on other data than the dir holds now: stale
    run_on(sweep, "aaaaaaaaaaa3", tmp_path / "gone", OTHER)  # its data dir is gone: unknown, keeps its state
    return sweep


def test_a_run_on_other_data_is_stale_and_one_whose_data_is_gone_is_not(sweep):
    states = store.run_states(sweep)
    assert {rid: st.state for rid, st in states.items()} == {
        "aaaaaaaaaaa1": "done", "aaaaaaaaaaa2": "stale", "aaaaaaaaaaa3": "done"}
    assert states["aaaaaaaaaaa2"].detail.startswith(f"trained on data {OTHER[:12]}; ")
    assert states["aaaaaaaaaaa2"].result["val_loss"] == 3.0


def test_results_db_drops_stale_rows_and_a_fit_leaves_them_out_with_one_line(sweep):
    (sweep / "runs" / "aaaaaaaaaaa2" / "result.json").write_text(
        (sweep / "runs" / "aaaaaaaaaaa2" / "result.json").read_text().replace(OTHER, data_id(sweep.parent / "data")))
    store.collect(sweep)  # not stale yet: its row is in the store
    with sqlite3.connect(sweep / store.DB_FILE) as con:
        assert {r[0] for r in con.execute("SELECT run_id FROM runs")} == {"aaaaaaaaaaa1", "aaaaaaaaaaa2",
                                                                         "aaaaaaaaaaa3"}
    rec = json.loads((sweep / "runs" / "aaaaaaaaaaa2" / "result.json").read_text())
    rec["data_id"] = OTHER  # now the dir holds other data than it trained on
    (sweep / "runs" / "aaaaaaaaaaa2" / "result.json").write_text(json.dumps(rec))
    got = store.collect(sweep)
    assert got.counts == {"done": 2, "stale": 1}
    with sqlite3.connect(sweep / store.DB_FILE) as con:
        assert {r[0] for r in con.execute("SELECT run_id FROM runs")} == {"aaaaaaaaaaa1", "aaaaaaaaaaa3"}
    table = load_runs(sweep)  # the stale run comes back from its folder, marked stale, for the fit to name
    assert dict(zip(table["run_id"], table["status"]))["aaaaaaaaaaa2"] == "stale"
    kept, warnings = usable_rows(table)
    assert list(kept["run_id"]) == ["aaaaaaaaaaa1", "aaaaaaaaaaa3"]
    stale = [w for w in warnings if "stale" in w]
    assert len(stale) == 1 and stale[0].startswith("left out 1 run(s) stale") and "aaaaaaaaaaa2" in stale[0]
    assert store.load_results(sweep, refresh=False)["run_id"].tolist() == ["aaaaaaaaaaa1", "aaaaaaaaaaa3"]


def test_retry_failed_never_resurrects_a_stale_run():
    assert action_for("stale", retry_failed=True) == action_for("stale", retry_failed=False) == "skip"


def test_one_identity_per_data_dir_however_many_runs(tmp_path, monkeypatch):
    data = make_tiny_data(tmp_path / "data")
    same = data_id(data)
    for i in range(30):
        run_on(tmp_path / "sweep", f"run{i:08d}", data, same if i % 2 else OTHER)
    calls = []
    real = store.data_id
    monkeypatch.setattr(store, "data_id", lambda d, *a, **k: calls.append(d) or real(d, *a, **k))
    states = store.run_states(tmp_path / "sweep")
    assert sorted(st.state for st in states.values()) == ["done"] * 15 + ["stale"] * 15
    assert len(calls) == 1


def test_status_shows_the_state(sweep):
    out = cli("status", sweep, "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["counts"] == {"done": 2, "stale": 1}
    assert {e["run_id"]: e["state"] for e in doc["runs"]}["aaaaaaaaaaa2"] == "stale"
    table = cli("status", sweep)
    assert "stale" in table.stdout and "done 2 · stale 1" in table.stdout


@pytest.mark.slow
def test_a_reprepared_data_dir_makes_the_old_runs_stale_and_sweep_trains_the_new_ids(tmp_path):
    """Sweep smoke, re-prepare its data dir from another corpus: the old runs are stale, `sweep` trains the new ids
    beside them, and a fit reads the new runs only (saying how many stale ones it left out)."""
    data = make_tiny_data(tmp_path / "data" / "bytes")
    sweep = tmp_path / "sweeps" / "smoke"
    first = cli("sweep", GRIDS / "smoke.yaml", "--data", data, "--out", sweep, "--executor", "debug", cwd=tmp_path)
    assert first.returncode == 0, first.stderr + first.stdout
    old = set(store.run_ids(sweep))
    assert len(old) == 4

    other = make_tiny_data(tmp_path / "other" / "bytes", seed=1)
    again = cli("data", "prepare", "--tokenizer", "bytes", "--input", f"{other}-text", "--out", data, "--force",
                cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    states = store.run_states(sweep)
    assert {st.state for st in states.values()} == {"stale"}
    dry = cli("sweep", GRIDS / "smoke.yaml", "--data", data, "--out", sweep, "--dry-run", "--json", cwd=tmp_path)
    rows = json.loads(dry.stdout)
    assert [r["action"] for r in rows] == ["submit"] * 4 and not {r["run_id"] for r in rows} & old

    second = cli("sweep", GRIDS / "smoke.yaml", "--data", data, "--out", sweep, "--executor", "debug",
                 "--retry-failed", cwd=tmp_path)
    assert second.returncode == 0, second.stderr + second.stdout
    states = store.run_states(sweep)
    assert sorted(st.state for st in states.values()) == ["done"] * 4 + ["stale"] * 4
    assert {rid for rid, st in states.items() if st.state == "stale"} == old
    new = {rid for rid, st in states.items() if st.state == "done"}
    assert all(states[rid].result["data_id"] == data_id(data) for rid in new)

    kept, warnings = usable_rows(load_runs(sweep))
    assert set(kept["run_id"]) == new
    assert [w for w in warnings if "stale" in w][0].startswith("left out 4 run(s) stale")
    fit = cli("fit", sweep, "--json", cwd=tmp_path)
    assert fit.returncode == 2 and fit.stderr.startswith("error: 4 usable runs")  # 4 runs: too few for the law
    assert "left out 4 run(s) stale" in fit.stderr and len(fit.stderr.strip().splitlines()) == 1
    with sqlite3.connect(sweep / store.DB_FILE) as con:
        assert {r[0] for r in con.execute("SELECT run_id FROM runs")} == new
    third = cli("sweep", GRIDS / "smoke.yaml", "--data", data, "--out", sweep, "--dry-run", "--json", cwd=tmp_path)
    assert {r["action"] for r in json.loads(third.stdout)} == {"skip"}
