"""Experiment trackers (loopscale.trackers): the grid's section, run ids, the up-front package check, and
tiny real runs read back with each tracker's own reader (TensorBoard's EventAccumulator, MLflow's
client, the records of wandb's offline .wandb file), resumed runs, and trackers that fail or are slow."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from loopscale.analysis.regime import RECIPE_COLUMNS, mixed_recipe
from loopscale.config import ConfigError, run_config_from_dict
from loopscale.grid import GridError, grid_from_dict
from loopscale.trackers import KINDS
from loopscale.trackers.base import Background, Tracker
from loopscale.trackers.section import TrackerSectionError, check_available, from_dict
from loopscale.training.train import train_run, write_run_config
from sweep_fixtures import cli_in_process

BASE = {"name": "g", "model": {"n_layers_eff": 4, "n_prelude": 1, "n_coda": 1, "head_dim": 16},
        "train": {"seq_len": 32, "batch_tokens": 256, "log_every": 2, "threads": 1},
        "data": {"eval_tokens": 512}, "vocab_size": 256, "r": [1, 2], "widths": [32], "tokens": [3072]}
STEPS = 12  # 3072 tokens / 256 a step


def grid(tmp_path: Path, data_dir: Path | str = "/data/x", **over):
    raw = {**BASE, "data": {**BASE["data"], "dir": str(data_dir)}, **over}
    return grid_from_dict(raw, "g.yaml", cwd=tmp_path)


def run_folder(tmp_path: Path, tiny_data: Path, tracker: dict, **train) -> Path:
    """One r = 2 run of the grid in <tmp>/sweep/runs/<id>, its config.yaml as the sweep writes it."""
    spec = [s for s in grid(tmp_path, tiny_data, tracker=tracker).runs if s.r == 2][0]
    cfg = spec.config
    if train:
        import dataclasses

        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train))
    run_dir = tmp_path / "sweep" / "runs" / cfg.run_id()
    write_run_config(run_dir, cfg)
    return run_dir


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


class StopAt(threading.Event):
    """A stop request the trainer sees at step ``step`` (it asks once per step); with ``crash``, the
    question raises instead: the process dies there, after the checkpoints it had written."""

    def __init__(self, step: int, crash: bool = False):
        super().__init__()
        self.asked, self.step, self.crash = 0, step, crash

    def is_set(self) -> bool:
        self.asked += 1
        if self.asked > self.step and self.crash:
            raise RuntimeError("killed")
        return self.asked > self.step


# --- the grid's section -----------------------------------------------------------------------------

def test_sections_parse_into_every_runs_config(tmp_path):
    g = grid(tmp_path, tracker={"kind": "wandb", "project": "loops", "entity": "me", "mode": "offline"})
    assert g.tracker.kind == "wandb" and g.tracker.sweep == "g" and g.tracker.project == "loops"
    assert all(s.config.tracker == g.tracker for s in g.runs)
    d = g.runs[0].config.to_dict()
    assert d["tracker"] == {"kind": "wandb", "sweep": "g", "project": "loops", "entity": "me", "mode": "offline"}
    assert run_config_from_dict(yaml.safe_load(yaml.safe_dump(d))) == g.runs[0].config  # config.yaml round trip
    ml = grid(tmp_path, tracker={"kind": "mlflow", "tracking_uri": "store/mlruns"})
    assert ml.tracker.tracking_uri == (tmp_path / "store" / "mlruns").resolve().as_uri()
    assert grid(tmp_path, tracker={"kind": "mlflow", "tracking_uri": "http://host:5000"}).tracker.tracking_uri == \
        "http://host:5000"
    assert grid(tmp_path).tracker is None and "tracker" not in grid(tmp_path).runs[0].config.to_dict()


@pytest.mark.parametrize("section, words", [
    ({"kind": "neptune"}, "tracker.kind: unknown tracker 'neptune'; choose one of wandb, tensorboard, mlflow"),
    ({"project": "x"}, "tracker.kind: unknown tracker None"),
    ({"kind": "tensorboard", "project": "x"}, "tracker.project: unknown key for kind tensorboard (allowed: kind)"),
    ({"kind": "mlflow", "entity": "x"}, "tracker.entity: unknown key for kind mlflow"),
    ({"kind": "wandb", "mode": "sideways"}, "tracker.mode: unknown mode 'sideways'; choose online or offline"),
    ({"kind": "wandb", "project": 3}, "tracker.project: expected a non-empty string, got 3"),
    ({"kind": "wandb", "sweep": "x"}, "tracker.sweep: unknown key for kind wandb"),
    ("tensorboard", "tracker: expected a mapping such as {kind: tensorboard}"),
])
def test_bad_sections_are_one_line_grid_errors(tmp_path, section, words):
    with pytest.raises(GridError) as e:
        grid(tmp_path, tracker=section)
    assert str(e.value).startswith("g.yaml: ") and words in str(e.value) and "\n" not in str(e.value)


def test_bad_section_on_the_command_line_exits_2(tmp_path, capsys):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({**BASE, "data": {"dir": "/data/x", "eval_tokens": 512},
                                    "tracker": {"kind": "tensorbored"}}))
    code, out, err = cli_in_process(["sweep", path, "--dry-run", "--out", tmp_path / "sweep"], capsys)
    assert code == 2 and "tracker.kind: unknown tracker 'tensorbored'" in err and len(err.strip().splitlines()) == 1


def test_the_dry_run_says_where_the_runs_log(tmp_path):
    from loopscale.commands.sweep import tracker_line

    out = tmp_path / "sweep"
    assert tracker_line(grid(tmp_path), out).startswith("tracker: none")
    assert tracker_line(grid(tmp_path, tracker={"kind": "tensorboard"}), out) == \
        f"tracker: tensorboard (event files in {out}/runs/<run_id>/tensorboard/)"
    ml = grid(tmp_path, tracker={"kind": "mlflow"})
    assert tracker_line(ml, out) == f"tracker: mlflow (file store {out}/mlruns, experiment g)"
    wb = grid(tmp_path, tracker={"kind": "wandb", "project": "loops", "mode": "offline"})
    assert tracker_line(wb, out) == "tracker: wandb (project loops, group g, mode offline)"


def test_config_yaml_with_a_bad_tracker_is_a_config_error(tmp_path):
    d = grid(tmp_path, tracker={"kind": "tensorboard"}).runs[0].config.to_dict()
    with pytest.raises(ConfigError, match="tracker.kind: unknown tracker 'x'"):
        run_config_from_dict({**d, "tracker": {"kind": "x"}})


def test_the_tracker_changes_no_run_id_and_no_recipe(tmp_path):
    plain = grid(tmp_path)
    for section in ({"kind": "tensorboard"}, {"kind": "wandb", "project": "p"}, {"kind": "mlflow"}):
        tracked = grid(tmp_path, tracker=section)
        assert [s.run_id for s in tracked.runs] == [s.run_id for s in plain.runs]
        assert all("tracker" not in s.config.semantic_dict() for s in tracked.runs)
    assert not any(c.startswith("tracker") for c in RECIPE_COLUMNS)
    import pandas as pd

    # one run logged to wandb, one to nothing: the fit still sees one recipe
    table = pd.DataFrame([{"train.optimizer": "adamw", "train.seq_len": 32, "tracker.kind": "wandb"},
                          {"train.optimizer": "adamw", "train.seq_len": 32, "tracker.kind": None}])
    assert mixed_recipe(table) == {}


# --- the up-front package check -------------------------------------------------------------------

def test_each_kind_of_the_registry_has_one_tracker_class_and_the_section_takes_its_keys():
    from loopscale.trackers.factory import CLASSES
    from loopscale.trackers.section import KEYS

    assert list(CLASSES) == list(KINDS) == list(KEYS) == ["wandb", "tensorboard", "mlflow"]
    assert all(issubclass(cls, Tracker) and cls.kind == kind for kind, cls in CLASSES.items())
    assert {kind: k.keys for kind, k in KINDS.items()} == KEYS


def test_the_section_parser_loads_no_tracker_and_no_torch():
    """The config and the grid read the section: the registry and the parser alone, never a tracker class."""
    code = ("import sys, loopscale.config, loopscale.grid; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'torch' or m.endswith('_tracker') "
            "or m in ('loopscale.trackers.factory', 'loopscale.trackers.base')); assert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("kind, module", [(kind, k.package) for kind, k in KINDS.items()])
def test_a_missing_package_names_its_extra(kind, module, monkeypatch):
    check_available(from_dict({"kind": kind}))  # installed here (make install: the trackers extra)
    monkeypatch.setitem(sys.modules, module, None)  # now `import <module>` raises ImportError
    with pytest.raises(ImportError):
        __import__(module)
    with pytest.raises(TrackerSectionError) as e:
        check_available(from_dict({"kind": kind}))
    assert f"pip install 'loopscale[{kind}]'" in str(e.value) and "\n" not in str(e.value)


def test_a_missing_package_stops_the_sweep_before_anything_is_submitted(tmp_path, tiny_data, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({**BASE, "data": {"dir": str(tiny_data), "eval_tokens": 512},
                                    "tracker": {"kind": "wandb"}}))
    sweep_dir = tmp_path / "sweep"
    for extra in (["--dry-run"], ["--executor", "debug"]):
        code, out, err = cli_in_process(["sweep", path, "--out", sweep_dir, *extra], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "needs the wandb package" in err and "pip install 'loopscale[wandb]'" in err
        assert not sweep_dir.exists()


# --- TensorBoard ----------------------------------------------------------------------------------

def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.slow
def test_tensorboard_event_files_hold_the_logged_scalars(tmp_path, tiny_data):
    run_dir = run_folder(tmp_path, tiny_data, {"kind": "tensorboard"})
    rec = train_run(run_dir)
    got = scalars(run_dir / "tensorboard")
    lines = metrics(run_dir)
    assert [s for s, _ in got["train/loss"]] == [ln["step"] for ln in lines] == list(range(2, STEPS + 1, 2))
    assert [v for _, v in got["train/loss"]] == pytest.approx([ln["loss"] for ln in lines], rel=1e-6)
    assert [v for _, v in got["lr_factor"]] == pytest.approx([ln["lr_factor"] for ln in lines], rel=1e-6)
    assert [v for _, v in got["train/tokens"]] == [ln["tokens"] for ln in lines]
    assert len(got["train/tokens_per_s"]) == len(lines) and "mfu" not in got  # no MFU on a CPU
    assert got["val_loss"] == [(STEPS, pytest.approx(rec["val_loss"], rel=1e-6))]
    assert rec["status"] == "done" and rec["run_id"] == run_dir.name


@pytest.mark.slow
def test_tensorboard_after_a_crash_and_resume_has_each_step_once(tmp_path, tiny_data):
    run_dir = run_folder(tmp_path, tiny_data, {"kind": "tensorboard"}, checkpoint_every_steps=4)
    with pytest.raises(RuntimeError, match="killed"):
        train_run(run_dir, stop=StopAt(6, crash=True))  # dies at step 6, past its checkpoint at 4
    assert scalars(run_dir / "tensorboard")["train/loss"][-1][0] == 6
    rec = train_run(run_dir)  # resumes from step 4: steps 5 and 6 again
    assert rec["resumed_from_step"] == 4
    steps = [s for s, _ in scalars(run_dir / "tensorboard")["train/loss"]]
    assert steps == list(range(2, STEPS + 1, 2))
    losses = [v for _, v in scalars(run_dir / "tensorboard")["train/loss"]]
    assert losses == pytest.approx([ln["loss"] for ln in metrics(run_dir)], rel=1e-6)


# --- MLflow ---------------------------------------------------------------------------------------

def mlflow_runs(store: Path, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store.as_uri())
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id])


@pytest.mark.slow
def test_mlflow_file_store_holds_params_metrics_and_the_run_name(tmp_path, tiny_data, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run_dir = run_folder(tmp_path, tiny_data, {"kind": "mlflow"})
    rec = train_run(run_dir)
    client, runs = mlflow_runs(tmp_path / "sweep" / "mlruns", "g")  # default store: <sweep>/mlruns
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == run_dir.name and run.info.status == "FINISHED"
    assert run.data.tags["loopscale.run_id"] == run_dir.name
    assert run.data.params["train.seq_len"] == "32" and run.data.params["model.r"] == "2"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    lines = metrics(run_dir)
    assert sorted((m.step, m.value) for m in history) == [(ln["step"], ln["loss"]) for ln in lines]
    assert run.data.metrics["val_loss"] == pytest.approx(rec["val_loss"])


@pytest.mark.slow
def test_mlflow_resumed_run_continues_its_run(tmp_path, tiny_data, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store = tmp_path / "store"
    run_dir = run_folder(tmp_path, tiny_data, {"kind": "mlflow", "tracking_uri": str(store)})
    stopped = train_run(run_dir, stop=StopAt(6))  # a preemption: checkpoint at step 6, to be requeued
    assert stopped["status"] == "stopped" and stopped["step"] == 6
    _, runs = mlflow_runs(store, "g")
    assert len(runs) == 1 and runs[0].info.status == "RUNNING"  # closed, not marked finished
    train_run(run_dir)
    client, runs = mlflow_runs(store, "g")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss"))
    assert steps == list(range(2, STEPS + 1, 2))


# --- wandb (offline) ------------------------------------------------------------------------------

def wandb_records(path: Path):
    """The protobuf records of a .wandb file, parsed with wandb's own Record message. The file is a
    LevelDB-style log (a 7-byte ':W&B' header, then 32 KiB blocks of chunks, each with a 7-byte header:
    crc32, length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    buf = path.read_bytes()
    assert buf[:4] == b":W&B"
    pos, parts = 7, []
    while pos + 7 <= len(buf):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", buf[pos : pos + 7])
        if kind == 0 and n == 0:  # zero padding to the end of the block
            pos += left
            continue
        parts.append(buf[pos + 7 : pos + 7 + n])
        pos += 7 + n
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(b"".join(parts))
            parts = []
            yield rec


def wandb_history(path: Path) -> tuple[dict, list[dict]]:
    """(the run record's fields, the history rows) of one offline run."""
    run, rows = {}, []
    for r in wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            config = {u.key: json.loads(u.value_json) for u in r.run.config.update}
            run = {"id": r.run.run_id, "project": r.run.project, "group": r.run.run_group,
                   "name": r.run.display_name, "config": config}
        elif kind == "history":
            rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item})
    return run, rows


@pytest.mark.slow
def test_wandb_offline_run_files_hold_the_config_and_history(tmp_path, tiny_data, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    (tmp_path / "wandb-dir").mkdir()
    run_dir = run_folder(tmp_path, tiny_data, {"kind": "wandb", "project": "loops"}, checkpoint_every_steps=4)
    stopped = train_run(run_dir, stop=StopAt(6))
    assert stopped["status"] == "stopped"
    rec = train_run(run_dir)  # requeued: the same wandb run goes on
    folders = sorted((tmp_path / "wandb-dir" / "wandb").glob("offline-run-*"))
    assert len(folders) == 2
    histories = [wandb_history(next(f.glob("run-*.wandb"))) for f in folders]
    (run1, rows1), (run2, rows2) = histories
    assert run1["id"] == run2["id"] and run1["id"].startswith(run_dir.name)
    assert run1["project"] == "loops" and run1["group"] == "g" and run1["name"] == run_dir.name
    assert run1["config"]["model"]["r"] == 2 and run1["config"]["train"]["seq_len"] == 32
    logged = [(row["train/step"], row["train/loss"]) for row in rows1 + rows2 if "train/loss" in row]
    assert logged == [(ln["step"], pytest.approx(ln["loss"])) for ln in metrics(run_dir)]
    assert [row["val_loss"] for row in rows2 if "val_loss" in row] == [pytest.approx(rec["val_loss"])]


@pytest.mark.slow
def test_wandb_mode_offline_in_the_section_is_honoured(tmp_path, tiny_data, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = run_folder(tmp_path, tiny_data, {"kind": "wandb", "mode": "offline"})
    train_run(run_dir)
    (folder,) = (run_dir / "wandb").glob("offline-run-*")  # in the run folder when WANDB_DIR is unset
    run, rows = wandb_history(next(folder.glob("run-*.wandb")))
    assert run["name"] == run_dir.name and len([r for r in rows if "train/loss" in r]) == STEPS // 2


# --- failures and slowness ------------------------------------------------------------------------

@pytest.mark.slow
def test_a_failing_tracker_never_fails_the_run(tmp_path, tiny_data, capsys):
    run_dir = run_folder(tmp_path, tiny_data, {"kind": "tensorboard"})
    (run_dir / "tensorboard").write_text("a file where the event folder goes")  # a real failure at start
    rec = train_run(run_dir)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "tracker" in ln]
    assert len(lines) == 1 and lines[0].startswith("loopscale: tracker tensorboard: start failed"), err
    assert "the run goes on" in lines[0]
    assert rec["status"] == "done" and (run_dir / "result.json").exists() and len(metrics(run_dir)) == STEPS // 2


class Raising(Tracker):
    def __init__(self):
        self.calls = []

    def start(self, config, resumed_from):
        self.calls.append("start")

    def log(self, step, metrics):
        self.calls.append(step)
        if step == 20:
            raise OSError("disk full\nsecond line")

    def finish(self, status, val_loss, step):
        self.calls.append("finish")


def test_the_first_failure_prints_one_line_and_disables_the_tracker(capsys):
    tracker = Raising()
    bg = Background(lambda: tracker, "raising")
    bg.start({}, None)
    for step in (10, 20, 30):
        bg.log(step, {"loss": 1.0})
    bg.finish("done", 1.0, 30)
    assert bg.wait(10)
    assert tracker.calls == ["start", 10, 20] and bg.failed
    err = capsys.readouterr().err.splitlines()
    assert err == ["loopscale: tracker raising: log failed (OSError: disk full); logging to it stops, the run goes on"]


class Slow(Tracker):
    def __init__(self):
        self.logged = []

    def start(self, config, resumed_from):
        time.sleep(0.5)

    def log(self, step, metrics):
        time.sleep(0.2)
        self.logged.append((step, metrics))

    def finish(self, status, val_loss, step):
        pass


def test_a_slow_tracker_never_blocks_the_training_loop():
    tracker = Slow()
    bg = Background(lambda: tracker, "slow")
    t0 = time.perf_counter()
    bg.start({}, None)
    for step in range(10, 60, 10):
        bg.log(step, {"step": step, "loss": 2.0, "mfu": None, "lr_factor": float("nan")})
    handed = time.perf_counter() - t0
    assert handed < 0.05, handed  # the tracker needs 1.5 s for these
    bg.finish("done", 1.5, 50)
    assert bg.wait(10)
    assert [s for s, _ in tracker.logged] == [10, 20, 30, 40, 50]
    assert tracker.logged[0][1] == {"train/loss": 2.0}  # no None, no NaN; names as the trackers log them


@pytest.mark.slow
def test_a_debug_sweep_carries_the_tracker_to_its_runs(tmp_path, tiny_data, capsys):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({**BASE, "r": [2], "data": {"dir": str(tiny_data), "eval_tokens": 512},
                                    "tracker": {"kind": "tensorboard"}}))
    sweep_dir = tmp_path / "sweep"
    code, out, err = cli_in_process(["sweep", path, "--out", sweep_dir, "--executor", "debug"], capsys)
    assert code == 0, err
    (run_dir,) = (sweep_dir / "runs").iterdir()
    assert run_dir.name == [s.run_id for s in grid(tmp_path, tiny_data).runs if s.r == 2][0]  # the id without a tracker
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["tracker"] == {"kind": "tensorboard", "sweep": "g"}
    assert len(scalars(run_dir / "tensorboard")["train/loss"]) == STEPS // 2
    assert json.loads((run_dir / "result.json").read_text())["status"] == "done"
