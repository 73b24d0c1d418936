"""A sweep call as a library: plan the grid against its sweep folder, then submit what is due.

:func:`plan_sweep` reads only (what `sweep --dry-run` shows). :func:`run_sweep` does the whole call:
under the sweep lock it re-keys run folders with path-based ids (:mod:`~loopscale.submit.rekey`), plans,
checks the data, makes the folder, submits, removes a first sweep folder whose submission failed, and keeps
the grid; then, for the debug executor or with ``wait``,
follows the runs until none is in flight. It reports as it goes through a :class:`SweepProgress`.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopscale.errors import UserError
from loopscale.grid import ExecutorConfig, Grid, RunSpec
from loopscale.schedule import resolve_kind
from loopscale.store import RunState, run_ids
from loopscale.submit import scheduler
from loopscale.submit.actions import PlanRow, plan, plan_totals
from loopscale.submit.executors import submit
from loopscale.submit.folder import (
    check_data,
    make_sweep_dir,
    record_grid,
    sweep_changes,
)
from loopscale.submit.lock import sweep_lock
from loopscale.submit.rekey import Rekeyed, path_based_ids, rekey
from loopscale.trackers.section import check_available

SUBMITTING = ("submit", "resubmit")


@dataclass
class SweepPlan:
    """What a sweep call finds and will do: ``rows`` (one per grid run, in grid order), ``changes``
    (how the grid differs from the one kept in the folder), ``outside`` (run folders not in this grid,
    left alone), ``path_based`` (those of them with ids from before data identities, which a sweep re-keys:
    loopscale.submit.rekey) and the executor, its kind resolved (auto → slurm or local)."""

    grid: Grid
    sweep_dir: Path
    ex: ExecutorConfig
    rows: list[PlanRow]
    changes: list[str]
    outside: list[str]
    path_based: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.ex.kind

    @property
    def ids(self) -> list[str]:
        return [s.run_id for s in self.grid.runs]

    @property
    def totals(self) -> dict[str, Any]:
        return plan_totals(self.rows)

    @property
    def todo(self) -> list[RunSpec]:
        """The runs to submit (new) or resubmit (failed, under retry_failed), in grid order."""
        return [s for s, r in zip(self.grid.runs, self.rows) if r.action in SUBMITTING]

    @property
    def held(self) -> int:
        """Failed runs left alone (no retry_failed)."""
        return sum(1 for r in self.rows if r.action == "hold")


@dataclass
class SweepOutcome:
    """``records``: {run_id: job record} of the runs submitted; ``seconds``: the submission's wall time;
    ``final``: the runs' end states (debug executor, or ``wait``), else None."""

    plan: SweepPlan
    records: dict[str, dict[str, Any]]
    seconds: float
    final: dict[str, RunState] | None = None


class SweepProgress:
    """What :func:`run_sweep` reports, in this order; each does nothing here (override what you show)."""

    def rekeyed(self, done: Rekeyed) -> None:
        """Run folders with path-based ids were re-keyed (under the lock, before planning)."""

    def planned(self, plan: SweepPlan) -> None:
        """The plan, under the lock, before anything is checked or written."""

    def submitting(self, plan: SweepPlan) -> None:
        """Data checked and folder made; the runs of ``plan.todo`` are about to be submitted."""

    def run_ended(self, run_id: str, state: RunState) -> None:
        """The debug executor finished a run (in this process)."""

    def submitted(self, outcome: SweepOutcome) -> None:
        """Submission done and the lock released; ``outcome.final`` is not known yet."""

    def polled(self, states: dict[str, RunState]) -> None:
        """Each look at the runs while waiting for them."""


def plan_sweep(grid: Grid, sweep_dir: str | Path, ex: ExecutorConfig, retry_failed: bool = False) -> SweepPlan:
    """The plan of ``grid`` in ``sweep_dir`` from the runs' states (files, and the scheduler for runs in
    flight). Reads only: no lock, nothing written. A grid whose tracker's package is not installed here stops
    it (a UserError naming the extra to install), so neither a dry run nor a submission gets past it."""
    check_available(grid.tracker)
    sweep_dir = Path(sweep_dir)
    ids = [s.run_id for s in grid.runs]
    changes = sweep_changes(sweep_dir, grid)
    outside = sorted(set(run_ids(sweep_dir)) - set(ids))
    rows = plan(grid.runs, scheduler.run_states(sweep_dir, ids), retry_failed)
    return SweepPlan(grid, sweep_dir, dataclasses.replace(ex, kind=resolve_kind(ex.kind)), rows, changes, outside,
                     path_based_ids(sweep_dir, outside))


def run_sweep(grid: Grid, sweep_dir: str | Path, ex: ExecutorConfig, *, retry_failed: bool = False,
              wait: bool = False, poll_s: float = 5.0,
              progress: SweepProgress | None = None) -> SweepOutcome:
    """Plan ``grid`` in ``sweep_dir`` and submit the runs due (new; failed ones too under ``retry_failed``).

    Under the sweep lock (released however this ends): re-key the run folders with path-based ids
    (``progress.rekeyed``; refused while runs are in flight: loopscale.submit.rekey), plan, check the data when there is anything to
    submit, make the sweep folder, submit, keep the grid in the folder. A submission that fails leaves no
    new run folders, and no sweep folder if it made it. Runs finished are skipped; runs in flight are left
    alone. Then the debug executor's end states are read, or with ``wait`` the runs are polled
    every ``poll_s`` seconds until none is in flight (``progress.polled`` sees each look).
    """
    progress = progress or SweepProgress()
    sweep_dir = Path(sweep_dir)
    with sweep_lock(sweep_dir):
        done = rekey(sweep_dir)
        if done is not None:
            progress.rekeyed(done)
        p = plan_sweep(grid, sweep_dir, ex, retry_failed)
        progress.planned(p)
        todo = p.todo
        if todo:
            check_data(grid)
        created = not sweep_dir.exists()
        make_sweep_dir(sweep_dir)
        progress.submitting(p)
        t0 = time.perf_counter()
        try:
            records = submit(sweep_dir, todo, p.ex, job_name=f"loopscale-{grid.name}", on_finish=progress.run_ended)
        except UserError:
            if created:  # a failed first submission leaves no sweep folder behind
                shutil.rmtree(sweep_dir, ignore_errors=True)
            raise
        record_grid(sweep_dir, grid)
        seconds = time.perf_counter() - t0
    outcome = SweepOutcome(p, records, seconds)
    progress.submitted(outcome)
    if p.kind == "debug":
        outcome.final = scheduler.run_states(sweep_dir, p.ids)
    elif wait:
        outcome.final = scheduler.wait(sweep_dir, p.ids, progress.polled, poll_s)
    return outcome
