"""`loopscale cancel`: parse, call loopscale.submit.cancel, print."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import List, Optional

import typer

from loopscale.commands.console import make_console, resolve_sweep
from loopscale.errors import UserError
from loopscale.rounds.records import resume_command
from loopscale.store import GRID_FILE

OUTCOME_TEXT = {
    "stopped": "stopped at step {step}, checkpoint kept",
    "not started": "never started",
    "ended": "its job ended",
    "finished": "finished before the cancel reached it: stays done",
    "killed": "killed",
    "still ending": "still ending",
}


def outcome_text(r) -> str:
    text = OUTCOME_TEXT.get(r.outcome, r.outcome).format(step=r.step)
    if r.outcome in ("ended", "killed") and r.step is not None:
        text += f" (checkpoint at step {r.step})"
    return text + (f"; {r.detail}" if r.detail and r.outcome not in ("finished",) else "")


def retry_command(sweep_dir: Path, executors: list[str]) -> str:
    """The `loopscale sweep` call that resubmits the cancelled runs: the grid kept in the sweep folder."""
    cmd = f"loopscale sweep {shlex.quote(str(sweep_dir / GRID_FILE))} --out {shlex.quote(str(sweep_dir))}"
    if len(executors) == 1 and executors[0] in ("slurm", "local", "debug"):
        cmd += f" --executor {executors[0]}"
    return cmd + " --retry-failed"


def register(app: typer.Typer) -> None:
    @app.command()
    def cancel(
        sweep_dir: Path = typer.Argument(..., metavar="SWEEP", help="Sweep folder."),
        run_ids: Optional[List[str]] = typer.Argument(None, metavar="RUN_ID", help="Runs to cancel "
                                                      "(default: every run in flight)."),
        grace: float = typer.Option(30.0, "--grace", help="Seconds to wait for the runs to stop at a step "
                                    "boundary; past it, local processes still training them are killed."),
        reason: Optional[str] = typer.Option(None, "--reason", help="Why (kept in each run's cancel.json)."),
        as_json: bool = typer.Option(False, "--json", help="Print what was cancelled as JSON."),
    ) -> None:
        """Stop runs in flight (scancel on SLURM, the local workers for local runs); `sweep --retry-failed`
        resumes them from their checkpoints."""
        from loopscale.submit.cancel import cancel_runs

        if not grace >= 0:  # NaN too: a deadline of NaN is never reached
            raise UserError(f"--grace {grace:g}: must be 0 or more seconds")
        sweep_dir = resolve_sweep(sweep_dir)
        console = make_console(stderr=as_json)
        shown = {"n": 0}

        def waiting(held) -> None:
            if len(held) != shown["n"]:
                shown["n"] = len(held)
                console.print(f"waiting for {len(held)} run(s) to stop at a step boundary "
                              f"(up to {grace:g} s)...", highlight=False)

        got = cancel_runs(sweep_dir, run_ids or None, grace_s=grace, reason=reason, on_wait=waiting)
        cancelled = [r for r in got.runs if r.outcome != "finished"]
        retry = retry_command(sweep_dir, sorted({r.executor for r in cancelled}))
        adaptive = resume_command(sweep_dir) if cancelled else None  # rounds of `sweep --until-ci` not stopped yet
        if as_json:
            print(json.dumps({"sweep": str(sweep_dir), "runs": [r.to_dict() for r in got.runs],
                              "killed_pids": got.killed, "seconds": round(got.seconds, 2),
                              "retry": retry if cancelled else None, "resume_adaptive": adaptive}, indent=1))
            return
        if not got.runs:
            console.print(f"{sweep_dir}: no run in flight; nothing cancelled", highlight=False)
            return
        console.print(f"{sweep_dir}: cancelled {len(cancelled)} run(s) in {got.seconds:.1f} s", highlight=False)
        for r in got.runs:
            console.print(f"  {r.run_id}  {r.executor} {r.job_id}  {r.was} → "
                          f"{'done' if r.outcome == 'finished' else 'cancelled'}: {outcome_text(r)}",
                          highlight=False, soft_wrap=True)
        if got.killed:
            console.print(f"killed pid(s) {', '.join(map(str, got.killed))}: they did not let go within "
                          f"{grace:g} s", highlight=False)
        if cancelled:
            console.print(f"resume them (from their checkpoints) with `{retry}`", highlight=False, soft_wrap=True)
        if adaptive:
            console.print(f"go on with the adaptive sweep (its cancelled runs first) with `{adaptive}`",
                          highlight=False, soft_wrap=True)
