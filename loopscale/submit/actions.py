"""The plan of a sweep: what submission does to each run of the grid, given the runs' states.

``plan(specs, states)`` is pure: one row per run with its action (``submit`` a new run, ``resubmit``
a failed one under ``retry_failed``, ``skip`` a finished one, ``wait`` for one in flight, ``hold`` a
failed one without ``retry_failed``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable

from loopscale.grid import RunSpec
from loopscale.store import FINISHED, IN_FLIGHT, NEW, RETRYABLE, STALE, RunState

ACTIONS = ("submit", "resubmit", "skip", "wait", "hold")


@dataclass(frozen=True)
class PlanRow:
    """One run of the plan. tokens = D to be trained; flops = flops_per_token · tokens (FLOPs)."""

    run_id: str
    r: int
    probe: str
    d_model: int
    n_once: int
    n_rec: int
    tokens: int
    iterations: int
    flops_per_token: int
    flops: int
    budget_flops: float | None
    seed: int
    state: str
    detail: str
    action: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def action_for(state: str, retry_failed: bool) -> str:
    if state == NEW:
        return "submit"
    if state in FINISHED or state == STALE:  # stale: over, on other data; never trained again, nor retried
        return "skip"
    if state in IN_FLIGHT:
        return "wait"
    if state in RETRYABLE:
        return "resubmit" if retry_failed else "hold"
    raise ValueError(f"unknown run state {state!r}")


def plan(specs: Iterable[RunSpec], states: dict[str, RunState], retry_failed: bool = False) -> list[PlanRow]:
    """The plan of a sweep: each grid run with its current state and what submission will do."""
    rows = []
    for s in specs:
        st = states.get(s.run_id) or RunState(s.run_id, NEW)
        rows.append(PlanRow(s.run_id, s.r, s.probe, s.d_model, s.n_once, s.n_rec, s.tokens, s.iterations,
                            s.flops_per_token, s.flops, s.budget_flops, s.seed, st.state, st.detail,
                            action_for(st.state, retry_failed)))
    return rows


def plan_totals(rows: list[PlanRow]) -> dict[str, Any]:
    """Run counts per action and the compute (FLOPs) of the whole grid and of what will be submitted."""
    by_action = {a: sum(1 for r in rows if r.action == a) for a in ACTIONS}
    return {
        "runs": len(rows),
        "actions": {a: n for a, n in by_action.items() if n},
        "total_flops": float(sum(r.flops for r in rows)),
        "submit_flops": float(sum(r.flops for r in rows if r.action in ("submit", "resubmit"))),
        "total_tokens": int(sum(r.tokens for r in rows)),
    }
