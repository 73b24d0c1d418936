"""A look at a sweep for `loopscale status`: its runs' states (files and scheduler), their rows and live
progress (``StatusLook``), and following it until no run is in flight (``watch_sweep``, `status --watch`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console

from loopscale.commands.console import counts_line, duration, status_view
from loopscale.fmt import sci


class StatusLook:
    """A look at a sweep, afresh on each call: (entries, counts, loopscale.live.SweepLive). The states come
    from the run folders and the scheduler, the rest from the files (store rows re-read only when a run's
    state changes, metrics.jsonl by its tail)."""

    def __init__(self, sweep_dir: Path):
        from loopscale.live import Rows

        self.sweep_dir, self.rows = sweep_dir, Rows(sweep_dir)

    def __call__(self):
        from loopscale.live import Planned, read_live
        from loopscale.store import counts
        from loopscale.submit.scheduler import run_states

        states = run_states(self.sweep_dir)
        rows = self.rows(states)
        now = read_live(self.sweep_dir, states, {rid: Planned.of_row(row) for rid, row in rows.items()})
        entries = [{**entry(rows[rid]), **now.runs[rid].to_dict()} for rid in states]
        return entries, counts(states.values()), now


def watch_line(c: dict[str, int], now) -> str:
    """One line of `status --watch` off a terminal (without the time; the counts' colour markup is dropped
    there)."""
    pct = f"{now.percent:.1f}%" if now.percent is not None else "-"
    return f"{counts_line(c)}  FLOPs {pct} of {sci(now.flops_planned)}  ETA {duration(now.eta_s)}"


def watch_title(sweep_dir: Path, entries: list) -> str:
    return f"{sweep_dir}: {len(entries)} runs  [dim]{time.strftime('%H:%M:%S')}[/]"


def watch_sweep(console: Console, look: StatusLook, every: float) -> None:
    """Follow a sweep until no run is in flight: a live table on a terminal (its last render stays), else a
    line per refresh in which something changed, then the table."""
    if console.is_terminal:
        from rich.live import Live

        with Live(console=console, auto_refresh=False, transient=False) as live:
            while True:
                entries, c, now = look()
                live.update(status_view(entries, c, now, watch_title(look.sweep_dir, entries), console.height),
                            refresh=True)
                if not now.in_flight:
                    return
                time.sleep(every)
    last = None
    while True:
        entries, c, now = look()
        if not now.in_flight:
            break
        line = watch_line(c, now)
        if line != last:
            last = line
            console.print(f"{time.strftime('%H:%M:%S')}  {line}", highlight=False, soft_wrap=True)
        time.sleep(every)
    console.print(status_view(entries, c, now, watch_title(look.sweep_dir, entries)))


def entry(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("run_id", "r", "d_model", "probe", "seed", "tokens", "budget_flops", "loss", "detail", "job_id")
    e = {k: row.get(k) for k in keys}
    e["state"] = row["status"]
    return e
