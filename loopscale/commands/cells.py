"""The iso-FLOP cell table (loopscale.analysis.regime's cell minima) as printed by `fit` and `plan`."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def print_cells(diag: dict, title: str, out: Console) -> None:
    """One row per (budget, r[, probe]) cell: widths, N trained, the parabola's N* and L*, where N* lies."""
    from loopscale.analysis.regime import cell_rows  # noqa: PLC0415 - keeps the CLI's start-up free of the fit's imports

    if not diag["cells"]:
        return
    cols, rows = cell_rows(diag)
    t = Table(title=title)
    for col in cols:
        t.add_column(col, justify="left" if col in ("probe", "where") else "right")
    for row in rows:
        t.add_row(*row)
    out.print(t)
