"""The authors' injection ablation as a probe (``probe: additive``; method.md §2, "Input injection").

At r > 1 the linear injection u = W_inj·[e ∥ h] (h⁰ = e) gives way to u = h + e with h⁰ = 0: the prelude
output is added before every pass, and there is no injection weight. The paper's ablation at s = 10, r = 4,
10¹⁸ FLOPs: loss 2.797 against the linear injection's 2.793. As a probe it is judged by φ across the grid
(`loopscale compare SWEEP --probe additive`), not by one loss.

Accounting: n_i = 0, in the parameters and in the FLOP formula, so at a FLOP budget these runs train on
slightly more tokens than the baseline's (2d² fewer weights per pass). The r = 1 runs are the baseline's.
"""

from __future__ import annotations

from loopscale.probes.base import Injection, Probe


class Sum(Injection):
    """u = h + e, h⁰ = 0, h ← s: no weights."""

    def init_state(self, w, e):
        return e.new_zeros(e.shape)

    def mix(self, w, t, e, h):
        return h + e


class Additive(Probe):
    name = "additive"
    description = "the authors' injection ablation: u = h + e from h⁰ = 0 instead of u = W·[e ∥ h], no weights"

    def injection(self, arch) -> Sum:
        return Sum()


PROBE = Additive()
