"""What a sweep's runs are doing now (loopscale.live): the tail read of metrics.jsonl, each run's step, loss,
rate and ETA, the sweep's FLOPs done and ETA, and `loopscale status --json / --watch`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from rich.console import Console
from sweep_fixtures import cli, cli_in_process, fake_result
from test_store import smoke_specs

from loopscale import live, schedule
from loopscale.commands.console import duration, step_text
from loopscale.commands.sweep import ConsoleProgress
from loopscale.live import Planned, last_metrics, run_live, sweep_live
from loopscale.store import RunState
from loopscale.submit import write_config


def metric(step: int, **extra) -> dict:
    return {"step": step, "tokens": step * 2048, "loss": 5.0 - step / 1000, "lr_factor": 1.0,
            "tokens_per_s": 4096.0, "mfu": None, **extra}


def write_metrics(path, steps, tail: bytes = b"") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(json.dumps(metric(s)).encode() + b"\n" for s in steps) + tail)


# --- the tail read ---------------------------------------------------------------------------------

def test_last_line_and_a_partial_last_line(tmp_path):
    p = tmp_path / "metrics.jsonl"
    write_metrics(p, range(1, 51))
    assert last_metrics(p)["step"] == 50
    write_metrics(p, range(1, 51), tail=b'{"step": 51, "tokens": 1044')  # the trainer mid-write
    assert last_metrics(p)["step"] == 50
    write_metrics(p, range(1, 51), tail=json.dumps(metric(51)).encode())  # complete, no newline yet
    assert last_metrics(p)["step"] == 51
    write_metrics(p, range(1, 51), tail=b"[1, 2]\n\n")  # not an object: the line before it
    assert last_metrics(p)["step"] == 50


def test_missing_empty_and_garbage_files_give_none(tmp_path):
    assert last_metrics(tmp_path / "nope.jsonl") is None
    assert last_metrics(tmp_path) is None  # a folder
    for content in (b"", b"\n\n", b'{"step": 3, "lo', os.urandom(20000).replace(b"{", b"x"), b"\xff\xfe{\n" * 3000):
        (tmp_path / "m.jsonl").write_bytes(content)
        assert last_metrics(tmp_path / "m.jsonl") is None, content[:20]


def test_a_big_file_is_read_from_its_end_only(tmp_path, monkeypatch):
    p = tmp_path / "metrics.jsonl"
    write_metrics(p, range(1, 40001))  # ~4 MB
    read = []
    pread = os.pread

    def counting(fd, n, offset):
        got = pread(fd, n, offset)
        read.append(len(got))
        return got

    monkeypatch.setattr(os, "pread", counting)
    assert p.stat().st_size > 3_000_000
    assert last_metrics(p)["step"] == 40000 and sum(read) <= live.TAIL_BYTES
    # a last line longer than the first window: the window grows until it holds the whole line
    long = json.dumps(metric(40001, note="x" * 30000)).encode() + b"\n"
    with open(p, "ab") as f:
        f.write(long)
    read.clear()
    rec = last_metrics(p)
    assert rec["step"] == 40001 and len(rec["note"]) == 30000
    assert len(long) < sum(read) <= 4 * 64 * 1024


# --- a run's fields, the sweep's sums --------------------------------------------------------------

PLAN = Planned(steps=400, tokens=400 * 2048, flops_per_token=1e6)


def test_a_running_run():
    r = run_live("a", "running", PLAN, metric(100, tokens_per_s=1024.0, loss=4.5))
    assert (r.step, r.steps, r.train_loss, r.tokens_per_s) == (100, 400, 4.5, 1024.0)
    assert r.eta_s == pytest.approx(300 * 2048 / 1024)  # remaining steps × tokens per step / tokens per second
    assert r.flops_planned == 400 * 2048 * 1e6 and r.flops_done == pytest.approx(r.flops_planned / 4)
    assert r.to_dict() == {"step": 100, "steps": 400, "train_loss": 4.5, "tokens_per_s": 1024.0, "eta_s": 600.0}


def test_runs_not_running_have_no_eta():
    done = run_live("d", "done", PLAN, metric(390))
    assert done.step == 400 and done.eta_s is None and done.flops_done == done.flops_planned
    assert done.train_loss == metric(390)["loss"]
    pending = run_live("p", "pending", PLAN, metric(200))  # requeued: its old metrics, no rate now
    assert pending.eta_s is None and pending.flops_done == pytest.approx(pending.flops_planned / 2)
    fresh = run_live("s", "running", PLAN, None)  # started, nothing logged yet
    assert (fresh.step, fresh.steps, fresh.eta_s, fresh.flops_done) == (None, 400, None, 0.0)
    failed = run_live("f", "failed", PLAN, metric(300))
    assert failed.step == 300 and failed.eta_s is None and failed.flops_done is None
    unknown = run_live("u", "running", Planned(None, None, None), metric(10))  # no readable config
    assert unknown.eta_s is None and unknown.flops_planned is None and unknown.steps is None


def test_the_sweeps_flops_done_and_eta():
    plan_b = Planned(steps=100, tokens=100 * 2048, flops_per_token=2e6)
    runs = [run_live("done", "done", PLAN, None),
            run_live("run1", "running", PLAN, metric(100, tokens_per_s=1000.0)),
            run_live("run2", "running", plan_b, metric(50, tokens_per_s=500.0)),
            run_live("wait", "pending", plan_b, None),
            run_live("fail", "failed", PLAN, metric(10)),
            run_live("new", "new", plan_b, None)]
    s = sweep_live(runs)
    f_a, f_b = PLAN.flops_total, plan_b.flops_total
    assert s.flops_planned == pytest.approx(3 * f_a + 3 * f_b)
    assert s.flops_done == pytest.approx(f_a + f_a / 4 + f_b / 2)
    assert s.flops_per_s == pytest.approx(1000 * 1e6 + 500 * 2e6)
    left = 0.75 * f_a + 0.5 * f_b + f_b  # the runs in flight: run1, run2, wait (not the failed or new runs)
    assert s.eta_s == pytest.approx(left / s.flops_per_s)
    assert s.in_flight == 3 and s.percent == pytest.approx(100 * s.flops_done / s.flops_planned)
    assert sweep_live(r for r in runs if r.run_id not in ("run1", "run2")).eta_s is None  # nothing runs
    assert sweep_live([]).summary() == {"flops_done": 0.0, "flops_planned": 0.0, "flops_per_s": 0.0, "eta_s": None}


def test_every_run_state_has_a_colour_and_a_place_in_the_tables():
    from loopscale.commands.console import STATE_ORDER, STATE_STYLE, state_order
    from loopscale.store import STATES

    assert sorted(STATE_STYLE) == sorted(STATE_ORDER) == sorted(STATES)
    assert [state_order(s) for s in ("running", "failed", "new", "stale", "diverged", "done")] == [0, 4, 9, 10, 11, 12]


def test_durations_and_steps_for_people():
    assert [duration(s) for s in (None, -1, 0.4, 45, 200, 3600 + 300, 3 * 86400 + 4 * 3600 + 59)] == [
        "-", "-", "0s", "45s", "3m 20s", "1h 05m", "3d 4h"]
    assert [step_text(*a) for a in ((None, None), (None, 400), (120, 400), (5, None))] == [
        "-", "-/400", "120/400", "5/?"]


# --- the command line ------------------------------------------------------------------------------

def me() -> dict:
    return {"pid": os.getpid(), "pid_start": schedule.process_start(os.getpid())}


def make_sweep(tmp_path, running_pid: dict | None = None):
    """Three smoke runs with their configs: one done, one running (metrics at step 5 of its steps), one new."""
    specs = smoke_specs()[:3]
    runs = tmp_path / "runs"
    for s in specs:
        (runs / s.run_id).mkdir(parents=True)
        write_config(runs / s.run_id, s)
    done, running, _ = specs
    fake_result(runs / done.run_id, done.run_id, loss=3.5)
    if running_pid is not None:
        (runs / running.run_id / "job.json").write_text(json.dumps(
            {"executor": "local", "job_id": "7", "host": socket.gethostname(), "workers": [running_pid]}))
        (runs / running.run_id / "started.json").write_text(json.dumps(running_pid))
        write_metrics(runs / running.run_id / "metrics.jsonl", range(1, 6), tail=b'{"step": 6, "tok')
    return specs


def test_status_json_has_the_live_fields(tmp_path, capsys):
    done, running, new = make_sweep(tmp_path, running_pid=me())
    code, out, err = cli_in_process(["status", tmp_path, "--json"], capsys)
    assert code == 0, err
    got = json.loads(out)
    assert {"sweep", "counts", "runs", "flops_done", "flops_planned", "eta_s"} <= set(got)
    runs = {r["run_id"]: r for r in got["runs"]}
    for r in runs.values():  # the keys status --json always had, and the new ones
        assert {"run_id", "r", "d_model", "probe", "seed", "tokens", "budget_flops", "loss", "detail", "job_id",
                "state", "step", "steps", "train_loss", "tokens_per_s", "eta_s"} <= set(r)
    cfg = running.config
    r = runs[running.run_id]
    assert r["state"] == "running" and (r["step"], r["steps"]) == (5, cfg.iterations())
    assert r["train_loss"] == metric(5)["loss"] and r["tokens_per_s"] == 4096.0
    assert r["eta_s"] == pytest.approx((cfg.iterations() - 5) * cfg.train.batch_tokens / 4096.0)
    d = runs[done.run_id]  # fake_result's record: 16 iterations, 16384 tokens, 1e6 FLOPs/token
    assert (d["step"], d["steps"], d["eta_s"], d["train_loss"]) == (16, 16, None, None)
    assert runs[new.run_id]["step"] is None and runs[new.run_id]["steps"] == new.config.iterations()
    planned = 16384 * 1e6 + running.config.tokens() * running.config.flops_per_token() + \
        new.config.tokens() * new.config.flops_per_token()
    assert got["flops_planned"] == pytest.approx(planned)
    assert got["flops_done"] == pytest.approx(16384 * 1e6 + 5 / cfg.iterations() * cfg.tokens() * cfg.flops_per_token())
    assert got["eta_s"] == pytest.approx((planned - got["flops_done"] - new.config.tokens() * new.config.flops_per_token())
                                         / (4096.0 * cfg.flops_per_token()))
    code, out, err = cli_in_process(["status", tmp_path], capsys)  # the table shows them too
    assert code == 0 and f"5/{cfg.iterations()}" in out and "4.1k" in out and "FLOPs" in out and "ETA" in out


def test_watch_with_nothing_in_flight_prints_the_table_and_exits(tmp_path):
    done, _, _ = make_sweep(tmp_path)
    t0 = time.time()
    out = cli("status", tmp_path, "--watch", "--every", "30")
    assert out.returncode == 0, out.stderr
    assert time.time() - t0 < 20  # not one --every wait
    assert done.run_id in out.stdout and "done 1" in out.stdout and "new 2" in out.stdout
    assert "16/16" in out.stdout and "FLOPs" in out.stdout and "100.0%" not in out.stdout


def test_watch_follows_runs_in_flight_until_they_end(tmp_path):
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        rec = {"pid": worker.pid, "pid_start": schedule.process_start(worker.pid)}
        _, running, new = make_sweep(tmp_path, running_pid=rec)
        watch = subprocess.Popen([sys.executable, "-m", "loopscale.cli", "status", str(tmp_path), "--watch", "--every",
                                  "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=dict(os.environ, COLUMNS="200"))
        first = watch.stdout.readline()
        time.sleep(1)  # a few refreshes in which nothing changes
    finally:
        worker.kill()  # the run's process ends without a record: lost, nothing in flight
        worker.wait()
    rest, err = watch.communicate(timeout=60)
    assert watch.returncode == 0, err
    cfg = running.config
    done_flops = 16384 * 1e6 + 5 / cfg.iterations() * cfg.tokens() * cfg.flops_per_token()
    planned = 16384 * 1e6 + sum(s.config.tokens() * s.config.flops_per_token() for s in (running, new))
    eta = duration((cfg.iterations() - 5) * cfg.train.batch_tokens / 4096)
    assert "running 1" in first and f"FLOPs {100 * done_flops / planned:.1f}%" in first and f"ETA {eta}" in first
    assert "running 1" not in rest  # printed again only when something changes
    assert "lost 1" in rest and running.run_id in rest and "step" in rest  # then the table, once its process ended


@pytest.mark.parametrize("args, words", [(["--watch", "--json"], "--watch and --json"),
                                         (["--watch", "--every", "0"], "--every"),
                                         (["--every", "-1"], "--every"),
                                         (["--watch", "--every", "nan"], "--every")])
def test_bad_watch_flags_are_one_line(tmp_path, capsys, args, words):
    make_sweep(tmp_path)
    code, out, err = cli_in_process(["status", tmp_path, *args], capsys)
    assert code == 2 and words in err and err.strip().count("\n") == 0 and not out, err


def test_sweep_wait_table_shows_the_same_columns(tmp_path):
    from loopscale.submit import plan

    specs = smoke_specs()[:2]
    rows = plan(specs, {s.run_id: RunState(s.run_id, "new") for s in specs}, False)
    write_metrics(tmp_path / "runs" / specs[0].run_id / "metrics.jsonl", range(1, 4))
    console = Console(record=True, width=200)
    progress = ConsoleProgress(console, as_json=False)
    progress.outcome = SimpleNamespace(plan=SimpleNamespace(rows=rows, sweep_dir=tmp_path))
    states = {specs[0].run_id: RunState(specs[0].run_id, "running"), specs[1].run_id: RunState(specs[1].run_id, "pending")}
    console.print(progress.render(states))
    text = console.export_text()
    for head in ("step", "train loss", "val loss", "tok/s", "ETA"):
        assert head in text
    steps = specs[0].config.iterations()
    assert f"3/{steps}" in text and duration((steps - 3) * specs[0].config.train.batch_tokens / 4096) in text
    assert "running 1" in text and "FLOPs" in text


def test_the_live_view_fits_the_screen_runs_in_flight_first():
    from loopscale.commands.console import status_view

    entries = [{"run_id": f"run{i:03d}", "r": 1, "d_model": 8, "probe": "none", "tokens": 4096, "loss": 3.0,
                "state": "done", "detail": None, **run_live(f"run{i:03d}", "done", PLAN, None).to_dict()}
               for i in range(40)]
    entries.append({"run_id": "flying", "r": 4, "d_model": 8, "probe": "none", "tokens": 4096, "loss": None,
                    "state": "running", "detail": "local job 1, pid 2 " + "x" * 300,
                    **run_live("flying", "running", PLAN, metric(100, tokens_per_s=1024.0)).to_dict()})
    now = sweep_live([run_live("flying", "running", PLAN, metric(100, tokens_per_s=1024.0))])
    console = Console(record=True, width=120, height=20)
    console.print(status_view(entries, {"running": 1, "done": 40}, now, "title", console.height))
    lines = console.export_text().splitlines()
    assert len(lines) <= 20 and all(len(ln) <= 120 for ln in lines)
    assert lines[0] == "title" and lines[1].startswith("running 1") and lines[2].startswith("FLOPs")
    assert "flying" in lines[6] and "100/400" in lines[6] and "10m 00s" in lines[6]  # first row: the run in flight
    assert lines[-1].startswith("29 more run(s) not shown: done 29")
