"""Adaptive sweeps that stop at a target CI of φ (issue 21): the pilot and candidate space (``space``), the rule
the design keeps (``rule``), a round's look at its runs (``assess``), one round's stop and choice (``policy``),
and the replay of the policy with simulated losses (``simulate``: `loopscale plan --adaptive`). Analysis layer:
no torch, no submission; `sweep --until-ci` is to call the same ``assess`` and ``policy`` with real losses."""

from loopscale.analysis.adaptive.policy import STOP_WORDS, Choice, Pick, choose, stop_reason, target_width
from loopscale.analysis.adaptive.rule import RuleCheck, check_rule, halves, rule_deficits, split_ok
from loopscale.analysis.adaptive.simulate import check_adaptive_args, simulate_adaptive
from loopscale.analysis.adaptive.space import Space, build_space, check_iso_flop, midpoints

__all__ = ["STOP_WORDS", "Choice", "Pick", "RuleCheck", "Space", "build_space", "check_adaptive_args",
           "check_iso_flop", "check_rule", "choose", "halves", "midpoints", "rule_deficits", "simulate_adaptive",
           "split_ok", "stop_reason", "target_width"]
