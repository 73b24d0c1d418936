"""`loopscale sweep`, `loopscale status`, `loopscale collect`: parse, call grid/submit/store, print (the status
table and the console: loopscale.commands.console; a look at a sweep and following it: loopscale.commands.status)."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich import box
from rich.console import Console, Group
from rich.table import Table

from loopscale.commands.console import SWEEPS_DIR, counts_line, make_console, resolve_sweep, status_view, styled
from loopscale.commands.stages import stage_progress
from loopscale.commands.status import StatusLook, watch_sweep, watch_title
from loopscale.errors import UserError
from loopscale.fmt import sci, si
from loopscale.store import GRID_FILE, RUNS_DIR
from loopscale.submit import SweepProgress


# --- the plan --------------------------------------------------------------------------------------

def plan_table(rows, title: str, specs=None, ids_known: bool = True) -> Table:
    """The plan: run id, r, width, n_once, n_rec, D, FLOPs (flops_per_token · D), budget, and with the
    grid's run specs (same order as rows) the peak lrs of the block matrices (lr_mat) and the embedding
    (lr_emb) and, where it varies across runs, the rows per forward pass (micro); then the action (state).
    Without ``ids_known`` (the data is not prepared yet) the run id column shows a dash: no id before the data's."""
    t = Table(title=title, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False,
              collapse_padding=True)  # 2 spaces between columns: a probe grid's plan fits 120 columns
    show_probe = any(r.probe != "none" for r in rows)
    show_seed = len({r.seed for r in rows}) > 1
    show_budget = any(r.budget_flops for r in rows)
    trains = [s.config.train for s in specs] if specs is not None else []
    show_lrs = bool(trains)
    show_micro = len({tr.micro_batch_rows for tr in trains}) > 1
    names = ["run id", "r"] + ["probe"] * show_probe + ["seed"] * show_seed + [
        "d_model", "N_once", "N_rec", "D tokens", "FLOPs"] + ["budget"] * show_budget + [
        "lr_mat", "lr_emb"] * show_lrs + ["micro"] * show_micro + ["action"]
    for name in names:
        t.add_column(name, justify="left" if name in ("run id", "probe", "action") else "right", no_wrap=True)
    for i, r in enumerate(rows):
        action = r.action if r.state == "new" else f"{r.action} ({styled(r.state)})"
        tr = trains[i] if trains else None
        lrs = [f"{tr.lr_matrix:.3g}", f"{tr.lr_embed:.3g}"] if show_lrs else []
        micro = [str(tr.micro_batch_rows or "all")] if show_micro else []
        t.add_row(r.run_id if ids_known else "—", str(r.r), *[r.probe] * show_probe, *[str(r.seed)] * show_seed, str(r.d_model),
                  si(r.n_once), si(r.n_rec), si(r.tokens), sci(r.flops), *[sci(r.budget_flops)] * show_budget,
                  *lrs, *micro, action)
    return t


def muon_ns(train) -> str | None:
    """MuonH's orthogonalisation of a run (train.muon_ns), None for a run without MuonH (adamw)."""
    return train.muon_ns if train.optimizer == "muonh" else None


def optimizer_line(grid) -> str:
    """One line on the grid's optimizer under the plan table (muon_ns per run in --json)."""
    kinds = sorted({(s.config.train.optimizer, muon_ns(s.config.train) or "") for s in grid.runs})
    return "optimizer: " + "; ".join(o + (f", orthogonalisation muon_ns {ns}" if ns else "") for o, ns in kinds)


def lr_line(grid) -> str:
    """One line on the grid's learning rates under the plan table."""
    keys = ("lr_matrix", "lr_embed", "lr_head", "lr_norm")
    if (grid.raw.get("train") or {}).get("lr_rule") == "paper":
        return "learning rates: lr_rule paper, set per run (method.md §4); lr_mat, lr_emb above, all four in --json"
    sets = {tuple(getattr(s.config.train, k) for k in keys) for s in grid.runs}
    if len(sets) == 1:
        return "learning rates: " + ", ".join(f"{k} {v:g}" for k, v in zip(keys, next(iter(sets))))
    return "learning rates: per run; lr_mat, lr_emb above, all four in --json"


def tracker_line(grid, sweep_dir: Path) -> str:
    """One line on where the runs log besides metrics.jsonl (the grid's tracker: section)."""
    t = grid.tracker
    if t is None:
        return "tracker: none (metrics.jsonl in each run folder; a grid's tracker: section adds one)"
    where = {"tensorboard": f"event files in {sweep_dir}/runs/<run_id>/tensorboard/",
             "mlflow": f"file store {t.tracking_uri or f'{sweep_dir}/mlruns'}, experiment {t.sweep}",
             "wandb": f"project {t.project or '$WANDB_PROJECT'}, group {t.sweep}, mode {t.mode or 'from WANDB_MODE'}"}
    return f"tracker: {t.kind} ({where[t.kind]})"


def plan_json(rows, specs, ids_known: bool = True) -> list[dict[str, Any]]:
    """The plan's rows as dicts, each with the run's four learning rates, rows per forward pass and MuonH's
    orthogonalisation (muon_ns: polar_express | quintic; null for an adamw run). Without ``ids_known``
    (the data is not prepared yet) each run_id is null."""
    keys = ("lr_matrix", "lr_embed", "lr_head", "lr_norm", "micro_batch_rows")
    return [{**r.to_dict(), **{k: getattr(s.config.train, k) for k in keys}, "muon_ns": muon_ns(s.config.train),
             **({} if ids_known else {"run_id": None})} for r, s in zip(rows, specs)]


def ids_wait_line(grid) -> str:
    """The dry run's one line when the grid's data is not prepared: its runs have no ids yet."""
    return (f"run ids wait for the data: {grid.data_dir} is not prepared yet, and a run's id holds the identity "
            "of the data it trains on")



# --- arguments -----------------------------------------------------------------------------------

def resolve_grid(arg: str) -> Path:
    """A grid file path, or the name of a shipped grid (``tiny`` → loopscale/grids/tiny.yaml)."""
    from loopscale.grid import find_grid

    return find_grid(arg)



def executor_overrides(ex, **flags):
    from loopscale.executor_config import check_executor

    given = {k: v for k, v in flags.items() if v is not None}
    ex = dataclasses.replace(ex, **given)
    check_executor(ex, "command line")
    return ex


# --- commands ------------------------------------------------------------------------------------

def register(app: typer.Typer) -> None:
    @app.command()
    def sweep(
        grid_arg: str = typer.Argument("tiny", metavar="GRID", help="Grid YAML file, or a shipped grid's name "
                                       "(tiny, smoke, paper)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Sweep folder (default sweeps/<grid name>)."),
        data: Optional[Path] = typer.Option(None, "--data", help="Data dir instead of the grid's data.dir."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and total compute; submit nothing."),
        as_json: bool = typer.Option(False, "--json", help="Print the plan as a JSON list (one object per run); "
                                     "before the grid's data is prepared, an object {ids_wait_for_data: true, "
                                     "data_dir, runs: [...]} whose runs have run_id null."),
        wait: bool = typer.Option(False, "--wait", help="Follow the sweep until every run has ended."),
        retry_failed: bool = typer.Option(False, "--retry-failed", help="Resubmit failed, cancelled, timed-out, "
                                          "corrupt and lost runs."),
        executor: Optional[str] = typer.Option(None, "--executor", help="auto | slurm | local | debug."),
        partition: Optional[str] = typer.Option(None, help="SLURM partition."),
        account: Optional[str] = typer.Option(None, help="SLURM account."),
        qos: Optional[str] = typer.Option(None, help="SLURM QOS."),
        time_min: Optional[int] = typer.Option(None, help="Time limit per run, minutes."),
        gpus_per_node: Optional[int] = typer.Option(None, help="GPUs per SLURM job."),
        cpus_per_task: Optional[int] = typer.Option(None, help="CPUs per SLURM job."),
        mem_gb: Optional[float] = typer.Option(None, help="Memory per SLURM job, GB."),
        constraint: Optional[str] = typer.Option(None, help="SLURM node constraint."),
        array_parallelism: Optional[int] = typer.Option(None, help="SLURM array tasks running at once."),
        jobs: Optional[int] = typer.Option(None, "--jobs", help="Local runs at once (default: one per GPU, "
                                           "else CPU cores / threads per job)."),
        threads_per_job: Optional[int] = typer.Option(None, help="Torch CPU threads per local run."),
        poll: float = typer.Option(5.0, help="Seconds between status polls with --wait."),
        until_ci: Optional[float] = typer.Option(None, "--until-ci", metavar="W", help="Adaptive: train the pilot, "
                                                 "then choose runs round by round until phi's CI is W wide and the "
                                                 "fit trustworthy (W ≥ 0.35: until trustworthy). One round per call "
                                                 "without --wait; rerun to go on. Records: SWEEP/rounds.jsonl."),
        probe: Optional[str] = typer.Option(None, "--probe", help="With --until-ci: a target CI of delta-phi for "
                                            "probe P (not built yet)."),
        max_flops: Optional[float] = typer.Option(None, "--max-flops", help="With --until-ci: cap on the FLOPs "
                                                  "(default twice the fixed grid's)."),
        max_hours: Optional[float] = typer.Option(None, "--max-hours", help="With --until-ci: cap in GPU-hours or "
                                                  "CPU core-hours, as `plan` prices the executor."),
        batch: Optional[int] = typer.Option(None, "--batch", help="With --until-ci: runs per round (default the "
                                            "executor's parallel slots)."),
    ) -> None:
        """Expand a grid and submit its runs (skips finished runs and leaves runs in flight alone); with
        --until-ci, an adaptive sweep that chooses its runs round by round."""
        from loopscale.commands.sweep_adaptive import refuse_early, run_adaptive
        from loopscale.grid import load_grid
        from loopscale.store import RETRYABLE, counts
        from loopscale.submit import plan_sweep, run_sweep
        from loopscale.submit.actions import plan as plan_rows

        refuse_early(until_ci, probe, dry_run, as_json)
        if until_ci is None and any(v is not None for v in (max_flops, max_hours, batch)):
            raise UserError("--max-flops, --max-hours and --batch go with --until-ci (an adaptive sweep)")
        console = make_console(stderr=as_json)
        grid = load_grid(resolve_grid(grid_arg), data_dir=data)
        ex = executor_overrides(grid.executor, kind=executor, partition=partition, account=account, qos=qos,
                                time_min=time_min, gpus_per_node=gpus_per_node, cpus_per_task=cpus_per_task,
                                mem_gb=mem_gb, constraint=constraint, array_parallelism=array_parallelism,
                                local_jobs=jobs, threads_per_job=threads_per_job)
        sweep_dir = out or SWEEPS_DIR / grid.name
        if until_ci is not None:
            progress = ConsoleProgress(console, False)
            try:
                run_adaptive(console, grid_arg, grid, sweep_dir, ex, until_ci=until_ci, max_flops=max_flops,
                             max_hours=max_hours, batch=batch, wait=wait, poll=poll, dry_run=dry_run,
                             progress=progress)
            except KeyboardInterrupt:
                progress.close()
                console.print(f"stopped; rerun the same command to go on from the last finished round "
                              f"(`loopscale status {sweep_dir}`)", highlight=False)
                raise typer.Exit(130) from None
            finally:
                progress.close()
            return
        if dry_run:
            p = plan_sweep(grid, sweep_dir, ex, retry_failed)
            if not grid.ids_known:  # no ids: the sweep folder's runs cannot be matched to the grid's yet
                p = dataclasses.replace(p, rows=plan_rows(grid.runs, {}, retry_failed), outside=[])
                console.print(ids_wait_line(grid), highlight=False, soft_wrap=True)
            print_plan_notes(console, p)
            if as_json:
                rows = plan_json(p.rows, grid.runs, grid.ids_known)
                doc = rows if grid.ids_known else {"ids_wait_for_data": True, "data_dir": str(grid.data_dir),
                                                   "runs": rows}
                print(json.dumps(doc, indent=1))
                return
            console.print(plan_table(p.rows, f"plan: {grid.name} ({sweep_dir}), executor {p.kind}", grid.runs,
                                     grid.ids_known))
            print_totals(console, grid, p.totals)
            console.print(lr_line(grid), highlight=False)
            console.print(optimizer_line(grid), highlight=False)
            console.print(tracker_line(grid, sweep_dir), highlight=False)
            return

        progress = ConsoleProgress(console, as_json)
        try:
            got = run_sweep(grid, sweep_dir, ex, retry_failed=retry_failed, wait=wait, poll_s=poll,
                            progress=progress)
        except KeyboardInterrupt:
            progress.close()
            if progress.outcome is None or progress.outcome.plan.kind == "debug":
                raise
            console.print(f"stopped following; the submitted runs go on (`loopscale status {sweep_dir}`)")
            raise typer.Exit(130) from None
        finally:
            progress.close()
        if got.final is not None:
            bad = [rid for rid, st in got.final.items() if st.state in RETRYABLE]
            console.print(f"sweep {sweep_dir}: {counts_line(counts(got.final.values()))}", highlight=False)
            if bad:
                console.print(f"[red]{len(bad)} run(s) did not finish[/]; see `loopscale status {sweep_dir}`, "
                              f"then `loopscale sweep {grid_arg} --retry-failed`", highlight=False)
                raise typer.Exit(1)

    @app.command()
    def status(
        sweep_dir: Optional[Path] = typer.Argument(None, metavar="SWEEP", help="Sweep folder (default: the only "
                                                   "one under ./sweeps)."),
        as_json: bool = typer.Option(False, "--json", help="Print counts, the sweep's FLOPs done, planned and "
                                     "ETA, and each run's state, step, steps, train_loss, tokens_per_s and eta_s "
                                     "as JSON."),
        watch: bool = typer.Option(False, "--watch", help="Follow the sweep: a live table, refreshed every --every "
                                   "seconds, until no run is in flight (exit 0). Ctrl-C stops watching (exit 130; "
                                   "the runs go on). Not on a terminal: one line per refresh in which something "
                                   "changed, then the table."),
        every: float = typer.Option(2.0, "--every", metavar="SECONDS", help="Seconds between refreshes with --watch."),
    ) -> None:
        """Show the state of every run of a sweep (from its files; the scheduler for runs in flight).

        Per run: state, step of its steps, last training loss (train loss), final validation loss (val loss),
        tokens/s and time to its last step (ETA, running runs). For the sweep: FLOPs done of planned and its
        ETA, which assumes the current parallelism continues: the FLOPs left in the runs in flight over the
        summed FLOP rate of the runs running now (runs that failed or were never submitted are not counted)."""
        if watch and as_json:
            raise UserError("--watch and --json do not go together: --json prints the sweep once; drop one")
        if not (math.isfinite(every) and every > 0):
            raise UserError(f"--every: {every:g} seconds; give a number of seconds above 0")
        from loopscale.rounds.records import summary, summary_line

        sweep_dir = resolve_sweep(sweep_dir)
        look = StatusLook(sweep_dir)
        adaptive = summary(sweep_dir)  # None unless the sweep is adaptive (sweep --until-ci)
        if as_json:
            entries, c, now = look()
            print(json.dumps({"sweep": str(sweep_dir), "counts": c, **now.summary(), "runs": entries,
                              **({"adaptive": adaptive} if adaptive else {})}, indent=1))
            return
        console = make_console()
        if not watch:
            entries, c, now = look()
            console.print(status_view(entries, c, now, f"{sweep_dir}: {len(entries)} runs"))
            if adaptive:
                console.print(summary_line(adaptive), highlight=False, soft_wrap=True)
            return
        try:
            watch_sweep(console, look, every)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    @app.command()
    def rekey(
        sweep_dir: Optional[Path] = typer.Argument(None, metavar="SWEEP", help="Sweep folder (default: the only "
                                                   "one under ./sweeps)."),
    ) -> None:
        """Re-key a sweep made before data identities: each run whose data still matches moves from its path-based
        id to the id of the data it trained on (`loopscale sweep` does this first by itself). Refused while runs
        are in flight; runs whose data was prepared again after they started are left as they are (stale)."""
        from loopscale.submit import rekey as rekey_runs, sweep_lock

        sweep_dir = resolve_sweep(sweep_dir)
        with sweep_lock(sweep_dir):
            done = rekey_runs(sweep_dir)
        make_console().print(done.line() if done else f"{sweep_dir}: every run folder's id already holds its "
                             "data's identity; nothing to re-key", highlight=False, soft_wrap=True)

    @app.command()
    def collect(
        sweep_dir: Optional[Path] = typer.Argument(None, metavar="SWEEP", help="Sweep folder (default: the only "
                                                   "one under ./sweeps)."),
        export: Optional[Path] = typer.Option(None, "--export", help="Also write the table to a .csv or .parquet."),
    ) -> None:
        """Gather every run of a sweep into its results store (results.db; idempotent)."""
        from loopscale import store
        from loopscale.submit import scheduler

        sweep_dir = resolve_sweep(sweep_dir)
        if export is not None and export.suffix.lower() not in (".csv", ".parquet", ".pq"):
            raise UserError(f"{export}: unknown export format {export.suffix or '(no extension)'!r}; "
                            f"use .csv or .parquet")
        with stage_progress() as progress:
            got = store.collect(sweep_dir, scheduler=scheduler.states, progress=progress)
        console = make_console()
        console.print(f"collected {len(got.rows)} runs into {sweep_dir / store.DB_FILE} in {got.seconds:.2f} s: "
                      f"{counts_line(got.counts)}", highlight=False)
        if export is not None:
            path = store.export(sweep_dir, export)
            console.print(f"wrote {path}", highlight=False)


def loss_text(st) -> str:
    if st.result and st.result.get("val_loss") is not None:
        return f"val_loss {st.result['val_loss']:.4f} nats/token"
    return st.detail or ""


def print_totals(console: Console, grid, totals: dict[str, Any]) -> None:
    acts = ", ".join(f"{a} {n}" for a, n in totals["actions"].items())
    console.print(f"{totals['runs']} runs ({acts}); total compute {totals['total_flops']:.4g} FLOPs, "
                  f"{si(totals['total_tokens'])} tokens; to submit {totals['submit_flops']:.4g} FLOPs",
                  highlight=False)
    budgets = sum(s.budget_flops for s in grid.runs if s.budget_flops)
    if budgets:
        console.print(f"sum of the runs' FLOP budgets: {budgets:.4g} FLOPs "
                      f"(trained/budget = {totals['total_flops'] / budgets:.4f})", highlight=False)


def submit_summary(kind: str, records: dict[str, dict], totals: dict[str, Any], seconds: float) -> str:
    if not records:
        acts = ", ".join(f"{a} {n}" for a, n in totals["actions"].items())
        return f"nothing to submit ({acts})"
    jobs = sorted({str(r["job_id"]) for r in records.values()})
    if kind == "slurm":
        arrays = sorted({r.get("array_job_id") for r in records.values()})
        where = f"as SLURM job {jobs[0]}" if len(jobs) == 1 else f"as SLURM job array {', '.join(arrays)}"
    elif kind == "local":
        workers = records[next(iter(records))]["workers"]
        where = f"to {len(workers)} local worker job(s) (pids {', '.join(str(w['pid']) for w in workers)})"
    else:
        return f"ran {len(records)} run(s) in this process in {seconds:.1f} s ({totals['submit_flops']:.3g} FLOPs)"
    return f"submitted {len(records)} run(s) {where} in {seconds:.1f} s ({totals['submit_flops']:.3g} FLOPs)"


def print_plan_notes(console: Console, p) -> None:
    """What a plan finds beside its rows: how the grid changed since it was kept, run folders outside it."""
    if p.changes:
        console.print(f"[yellow]the grid changed since {p.sweep_dir / GRID_FILE} was kept:[/]", highlight=False)
        for line in p.changes:
            console.print(f"  {line}", highlight=False, soft_wrap=True)
    if p.outside:
        console.print(f"{len(p.outside)} run folder(s) in {p.sweep_dir / RUNS_DIR} are not in this grid (left alone)")
    if p.path_based:
        console.print(f"{len(p.path_based)} run folder(s) have path-based ids (from before data identities): "
                      f"`loopscale sweep` re-keys them first, or `loopscale rekey {p.sweep_dir}`", highlight=False)


class ConsoleProgress(SweepProgress):
    """Prints what `loopscale sweep` does as run_sweep reports it; while waiting, a live table on a
    terminal, a line per change otherwise. ``close()`` ends the live table."""

    def __init__(self, console: Console, as_json: bool):
        self.console, self.as_json = console, as_json
        self.outcome = None
        self.live = None
        self.last_line: str | None = None

    def rekeyed(self, done) -> None:
        self.console.print(done.line(), highlight=False, soft_wrap=True)

    def planned(self, plan) -> None:
        print_plan_notes(self.console, plan)

    def submitting(self, plan) -> None:
        if plan.kind == "debug" and plan.todo:
            self.console.print(f"running {len(plan.todo)} run(s) in this process (debug executor)")

    def run_ended(self, run_id: str, state) -> None:
        self.console.print(f"  {run_id}  {styled(state.state)}  {loss_text(state)}", highlight=False)

    def submitted(self, outcome) -> None:
        self.outcome = outcome
        p = outcome.plan
        self.console.print(submit_summary(p.kind, outcome.records, p.totals, outcome.seconds), highlight=False)
        if p.held:
            self.console.print(f"{p.held} failed run(s) held back; `--retry-failed` resubmits them", highlight=False)
        if self.as_json:
            print(json.dumps([{**r.to_dict(), "job_id": outcome.records.get(r.run_id, {}).get("job_id")}
                              for r in p.rows], indent=1))

    def polled(self, states) -> None:
        from loopscale.store import counts

        if self.console.is_terminal:
            if self.live is None:
                from rich.live import Live

                self.live = Live(console=self.console, refresh_per_second=2, transient=False)
                self.live.start()
            self.live.update(self.render(states))
            return
        text = counts_line(counts(states.values()))
        if text != self.last_line:
            self.last_line = text
            self.console.print(f"{time.strftime('%H:%M:%S')}  {text}", highlight=False)
            sys.stderr.flush()

    def render(self, states) -> Group:
        """The status table of the runs waited on (as `loopscale status` shows it), their counts and FLOPs."""
        from loopscale.live import Planned, read_live
        from loopscale.store import counts

        plan = self.outcome.plan
        info = {r.run_id: r for r in plan.rows}
        plans = {rid: Planned(p.iterations, p.tokens, p.flops_per_token) for rid, p in info.items()}
        now = read_live(plan.sweep_dir, states, plans)
        entries = []
        for rid, st in states.items():
            p = info.get(rid)
            loss = st.result.get("val_loss") if st.result else None
            entries.append({"run_id": rid, "r": p and p.r, "d_model": p and p.d_model, "probe": p and p.probe,
                            "tokens": p and p.tokens, "state": st.state, "detail": st.detail, "loss": loss,
                            **now.runs[rid].to_dict()})
        return status_view(entries, counts(states.values()), now, watch_title(plan.sweep_dir, entries),
                           self.console.height)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
