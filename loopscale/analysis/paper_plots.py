"""The paper's figures of a sweep (matplotlib, Agg), as PNG bytes: training curves, iso-FLOP
parabolas with their minima, compute-optimal N* against C, and the loss gap to r = 1.

The data are computed elsewhere (analysis.curves, analysis.optimal); here they are only drawn.
Losses in nats, N = N_once + N_rec unique non-embedding parameters.
"""

from __future__ import annotations

import math

import numpy as np

from loopscale.analysis.curves import CurvePanel
from loopscale.analysis.optimal import SEARCH_DECADES, Optima
from loopscale.analysis.plots import png_bytes, pyplot

MAX_COLUMNS = 4  # panels per row; more budgets (or r) wrap onto further rows
VERTEX_REACH = 4.0  # an unbracketed vertex is drawn when within this factor of the N trained


def log_ticks(ax, axis: str = "x", flops: bool = False) -> None:
    """A log axis labelled readably: at 1, 2 and 5 × 10^k over a span of up to 20×, at 1 and 3 × 10^k up
    to 1000×, else at decades; labels short (20k, 1.5M for counts; 2e10 for FLOPs) so that neighbours do
    not collide. Call after drawing (it reads the axis limits)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    from loopscale.fmt import sci, si

    a = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    lo, hi = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    span = hi / lo if lo > 0 else math.inf
    a.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if span <= 20 else (1.0, 3.0) if span <= 1e3
                                   else (1.0,)))
    a.set_major_formatter(FuncFormatter(lambda v, _: sci(v) if flops else si(v)))
    a.set_minor_locator(LogLocator(base=10, subs=np.arange(2, 10)))
    a.set_minor_formatter(NullFormatter())


def r_colours(rs) -> dict[int, str]:
    """One colour per r, the same in every figure of a sweep."""
    return {int(r): f"C{i % 10}" for i, r in enumerate(sorted({int(v) for v in rs}))}


def _budget_label(value: float, kind: str) -> str:
    if kind == "flops":
        return f"C = {value:.3g} FLOPs".replace("e+", "e")
    from loopscale.fmt import si

    return f"D = {si(value)} tokens"


def _grid(plt, n: int, width: float = 3.2, height: float = 2.7, rows_per: int = 1, sharey: bool = True):
    cols = max(1, min(MAX_COLUMNS, n))
    rows = max(1, math.ceil(n / cols)) * rows_per
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), sharey=sharey, squeeze=False)
    return fig, axes


# --- training curves ---------------------------------------------------------------------------------

def training_curves(panels: list[CurvePanel]) -> bytes | None:
    """Loss against tokens, one panel per budget (a row of panels per probe), one line per run coloured
    by r; unfinished runs dashed. None when there is no curve."""
    if not panels:
        return None
    plt = pyplot()
    probes = list(dict.fromkeys(p.probe for p in panels))
    keys = sorted({p.key for p in panels})
    cols = max(1, min(MAX_COLUMNS, len(keys)))
    rows_per = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows_per * len(probes), cols, figsize=(3.2 * cols, 2.6 * rows_per * len(probes)),
                             sharey=True, squeeze=False)
    colours = r_colours(r for p in panels for r in p.r)
    used = set()
    lo, hi = math.inf, -math.inf
    for p in panels:
        i = keys.index(p.key)
        ax = axes[probes.index(p.probe) * rows_per + i // cols, i % cols]
        used.add(id(ax))
        for r, done, c in zip(p.r, p.finished, p.curves):
            ax.plot(c.tokens, c.loss, color=colours[r], lw=0.9, alpha=0.85, ls="-" if done else "--")
            late = c.loss[c.tokens >= c.tokens[-1] * 0.1]  # past the first tenth: the start's spike left out
            lo, hi = min(lo, float(c.loss.min())), max(hi, float(late.max() if late.size else c.loss.max()))
        log_ticks(ax, "x")
        title = _budget_label(p.key, p.kind)
        ax.set_title(title if len(probes) == 1 else f"{p.probe} · {title}", fontsize=9)
    for ax in axes.flat:
        if id(ax) not in used:
            ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel("training loss (nats)")
    for ax in axes[-1]:
        ax.set_xlabel("tokens seen")
    for ax in axes.flat:
        if ax.get_visible() and not ax.get_xlabel():
            ax.set_xlabel("tokens seen")
    if math.isfinite(lo) and hi > lo:
        pad = 0.05 * (hi - lo)
        axes[0, 0].set_ylim(lo - pad, hi + pad)
    handles = [plt.Line2D([], [], color=colours[r], lw=1.5, label=f"r = {r}") for r in colours]
    if not all(all(p.finished) for p in panels):
        handles.append(plt.Line2D([], [], color="0.4", ls="--", lw=1, label="unfinished"))
    axes[0, 0].legend(handles=handles, fontsize=7)
    fig.tight_layout()
    return png_bytes(plt, fig)


# --- iso-FLOP parabolas ---------------------------------------------------------------------------------

def isoflop_minima(opt: Optima) -> bytes | None:
    """Per r a panel: per budget the runs' losses against N, the parabola in log N over the trained
    range and its vertex (N*, L*): filled when bracketed, hollow (with the parabola dotted out to it)
    when not, left out when more than VERTEX_REACH× beyond the N trained. None without cells."""
    if not opt.cells:
        return None
    plt = pyplot()
    rs = sorted({c.r for c in opt.cells})
    budgets = sorted({c.budget for c in opt.cells})
    colours = dict(zip(budgets, plt.get_cmap("viridis")(np.linspace(0, 0.9, len(budgets)))))
    fig, axes = _grid(plt, len(rs), 3.6, 3.2)
    for k, r in enumerate(rs):
        ax = axes.flat[k]
        for cell in (c for c in opt.cells if c.r == r):
            colour = colours[cell.budget]
            ax.scatter(cell.n, cell.loss, s=14, color=colour, label=f"{cell.budget:.3g}".replace("e+", "e"), zorder=3)
            if cell.curve_n.size:  # dashed: no minimum (the parabola is not convex)
                convex = cell.minimum.curvature is not None and cell.minimum.curvature > 0
                ax.plot(cell.curve_n, cell.curve_loss, color=colour, lw=1, ls="-" if convex else "--")
            m = cell.minimum
            if m.n_star is None:
                continue
            if not m.bracketed:
                if not (m.n_min / VERTEX_REACH <= m.n_star <= m.n_max * VERTEX_REACH):
                    continue
                edge = m.n_min if m.n_star < m.n_min else m.n_max
                xs = np.linspace(math.log(edge), math.log(m.n_star), 30)
                ax.plot(np.exp(xs), m.loss_star + m.curvature * (xs - math.log(m.n_star)) ** 2, color=colour,
                        lw=0.8, ls=":")
            ax.scatter([m.n_star], [m.loss_star], s=46, marker="D", zorder=4, linewidths=1.2,
                       facecolors=colour if m.bracketed else "white", edgecolors=colour)
        log_ticks(ax, "x")
        ax.set_title(f"r = {r}", fontsize=9)
        ax.set_xlabel("N = N_once + N_rec")
    for ax in list(axes.flat)[len(rs):]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel("final loss (nats)")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    handles += [plt.Line2D([], [], ls="", marker="D", color="0.3", label="N*, L* bracketed"),
                plt.Line2D([], [], ls="", marker="D", markerfacecolor="white", color="0.3",
                           label="N*, L* not bracketed")]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, title="budget C (FLOPs)",
               title_fontsize=7, frameon=False)
    fig.tight_layout()
    return png_bytes(plt, fig)


# --- compute-optimal N* and the loss gap ---------------------------------------------------------------

def _marked(ax, frame, y: str, colour) -> None:
    """Points filled where bracketed, hollow where not; vertices beyond VERTEX_REACH are not drawn."""
    near = frame[frame["reach"] <= VERTEX_REACH]
    b = near["bracketed"].to_numpy(dtype=bool)
    x, v = near["budget"].to_numpy(dtype=float), near[y].to_numpy(dtype=float)
    ax.scatter(x[b], v[b], s=30, color=colour, zorder=3)
    ax.scatter(x[~b], v[~b], s=30, facecolors="white", edgecolors=colour, linewidths=1.2, zorder=3)


def _legend(plt, ax, colours: dict[int, str], law: bool) -> None:
    handles = [plt.Line2D([], [], color=c, lw=1.2, marker="o", label=f"r = {r}") for r, c in colours.items()]
    handles += [plt.Line2D([], [], ls="", marker="o", color="0.3", label="cell vertex, bracketed"),
                plt.Line2D([], [], ls="", marker="o", markerfacecolor="white", color="0.3", label="not bracketed")]
    if law:
        handles.append(plt.Line2D([], [], color="0.3", lw=1.2, label="fitted law"))
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)


def _unresolved(ax, opt: Optima) -> None:
    """Say in the panel which r have no law line: their optimum left the searched range of N."""
    if opt.law_unresolved:
        rs = ", ".join(str(r) for r in opt.law_unresolved)
        ax.text(0.02, 0.02, f"law's N* beyond {SEARCH_DECADES:g} decade of the N trained: no line for r = {rs}",
                transform=ax.transAxes, fontsize=6.5, color="0.35", va="bottom")


def _law_and_cells(ax, colours: dict, law, cells, column: str) -> None:
    """Per r (its colour): the law's ``column`` against the budget as a line, and the cells' as points
    (filled when bracketed, :func:`_marked`)."""
    for r, colour in colours.items():
        line = law[law["r"] == r].sort_values("budget")
        if not line.empty:
            ax.plot(line["budget"], line[column], color=colour, lw=1.2)
        _marked(ax, cells[cells["r"] == r], column, colour)


def optimal_n(opt: Optima) -> bytes | None:
    """Compute-optimal N* against C per r (log-log): measured cell vertices as points, the law's N*(C)
    as lines. None when there is neither."""
    if opt.measured.empty and opt.law.empty:
        return None
    plt = pyplot()
    colours = r_colours(list(opt.measured["r"]) + list(opt.law["r"]) + [c.r for c in opt.cells])
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    _law_and_cells(ax, colours, opt.law, opt.measured, "n_star")
    log_ticks(ax, "x", flops=True)
    log_ticks(ax, "y")
    ax.set_xlabel("FLOP budget C")
    ax.set_ylabel("compute-optimal N* = N_once + N_rec")
    _unresolved(ax, opt)
    _legend(plt, ax, colours, not opt.law.empty)
    fig.tight_layout()
    return png_bytes(plt, fig)


def loss_gap(opt: Optima) -> bytes | None:
    """L*(C, r) − L*(C, 1) against C per r > 1: measured where both cells have a vertex (hollow
    unless both are bracketed), and the law's gap as lines. None when there is neither."""
    if opt.gaps.empty and opt.law_gaps.empty:
        return None
    plt = pyplot()
    everything = [c.r for c in opt.cells] + list(opt.law["r"])
    colours = r_colours(everything)
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    ax.axhline(0, color="0.5", lw=0.8)
    colours = {r: c for r, c in colours.items() if r != opt.reference_r}
    _law_and_cells(ax, colours, opt.law_gaps, opt.gaps, "gap")
    log_ticks(ax, "x", flops=True)
    ax.set_xlabel("FLOP budget C")
    ax.set_ylabel(f"L*(C, r) − L*(C, {opt.reference_r}) (nats)")
    _unresolved(ax, opt)
    _legend(plt, ax, colours, not opt.law_gaps.empty)
    fig.tight_layout()
    return png_bytes(plt, fig)


def render_optima(opt: Optima) -> dict[str, bytes]:
    """The compute-optimal figures by file name (iso-FLOP minima, N* against C, loss gap); one that
    has nothing to draw is left out."""
    out = {}
    for name, draw in (("isoflop_minima.png", isoflop_minima), ("optimal_n.png", optimal_n),
                       ("loss_gap.png", loss_gap)):
        png = draw(opt)
        if png is not None:
            out[name] = png
    return out
