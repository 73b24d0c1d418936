"""What a sweep's runs are doing now, read from their files: the last line of each run's
``metrics.jsonl`` (one JSON line every ``log_every`` steps: step, tokens, loss, lr_factor, tokens_per_s,
mfu; written by ``loopscale.training.train``), and from it each run's step of its planned steps, last training
loss, tokens/s and time to go, and the sweep's FLOPs done of planned with a time to go.

Only the tail of a metrics file is read (a few KB from the end), so a look at 10,000 runs takes well
under the 2 s a `loopscale status --watch` refresh may cost (``bench/status_tail.py``).

The sweep's time to go assumes the current parallelism continues: the FLOPs still to do in the runs in
flight (running, pending, submitted, unknown), divided by the summed FLOP rate of the runs running now
(tokens/s · FLOPs/token of each). Runs that failed or were never submitted wait for a `loopscale sweep`
and are not counted in it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopscale.fmt import finite
from loopscale.store import FINISHED, IN_FLIGHT, METRICS_FILE, STALE, RunState, run_row, runs_root

TAIL_BYTES = 4096  # a metrics line is ~150 bytes: the first window holds ~25 of them
MAX_TAIL_BYTES = 1 << 20  # give up on a file whose last MiB holds no JSON object line


def last_metrics(path: str | Path, tail_bytes: int = TAIL_BYTES) -> dict[str, Any] | None:
    """The last JSON object line of a metrics.jsonl, reading only its end: ``tail_bytes`` from the end,
    doubled (up to 1 MiB) while the window holds no complete line. A partial last line (the trainer
    mid-write) and lines that are not JSON objects are passed over; a missing, empty or garbage file
    gives None. Never raises. (os.open and pread: a third of the cost of a buffered open per file.)"""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (OSError, ValueError):
        return None
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        window = min(size, max(int(tail_bytes), 64))
        while window > 0:
            whole_file = window >= size
            rec = _last_object(os.pread(fd, window, size - window), whole_file)
            if rec is not None or whole_file or window >= MAX_TAIL_BYTES:
                return rec
            window = min(size, window * 2, MAX_TAIL_BYTES)
        return None
    except (OSError, ValueError, OverflowError):
        return None
    finally:
        os.close(fd)


def _last_object(chunk: bytes, whole_file: bool) -> dict[str, Any] | None:
    """The last line of ``chunk`` that is a JSON object; its first line counts only when ``chunk`` is the
    whole file (else it may start mid-line)."""
    end = len(chunk)
    while end > 0:
        start = chunk.rfind(b"\n", 0, end) + 1
        if start == 0 and not whole_file:
            return None
        rec = _object(chunk[start:end])
        if rec is not None:
            return rec
        end = start - 1
    return None


def _object(line: bytes) -> dict[str, Any] | None:
    line = line.strip()
    if not line.startswith(b"{"):
        return None
    try:
        rec = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return rec if isinstance(rec, dict) else None


@dataclass(frozen=True)
class Planned:
    """What a run is set to train: optimizer steps, tokens (D) and FLOPs per token; None where unknown
    (a run folder without a readable config)."""

    steps: int | None
    tokens: int | None
    flops_per_token: float | None

    @property
    def flops_total(self) -> float | None:
        return self.tokens * self.flops_per_token if self.tokens and self.flops_per_token else None

    @property
    def tokens_per_step(self) -> float | None:
        return self.tokens / self.steps if self.tokens and self.steps else None

    @classmethod
    def of_row(cls, row: Mapping[str, Any]) -> Planned:
        """From a results-store row (``store.run_row``: the result for finished runs, else the config)."""
        steps, tokens = finite(row.get("iterations")), finite(row.get("tokens"))
        return cls(int(steps) if steps else None, int(tokens) if tokens else None, finite(row.get("flops_per_token")))


@dataclass(frozen=True)
class RunLive:
    """One run now. step: the last logged step (= steps for a done run); train_loss: the last logged
    training loss (nats/token); tokens_per_s: the trainer's rate since it (re)started; eta_s: seconds to
    its last step at that rate, for a running run only (None otherwise); flops_done: FLOPs trained, by
    step/steps of its planned FLOPs (in full for a finished run)."""

    run_id: str
    state: str
    step: int | None
    steps: int | None
    train_loss: float | None
    tokens_per_s: float | None
    eta_s: float | None
    flops_planned: float | None
    flops_done: float | None
    flops_per_token: float | None

    def to_dict(self) -> dict[str, Any]:
        """The fields `loopscale status --json` adds to a run."""
        return {"step": self.step, "steps": self.steps, "train_loss": self.train_loss,
                "tokens_per_s": self.tokens_per_s, "eta_s": self.eta_s}


def run_live(run_id: str, state: str, plan: Planned, metrics: Mapping[str, Any] | None) -> RunLive:
    """A run's live fields from its state, its plan and the last line of its metrics (or None)."""
    m = metrics or {}
    step = finite(m.get("step"))
    step = int(step) if step is not None else None
    steps = plan.steps
    if state == "done" and steps:
        step = steps
    loss, tps = finite(m.get("loss")), finite(m.get("tokens_per_s"))
    tps = tps if tps and tps > 0 else None
    per_step = plan.tokens_per_step or (finite(m.get("tokens")) / step if step and finite(m.get("tokens")) else None)
    eta = None
    if state == "running" and tps and steps and step is not None and per_step:
        eta = max(steps - step, 0) * per_step / tps
    planned = plan.flops_total
    done = None
    if planned is not None:
        if state in FINISHED or state == STALE:  # trained in full (stale: on data that has changed since)
            done = planned
        elif state in IN_FLIGHT:
            done = planned * min(step, steps) / steps if step and steps else 0.0
    return RunLive(run_id, state, step, steps, loss, tps, eta, planned, done, plan.flops_per_token)


@dataclass(frozen=True)
class SweepLive:
    """A sweep now: its runs, FLOPs done of planned (finished runs in full, runs in flight by step/steps),
    the summed FLOP rate of the runs running now, and the sweep's time to go at that rate (see the
    module doc: the current parallelism is assumed to continue; None when no run is running with a rate)."""

    runs: dict[str, RunLive]
    flops_done: float
    flops_planned: float
    flops_per_s: float
    eta_s: float | None

    @property
    def in_flight(self) -> int:
        return sum(r.state in IN_FLIGHT for r in self.runs.values())

    @property
    def percent(self) -> float | None:
        return 100 * self.flops_done / self.flops_planned if self.flops_planned else None

    def summary(self) -> dict[str, Any]:
        """The sweep's fields in `loopscale status --json`."""
        return {"flops_done": self.flops_done, "flops_planned": self.flops_planned, "flops_per_s": self.flops_per_s,
                "eta_s": self.eta_s}


def sweep_live(runs: Iterable[RunLive]) -> SweepLive:
    """Sum the runs: FLOPs done and planned, the FLOP rate of the running runs, and the time to go of the
    runs in flight at that rate."""
    runs = {r.run_id: r for r in runs}
    planned = sum(r.flops_planned or 0 for r in runs.values())
    done = sum(r.flops_done or 0 for r in runs.values())
    rate = sum(r.tokens_per_s * r.flops_per_token for r in runs.values()
               if r.state == "running" and r.tokens_per_s and r.flops_per_token)
    left = sum((r.flops_planned or 0) - (r.flops_done or 0) for r in runs.values() if r.state in IN_FLIGHT)
    eta = left / rate if rate > 0 and any(r.state in IN_FLIGHT for r in runs.values()) else None
    return SweepLive(runs, float(done), float(planned), float(rate), eta)


def read_live(sweep_dir: str | Path, states: Mapping[str, RunState | str],
              plans: Mapping[str, Planned]) -> SweepLive:
    """The sweep now: for each run in ``states`` (run id → RunState or state name), the tail of its
    metrics.jsonl with its plan (``Planned()`` of unknowns where ``plans`` lacks it)."""
    root = str(runs_root(sweep_dir))
    unknown = Planned(None, None, None)
    runs = []
    for rid, st in states.items():
        state = st.state if isinstance(st, RunState) else st
        metrics = last_metrics(os.path.join(root, rid, METRICS_FILE)) if state != "new" else None
        runs.append(run_live(rid, state, plans.get(rid, unknown), metrics))
    return sweep_live(runs)


class Rows:
    """The store rows (``store.run_row``) of a sweep's runs across refreshes: a run's row is read again
    only when its state changes (its config or result is read once per state); the detail is always
    the latest."""

    def __init__(self, sweep_dir: str | Path):
        self.root = runs_root(sweep_dir)
        self._rows: dict[str, tuple[str, dict[str, Any]]] = {}

    def __call__(self, states: Mapping[str, RunState]) -> dict[str, dict[str, Any]]:
        out = {}
        for rid, st in states.items():
            kept = self._rows.get(rid)
            if kept is None or kept[0] != st.state:
                kept = self._rows[rid] = (st.state, run_row(self.root / rid, st))
            out[rid] = {**kept[1], "detail": st.detail or None}
        return out

