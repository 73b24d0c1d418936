"""Hyperconnections (``probe: hyperconn``, method.md §6): K lanes take the place of the linear injection.

Recurrence t: u = Σ_n α_t,n · lane_n;  s = norm_recur(block(u));  lanes ← M_t · lanes + β_t · s.
The lanes start as copies of the prelude output e and are summed before the coda. Each recurrence has
its own static α_t ∈ ℝ^K, M_t ∈ ℝ^{K×K}, β_t ∈ ℝ^K, initialised to α_t = one-hot(t mod K), M_t = I,
β_t = 1; they train with AdamW (the optimizer's "lane" group). Full backprop.

Accounting: r·(K² + 2K) real weights; the FLOP formula charges (K² + 2K)·d per recurrence, the equivalent
of mixing K lanes of width d (method.md §3).
"""

from __future__ import annotations

from loopscale.probes.base import Injection, Probe, Setting


class Lanes(Injection):
    """K lanes carried through the loop, with static per-recurrence mixing (see the module docstring).

    The loop state is the K lanes stacked, (K, *e.shape)."""

    def __init__(self, d: int, lanes: int, r: int):
        self.d, self.lanes, self.r = d, lanes, r

    def weights(self) -> dict[str, tuple[int, ...]]:
        k, r = self.lanes, self.r
        return {"alpha": (r, k), "mix_lanes": (r, k, k), "beta": (r, k)}

    def init(self, w) -> None:
        w.alpha.zero_()
        for t in range(self.r):
            w.alpha[t, t % self.lanes] = 1.0
        w.mix_lanes.zero_().diagonal(dim1=-2, dim2=-1).fill_(1.0)
        w.beta.fill_(1.0)

    def init_state(self, w, e):
        return e.unsqueeze(0).expand(self.lanes, *e.shape)

    def mix(self, w, t, e, lanes):
        return (w.alpha[t].to(lanes.dtype) @ lanes.flatten(1)).view(lanes.shape[1:])

    def update(self, w, t, lanes, s):
        mixed = (w.mix_lanes[t].to(lanes.dtype) @ lanes.flatten(1)).view(lanes.shape)
        return mixed + w.beta[t].to(s.dtype).view(-1, *([1] * s.dim())) * s

    def readout(self, w, lanes):
        return lanes.sum(0)

    def flops_params(self) -> int:
        k = self.lanes
        return (k * k + 2 * k) * self.d


class HyperConnections(Probe):
    name = "hyperconn"
    description = "hyperconnections: K lanes with learned per-recurrence mixing instead of the linear injection"
    # K ≥ 2, as the authors' code requires (GPTConfig: num_lanes >= 2); one lane is no hyperconnection.
    settings = (Setting("hc_lanes", 2, "K, lanes of the hyperconnections (at least 2)", minimum=2, arch_field=True),)

    def injection(self, arch) -> Lanes:
        return Lanes(arch.d_model, arch.hc_lanes, arch.r)


PROBE = HyperConnections()
