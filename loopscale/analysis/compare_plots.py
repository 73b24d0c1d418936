"""The figure of `loopscale compare` (matplotlib, Agg): φ with its CI for baseline and probe, and the
size term of each fit against N_eff (losses in nats)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from loopscale.analysis.compare import Comparison
from loopscale.analysis.plots import log_x, png_bytes, pyplot
from loopscale.atomic import write_bytes_atomic

COLOURS = {"baseline": "C0", "probe": "C3"}
MARKERS = {1: "o", 2: "s", 4: "^", 8: "D"}


def write_plot(comparison: Comparison, out_dir: str | Path) -> Path:
    """Write compare-<probe>.png into ``out_dir``; returns its path."""
    path = Path(out_dir) / f"compare-{comparison.probe_name}.png"
    write_bytes_atomic(path, render(comparison))
    return path


def render(comparison: Comparison) -> bytes:
    """The figure as PNG bytes."""
    plt = pyplot()
    fig, (ax_phi, ax_n) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [1, 2.2]})
    _phi_panel(ax_phi, comparison)
    _neff_panel(ax_n, comparison)
    c = comparison
    ci = c.delta_ci
    title = f"{c.probe_name} vs {c.baseline_name}: Δφ = {c.delta_phi:+.3f}"
    if ci is not None:
        title += f", 95% CI [{ci[0]:+.3f}, {ci[1]:+.3f}] (paired bootstrap over cells)"
    fig.suptitle(title, fontsize=9)
    return png_bytes(plt, fig)


def _phi_panel(ax, c: Comparison) -> None:
    for x, key in enumerate(("baseline", "probe")):
        phi = c.fits[key].phi
        samples = c.phi_samples(x)
        if samples is not None and np.isfinite(samples).any():
            lo, hi = np.percentile(samples[np.isfinite(samples)], [2.5, 97.5])
            ax.errorbar([x], [phi], yerr=[[phi - lo], [hi - phi]], fmt="o", color=COLOURS[key], capsize=5)
        else:
            ax.plot([x], [phi], "o", color=COLOURS[key])
    ax.set_xticks([0, 1], [f"{c.baseline_name}\n(baseline)", c.probe_name])
    ax.set_xlim(-0.6, 1.6)
    ax.set_ylabel("φ (95% CI)")
    ax.grid(axis="y", alpha=0.3)


def _neff_panel(ax, c: Comparison) -> None:
    """L − B·D^−β against N_eff = N_once + r^φ·N_rec, each fit with its own coefficients: the runs of
    every r should fall on that fit's E + A·N_eff^−α."""
    sides = (("baseline", c.baseline_name, c.tables.baseline), ("probe", c.probe_name, c.tables.probe))
    for key, name, table in sides:
        p = c.fits[key].params
        n_eff = table["n_once"].to_numpy() + table["r"].to_numpy() ** p["phi"] * table["n_rec"].to_numpy()
        size_term = table["loss"].to_numpy() - p["B"] * table["tokens"].to_numpy() ** -p["beta"]
        for r in np.unique(table["r"]):
            m = table["r"].to_numpy() == r
            shared = r == 1  # the same runs in both fits: hollow
            ax.scatter(n_eff[m], size_term[m], s=16, marker=MARKERS.get(int(r), "x"),
                       facecolors="none" if shared else COLOURS[key], edgecolors=COLOURS[key], lw=0.8,
                       label=f"{name} r = {r:g}" + (" (shared)" if shared else ""))
        grid = np.geomspace(n_eff.min() / 1.2, n_eff.max() * 1.2, 200)
        ax.plot(grid, p["E"] + p["A"] * grid ** -p["alpha"], color=COLOURS[key], lw=1,
                label=f"{key} fit, φ = {p['phi']:.3f}, R² = {c.fits[key].r2:.4f}")
    log_x(ax)
    ax.set_xlabel("N_eff = N_once + r^φ·N_rec (each fit's φ)")
    ax.set_ylabel("L − B·D^−β (nats)")
    ax.legend(fontsize=6, ncol=2)
