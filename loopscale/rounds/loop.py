"""One round of an adaptive sweep (:func:`step`), and rounds until a stop (:func:`until_stop`).

A step, from the records (loopscale.rounds.records) and the run folders, so that a rerun of the same command
goes on where the last one ended and never trains a run twice:

1. no record yet: record round 0, the pilot (the grid's runs at the pilot budgets), and submit it;
2. the last record stopped (same target and cap): say so, nothing more;
3. runs of the design not submitted yet (interrupted between a record and its submission) or stopped before
   their end (cancelled, timed out, lost): submit them (they resume from their checkpoints); runs in flight:
   without ``wait`` return, with it wait for them;
4. the look: the design's finished runs (loopscale.runs_table: stale runs left out), fitted and judged by
   analysis.adaptive.round.look; a run that failed is retried once in the next round, a run that failed again
   (or diverged) is left out, and the record says so;
5. record the round (the look, the stop or the runs chosen, the FLOPs so far), then submit its runs.

Submission is submit.run_sweep on the grid with its runs replaced by the design's: same run folders, same run
ids, runs finished skipped."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

import numpy as np

from loopscale.analysis.adaptive.policy import STOP_WORDS, target_width
from loopscale.analysis.adaptive.round import look
from loopscale.analysis.defaults import BOOTSTRAP
from loopscale.analysis.fit import run_fit
from loopscale.errors import UserError
from loopscale.grid import Grid
from loopscale.rounds.picks import key, pilot_specs, rows_of, row_keys, spec_key, specs_for
from loopscale.rounds.records import append_round, design_runs, left_out_ids, read_rounds, retried_ids
from loopscale.runs_table import load_runs, usable_rows
from loopscale.store import IN_FLIGHT, NEW
from loopscale.submit import SweepProgress, run_sweep, scheduler

FAILED = ("failed", "corrupt")  # retried once, then left out
RESUMED = ("cancelled", "timeout", "lost")  # stopped before their end: resubmitted, they resume from a checkpoint
GAVE_UP = ("diverged",)  # over, never fitted: left out at once
MIN_FITTED = 6  # finished runs a look needs (as the bootstrap's identifiable designs)


@dataclass
class Settings:
    target: float  # W: φ's CI width to reach (≥ 0.35: until trustworthy)
    cap_flops: float
    batch: int
    wait: bool = False
    poll_s: float = 5.0
    seed: int = 0


def fit_confirms(table, run_ids: list[str], say: Callable[[str], None]) -> tuple[float | None, bool]:
    """`loopscale fit` on the design's runs, with its default settings: the width of φ's CI and whether its verdict
    is trustworthy. A target stop stands only on these (the look's cheaper CI can be narrower)."""
    say(f"checking the stop with fit's own CI ({len(run_ids)} runs, {BOOTSTRAP} resamples)...")
    report = run_fit(table[table["run_id"].isin(set(run_ids))])
    ci = report.ci.get("phi")
    width = float(ci[1] - ci[0]) if ci else None
    return width, bool(report.diagnostics is not None and report.diagnostics.trustworthy)


def run_entry(spec, why: str, width_after=None) -> dict:
    return {"run_id": spec.run_id, "budget_flops": float(spec.budget_flops), "width": spec.d_model, "r": spec.r,
            "seed": spec.seed, "flops": float(spec.flops), "why": why, "width_after": width_after}


def stop_line(reason: str, s: Settings, look_doc: dict | None, spent: float) -> str:
    fit = ""
    if look_doc and look_doc.get("width") is not None:
        lo, hi = look_doc["ci"]
        fit = f": φ {look_doc['phi']:.3f} [{lo:.3f}, {hi:.3f}], width {look_doc['width']:.3f}"
    verdict = f", {look_doc['verdict']}" if look_doc else ""
    confirmed = (look_doc or {}).get("fit_confirms")
    if confirmed and confirmed.get("width") is not None:
        fit += f"; `fit`'s own CI width {confirmed['width']:.3f}"
    return (f"stopped, {STOP_WORDS[reason]}{fit} (target {target_width(s.target):.3g}{verdict}; "
            f"{spent:.3g} of {s.cap_flops:.3g} FLOPs)")


def design_specs(grid: Grid, space, records: list[dict]) -> dict[str, object]:
    """The design's runs (every record's) as run specs by run id, checked against the grid's expansion now."""
    runs = design_runs(records)
    keys = row_keys(space)
    index = {k: i for i, k in enumerate(keys)}
    rows = []
    for rid, run in runs.items():
        k = key(run["budget_flops"], run["width"], run["r"], run["seed"])
        if k not in index:
            raise UserError(f"round records name run {rid} ({k}), which is not in this grid's adaptive space: the "
                            "grid changed since; use the grid kept in the sweep folder, or a new sweep folder")
        rows.append(index[k])
    specs = specs_for(grid, space, rows)
    out = {}
    for (rid, _), spec in zip(runs.items(), specs):
        if spec.run_id != rid:
            raise UserError(f"round records name run {rid}, but this grid makes that run {spec.run_id}: the grid or "
                            "its data changed since; use the grid kept in the sweep folder, or a new sweep folder")
        out[rid] = spec
    return out


def submit(grid: Grid, specs, sweep_dir: Path, ex, s: Settings, progress: SweepProgress | None):
    """run_sweep on the grid with these runs (failed ones among them resubmitted)."""
    g = dataclasses.replace(grid, runs=list(specs))
    return run_sweep(g, sweep_dir, ex, retry_failed=True, wait=s.wait, poll_s=s.poll_s, progress=progress)


def step(grid: Grid, space, sweep_dir, ex, s: Settings, *, say: Callable[[str], None] = print,
         progress: SweepProgress | None = None) -> str:
    """One step (module docstring). Returns "stopped", "submitted" (a round's runs went out) or "waiting" (runs of
    the design are still in flight; without ``wait`` only)."""
    sweep_dir = Path(sweep_dir)
    recs = read_rounds(sweep_dir)
    if not recs:
        specs = pilot_specs(grid, space)
        spent = float(sum(sp.flops for sp in specs))
        budgets = sorted({sp.budget_flops for sp in specs})
        append_round(sweep_dir, {"round": 0, "grid": str(grid.path), "target": s.target, "cap_flops": s.cap_flops, "batch": s.batch,
                                 "look": None, "runs": [run_entry(sp, "pilot") for sp in specs],
                                 "predicted_width": None, "retried": [], "left_out": [], "flops_so_far": spent,
                                 "stop": None, "stop_line": None})
        say(f"round 0: the pilot, {len(specs)} runs at budgets {', '.join(f'{b:.3g}' for b in budgets)} "
            f"({spent:.3g} FLOPs)")
        submit(grid, specs, sweep_dir, ex, s, progress)
        return "submitted"
    last = recs[-1]
    if last.get("stop") and last.get("target") == s.target and last.get("cap_flops") == s.cap_flops:
        say(f"round {last['round']}: {last['stop_line']}")
        return "stopped"
    specs = design_specs(grid, space, recs)
    gone = left_out_ids(recs)
    active = [rid for rid in specs if rid not in gone]
    states = scheduler.run_states(sweep_dir, active)
    pending = [rid for rid in active if states[rid].state == NEW or states[rid].state in RESUMED]
    flying = [rid for rid in active if states[rid].state in IN_FLIGHT]
    if pending or flying:
        say(f"round {last['round']}: {len(flying)} run(s) in flight" +
            (f", {len(pending)} (re)submitted (not submitted yet, or stopped before their end)" if pending else ""))
        out = submit(grid, [specs[r] for r in active if states[r].state not in FAILED], sweep_dir, ex, s, progress)
        kind = out.plan.kind if out is not None else ex.kind
        if not s.wait and kind != "debug":
            return "waiting"
        states = scheduler.run_states(sweep_dir, active)
        if any(states[r].state in IN_FLIGHT for r in active):
            return "waiting"
    retried = retried_ids(recs)
    failed = [r for r in active if states[r].state in FAILED]
    to_retry = [r for r in failed if r not in retried]
    left_out = [r for r in failed if r in retried] + [r for r in active if states[r].state in GAVE_UP]

    table, _ = usable_rows(load_runs(sweep_dir))
    loss_of = dict(zip(table["run_id"], table["loss"]))
    keys = row_keys(space)
    loss = np.full(len(keys), np.nan)
    fitted = [rid for rid in active if rid in loss_of and rid not in left_out]
    for rid in fitted:
        loss[keys.index(spec_key(specs[rid]))] = float(loss_of[rid])
    fit_mask = np.isfinite(loss)
    design_mask = rows_of(space, [spec_key(sp) for sp in specs.values()])
    spent = float(last["flops_so_far"]) + float(sum(specs[r].flops for r in to_retry))
    t = int(last["round"]) + 1
    if fit_mask.sum() < MIN_FITTED:
        if not to_retry:
            raise UserError(f"{sweep_dir}: only {int(fit_mask.sum())} run(s) of the adaptive design finished, too few "
                            f"to fit (≥ {MIN_FITTED}); {len(left_out)} left out after failing twice: see "
                            f"`loopscale status {sweep_dir}`")
        append_round(sweep_dir, {"round": t, "grid": str(grid.path), "target": s.target, "cap_flops": s.cap_flops, "batch": s.batch,
                                 "look": None, "runs": [], "predicted_width": None, "retried": to_retry,
                                 "left_out": left_out, "flops_so_far": spent, "stop": None, "stop_line": None})
        say(f"round {t}: {int(fit_mask.sum())} run(s) finished, too few to fit; {len(to_retry)} failed run(s) retried")
        submit(grid, [specs[r] for r in active if r not in left_out], sweep_dir, ex, s, progress)
        return "submitted"
    lk = look(space, fit_mask, design_mask, loss, target=s.target, batch=s.batch,
              flops_left=s.cap_flops - spent, seed=s.seed, confirm=lambda: fit_confirms(table, fitted, say))
    doc = lk.to_dict()
    rec = {"round": t, "grid": str(grid.path), "target": s.target, "cap_flops": s.cap_flops, "batch": s.batch, "look": doc}
    if left_out:
        say(f"round {t}: left out {len(left_out)} run(s) that failed twice or diverged: {', '.join(left_out)}")
    if lk.stop:
        line = stop_line(lk.stop, s, doc, float(last["flops_so_far"]))
        append_round(sweep_dir, {**rec, "runs": [], "predicted_width": None, "retried": [], "left_out": left_out,
                                 "flops_so_far": float(last["flops_so_far"]), "stop": lk.stop, "stop_line": line})
        say(f"round {t}: {line}")
        return "stopped"
    new = specs_for(grid, space, [p.row for p in lk.picks])
    entries = [run_entry(sp, p.why, p.width_after) for sp, p in zip(new, lk.picks)]
    spent += float(sum(sp.flops for sp in new))
    append_round(sweep_dir, {**rec, "runs": entries, "predicted_width": lk.predicted_width, "retried": to_retry,
                             "left_out": left_out, "flops_so_far": spent, "stop": None, "stop_line": None})
    ci = f"[{doc['ci'][0]:.3f}, {doc['ci'][1]:.3f}] width {doc['width']:.3f}" if doc["width"] is not None else \
        "no CI yet"
    if lk.confirmed:  # the look would have stopped on target; fit's own CI or verdict did not bear it out
        w = lk.confirmed["width"]
        ci += (f"; not stopping: `fit`'s own CI width {w:.3f}" if w is not None else "; not stopping: `fit` has no CI") \
            + ("" if lk.confirmed["trustworthy"] else ", verdict NOT trustworthy")
    pw = f", predicted width after it {lk.predicted_width:.3f}" if lk.predicted_width is not None else ""
    say(f"round {t}: fit of {lk.runs} runs: φ {lk.phi:.3f} {ci} ({doc['verdict']}); {len(new)} run(s) chosen"
        f"{pw}" + (f", {len(to_retry)} failed run(s) retried" if to_retry else "") + f"; {spent:.3g} FLOPs so far")
    for e in entries:
        say(f"  {e['run_id']}  C {e['budget_flops']:.3g}  d {e['width']}  r {e['r']}  seed {e['seed']}  {e['why']}")
    keep = [specs[r] for r in active if r not in left_out] + [sp for sp in new if sp.run_id not in specs]
    submit(grid, keep, sweep_dir, ex, s, progress)
    return "submitted"


def until_stop(grid: Grid, space, sweep_dir, ex, s: Settings, *, say: Callable[[str], None] = print,
               progress: SweepProgress | None = None, max_steps: int = 10_000) -> str:
    """Steps until a stop (with ``wait``, or the debug executor, which trains in this process); without them one
    step. Returns the last step's word."""
    word = "submitted"
    for _ in range(max_steps):
        word = step(grid, space, sweep_dir, ex, s, say=say, progress=progress)
        if word == "stopped" or not (s.wait or ex.kind == "debug"):
            return word
    return word
