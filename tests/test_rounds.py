"""`loopscale sweep GRID --until-ci W` (loopscale.rounds): the rounds driven by constructed results (a stand-in
for submission writes each run's result.json from a known law: rounds_fixtures.FakeSubmit), each stop reason,
resume after an interrupt, a failed run retried once then left out, the records' fields, `status`, bad input,
and, marked slow, two real rounds on the debug executor."""

from __future__ import annotations

import json
import shlex
import shutil

import pytest

import loopscale.rounds.loop as loop
from loopscale.analysis.adaptive import build_space
from loopscale.grid import load_grid
from loopscale.rounds import read_rounds
from loopscale.rounds.records import resume_command, summary, summary_line
from rounds_fixtures import DEBUG, FakeSubmit
from sweep_fixtures import GRIDS, cli, cli_in_process

SMOKE_ADAPTIVE = """name: smoke-adaptive
model: {n_layers_eff: 4, n_prelude: 1, n_coda: 1, head_dim: 8}
train: {seq_len: 32, batch_tokens: 512, log_every: 4, threads: 1}
data: {eval_tokens: 1024}
r: [1, 2]
flops:
  2.0e8: [8, 16, 24]
  4.0e8: [8, 16, 24]
  8.0e8: [16, 24, 32]
adaptive: {pilot: [2.0e8, 4.0e8], widths: [8, 16, 24, 32]}
executor: {kind: debug}
"""


@pytest.fixture
def tiny_adaptive(tiny_data):
    grid = load_grid(GRIDS / "tiny-adaptive.yaml", data_dir=tiny_data)
    return grid, build_space(grid)


def settings(space, target=0.25, batch=4, cap=None, wait=True):
    return loop.Settings(target=target, cap_flops=cap if cap is not None else 2 * space.fixed_flops, batch=batch,
                         wait=wait)


def drive(monkeypatch, grid, space, sweep_dir, s, fake=None, lines=None):
    fake = fake or FakeSubmit()
    monkeypatch.setattr(loop, "submit", fake)
    word = loop.until_stop(grid, space, sweep_dir, DEBUG, s, say=(lines.append if lines is not None else
                                                                  lambda line: None))
    return word, fake


def test_tiny_adaptive_shares_tiny_run_ids(tiny_data, tiny_adaptive):
    grid, space = tiny_adaptive
    tiny = load_grid(GRIDS / "tiny.yaml", data_dir=tiny_data)
    assert grid.name == "tiny" and sorted(s.run_id for s in grid.runs) == sorted(s.run_id for s in tiny.runs)
    # every pick the fixed grid also lists becomes the fixed grid's run (same id): trained once
    from loopscale.rounds.picks import spec_key, specs_for

    ids = {spec_key(s): s.run_id for s in tiny.runs}
    picks = specs_for(grid, space, range(len(space.table)))
    shared = [s for s in picks if spec_key(s) in ids]
    assert len(shared) >= 36 and all(s.run_id == ids[spec_key(s)] for s in shared)
    assert space.end_budgets == (1e11, 8e11)


def test_rounds_until_the_target_and_their_records(monkeypatch, tmp_path, tiny_adaptive):
    grid, space = tiny_adaptive
    lines: list[str] = []
    word, fake = drive(monkeypatch, grid, space, tmp_path, settings(space), lines=lines)
    assert word == "stopped"
    recs = read_rounds(tmp_path)
    assert [r["round"] for r in recs] == list(range(len(recs))) and len(recs) >= 3
    pilot = recs[0]
    assert pilot["look"] is None and {r["why"] for r in pilot["runs"]} == {"pilot"}
    assert len(pilot["runs"]) == int(space.pilot.sum())
    for rec in recs:
        assert {"round", "at", "target", "cap_flops", "batch", "look", "runs", "predicted_width", "retried",
                "left_out", "flops_so_far", "stop", "stop_line"} <= set(rec)
    for rec in recs[1:-1]:
        assert rec["stop"] is None and 1 <= len(rec["runs"]) <= 4
        assert {"phi", "ci", "width", "r2", "split_half", "checks", "verdict", "rule_held"} <= set(rec["look"])
        for run in rec["runs"]:
            assert {"run_id", "budget_flops", "width", "r", "seed", "flops", "why", "width_after"} <= set(run)
    flops = [r["flops_so_far"] for r in recs]
    assert flops == sorted(flops)
    last = recs[-1]
    assert last["stop"] == "target" and last["runs"] == [] and last["look"]["width"] <= 0.25
    assert last["look"]["verdict"] == "trustworthy" and last["look"]["rule_held"]
    confirmed = last["look"]["fit_confirms"]  # `fit` itself, on the design's runs, bore the stop out
    assert confirmed["trustworthy"] and confirmed["width"] <= 0.25 and "`fit`'s own CI width" in last["stop_line"]
    assert "target met and trustworthy" in lines[-1]
    assert len(fake.trained) == len(set(fake.trained))  # no run twice
    # the rule: both end budgets for every r in the final design
    chosen = [run for r in recs for run in r["runs"]]
    assert {(run["budget_flops"], run["r"]) for run in chosen} >= {(8e11, 1), (8e11, 4), (1e11, 1), (1e11, 4)}
    # a rerun of the same command says it stopped and trains nothing
    again = []
    word, fake2 = drive(monkeypatch, grid, space, tmp_path, settings(space), lines=again)
    assert word == "stopped" and fake2.trained == [] and len(read_rounds(tmp_path)) == len(recs)
    assert "target met" in again[0]
    s = summary(tmp_path)
    assert s["round"] == last["round"] and s["target"] == 0.25 and "target 0.25" in summary_line(s)


def test_a_target_stop_that_fit_does_not_bear_out_goes_on(monkeypatch, tmp_path, tiny_adaptive):
    """The look's cheap CI says the target is met, `fit`'s own CI is wider: no stop, the round chooses runs."""
    grid, space = tiny_adaptive
    asked = []
    monkeypatch.setattr(loop, "fit_confirms", lambda table, ids, say: asked.append(len(ids)) or (0.9, True))
    lines: list[str] = []
    word, _ = drive(monkeypatch, grid, space, tmp_path, settings(space), lines=lines)
    recs = read_rounds(tmp_path)
    assert asked, "the look never reached the target"
    for rec in recs:
        assert rec["stop"] != "target"
    rejected = [r for r in recs if r["look"] and r["look"]["fit_confirms"]]
    assert rejected and rejected[0]["look"]["fit_confirms"] == {"width": 0.9, "trustworthy": True}
    assert rejected[0]["runs"] or rejected[0]["stop"] in ("budget", "no_help")
    assert any("not stopping: `fit`'s own CI width 0.900" in line for line in lines)


def test_stop_budget(monkeypatch, tmp_path, tiny_adaptive):
    grid, space = tiny_adaptive
    word, _ = drive(monkeypatch, grid, space, tmp_path, settings(space, cap=space.pilot_flops * 1.01))
    recs = read_rounds(tmp_path)
    assert word == "stopped" and recs[-1]["stop"] == "budget" and recs[-1]["round"] == 1
    assert "budget spent" in recs[-1]["stop_line"]


def test_stop_no_help(monkeypatch, tmp_path, tiny_data):
    text = (GRIDS / "tiny-adaptive.yaml").read_text().replace(
        "budgets: [1.0e11, 1.4e11, 2.0e11, 2.8e11, 4.0e11, 5.6e11, 8.0e11]", "budgets: [1.0e11, 1.4e11]").replace(
        "widths: [8, 16, 24, 32]", "widths: [8, 16, 24]")
    (tmp_path / "g.yaml").write_text(text)
    grid = load_grid(tmp_path / "g.yaml", data_dir=tiny_data)
    space = build_space(grid)
    assert not (~space.pilot).any()  # nothing to choose beyond the pilot
    word, _ = drive(monkeypatch, grid, space, tmp_path / "sw", settings(space, target=0.01))
    recs = read_rounds(tmp_path / "sw")
    assert word == "stopped" and recs[-1]["stop"] == "no_help"
    assert "no candidate expected to help" in recs[-1]["stop_line"]


def test_one_round_per_call_without_wait_and_resume_after_an_interrupt(monkeypatch, tmp_path, tiny_adaptive):
    grid, space = tiny_adaptive
    s = settings(space, wait=False)
    fake = FakeSubmit()
    monkeypatch.setattr(loop, "submit", fake)
    local = type(DEBUG)(kind="local")  # not the debug executor: one step per call
    assert loop.until_stop(grid, space, tmp_path, local, s, say=lambda line: None) == "submitted"
    assert [r["round"] for r in read_rounds(tmp_path)] == [0]
    assert loop.until_stop(grid, space, tmp_path, local, s, say=lambda line: None) == "submitted"
    assert [r["round"] for r in read_rounds(tmp_path)] == [0, 1]

    def interrupted(*args):  # the round is recorded, then the machine is lost before its runs go out
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "submit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        loop.until_stop(grid, space, tmp_path, local, s, say=lambda line: None)
    recs = read_rounds(tmp_path)
    assert [r["round"] for r in recs] == [0, 1, 2]
    unsent = [run["run_id"] for run in recs[2]["runs"]]
    assert unsent and not any((tmp_path / "runs" / rid).exists() for rid in unsent)
    # the same command again: the recorded round's runs go out first (no new round chosen), then it goes on
    monkeypatch.setattr(loop, "submit", fake)
    lines: list[str] = []
    assert loop.until_stop(grid, space, tmp_path, local, s, say=lines.append) == "waiting"
    assert "submitted" in lines[0] and [r["round"] for r in read_rounds(tmp_path)] == [0, 1, 2]
    assert all((tmp_path / "runs" / rid / "result.json").exists() for rid in unsent)
    resume = shlex.split(resume_command(tmp_path))  # what `loopscale cancel` prints while rounds are under way
    assert resume[:5] == ["loopscale", "sweep", str(grid.path), "--out", str(tmp_path)] and resume[-1] == "--wait"
    assert float(resume[resume.index("--until-ci") + 1]) == s.target
    assert float(resume[resume.index("--max-flops") + 1]) == s.cap_flops  # the same cap: the rounds go on
    word, _ = drive(monkeypatch, grid, space, tmp_path, settings(space), fake=fake)
    assert word == "stopped" and len(fake.trained) == len(set(fake.trained))  # no run trained twice
    assert resume_command(tmp_path) is None  # stopped: nothing to go on with


def test_a_failed_run_is_retried_once_then_left_out(monkeypatch, tmp_path, tiny_adaptive):
    grid, space = tiny_adaptive
    bad = str(space.table["run_id"].iloc[1])  # a pilot run
    word, fake = drive(monkeypatch, grid, space, tmp_path, settings(space), fake=FakeSubmit(fail={bad: 5}))
    recs = read_rounds(tmp_path)
    assert recs[1]["retried"] == [bad] and recs[2]["left_out"] == [bad]
    assert fake.trained.count(bad) == 2
    assert all(bad not in c for c in fake.calls[3:])  # left out: never submitted again
    assert word == "stopped"


def test_a_run_that_fails_once_is_retried_and_used(monkeypatch, tmp_path, tiny_adaptive):
    grid, space = tiny_adaptive
    bad = str(space.table["run_id"].iloc[1])
    drive(monkeypatch, grid, space, tmp_path, settings(space), fake=FakeSubmit(fail={bad: 1}))
    recs = read_rounds(tmp_path)
    assert recs[1]["retried"] == [bad] and all(not r["left_out"] for r in recs)
    assert recs[2]["look"]["runs_fitted"] == len(recs[0]["runs"]) + len(recs[1]["runs"])


@pytest.mark.parametrize("args, words", [
    (["--until-ci", "0"], "--until-ci must be a positive"),
    (["--until-ci", "-0.1"], "--until-ci must be a positive"),
    (["--until-ci", "0.2", "--dry-run"], "its pilot would train 14 run(s)"),
    (["--until-ci", "0.2", "--probe", "hyperconn"], "not built yet"),
    (["--until-ci", "0.2", "--max-flops", "1e12", "--max-hours", "1"], "give one"),
    (["--until-ci", "0.2", "--batch", "0"], "--batch must be at least 1"),
    (["--max-flops", "1e12"], "go with --until-ci"),
])
def test_bad_input_one_line_exit_2(capsys, tmp_path, tiny_data, args, words):
    code, out, err = cli_in_process(["sweep", GRIDS / "tiny-adaptive.yaml", "--data", tiny_data, "--out",
                                     tmp_path / "sw", *args], capsys)
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "sw").exists()


def test_token_grid_refused(capsys, tmp_path, tiny_data):
    code, _, err = cli_in_process(["sweep", GRIDS / "smoke.yaml", "--data", tiny_data, "--out", tmp_path / "sw",
                                   "--until-ci", "0.3"], capsys)
    assert code == 2 and "grid of FLOP budgets" in err and len(err.strip().splitlines()) == 1


def test_status_shows_the_round_the_ci_and_the_target(monkeypatch, tmp_path, tiny_adaptive, capsys):
    grid, space = tiny_adaptive
    drive(monkeypatch, grid, space, tmp_path, settings(space, cap=space.pilot_flops * 1.01))
    code, out, _ = cli_in_process(["status", tmp_path, "--json"], capsys)
    doc = json.loads(out)
    assert code == 0 and doc["adaptive"]["round"] == 1 and doc["adaptive"]["target"] == 0.25
    assert doc["adaptive"]["stop"] == "budget" and len(doc["adaptive"]["ci"]) == 2
    code, out, _ = cli_in_process(["status", tmp_path], capsys)
    assert code == 0 and "adaptive: round 1" in out and "target 0.25" in out


@pytest.mark.slow
def test_two_real_rounds_on_the_debug_executor(tmp_path, tiny_data):
    (tmp_path / "g.yaml").write_text(SMOKE_ADAPTIVE)
    sweep_dir = tmp_path / "sw"
    args = ["sweep", tmp_path / "g.yaml", "--data", tiny_data, "--out", sweep_dir, "--executor", "debug",
            "--until-ci", "10", "--batch", "2", "--max-flops", "5.2e9"]
    out = cli(*args)
    assert out.returncode == 0, out.stderr + out.stdout
    recs = read_rounds(sweep_dir)
    assert [r["round"] for r in recs] == [0, 1, 2] and len(recs[1]["runs"]) == 2
    assert recs[2]["stop"] == "budget" and recs[2]["look"]["runs_fitted"] == 14
    assert "round 2: stopped, budget spent" in out.stdout
    done = {p.parent.name for p in (sweep_dir / "runs").glob("*/result.json")}
    assert done == {run["run_id"] for r in recs for run in r["runs"]}
    again = cli(*args)  # the same command: stopped, nothing trained
    assert again.returncode == 0 and "stopped, budget spent" in again.stdout and "running" not in again.stdout
    assert len(read_rounds(sweep_dir)) == 3
    shutil.rmtree(sweep_dir)


def test_a_pilot_that_failed_whole_is_retried_before_any_fit(monkeypatch, tmp_path, tiny_adaptive):
    grid, space = tiny_adaptive
    pilot = [str(r) for r in space.table.loc[space.pilot, "run_id"]]
    word, _ = drive(monkeypatch, grid, space, tmp_path, settings(space),
                    fake=FakeSubmit(fail=dict.fromkeys(pilot, 1)))
    recs = read_rounds(tmp_path)
    assert recs[1]["look"] is None and sorted(recs[1]["retried"]) == sorted(pilot) and recs[1]["runs"] == []
    assert recs[2]["look"]["runs_fitted"] == len(pilot) and word == "stopped"
    with pytest.raises(Exception, match="too few to fit"):  # failed twice: nothing left to fit
        drive(monkeypatch, grid, space, tmp_path / "b", settings(space), fake=FakeSubmit(fail=dict.fromkeys(pilot, 2)))
