"""PNG figures of a fit (matplotlib, Agg): the law against the runs, iso-FLOP curves, residuals and
the bootstrap distribution of φ. Losses in nats."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from loopscale.analysis.fit import FitReport
from loopscale.analysis.law import I_PHI, FitData, predict_loss
from loopscale.analysis.plots import log_x, png_bytes, pyplot
from loopscale.atomic import write_bytes_atomic


def render(report: FitReport) -> dict[str, bytes]:
    """The figures as PNG bytes by file name (fit_*.png), in a fixed order; a figure that does not
    apply (no FLOP budgets, no bootstrap) is left out."""
    plt = pyplot()
    pngs = {}
    for name, draw in (("fit_loss_vs_neff.png", _loss_vs_neff), ("fit_isoflop.png", _isoflop),
                       ("fit_residuals.png", _residuals), ("fit_phi_bootstrap.png", _phi_bootstrap)):
        fig = draw(plt, report)
        if fig is not None:
            pngs[name] = png_bytes(plt, fig)
    return pngs


def write_plots(report: FitReport, out_dir: str | Path) -> list[Path]:
    """Write the figures into ``out_dir`` as fit_*.png; returns their paths."""
    out = Path(out_dir)
    written = []
    for name, png in render(report).items():
        write_bytes_atomic(out / name, png)
        written.append(out / name)
    return written


def _law_parts(report: FitReport):
    runs = report.runs
    p = report.fit.params
    phi = p["phi"] if p["phi"] is not None else 0.0
    n_eff = runs["n_once"].to_numpy() + runs["r"].to_numpy() ** phi * runs["n_rec"].to_numpy()
    data_term = p["B"] * runs["tokens"].to_numpy() ** -p["beta"]
    return runs, p, n_eff, data_term


def _title(report: FitReport) -> str:
    p = report.fit.params
    phi = "φ not identifiable" if p["phi"] is None else f"φ = {p['phi']:.3f}"
    return f"{phi}, α = {p['alpha']:.3f}, β = {p['beta']:.3f}, E = {p['E']:.3f}, R² = {report.fit.r2:.4f}"


def _loss_vs_neff(plt, report: FitReport):
    """The size term alone: L − B·D^−β against N_eff; every r should fall on E + A·N_eff^−α."""
    runs, p, n_eff, data_term = _law_parts(report)
    rs = np.unique(runs["r"])
    fig, axes = plt.subplots(1, len(rs), figsize=(3.6 * len(rs), 3.4), sharey=True, squeeze=False)
    grid = np.geomspace(n_eff.min() / 1.3, n_eff.max() * 1.3, 200)
    for ax, r in zip(axes[0], rs):
        m = runs["r"].to_numpy() == r
        ax.plot(grid, p["E"] + p["A"] * grid ** -p["alpha"], color="0.3", lw=1, label="E + A·N_eff^−α")
        ax.scatter(n_eff[m], runs["loss"].to_numpy()[m] - data_term[m], s=14, label="runs")
        log_x(ax)
        ax.set_title(f"r = {r:g}")
        ax.set_xlabel("N_eff = N_once + r^φ·N_rec")
    axes[0, 0].set_ylabel("L − B·D^−β (nats)")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(_title(report), fontsize=9)
    return fig


def _isoflop(plt, report: FitReport):
    """Loss against unique parameters per FLOP budget, with the law along each budget's runs."""
    runs = report.runs
    if "budget_flops" not in runs or runs["budget_flops"].isna().any():
        return None
    theta = report.fit.theta
    rs = np.unique(runs["r"])
    budgets = np.sort(runs["budget_flops"].unique())
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(budgets)))
    fig, axes = plt.subplots(1, len(rs), figsize=(3.6 * len(rs), 3.4), sharey=True, squeeze=False)
    for ax, r in zip(axes[0], rs):
        for colour, c in zip(colours, budgets):
            cell = runs[(runs["r"] == r) & (runs["budget_flops"] == c)]
            if cell.empty:
                continue
            n = (cell["n_once"] + cell["n_rec"]).to_numpy()
            ax.scatter(n, cell["loss"], s=14, color=colour, label=f"{c:.3g}")
            curve = _cell_curve(cell, n)
            if curve is not None:
                ax.plot(curve.n_once + curve.n_rec, predict_loss(theta, curve), color=colour, lw=1)
        log_x(ax)
        ax.set_title(f"r = {r:g}")
        ax.set_xlabel("N = N_once + N_rec")
    axes[0, 0].set_ylabel("loss (nats)")
    axes[0, 0].legend(title="FLOPs", fontsize=6, title_fontsize=7)
    fig.suptitle(_title(report), fontsize=9)
    return fig


def _cell_curve(cell, n: np.ndarray):
    """The law along one (budget, r) cell: tokens and N_once/N follow the cell's runs, as smooth
    functions of log N (polynomials of degree ≤ 2), so no architecture needs to be assumed."""
    if len(cell) < 2 or np.ptp(np.log(n)) == 0:
        return None
    x = np.log(n)
    deg = min(2, len(cell) - 1)
    lt = np.polyfit(x, np.log(cell["tokens"].to_numpy()), deg)
    share = np.polyfit(x, cell["n_once"].to_numpy() / n, min(1, deg))
    xs = np.linspace(x.min() - 0.15, x.max() + 0.15, 100)
    ns = np.exp(xs)
    once = np.clip(np.polyval(share, xs), 0, 1) * ns
    return FitData.from_arrays(once, ns - once, np.full_like(xs, cell["r"].iloc[0]), np.exp(np.polyval(lt, xs)),
                               np.ones_like(xs))


def _residuals(plt, report: FitReport):
    runs, _, n_eff, _ = _law_parts(report)
    resid = runs["loss"].to_numpy() - predict_loss(report.fit.theta, FitData.from_table(runs))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for r in np.unique(runs["r"]):
        m = runs["r"].to_numpy() == r
        axes[0].scatter(n_eff[m], resid[m], s=12, label=f"r = {r:g}")
        axes[1].scatter(runs["tokens"].to_numpy()[m], resid[m], s=12)
    for ax, label in zip(axes, ("N_eff", "tokens D")):
        ax.axhline(0, color="0.4", lw=0.8)
        log_x(ax)
        ax.set_xlabel(label)
    all_ = report.fit.residuals["all"]
    axes[0].set_ylabel("L − L̂ (nats)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"residuals: RMSE {all_['rmse']:.4f}, max |resid| {all_['max_abs']:.4f} nats", fontsize=9)
    return fig


def _phi_bootstrap(plt, report: FitReport):
    if report.bootstrap is None or report.fit.phi is None:
        return None
    phi = report.bootstrap.params[0][:, I_PHI]
    phi = phi[np.isfinite(phi)]
    if phi.size == 0:
        return None
    lo, hi = report.ci["phi"]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.hist(phi, bins=min(40, max(10, phi.size // 5)), color="0.7")
    ax.axvline(report.fit.phi, color="C3", label=f"fit φ = {report.fit.phi:.3f}")
    for v in (lo, hi):
        ax.axvline(v, color="C0", ls="--")
    ax.set_xlabel("φ")
    ax.set_ylabel("resamples")
    ax.set_title(f"bootstrap ({report.resample}, {phi.size} refits): 95% CI [{lo:.3f}, {hi:.3f}]", fontsize=9)
    ax.legend(fontsize=7)
    return fig
