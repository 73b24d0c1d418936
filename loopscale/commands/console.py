"""The console of the sweep commands (`sweep`, `status`, `collect`, `cancel`, `report`): the sweep folder
argument, a console, each run state's colour and order, and the status table of a sweep's runs with its counts
and FLOPs (as `status`, `status --watch` and `sweep --wait` show it)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from loopscale.errors import UserError
from loopscale.fmt import finite, sci, si
from loopscale.store import FINISHED, GRID_FILE, NEW, RETRYABLE, RUNS_DIR, STALE, STATES, RunState, counts

SWEEPS_DIR = Path("sweeps")
STATE_STYLE = {"done": "green", "diverged": "yellow", "failed": "red", "corrupt": "red", "cancelled": "red",
               "timeout": "red", "lost": "red", "running": "cyan", "pending": "blue", "submitted": "blue",
               "unknown": "magenta", "new": "dim", "stale": "dark_orange"}
# How tables list runs by state: in flight first, then those that ended without a result, new, finished (stale
# ones, on data that has changed since, before the others).
STATE_ORDER = ("running", "pending", "submitted", "unknown") + RETRYABLE + (NEW, STALE) + FINISHED[::-1]


def resolve_sweep(arg: Optional[Path]) -> Path:
    """The sweep folder given, or the only one under ./sweeps."""

    def is_sweep(p: Path) -> bool:
        return (p / RUNS_DIR).is_dir() or (p / GRID_FILE).is_file()

    if arg is not None:
        if not arg.is_dir():
            raise UserError(f"{arg}: no such sweep folder")
        if not is_sweep(arg):
            raise UserError(f"{arg}: not a sweep folder (no runs/ or grid.yaml); run `loopscale sweep` first")
        return arg
    found = sorted(p for p in SWEEPS_DIR.glob("*") if p.is_dir() and is_sweep(p)) if SWEEPS_DIR.is_dir() else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise UserError(f"no sweep folders under ./{SWEEPS_DIR}; give one, or run `loopscale sweep` first")
    raise UserError(f"several sweeps under ./{SWEEPS_DIR} ({', '.join(p.name for p in found)}); name one")


def make_console(stderr: bool = False) -> Console:
    """A console; wide when writing to a file or pipe, so tables are not squeezed to 80 columns."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 160)


def styled(state: str) -> str:
    return f"[{STATE_STYLE.get(state, 'white')}]{state}[/]"


def counts_line(counts: dict[str, int]) -> str:
    return " · ".join(f"{styled(s)} {n}" for s, n in counts.items()) or "no runs"


def states_table(entries: list[dict[str, Any]], title: str | None = None, live: bool = False) -> Table:
    """entries: run_id, r, d_model, probe, tokens, state, detail, loss (the final validation loss) and the
    live fields of loopscale.live.RunLive.to_dict (step, steps, train_loss, tokens_per_s, eta_s). The probe
    column only where a run has a probe. ``live``: one line per run (the detail cut short, not folded)."""
    t = Table(title=title, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False,
              collapse_padding=True)  # 2 spaces between columns: 12 columns fit 120
    show_probe = any(e.get("probe") not in (None, "none") for e in entries)
    right = ("r", "d_model", "D tokens", "step", "train loss", "val loss", "tok/s", "ETA")
    for name in ("run id", "r", "d_model") + ("probe",) * show_probe + (
            "D tokens", "state", "step", "train loss", "val loss", "tok/s", "ETA", "detail"):
        detail = name == "detail"  # the one column that gives way on a narrow screen (folded, or cut when live)
        t.add_column(name, justify="right" if name in right else "left", overflow="fold" if detail else "ellipsis",
                     no_wrap=not detail, min_width=12 if detail else None)
    for e in entries:
        t.add_row(e["run_id"], str(e.get("r") or "-"), str(e.get("d_model") or "-"),
                  *[str(e.get("probe") or "-")] * show_probe,
                  si(e.get("tokens")), styled(e["state"]), step_text(e.get("step"), e.get("steps")),
                  loss_cell(e.get("train_loss")), loss_cell(e.get("loss")), si(e.get("tokens_per_s")),
                  duration(e.get("eta_s")),
                  Text(e.get("detail") or "", no_wrap=True, overflow="ellipsis") if live else e.get("detail") or "")
    return t


def loss_cell(loss: float | None) -> str:
    return "-" if loss is None else f"{loss:.4f}"


def step_text(step: int | None, steps: int | None) -> str:
    """'120/400'; '-/400' before the first logged step; '-' when neither is known."""
    if step is None and steps is None:
        return "-"
    return f"{'-' if step is None else step}/{'?' if steps is None else steps}"


def duration(s: float | None) -> str:
    """Seconds for people: '45s', '3m 20s', '2h 05m', '3d 4h'; '-' for None."""
    s = finite(s)
    if s is None or s < 0:
        return "-"
    s = round(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def flops_line(now) -> str:
    """The sweep's FLOPs done of planned and its time to go (loopscale.live.SweepLive)."""
    pct = now.percent
    text = f"FLOPs {sci(now.flops_done)} of {sci(now.flops_planned)}" + (f" ({pct:.1f}%)" if pct is not None else "")
    if now.flops_per_s:
        text += f" · {sci(now.flops_per_s)} FLOP/s"
    if now.eta_s is not None:
        text += f" · ETA {duration(now.eta_s)} at the current parallelism"
    elif now.in_flight:
        text += " · ETA - (no run running with a logged rate yet)"
    return text


def status_view(entries: list[dict[str, Any]], c: dict[str, int], now, title: str,
                height: int | None = None) -> Group:
    """The status table with the sweep's counts and FLOPs below it (`status`), or, for a live view of
    ``height`` lines (`status --watch`, `sweep --wait`), above it, one line per run, the runs that do not
    fit left off with a count (runs in flight come first)."""
    entries = sorted(entries, key=lambda e: (state_order(e["state"]), e.get("r") or 0, e.get("d_model") or 0,
                                             e["run_id"]))
    summary = [Text.from_markup(counts_line(c)), Text(flops_line(now))]
    if height is None:
        return Group(states_table(entries, title), *summary)
    fit = max(height - 8, 1)  # the title and summary (3), the table's blank lines, header and rule (4), the count (1)
    shown, left = (entries, []) if len(entries) <= fit else (entries[: fit], entries[fit:])
    more = []
    if left:
        off = counts(RunState(e["run_id"], e["state"]) for e in left)
        more = [Text.from_markup(f"[dim]{len(left)} more run(s) not shown:[/] {counts_line(off)}")]
    return Group(Text.from_markup(title), *summary, states_table(shown, live=True), *more)


def state_order(state: str) -> int:
    return STATE_ORDER.index(state) if state in STATE_ORDER else len(STATES)
