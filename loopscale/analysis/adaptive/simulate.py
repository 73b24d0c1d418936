"""`loopscale plan GRID --adaptive --until-ci W`: replay the adaptive policy (analysis.adaptive.policy) with
simulated losses, over replicates, against the fixed grid and against a random pick of the same candidates in
the same batches.

Every replicate draws the losses of the whole universe once (the law plus N(0, noise²) per run), the adaptive
and the random policy read the same draws, and each round is, for every replicate still going: look
(analysis.adaptive.assess: fit, cell bootstrap with ``resamples`` draws, split halves, checks), stop or choose
K runs (policy.choose), "train" them (the mask grows, the FLOPs are spent). The fixed grid is plan's own
prediction (analysis.plan: point fits and the batched cell bootstrap, PLAN_RESAMPLES draws).

The JSON's three objects hold exactly: ``adaptive`` {flops_median, flops_p80, reached_share, coverage,
pilot_flops, rounds_median, rule_held_share}, ``fixed`` {flops, phi_ci_width}, ``random`` {flops_median,
reached_share}. FLOP medians are over all replicates, one that did not reach the target counting as the cap;
coverage is the share of replicates whose final CI holds the true φ; rule_held_share the share whose final
design keeps the rule under the true law. Beside them: the settings, the stop reasons, the shares of the fixed
grid's FLOPs, the final widths, and the calibration of the score (the width the choice predicted for the end of
a round against the width measured at the next look)."""

from __future__ import annotations

import math
import time

import numpy as np

from loopscale.analysis.adaptive.assess import assess, first_fits
from loopscale.analysis.adaptive.policy import STOP_WORDS, go_on, rule_now, stop_reason, target_width
from loopscale.analysis.adaptive.rule import check_rule
from loopscale.analysis.adaptive.space import build_space
from loopscale.analysis.law import Law
from loopscale.analysis.parallel import single_threaded_blas
from loopscale.analysis.plan.settings import PLAN_RESAMPLES, PLAN_STARTS
from loopscale.analysis.plan.simulate import bootstrap_many, percentile_rows, point_fits, simulate_losses
from loopscale.errors import UserError

REPLICATES = 50
BATCH = 8
STOP_RESAMPLES = 100  # cell-bootstrap draws of each round's stop test (the final CI too)
CAP_TIMES_FIXED = 2.0  # default cap: this many times the fixed grid's FLOPs
MAX_ROUNDS = 200


def check_adaptive_args(until_ci, replicates: int, batch: int, max_flops, noise) -> None:
    if until_ci != "fixed" and not (isinstance(until_ci, (int, float)) and until_ci > 0 and math.isfinite(until_ci)):
        raise UserError(f"--until-ci must be a positive CI width (or 'fixed': the fixed grid's own), got {until_ci}")
    if replicates < 10:
        raise UserError(f"--replicates must be at least 10, got {replicates}")
    if batch < 1:
        raise UserError(f"--batch must be at least 1, got {batch}")
    if max_flops is not None and not (max_flops > 0 and math.isfinite(max_flops)):
        raise UserError(f"--max-flops must be a positive number of FLOPs, got {max_flops}")
    if noise is not None and not (noise > 0 and math.isfinite(noise)):
        raise UserError(f"--noise must be a positive number of nats, got {noise}")


def fixed_width(space, law: Law, noise: float, replicates: int, seed: int, workers=None) -> float:
    """plan's predicted φ CI width of the fixed grid (its baseline runs): mean percentile cell-bootstrap CI."""
    base = space.fixed
    losses = simulate_losses(base, law, noise, replicates, [seed, 1])
    thetas, _ = point_fits(base, losses, law, PLAN_STARTS, seed, workers=workers)
    boot, _ = bootstrap_many([base], [losses], [thetas], PLAN_RESAMPLES, seed, workers=workers)
    ci = percentile_rows(boot[0])
    ok = np.all(np.isfinite(ci), axis=1)
    return float(np.mean(ci[ok, 1] - ci[ok, 0]))


def run_policy(space, law: Law, losses: np.ndarray, *, noise: float, target: float, batch: int, cap: float,
               mode: str, seed: int, resamples: int = STOP_RESAMPLES, starts: int = PLAN_STARTS,
               progress=None) -> dict:
    """Replay one policy on every replicate (``losses`` (R, n) over the universe). Per replicate: FLOPs spent,
    stop reason, rounds, final CI and width, final mask, and the calibration pairs."""
    data = space.data()
    R, n = losses.shape
    log_loss = np.log(losses)
    flops = space.flops
    masks = np.repeat(space.pilot[None], R, axis=0)
    spent = np.full(R, space.pilot_flops)
    theta = first_fits(data, masks, log_loss, starts, seed)
    reason = np.array([None] * R, dtype=object)
    rounds = np.zeros(R, dtype=int)
    ci = np.full((R, 2), np.nan)
    predicted = np.full(R, np.nan)
    calib: list[tuple[float, float]] = []
    rng = np.random.default_rng([seed, 31, 0 if mode == "score" else 1])
    say = progress or (lambda stage, done, total: None)
    for t in range(MAX_ROUNDS):
        act = np.flatnonzero(reason == None)  # noqa: E711 (object array)
        say(f"{mode} policy: replicates still going", R - act.size, R)
        if act.size == 0:
            break
        look = assess(space, data, masks[act], log_loss[act], theta[act], resamples, [seed, t])
        theta[act] = look.theta
        ci[act] = look.ci
        ok_but_width = look.trustworthy_but_width()
        for i, k in enumerate(act):
            if math.isfinite(predicted[k]) and math.isfinite(look.width[i]):
                calib.append((float(predicted[k]), float(look.width[i])))
            rule = rule_now(space, data, masks[k], theta[k])
            if stop_reason(look.width[i], target, bool(ok_but_width[i]), rule.held):
                reason[k] = "target"
                continue
            ch, stop = go_on(space, data, masks[k], theta[k], noise, float(look.width[i]), batch, cap - spent[k],
                             r2=look.r2[i], bounds_ok=look.bounds_ok[i], split_ok=bool(look.split_ok[i]), mode=mode,
                             rng=rng)
            if stop:
                reason[k] = stop
                continue
            masks[k, ch.rows] = True
            spent[k] += flops[ch.rows].sum()
            rounds[k] += 1
            last = ch.picks[-1].width_after
            predicted[k] = math.nan if last is None else last
    reason[reason == None] = "no_help"  # noqa: E711 (MAX_ROUNDS reached)
    say(f"{mode} policy: replicates still going", R, R)
    return {"spent": spent, "reason": reason, "rounds": rounds, "ci": ci, "masks": masks, "calibration": calib}


def summarise(space, law: Law, res: dict, cap: float) -> dict:
    reached = res["reason"] == "target"
    cost = np.where(reached, res["spent"], cap)
    lo, hi = res["ci"][:, 0], res["ci"][:, 1]
    covered = np.isfinite(lo) & (lo <= law.phi) & (law.phi <= hi)
    truth = np.exp(np.log(np.asarray(law.predict(space.table["n_once"], space.table["n_rec"], space.table["r"],
                                                 space.table["tokens"]), dtype=float)))
    held = np.array([check_rule(space, m, truth).held for m in res["masks"]])
    return {"flops_median": float(np.median(cost)), "flops_p80": float(np.percentile(cost, 80)),
            "reached_share": float(reached.mean()), "coverage": float(covered.mean()),
            "pilot_flops": space.pilot_flops, "rounds_median": float(np.median(res["rounds"])),
            "rule_held_share": float(held.mean())}


def simulate_adaptive(grid, law: Law, *, noise: float, until_ci="fixed", replicates: int = REPLICATES,
                      batch: int = BATCH, max_flops: float | None = None, seed: int = 0, law_source: str = "paper",
                      resamples: int = STOP_RESAMPLES, workers=None, progress=None) -> dict:
    """The whole simulation (see the module docstring) as one JSON document."""
    check_adaptive_args(until_ci, replicates, batch, max_flops, noise)
    t0 = time.perf_counter()
    say = progress or (lambda stage, done, total: None)
    space = build_space(grid)
    with single_threaded_blas():
        say("fixed grid", 0, 1)
        fixed_w = fixed_width(space, law, noise, replicates, seed, workers)
        say("fixed grid", 1, 1)
        target = fixed_w if until_ci == "fixed" else float(until_ci)
        cap = float(max_flops) if max_flops is not None else CAP_TIMES_FIXED * space.fixed_flops
        losses = simulate_losses(space.table, law, noise, replicates, [seed, 21])
        runs = {mode: run_policy(space, law, losses, noise=noise, target=target, batch=batch, cap=cap, mode=mode,
                                 seed=seed, resamples=resamples, progress=progress) for mode in ("score", "random")}
    ada = summarise(space, law, runs["score"], cap)
    rnd = summarise(space, law, runs["random"], cap)
    calib = np.array(runs["score"]["calibration"]).reshape(-1, 2)
    ff = space.fixed_flops
    doc = {
        "adaptive": ada,
        "fixed": {"flops": ff, "phi_ci_width": fixed_w},
        "random": {"flops_median": rnd["flops_median"], "reached_share": rnd["reached_share"]},
        "grid": grid.name, "law": law.to_dict(), "law_source": law_source, "noise_nats": noise,
        "target_width": target, "target_source": "the fixed grid's predicted width" if until_ci == "fixed" else
        "--until-ci", "target_width_used": target_width(target), "cap_flops": cap, "replicates": replicates,
        "batch": batch, "stop_resamples": resamples, "space": {
            "source": space.source, "candidates": int((~space.pilot).sum()), "pilot_runs": int(space.pilot.sum()),
            "budgets": [float(b) for b in space.budgets], "widths": space.widths, "r": space.r_values},
        "shares_of_fixed": {"adaptive_median": ada["flops_median"] / ff, "adaptive_p80": ada["flops_p80"] / ff,
                            "pilot": ada["pilot_flops"] / ff, "random_median": rnd["flops_median"] / ff},
        "stop_reasons": {m: {k: int(np.sum(runs[m]["reason"] == k)) for k in STOP_WORDS} for m in runs},
        "final_width_median": {m: float(np.nanmedian(runs[m]["ci"][:, 1] - runs[m]["ci"][:, 0])) for m in runs},
        "random_extra": {k: rnd[k] for k in ("coverage", "rule_held_share", "rounds_median")},
        "calibration": {"rounds": int(len(calib)),
                        "measured_over_predicted_median": float(np.median(calib[:, 1] / calib[:, 0]))
                        if len(calib) else None},
        "seconds": time.perf_counter() - t0,
    }
    return doc
