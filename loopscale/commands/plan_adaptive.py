"""`loopscale plan GRID --adaptive --until-ci W`: the adaptive policy replayed with simulated losses, against the
fixed grid and a random pick (logic in loopscale/analysis/adaptive/); its readable table."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def parse_until_ci(text: str | None):
    """--until-ci: a positive width, or 'fixed' (the fixed grid's own predicted width)."""
    from loopscale.errors import UserError

    if text is None:
        raise UserError("--adaptive needs --until-ci W (a positive CI width of φ, or 'fixed': the fixed grid's own)")
    if text.strip().lower() == "fixed":
        return "fixed"
    try:
        w = float(text)
    except ValueError:
        raise UserError(f"--until-ci must be a positive CI width (or 'fixed'), got {text!r}") from None
    if not w > 0 or w != w or w == float("inf"):
        raise UserError(f"--until-ci must be a positive CI width (or 'fixed'), got {text}")
    return w


def print_adaptive(doc: dict, out: Console) -> None:
    ff = doc["fixed"]["flops"]
    out.print(f"[bold]{doc['grid']}[/] adaptive under the {doc['law_source']} law (φ = {doc['law']['phi']:.4g}), noise "
              f"{doc['noise_nats']:.4g} nats: {doc['replicates']} replicates, K = {doc['batch']} runs a round, "
              f"target φ CI width {doc['target_width']:.4g} ({doc['target_source']}), cap {doc['cap_flops']:.3e} "
              f"FLOPs", highlight=False, soft_wrap=True)
    sp = doc["space"]
    out.print(f"space ({sp['source']}): pilot {sp['pilot_runs']} runs, {sp['candidates']} candidates over "
              f"{len(sp['budgets'])} budgets, {len(sp['widths'])} widths, r {sp['r']}", highlight=False, soft_wrap=True)
    a, r = doc["adaptive"], doc["random"]
    t = Table(title="FLOPs to reach the target (an unreached replicate counts as the cap)")
    for col in ("design", "FLOPs median", "share of fixed", "p80", "reached", "coverage", "rounds", "rule held"):
        t.add_column(col, justify="right" if col != "design" else "left")
    pct = lambda v: f"{100 * v:.0f}%"  # noqa: E731
    t.add_row("adaptive", f"{a['flops_median']:.3e}", pct(a["flops_median"] / ff), f"{a['flops_p80']:.3e}",
              pct(a["reached_share"]), pct(a["coverage"]), f"{a['rounds_median']:.0f}", pct(a["rule_held_share"]))
    t.add_row("random picks", f"{r['flops_median']:.3e}", pct(r["flops_median"] / ff), "", pct(r["reached_share"]),
              "", "", "")
    t.add_row("fixed grid", f"{ff:.3e}", "100%", "", "", "", "", "")
    out.print(t)
    out.print(f"fixed grid's predicted φ CI width {doc['fixed']['phi_ci_width']:.4g}; pilot {a['pilot_flops']:.3e} "
              f"FLOPs ({pct(a['pilot_flops'] / ff)} of fixed)", highlight=False)
    for m, counts in doc["stop_reasons"].items():
        out.print(f"stops ({'adaptive' if m == 'score' else m}): " + ", ".join(f"{k} {v}" for k, v in counts.items()),
                  highlight=False)
    cal = doc["calibration"]
    if cal["measured_over_predicted_median"] is not None:
        out.print(f"score calibration: measured / predicted CI width after a round, median "
                  f"{cal['measured_over_predicted_median']:.3f} over {cal['rounds']} rounds", highlight=False)
    out.print(f"{doc['seconds']:.1f} s", highlight=False)


def run_adaptive(grid_file, *, law, from_sweep, noise, until_ci, adaptive, replicates, batch, max_flops, seed,
                 fit_starts, workers, json_out) -> None:
    import json
    import sys

    from loopscale.analysis.adaptive import check_adaptive_args, check_iso_flop, simulate_adaptive
    from loopscale.analysis.law import load_law
    from loopscale.analysis.plan import sweep_prior
    from loopscale.analysis.plan.settings import PLAN_NOISE
    from loopscale.commands.stages import stage_progress
    from loopscale.errors import UserError
    from loopscale.grid import find_grid, load_grid

    if not adaptive:
        raise UserError("--until-ci needs --adaptive (plan simulates the adaptive sweep)")
    w = parse_until_ci(until_ci)
    check_adaptive_args(w, replicates, batch, max_flops, noise)
    grid = load_grid(find_grid(grid_file))
    check_iso_flop(grid)
    with stage_progress() as progress:
        if from_sweep is not None:
            sweep = sweep_prior(from_sweep, starts=fit_starts, seed=seed, workers=workers,
                                progress=lambda stage, done, total: progress(f"sweep {stage}", done, total))
            prior, source = sweep.law, sweep.law_source
            noise = sweep.noise if noise is None else noise
        else:
            source = law or "paper"
            prior = load_law(source, need_phi=True)
            noise = PLAN_NOISE if noise is None else noise
        doc = simulate_adaptive(grid, prior, noise=noise, until_ci=w, replicates=replicates, batch=batch,
                                max_flops=max_flops, seed=seed, law_source=source, workers=workers, progress=progress)
    if json_out:
        sys.stdout.write(json.dumps(doc, allow_nan=False) + "\n")
        return
    print_adaptive(doc, Console())
