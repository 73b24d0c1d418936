"""The report laid out: sections of headings, text, tables (numbers already rounded), figures.

One layout for both outputs: report.html and report.md render the same sections, so the HTML and the
Markdown hold the same tables. Rounding is for reading only; fit.json and compare-<probe>.json keep
every digit.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from loopscale.analysis.curves import MAX_POINTS
from loopscale.analysis.law import FORMULA_TEXT, PARAM_NAMES
from loopscale.analysis.regime_text import cell_rows, ci_text, noise_line, verdict_line
from loopscale.fmt import finite, num, sci, si
from loopscale.report.blocks import Bullets, Code, Facts, Figure, Heading, Para, Section, Table
from loopscale.report.data import BASELINE, FitPart, ProbePart, Report
from loopscale.store import FINISHED

SYMBOL = {"alpha": "α", "beta": "β", "phi": "φ"}
FIGURE_CAPTIONS = {
    "fit_loss_vs_neff.png": "The size term alone, L − B·D^−β, against N_eff = N_once + r^φ·N_rec, one panel per r: "
                            "with the right φ every r falls on the same curve E + A·N_eff^−α.",
    "fit_isoflop.png": "Loss against unique parameters per FLOP budget, with the fitted law along each budget's runs.",
    "fit_residuals.png": "Residuals L − L̂ of the joint fit against N_eff and tokens D (nats).",
    "fit_phi_bootstrap.png": "Bootstrap distribution of φ with the 95% percentile interval (dashed).",
    "training_curves.png": "Training loss (of the batch at each logged step, nats) against tokens seen, one panel "
                           "per {budget}, one line per run coloured by r; dashed: runs not finished yet.",
    "isoflop_minima.png": "Final loss against N = N_once + N_rec of the fitted runs, one panel per r, one colour per "
                          "FLOP budget: the parabola in log N through each (budget × r) cell over the widths trained "
                          "(dashed where it is not convex: no minimum), "
                          "and its vertex (N*, L*), filled when the cell brackets it, hollow (the parabola dotted out "
                          "to it) when it lies outside the widths trained; vertices more than 4× beyond them are in "
                          "the table only.",
    "optimal_n.png": "Compute-optimal N* against the FLOP budget C per r (log-log). Points: the cells' parabola "
                     "vertices (filled: bracketed; hollow: outside the widths trained; more than 4× outside: left "
                     "out). Lines: the fitted law's N*(C), the N minimising L̂ along D = C / F(N), with F(N) "
                     "(FLOPs per token) and N_once/N fitted to each r's runs against log N.",
    "loss_gap.png": "Loss gap to r = 1 at compute-optimal width, L*(C, r) − L*(C, 1) (nats), per r. Points: the cell "
                    "vertices' L* at one budget (filled when both cells bracket their optimum, hollow otherwise). "
                    "Lines: the fitted law's gap. The paper reports 0.03–0.12 nats at its scale (r = 2: 0.03–0.06, "
                    "r = 4: 0.05–0.08, r = 8: 0.09–0.12, budgets 4.6e17–2.2e19 FLOPs): the paper's number, not a "
                    "target for this sweep.",
}
NO_LAW = " No fit, so no law lines."
OPTIMA_FIGURES = ("isoflop_minima.png", "optimal_n.png", "loss_gap.png")


def layout(report: Report) -> list[Section]:
    return [summary(report), status(report), cost(report), training(report), fit(report), residuals(report),
            probes(report), runs(report)]


# --- sections --------------------------------------------------------------------------------------

def summary(rep: Report) -> Section:
    total = int(sum(rep.counts.values()))
    items = [("runs done", f"{rep.counts.get('done', 0)} of {total}")]
    if set(rep.counts) - {"done"}:
        items.append(("states", " · ".join(f"{s} {n}" for s, n in rep.counts.items())))
    f = rep.fit.result
    if f is None:
        items.append(("φ (95% CI)", "no fit"))
    else:
        phi = f.fit.phi
        items.append(("φ (95% CI)", "not identifiable" if phi is None else f"{num(phi, 3)} {_ci(f.ci['phi'], 3)}"))
        items.append(("R² (runs fitted)", f"{num(f.fit.r2)} ({f.fit.n_runs})"))
        if f.diagnostics is not None:
            items.append(("fit verdict", _verdict_summary(f.diagnostics)))
    t = rep.cost.iloc[-1]
    items.append(("FLOPs trained", _sci(t["flops"])))
    items.append(("tokens trained", si(float(t["tokens"]))))
    items.append(("wall-clock", _hours_split(t)))
    for p in rep.probes:
        if p.doc is not None:
            items.append((f"Δφ {p.probe} (95% CI)", f"{num(p.doc['delta_phi'], 3, sign='+')} "
                                                   f"{_ci(p.doc['delta_phi_ci'], 3, '+')}"))
    return Section("summary", "Summary", [Facts(items)])



def _verdict_summary(diag) -> str:
    """The verdict and the first failed check ("NOT trustworthy: the 95% CI of φ is 0.54 wide …")."""
    if diag.trustworthy:
        return "trustworthy"
    failed = sum(v is False for v in diag.checks.values())
    more = f" (and {failed - 1} more)" if failed > 1 else ""
    return f"NOT trustworthy: {diag.reasons[0]}{more}" if diag.reasons else "NOT trustworthy"

def status(rep: Report) -> Section:
    blocks: list = []
    if rep.description:
        blocks.append(Para(rep.description, "lead"))
    blocks.append(Heading("Runs by state"))
    blocks.append(Table(["state", "runs"], [[s, str(n)] for s, n in rep.counts.items()], numeric={1}, state=0))
    blocks.append(Heading("Design: finished / planned runs per cell"))
    blocks.append(design_table(rep.runs))
    if rep.grid_text:
        blocks.append(Code(rep.grid_text.rstrip("\n"), "grid.yaml (as kept in the sweep folder)"))
    return Section("status", "Grid and status", blocks)


def cost(rep: Report) -> Section:
    c = rep.cost
    t = c.iloc[-1]
    flops, planned = finite(t["flops"]), finite(t["planned_flops"])
    share = f" ({100 * flops / planned:.1f}% of the {sci(planned)} the grid plans)" if flops and planned else ""
    spent = f"{sci(flops)} FLOPs{share}" if flops is not None else "(FLOPs not recorded)"
    when = f", in {_hours_split(t)} wall-clock" if t["wall_h"] > 0 else "; no wall-clock times recorded"
    blocks: list = [Para(f"{int(t['finished'])} finished runs trained {spent} on "
                         f"{si(float(t['tokens']))} tokens{when}. Times are the "
                         "wall_time_s of each finished run's result.json (one device per run), summed; failed attempts "
                         "record none and are not counted.")]
    probes = len(set(c["probe"][:-1])) > 1
    gpu, cpu = bool(c["gpu_h"].sum() > 0), bool(c["cpu_h"].sum() > 0)
    wall = "wall-clock" + (", GPU" if gpu and not cpu else ", CPU" if cpu and not gpu else "")
    gpu = cpu = gpu and cpu  # on one kind of device the wall-clock column says it all
    cols = ["probe"] * probes + ["r", "runs", "finished", "tokens", "FLOPs trained", "FLOPs planned", wall]
    cols += ["GPU"] * gpu + ["CPU"] * cpu
    rows = []
    for _, row in c.iterrows():
        last = row["probe"] == "all" and not np.isfinite(row["r"])
        r = ("" if probes else "all") if last else f"{row['r']:g}"
        rows.append(([("all" if last else row["probe"])] if probes else []) + [
            r, str(int(row["runs"])), str(int(row["finished"])), si(float(row["tokens"])), _sci(row["flops"]),
            _sci(row["planned_flops"]), _duration(row["wall_h"])]
            + [_duration(row["gpu_h"])] * gpu + [_duration(row["cpu_h"])] * cpu)
    blocks.append(Table(cols, rows, numeric=set(range(int(probes), len(cols))), total=True))
    return Section("cost", "Compute spent", blocks)


def fit(rep: Report) -> Section:
    part = rep.fit
    blocks: list = [Para(f"{FORMULA_TEXT}, fitted as `loopscale fit` does: log-space Huber objective (δ = "
                         f"{rep.settings['huber_delta']:g}), {rep.settings['starts']} random starts, "
                         f"{_bootstrap_words(rep.settings)}, seed {rep.settings['seed']}.", "lead")]
    blocks += [Para(n, "note") for n in part.notes]
    if part.result is None:
        blocks.append(Para(part.reason or "No fit.", "reason"))
        if part.diagnostics is not None:
            blocks += design_blocks(part.diagnostics)
        blocks += optima_blocks(part, part.diagnostics)
        return Section("fit", "Fit", blocks)
    f = part.result
    diag = part.diagnostics
    if diag is None and f.diagnostics is not None:
        diag = f.diagnostics.to_json()
    if diag is not None:
        blocks = diagnostics_blocks(diag) + blocks
    blocks += [Para(w, "warning") for w in f.warnings] + [Para(n, "note") for n in f.notes]
    blocks.append(Heading(f"Joint fit ({f.fit.n_runs} runs, R² = {num(f.fit.r2)})"))
    ci = f.ci
    blocks.append(Table(["parameter", "fit", "95% CI"],
                        [[SYMBOL.get(n, n), _param(f.fit.params[n]), ci_text(n, f.fit.params[n], ci.get(n), diag, _param)]
                         for n in PARAM_NAMES], numeric={1, 2}))
    if diag is not None:
        line = noise_line(diag)
        blocks.append(Para(line[0].upper() + line[1:] + "."))
        blocks += seed_blocks(diag)
    blocks.append(Heading("Free and restricted fits"))
    rows = []
    for name, lf in [("free", f.fit)] + list(f.restricted.items()):
        rows.append([name.replace("phi=", "φ = "), num(lf.phi, 3), num(lf.r2), num(lf.objective, 6, "g"),
                     _yes(lf.converged), f"{lf.n_at_best}/{lf.n_starts}"])
    blocks.append(Table(["fit", "φ", "R²", "objective", "converged", "starts at best"], rows, numeric={1, 2, 3, 5}))
    if not f.restricted:
        blocks.append(Para("No restricted fits: φ is not identifiable from these runs.", "note"))
    blocks.append(Heading("Per-r fits (Chinchilla form, N = N_once + N_rec)"))
    if f.per_r:
        rows = [[key, str(lf.n_runs)] + [_param(lf.params[n]) for n in PARAM_NAMES[:5]] + [num(lf.r2), _yes(lf.converged)]
                for key, lf in f.per_r.items()]
        blocks.append(Table(["r", "runs", "E", "A", "α", "B", "β", "R²", "converged"], rows, numeric=set(range(8))))
    else:
        blocks.append(Para("No per-r fit: every r has fewer than 5 runs.", "note"))
    if f.split_half:
        halves = "; ".join(f"{k} half ({_plural(len(v['budgets']), 'budget')}, {_plural(v['n_runs'], 'run')}): "
                           f"φ = {num(v['phi'], 3)}" for k, v in f.split_half.items())
        blocks.append(Para(f"Split-half check, φ refitted on the lower and the upper FLOP budgets: {halves}."))
    doc = f.to_json()["bootstrap"]
    if doc:
        blocks.append(Para(f"Bootstrap: {doc['n_resamples']} resamples of {doc['n_units']} {doc['resample']}, "
                           f"{doc['n_failed']} failed, {doc['n_unconverged']} not converged; "
                           "95% percentile intervals."))
    for name in ("fit_loss_vs_neff.png", "fit_isoflop.png"):
        if name in part.figures:
            blocks.append(Figure(name, part.figures[name], FIGURE_CAPTIONS[name]))
    blocks += optima_blocks(part, diag)
    if "fit_phi_bootstrap.png" in part.figures:
        blocks.append(Figure("fit_phi_bootstrap.png", part.figures["fit_phi_bootstrap.png"],
                             FIGURE_CAPTIONS["fit_phi_bootstrap.png"]))
    return Section("fit", "Fit", blocks)


def training(rep: Report) -> Section:
    t = rep.training
    blocks: list = [Para(f"Training loss of {_plural(t.n_runs, 'run')}, read from runs/<id>/metrics.jsonl (one "
                         f"line every `train.log_every` steps; files of more than {MAX_POINTS} lines thinned to "
                         f"{MAX_POINTS} evenly spaced points). Training loss is the loss of the batches trained on, not the held-out loss "
                         "the fit uses.", "lead")] if t.figure is not None else []
    blocks += [Para(n, "note") for n in t.notes]
    if t.figure is None:
        blocks.append(Para("No training curves: no run has written a readable metrics.jsonl yet.", "reason"))
        return Section("training", "Training", blocks)
    budget = "FLOP budget" if t.kind == "flops" else "token budget (not every run has a FLOP budget)"
    caption = FIGURE_CAPTIONS["training_curves.png"].format(budget=budget)
    if len(t.probes) > 1:
        caption += (f" A row of panels per probe ({', '.join(t.probes)}); a probe's row also shows the r = 1 runs "
                    f"of probe {BASELINE} when it has none of its own (at r = 1 there is no loop to change).")
    blocks.append(Figure("training_curves.png", t.figure, caption))
    return Section("training", "Training", blocks)


def residuals(rep: Report) -> Section:
    part = rep.fit
    if part.result is None:
        return Section("residuals", "Residuals", [Para("No fit, so no residuals.", "reason")])
    res = part.result.fit.residuals
    blocks: list = [Heading("Residuals of the joint fit per r, L − L̂ (nats)")]
    rows = [[k, str(v["n"]), num(v["mean"], sign="+"), num(v["max_abs"]), num(v["rmse"])] for k, v in res.items()]
    blocks.append(Table(["r", "runs", "mean", "max |resid|", "RMSE"], rows, numeric={1, 2, 3, 4}, total=True))
    if "fit_residuals.png" in part.figures:
        blocks.append(Figure("fit_residuals.png", part.figures["fit_residuals.png"],
                             FIGURE_CAPTIONS["fit_residuals.png"]))
    worst = _largest_residuals(part, rep.runs)
    if worst is not None:
        blocks.append(Heading(f"The {len(worst.rows)} largest residuals"))
        blocks.append(worst)
    return Section("residuals", "Residuals", blocks)


def probes(rep: Report) -> Section:
    if not rep.probes:
        return Section("compare", "Probe comparisons", [Para(
            f"This sweep has no probe runs: every looped run is probe {BASELINE}, so there is nothing to compare. "
            "Sweeping a probe grid into the same folder (e.g. grids/tiny-tbptt.yaml) adds them.", "reason")])
    blocks: list = []
    for p in rep.probes:
        blocks.append(Heading(f"Probe {p.probe} vs baseline {BASELINE}"))
        blocks += _probe_blocks(p)
    return Section("compare", "Probe comparisons", blocks)


def runs(rep: Report) -> Section:
    df = rep.runs.copy()
    resid = {}
    if rep.fit.residuals is not None:
        resid = dict(zip(rep.fit.residuals["run_id"], rep.fit.residuals["resid"]))
    for c in ("budget_flops", "width", "seed"):
        if c not in df:
            df[c] = np.nan
    df["_budget"] = df["budget_flops"].fillna(np.inf)
    df["_base"] = df["probe"] != BASELINE
    df = df.sort_values(["_base", "probe", "_budget", "r", "width", "seed", "run_id"], kind="stable")
    show_probe = bool(df["probe"].nunique() > 1)
    show_seed = bool(df["seed"].nunique(dropna=True) > 1)
    show_detail = bool(df["detail"].fillna("").astype(str).str.strip().ne("").any())
    cols = ["run id", "r"] + ["probe"] * show_probe + ["seed"] * show_seed + [
        "width", "budget", "tokens", "n_once", "n_rec", "FLOPs", "loss"] + ["resid"] * bool(resid) + ["state"]
    cols += ["detail"] * show_detail
    rows = []
    for _, r in df.iterrows():
        row = [str(r["run_id"]), _int(r["r"])] + [str(r["probe"])] * show_probe + [_int(r["seed"])] * show_seed
        row += [_int(r["width"]), _sci(r["budget_flops"]), _si(r.get("tokens")), _si(r.get("n_once")),
                _si(r.get("n_rec")), _sci(r.get("flops_total")), _loss(r["loss"])]
        row += [_resid(resid.get(str(r["run_id"])))] * bool(resid) + [str(r["status"])]
        row += [str(r["detail"]) if _present(r["detail"]) else ""] * show_detail
        rows.append(row)
    n = len(cols)
    text_cols = {0, cols.index("state")} | ({cols.index("probe")} if show_probe else set())
    table = Table(cols, rows, numeric=set(range(n)) - text_cols - ({n - 1} if show_detail else set()),
                  wrap={n - 1} if show_detail else set(), state=cols.index("state"))
    note = (f"{len(rows)} runs; budget in FLOPs, tokens D trained (planned for runs without a result), n_once and "
            "n_rec unique non-embedding parameters, FLOPs trained (planned), loss in nats/token"
            + (", resid = L − L̂ of the joint fit" if resid else "") + ".")
    return Section("runs", "Runs", [Para(note), table])


# --- pieces ----------------------------------------------------------------------------------------

def design_table(runs: pd.DataFrame) -> Table:
    """Rows: FLOP budgets (or token budgets); columns: r (per probe); cells: finished / planned runs."""
    df = runs.copy()
    has_budget = "budget_flops" in df and df["budget_flops"].notna().all()
    key = df["budget_flops"].map(_sci) if has_budget else [
        _sci(c) if _present(c) else f"D {_si(t)}" for c, t in zip(df.get("budget_flops", [np.nan] * len(df)),
                                                                   df["tokens"])]
    df["_key"] = list(key)
    df["_sort"] = df["budget_flops"].fillna(np.inf) if "budget_flops" in df else 0
    df["_done"] = df["status"].isin(FINISHED)
    several = df["probe"].nunique() > 1
    groups = sorted({(p != BASELINE, p, r) for p, r in zip(df["probe"], df["r"])})
    heads = [f"r = {r:g}" + (f" {p}" if several else "") for _, p, r in groups]
    rows = []
    for k, sub in sorted(df.groupby("_key"), key=lambda kv: (kv[1]["_sort"].min(), kv[0])):
        widths = ", ".join(_int(w) for w in sorted(sub["width"].dropna().unique())) if "width" in sub else ""
        cells = []
        for _, p, r in groups:
            m = sub[(sub["probe"] == p) & (sub["r"] == r)]
            cells.append(f"{int(m['_done'].sum())}/{len(m)}" if len(m) else "—")
        rows.append([k, widths] + cells)
    first = "budget (FLOPs)" if has_budget else "budget"
    return Table([first, "widths"] + heads, rows, numeric=set(range(2, 2 + len(heads))))


def diagnostics_blocks(diag: dict, who: str = "Fit") -> list:
    """The verdict (regime.py) and one bullet per reason, then context notes."""
    blocks: list = [Para(f"{who} verdict: {verdict_line(diag)}.", "lead" if diag["trustworthy"] else "warning")]
    if diag["reasons"]:
        blocks.append(Bullets(list(diag["reasons"])))
    blocks += [Para(n, "note") for n in diag["notes"]]
    return blocks


def design_blocks(diag: dict) -> list:
    """Regime diagnostics of runs without a fit: the design's checks alone (cells, one recipe, tokens per
    parameter), never a verdict on a fit."""
    cells = f"{diag['cells_bracketed']}/{diag['n_cells']} iso-FLOP cells bracket their optimum"
    ok = not diag["reasons"]
    blocks: list = [Para(f"Regime of the runs (no fit to judge): {cells}"
                         + (", and the design passes every check that needs no fit." if ok else "."),
                         "lead" if ok else "warning")]
    if diag["reasons"]:
        blocks.append(Bullets(list(diag["reasons"])))
    blocks += [Para(n, "note") for n in diag["notes"]]
    return blocks


def optima_blocks(part: FitPart, diag: dict | None) -> list:
    """The iso-FLOP minima figure with the cell-minima table beside it, then N* against C and the loss
    gap to r = 1 (figures that were drawn; the table whenever there are cells)."""
    suffix = NO_LAW if part.result is None else ""
    blocks: list = []
    if "isoflop_minima.png" in part.figures:
        blocks.append(Figure("isoflop_minima.png", part.figures["isoflop_minima.png"],
                             FIGURE_CAPTIONS["isoflop_minima.png"]))
    if diag is not None:
        blocks += cells_blocks(diag)
    for name in OPTIMA_FIGURES[1:]:
        if name in part.figures:
            blocks.append(Figure(name, part.figures[name], FIGURE_CAPTIONS[name] + suffix))
    return blocks


def cells_blocks(diag: dict) -> list:
    if not diag["cells"]:
        return []
    cols, rows = cell_rows(diag)
    return [Heading("Iso-FLOP cells: where each budget's loss minimum over N lies"),
            Para("A parabola in log N (N = N_once + N_rec; seed repeats averaged) per (budget × r) cell; N* and L* "
                 "are its vertex. A cell brackets its optimum when N* lies strictly inside the widths trained."),
            Table(cols, rows, numeric={i for i, c in enumerate(cols) if c not in ("probe", "where")})]


def seed_blocks(diag: dict) -> list:
    noise = diag["seed_noise"]
    if not noise.get("groups"):
        return []
    rows = [[_sci(g["budget"]), str(g["r"]), si(g["n"]), str(g["n_seeds"]), f"{g['mean']:.4f}", f"{g['sd']:.4f}",
             f"{g['spread']:.4f}"] for g in noise["groups"]]
    return [Heading(f"Seed-to-seed loss spread (pooled sd {noise['sd']:.4f} nats)"),
            Table(["budget", "r", "N", "seeds", "mean loss", "sd", "max − min"], rows, numeric=set(range(7)))]


def _probe_blocks(p: ProbePart) -> list:
    if p.doc is None:
        return [Para(p.reason or "No comparison.", "reason")]
    d = p.doc
    blocks: list = [Para(d["verdict"]["text"], "lead")]
    for key in ("baseline", "probe"):
        if d[key].get("diagnostics"):
            blocks += diagnostics_blocks(d[key]["diagnostics"], f"{key.capitalize()} ({d[key]['name']}) fit")
    blocks += [Para(w, "warning") for w in d["warnings"]] + [Para(n, "note") for n in d["notes"]]
    rows = []
    for key in ("baseline", "probe"):
        s = d[key]
        rows.append([f"{key}: {s['name']}", f"{s['n_runs']} ({s['n_looped_runs']})", num(s["phi"], 3),
                     _ci(s["ci"], 3), "", num(s["r2"]), num(s["params"]["alpha"]), num(s["params"]["beta"]),
                     num(s["params"]["E"]), _yes(s["converged"])])
    p_value = d["p_value"]
    rows.append(["Δφ = probe − baseline", "", num(d["delta_phi"], 3, sign="+"), _ci(d["delta_phi_ci"], 3, "+"),
                 "—" if p_value is None else f"{p_value:.3g}", "", "", "", "", ""])
    blocks.append(Table(["", "runs (looped)", "φ", "95% CI", "p (Δφ = 0)", "R²", "α", "β", "E", "converged"], rows,
                        numeric=set(range(1, 9))))
    tokens = d["token_gain"] or {}
    rows = []
    for key, row in d["loss_change"].items():
        ratio = tokens.get("median") if key == "all" else tokens.get("per_r", {}).get(key)
        rows.append([key, str(row["n_runs"]), str(row["n_cells"]), num(row["mean"], sign="+"),
                     num(row["median"], sign="+"), num(row["best"], sign="+"), num(ratio, 3)])
    blocks.append(Heading(f"{p.probe} at matched compute (same budget, r and width): probe − baseline"))
    blocks.append(Table(["r", "runs", "cells", "Δloss mean (nats)", "Δloss median", "Δ best loss per cell",
                         "D_probe / D_base"], rows, numeric=set(range(7)), total=True))
    boot = d["bootstrap"]
    if boot:
        failed = boot["n_failed"]
        blocks.append(Para(f"Paired bootstrap: {boot['n_resamples']} resamples of {boot['n_units']} (budget × r) "
                           f"cells, {boot['n_used']} used (failed: baseline {failed['baseline']}, probe "
                           f"{failed['probe']}); p two-sided from the resamples' side of 0."))
    if p.figure is not None:
        blocks.append(Figure(f"compare-{p.probe}.png", p.figure,
                             f"φ with its 95% CI for baseline and {p.probe}, and each fit's size term against N_eff."))
    return blocks


def _largest_residuals(part: FitPart, runs: pd.DataFrame, n: int = 5) -> Table | None:
    res = part.residuals
    if res is None or res.empty:
        return None
    worst = res.reindex(res["resid"].abs().sort_values(ascending=False).index).head(n)
    info = runs.drop_duplicates("run_id").set_index("run_id")
    rows = []
    for _, w in worst.iterrows():
        row = info.loc[w["run_id"]].to_dict() if w["run_id"] in info.index else {}
        rows.append([str(w["run_id"]), _int(w["r"]), _int(row.get("width")), _sci(row.get("budget_flops")),
                     _si(row.get("tokens")), _loss(w["loss"]), _loss(w["predicted"]), _resid(w["resid"])])
    return Table(["run id", "r", "width", "budget", "tokens", "loss", "predicted", "resid"], rows,
                 numeric=set(range(1, 8)))


def _bootstrap_words(settings: dict) -> str:
    b = settings["bootstrap"]
    return "no bootstrap" if not b else f"{b} bootstrap resamples of {settings['resample']}"


def _ci(ci, digits: int = 4, sign: str = "", param: bool = False) -> str:
    if ci is None:
        return "—"
    lo, hi = (_param(v) if param else num(v, digits, sign=sign) for v in ci)
    return f"[{lo}, {hi}]"


def _param(v) -> str:
    """A coefficient: 4 decimals below 1000, else 5 significant digits (A and B span decades)."""
    return num(v) if v is None or abs(v) < 1000 else f"{v:.5g}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _yes(v) -> str:
    return "yes" if bool(v) else "no"


def _present(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and str(v).strip() != ""


def _int(v) -> str:
    f = finite(v)
    return "—" if f is None else f"{f:g}"


def _sci(v) -> str:
    f = finite(v)
    return "—" if f is None else sci(f)


def _si(v) -> str:
    f = finite(v)
    return "—" if f is None else si(f)


def _loss(v) -> str:
    f = finite(v)
    return "—" if f is None else f"{f:.4f}"


def _resid(v) -> str:
    f = finite(v)
    return "" if f is None else f"{f:+.4f}"


def _duration(hours) -> str:
    """Hours as a readable duration: 42 s, 3.5 min, 7.25 h."""
    h = finite(hours) or 0.0
    if h == 0:
        return "—"
    s = h * 3600
    return f"{s:.3g} s" if s < 60 else f"{s / 60:.3g} min" if s < 3600 else f"{h:,.3g} h" if h < 1000 else f"{h:,.0f} h"


def _hours_split(total) -> str:
    parts = [f"{_duration(total[k])} {label}" for k, label in (("gpu_h", "GPU"), ("cpu_h", "CPU")) if total[k] > 0]
    return " + ".join(parts) if parts else _duration(total["wall_h"])

