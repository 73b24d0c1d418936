"""The space's rows as the grid's own runs: a pick (budget, width, r, seed) becomes a run by expanding a grid made
of the sweep's grid with a `flops:` mapping of the picked budgets to their widths (so its learning-rate rule,
tokens, FLOPs and run id are the grid's: a pick the fixed grid also lists has the fixed grid's run id, and a run
never trains twice); the pilot's rows are the grid's runs themselves."""

from __future__ import annotations

import copy
from collections import defaultdict

import numpy as np

from loopscale.grid import Grid, RunSpec, grid_from_dict


def key(budget, width, r, seed) -> tuple[str, int, int, int]:
    """A run's place in the space, the same for a universe row and a run spec."""
    return (f"{float(budget):.6g}", int(width), int(r), int(seed))


def row_keys(space) -> list[tuple[str, int, int, int]]:
    t = space.table
    return [key(b, w, r, s) for b, w, r, s in zip(t["budget_flops"], t["width"], t["r"], t["seed"])]


def spec_key(spec: RunSpec) -> tuple[str, int, int, int]:
    return key(spec.budget_flops, spec.d_model, spec.r, spec.seed)


def pilot_specs(grid: Grid, space) -> list[RunSpec]:
    """The grid's runs that make the pilot (its probe-none runs at the pilot's budgets, seed repeats included)."""
    ids = set(space.table.loc[space.pilot, "run_id"])
    return [s for s in grid.runs if s.probe == "none" and s.run_id in ids]


def specs_for(grid: Grid, space, rows) -> list[RunSpec]:
    """The runs of universe ``rows`` through the grid's own expansion, in the rows' order."""
    t = space.table
    groups: dict[tuple[int, int], dict[float, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i in rows:
        groups[(int(t["r"].iat[i]), int(t["seed"].iat[i]))][float(t["budget_flops"].iat[i])].append(
            int(t["width"].iat[i]))
    by_key: dict[tuple, RunSpec] = {}
    for (r, seed), flops in groups.items():
        raw = copy.deepcopy(grid.raw)
        for k in ("repeats", "adaptive", "runs", "tokens", "widths", "s"):
            raw.pop(k, None)
        raw.setdefault("data", {}).pop("data_id", None)
        raw.update(r=[r], seeds=[seed], probes=["none"], flops={c: sorted(ws) for c, ws in flops.items()})
        sub = grid_from_dict(raw, f"{grid.name} (adaptive picks)", data_dir=grid.data_dir)
        by_key.update({spec_key(s): s for s in sub.runs})
    keys = row_keys(space)
    return [by_key[keys[i]] for i in rows]


def rows_of(space, run_keys) -> np.ndarray:
    """A mask over the universe of the rows with these keys."""
    want = set(run_keys)
    return np.array([k in want for k in row_keys(space)], dtype=bool)
