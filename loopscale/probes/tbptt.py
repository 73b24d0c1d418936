"""Truncated backpropagation through the loop (``probe: tbptt``, method.md §6).

Only the last k recurrences get gradients (default k = ⌈r/2⌉: r = 2 → 1, 4 → 2, 8 → 4); the state is
detached after each of the first r − k, which run forward only. The prelude still learns through e,
injected into the last k. Accounting: a detached recurrence costs forward FLOPs only (2 instead of 6 per
weight, method.md §3), so at a FLOP budget these runs train on more tokens. The model needs no change of
its own: ``LoopedLM.forward`` runs the first r − k recurrences without gradient.
"""

from __future__ import annotations

from math import ceil

from loopscale.probes.base import Probe, Setting


class TruncatedBackprop(Probe):
    name = "tbptt"
    description = "truncated backprop through the loop: gradients through the last k = ⌈r/2⌉ recurrences only"
    settings = (
        Setting("tbptt_k", None, "recurrences that get gradients; default ⌈r/2⌉", optional=True, minimum=1,
                arch_field=True),
    )

    def validate(self, arch) -> None:
        k = arch.tbptt_k
        if k is not None and not 1 <= k <= arch.r:
            raise ValueError(f"tbptt_k must be in [1, r={arch.r}], got {k}")

    def k_grad(self, arch) -> int:
        if arch.r == 1:
            return 1
        return arch.tbptt_k if arch.tbptt_k is not None else ceil(arch.r / 2)


PROBE = TruncatedBackprop()
