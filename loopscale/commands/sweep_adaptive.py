"""`loopscale sweep GRID --until-ci W`: check the arguments, print the settings, run the rounds
(loopscale.rounds), print what each round did."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from loopscale.errors import UserError


def refuse_early(until_ci, probe, dry_run: bool, as_json: bool, grid=None) -> None:
    """Bad input for an adaptive sweep, before anything is read or written (UserError, one line)."""
    if probe is not None:
        raise UserError(f"--probe {probe}: the probe mode of `sweep --until-ci` (a target CI of delta-phi) is not "
                        "built yet; sweep the probe grid as it stands, or `loopscale plan GRID --adaptive` to simulate")
    if until_ci is None:
        return
    if until_ci <= 0:
        raise UserError(f"--until-ci must be a positive CI width of phi, got {until_ci:g}")
    if as_json:
        raise UserError("--until-ci prints its rounds as lines (their records: SWEEP/rounds.jsonl); drop --json")


def dry_run_refusal(grid_arg: str, space) -> UserError:
    """--until-ci with --dry-run: what the pilot would train instead."""
    budgets = sorted(set(space.table.loc[space.pilot, "budget_flops"]))
    return UserError(f"--until-ci with --dry-run: an adaptive sweep chooses its runs as it goes; its pilot would train "
                     f"{int(space.pilot.sum())} run(s) at budgets {', '.join(f'{b:.3g}' for b in budgets)} "
                     f"({space.pilot_flops:.3g} FLOPs), then up to {len(space.table) - int(space.pilot.sum())} "
                     f"candidates; `loopscale plan {grid_arg} --adaptive --until-ci W` simulates the whole sweep")


def run_adaptive(console, grid_arg: str, grid, sweep_dir: Path, ex, *, until_ci: float, max_flops, max_hours,
                 batch, wait: bool, poll: float, dry_run: bool, progress) -> None:
    from loopscale.analysis.adaptive import build_space
    from loopscale.rounds import Settings, until_stop
    from loopscale.rounds import settings as rs
    from loopscale.submit.folder import check_data

    rs.check_args(until_ci, max_flops, max_hours, batch)
    space = build_space(grid)  # refuses token budgets
    if dry_run:
        raise dry_run_refusal(grid_arg, space)
    check_data(grid)
    g = dataclasses.replace(grid, executor=ex)
    cap, cap_line = rs.cap(g, space, max_flops, max_hours)
    k, k_why = rs.batch(g, batch)
    console.print(f"adaptive sweep {grid.name} ({sweep_dir}): until phi's CI is {until_ci:g} wide"
                  f"{' (until trustworthy)' if until_ci >= 0.35 else ''} and the fit trustworthy; "
                  f"{len(space.table)} runs in its space ({space.source}); {k} run(s) per round ({k_why}); {cap_line}",
                  highlight=False, soft_wrap=True)
    s = Settings(target=float(until_ci), cap_flops=cap, batch=k, wait=wait, poll_s=poll)

    def say(line: str) -> None:
        console.print(line, highlight=False, soft_wrap=True)

    word = until_stop(g, space, sweep_dir, ex, s, say=say, progress=progress)
    if word != "stopped":
        how = "rerun the same command to go on (it looks at the finished runs and chooses the next round)"
        say(f"{'runs in flight' if word == 'waiting' else 'round submitted'}; {how}, or add --wait")
        if word == "waiting":
            raise typer.Exit(0)
