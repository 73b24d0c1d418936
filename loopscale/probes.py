"""Probe variants of the loop (method.md §6) that need their own modules.

Truncated backprop (``probe: tbptt``) needs none: ``LoopedLM.forward`` runs the first r − k
recurrences without gradient. Hyperconnections replace the linear injection with K lanes.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class HyperConnections(nn.Module):
    """K lanes carried through the loop, with static per-recurrence mixing (method.md §6).

    Recurrence t: u = Σ_n α_t,n · lane_n;  s = norm_recur(block(u));  lanes ← M_t · lanes + β_t · s.
    Lanes start as copies of the prelude output e and are summed before the coda.
    Init: α_t = one-hot(t mod K), M_t = I, β_t = 1.
    """

    def __init__(self, d: int, lanes: int, r: int):
        super().__init__()
        self.lanes = lanes
        self.alpha = nn.Parameter(torch.zeros(r, lanes))
        self.mix_lanes = nn.Parameter(torch.eye(lanes).repeat(r, 1, 1))
        self.beta = nn.Parameter(torch.ones(r, lanes))
        with torch.no_grad():
            self.alpha[torch.arange(r), torch.arange(r) % lanes] = 1.0

    def init_state(self, e: torch.Tensor) -> torch.Tensor:
        return e.unsqueeze(0).expand(self.lanes, *e.shape)

    def mix(self, t: int, e: torch.Tensor, lanes: torch.Tensor) -> torch.Tensor:
        return torch.einsum("k,k...->...", self.alpha[t].to(lanes.dtype), lanes)

    def update(self, t: int, lanes: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        mixed = torch.einsum("jk,k...->j...", self.mix_lanes[t].to(lanes.dtype), lanes)
        return mixed + self.beta[t].to(s.dtype).view(-1, *([1] * s.dim())) * s

    def readout(self, lanes: torch.Tensor) -> torch.Tensor:
        return lanes.sum(0)
