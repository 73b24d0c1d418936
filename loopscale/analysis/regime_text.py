"""Regime diagnostics in words and table rows, shared by `fit`, `compare` and `report` (they read
the diagnostics as their JSON dict, fit.json's ``diagnostics``): the verdict line, a parameter's CI,
the iso-FLOP cell table and the residual-vs-noise line. No numpy: the CLI imports it at start-up."""

from __future__ import annotations

from loopscale.fmt import si


CELL_COLUMNS = ("budget", "r", "widths", "N trained", "N*", "L*", "where")
WHERE_WORDS = {"inside": "inside (bracketed)", "below": "below smallest N", "above": "above largest N",
               "flat": "no minimum", "few": "< 3 widths"}


def verdict_line(diag: dict) -> str:
    """'trustworthy' or 'NOT trustworthy (k reasons)', with the bracketed-cell count."""
    cells = f"{diag['cells_bracketed']}/{diag['n_cells']} iso-FLOP cells bracketed"
    if diag["trustworthy"]:
        return f"trustworthy: the fit passed every regime check ({cells})"
    k = sum(v is False for v in diag["checks"].values())
    return f"NOT trustworthy: {k} regime check{'s' if k != 1 else ''} failed ({cells})"


def ci_text(name: str, value, ci, diag: dict | None, fmt) -> str:
    """A parameter's CI for people: '—' without one; 'at lower bound (0.0498)' when the estimate sits on
    a bound and the CI has zero width there; '[lo, hi] (estimate at lower bound)' when only the estimate
    does. ``fmt`` formats one number."""
    side = (diag or {}).get("bounds_hit", {}).get(name)
    degenerate = name in (diag or {}).get("ci_degenerate", [])
    if side and (degenerate or ci is None):
        return f"at {side} bound ({fmt(value)})"
    if ci is None:
        return "—"
    if degenerate:
        return f"zero width ({fmt(ci[0])})"
    text = f"[{fmt(ci[0])}, {fmt(ci[1])}]"
    return text + (f" (estimate at {side} bound)" if side else "")


def cell_rows(diag: dict, with_probe: bool | None = None) -> tuple[list[str], list[list[str]]]:
    """(columns, rows) of the cell-minima table; a probe column when the cells hold several probes."""
    cells = diag["cells"]
    if with_probe is None:
        with_probe = len({c["probe"] for c in cells}) > 1
    cols = (["probe"] if with_probe else []) + list(CELL_COLUMNS)
    rows = []
    for c in cells:
        rows.append(([c["probe"]] if with_probe else []) + [
            f"{c['budget']:.3g}".replace("e+", "e"), str(c["r"]), str(c["n_widths"]),
            f"{si(c['n_min'])}–{si(c['n_max'])}", si(c["n_star"]) if c["n_star"] is not None else "—",
            f"{c['loss_star']:.4f}" if c["loss_star"] is not None else "—", WHERE_WORDS.get(c["where"], c["where"])])
    return cols, rows


def noise_line(diag: dict) -> str:
    """Residual RMSE beside the seed-to-seed noise, in words."""
    rmse, noise = diag.get("residual_rmse"), diag["seed_noise"]
    left = "residual RMSE —" if rmse is None else f"residual RMSE {rmse:.4f} nats"
    if noise["sd"] is None:
        return f"{left}; seed noise unknown (no run repeated with another seed)"
    src = (f"pooled over {noise['n_groups']} repeated design point{'s' if noise['n_groups'] != 1 else ''}, "
           f"{noise['n_runs']} runs") if noise["source"] == "repeats" else "as given"
    ratio = f" (ratio {rmse / noise['sd']:.2g})" if rmse is not None and noise["sd"] > 0 else ""
    return f"{left} vs seed noise {noise['sd']:.4f} nats, {src}{ratio}"
