"""One look at one real design (`loopscale sweep --until-ci`): the same fit, bootstrap, checks, stop and choice
as a replicate of the simulation (analysis.adaptive.simulate.run_policy), on measured losses.

:func:`look` fits the design's finished runs (fit's multistart, then assess's refits and φ's cell bootstrap),
judges the stop (policy.stop_reason, the rule under the fit; a ``target`` stop confirmed by `fit`'s own CI and
verdict when the caller gives ``confirm``) and, when it does not stop there, chooses up to K
runs (policy.choose) or says why none (``budget``, ``no_help``). The noise the score assumes is the fit's
residual RMSE on these runs (at least MIN_NOISE)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from loopscale.analysis.adaptive.assess import assess, first_fits
from loopscale.analysis.adaptive.policy import Pick, go_on, predictions, rule_now, stop_reason, target_width
from loopscale.analysis.law import I_PHI
from loopscale.analysis.plan.settings import PLAN_STARTS
from loopscale.analysis.regime import MIN_R2

STOP_RESAMPLES = 100  # as the simulation's stop test (analysis.adaptive.simulate.STOP_RESAMPLES)
MIN_NOISE = 0.005  # nats: the noise the score assumes at least (a fit of few runs can have a tiny RMSE)


@dataclass
class RoundLook:
    """The fit before a round (φ, its CI and width, the checks), its stop (None: go on) and its picks."""

    phi: float
    ci: tuple[float, float]
    width: float
    r2: float
    phi_low: float
    phi_high: float
    checks: dict[str, bool]
    trustworthy: bool
    rule_held: bool
    rule_missing: list[str]
    noise: float
    runs: int
    stop: str | None = None
    picks: list[Pick] = field(default_factory=list)
    confirmed: dict | None = None  # `fit`'s own CI width and verdict, asked when the look would stop on target

    @property
    def predicted_width(self) -> float | None:
        return self.picks[-1].width_after if self.picks else None

    def to_dict(self) -> dict:
        def num(v):
            return float(v) if v is not None and math.isfinite(v) else None

        return {"phi": num(self.phi), "ci": [num(self.ci[0]), num(self.ci[1])], "width": num(self.width),
                "r2": num(self.r2), "split_half": [num(self.phi_low), num(self.phi_high)], "checks": self.checks,
                "verdict": "trustworthy" if self.trustworthy else "NOT trustworthy", "rule_held": self.rule_held,
                "rule_missing": self.rule_missing, "noise_nats": num(self.noise), "runs_fitted": self.runs,
                "fit_confirms": self.confirmed}


def look(space, fit_mask: np.ndarray, design_mask: np.ndarray, loss: np.ndarray, *, target: float, batch: int,
         flops_left: float, seed: int = 0, resamples: int = STOP_RESAMPLES, starts: int = PLAN_STARTS,
         confirm: Callable[[], tuple[float | None, bool]] | None = None) -> RoundLook:
    """Look at one design: ``fit_mask`` (n,) the universe rows with a measured ``loss`` (n,; anything elsewhere),
    ``design_mask`` ⊇ fit_mask the rows the design holds or will hold (runs being retried, runs left out: never
    chosen again). Stops (``target``) or chooses up to ``batch`` runs within ``flops_left``. ``confirm()``, when
    given, is `fit`'s own φ CI width and verdict on these runs: a ``target`` stop it does not bear out is no stop."""
    data = space.data()
    fit_mask = np.asarray(fit_mask, dtype=bool)
    log_loss = np.where(fit_mask, np.log(np.where(fit_mask, loss, 1.0)), 0.0)
    theta0 = first_fits(data, fit_mask[None], log_loss[None], starts, seed)
    a = assess(space, data, fit_mask[None], log_loss[None], theta0, resamples, [seed, int(fit_mask.sum())])
    theta = a.theta[0]
    pred = predictions(space, data, theta)
    with np.errstate(invalid="ignore"):
        rmse = float(np.sqrt(np.mean((loss[fit_mask] - pred[fit_mask]) ** 2)))
    noise = max(rmse, MIN_NOISE) if math.isfinite(rmse) else MIN_NOISE
    width = float(a.width[0])
    rule = rule_now(space, data, fit_mask, theta)
    checks = {"r2": bool(a.r2[0] >= MIN_R2), "split_half": bool(a.split_ok[0]), "cells": bool(a.cells_ok[0]),
              "bounds": bool(a.bounds_ok[0])}
    out = RoundLook(phi=float(theta[I_PHI]), ci=(float(a.ci[0, 0]), float(a.ci[0, 1])), width=width,
                    r2=float(a.r2[0]), phi_low=float(a.phi_low[0]), phi_high=float(a.phi_high[0]), checks=checks,
                    trustworthy=bool(a.trustworthy()[0]), rule_held=rule.held, rule_missing=list(rule.missing),
                    noise=noise, runs=int(fit_mask.sum()))
    out.stop = stop_reason(width, target, bool(a.trustworthy_but_width()[0]), rule.held)
    if out.stop == "target" and confirm is not None:
        # The cheap look's CI (local refits from the optimum) can be narrower than the one `fit` reports (its
        # multistart finds other optima in resamples): the stop stands only if `fit`'s own CI and verdict say so.
        fit_width, fit_trusted = confirm()
        out.confirmed = {"width": fit_width, "trustworthy": fit_trusted}
        if fit_width is None or not fit_trusted or fit_width > target_width(target):
            out.stop, width = None, (fit_width if fit_width is not None else width)
    if out.stop:
        return out
    ch, out.stop = go_on(space, data, np.asarray(design_mask, dtype=bool), theta, noise, width, batch, flops_left,
                         r2=a.r2[0], bounds_ok=a.bounds_ok[0], split_ok=bool(a.split_ok[0]))
    out.picks = ch.picks
    return out
