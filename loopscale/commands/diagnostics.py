"""Regime diagnostics (loopscale.analysis.regime) as the CLI prints them: the verdict with its reasons,
and the iso-FLOP cell table. Shared by `fit`, `compare` and `plan`; regime decides, this prints
(its words and rows from analysis.regime_text, which loads no numpy at the CLI's start-up)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from loopscale.analysis.regime_text import cell_rows, verdict_line


def print_diagnostics(diag: dict, out: Console, title: str = "verdict") -> None:
    """The verdict and its reasons, then context notes."""
    style = "green" if diag["trustworthy"] else "bold red"
    out.print(f"[{style}]{title}: {verdict_line(diag)}[/]", highlight=False, soft_wrap=True)
    for line in diag["reasons"]:
        out.print(f"  - {line}", highlight=False, soft_wrap=True)
    for line in diag["notes"]:
        out.print(f"  note: {line}", highlight=False, soft_wrap=True)


def print_cells(diag: dict, title: str, out: Console) -> None:
    """One row per (budget, r[, probe]) cell: widths, N trained, the parabola's N* and L*, where N* lies."""
    if not diag["cells"]:
        return
    cols, rows = cell_rows(diag)
    t = Table(title=title)
    for col in cols:
        t.add_column(col, justify="left" if col in ("probe", "where") else "right")
    for row in rows:
        t.add_row(*row)
    out.print(t)
