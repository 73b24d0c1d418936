"""The rounds of an adaptive sweep, one JSON line each in ``SWEEP/rounds.jsonl``.

A record: ``round`` (0: the pilot), ``at`` (time), ``target`` (W) and ``cap_flops``, ``look`` (the fit before
the round: φ, its CI and width, R², split halves, the checks and the verdict; null for the pilot), ``runs`` (the
runs chosen: run_id, budget_flops, width, r, seed, flops, why, width_after: the predicted CI width after this
pick and those before it), ``predicted_width`` (after the whole round), ``retried`` (failed runs resubmitted
once in this round), ``left_out`` (runs that failed twice: out of the design), ``flops_so_far`` (every run of
the design submitted so far, this round's included, retries counted again) and ``stop`` with ``stop_line`` (the
round that stopped chooses no runs)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from loopscale.atomic import json_safe, write_bytes_atomic
from loopscale.errors import UserError
from loopscale.fmt import timestamp

ROUNDS_FILE = "rounds.jsonl"


def rounds_path(sweep_dir) -> Path:
    return Path(sweep_dir) / ROUNDS_FILE


def read_rounds(sweep_dir) -> list[dict]:
    """The records, in order; [] without a rounds file. A line that does not parse is an error naming it."""
    path = rounds_path(sweep_dir)
    if not path.is_file():
        return []
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            raise UserError(f"{path}:{i}: not a JSON line (a round record); move the file away to start over") \
                from None
    return out


def append_round(sweep_dir, record: dict) -> dict:
    """Add a record (its ``at`` set now), rewriting the file atomically: a crash leaves the old file or the new."""
    record = {"round": record["round"], "at": timestamp(), **record}
    path = rounds_path(sweep_dir)
    old = path.read_bytes() if path.is_file() else b""
    line = json.dumps(json_safe(record), allow_nan=False) + "\n"
    write_bytes_atomic(path, old + line.encode())
    return record


def design_runs(records: list[dict]) -> dict[str, dict]:
    """Every run the rounds chose, by run id (first record wins), in order."""
    out: dict[str, dict] = {}
    for rec in records:
        for run in rec.get("runs", []):
            out.setdefault(run["run_id"], run)
    return out


def retried_ids(records: list[dict]) -> set[str]:
    return {rid for rec in records for rid in rec.get("retried", [])}


def left_out_ids(records: list[dict]) -> set[str]:
    return {rid for rec in records for rid in rec.get("left_out", [])}


def summary(sweep_dir) -> dict | None:
    """For `status`: the last round, the last fit's φ CI and width, the target, the FLOPs so far and the stop;
    None when the sweep is not adaptive (no rounds file)."""
    recs = read_rounds(sweep_dir)
    if not recs:
        return None
    last = recs[-1]
    looked = [r for r in recs if r.get("look")]
    fit = looked[-1]["look"] if looked else None
    return {"round": last["round"], "target": last.get("target"), "cap_flops": last.get("cap_flops"),
            "flops_so_far": last.get("flops_so_far"), "stop": last.get("stop"), "stop_line": last.get("stop_line"),
            "phi": fit and fit.get("phi"), "ci": fit and fit.get("ci"), "width": fit and fit.get("width"),
            "verdict": fit and fit.get("verdict")}


def resume_command(sweep_dir) -> str | None:
    """The `loopscale sweep --until-ci` call that goes on with an adaptive sweep (its grid, target and cap as the
    last round recorded them); None when the sweep is not adaptive, has stopped, or its records predate the grid."""
    recs = read_rounds(sweep_dir)
    if not recs or recs[-1].get("stop") or not recs[-1].get("grid"):
        return None
    last = recs[-1]
    return (f"loopscale sweep {shlex.quote(last['grid'])} --out {shlex.quote(str(sweep_dir))} "
            f"--until-ci {last['target']!r} --max-flops {float(last['cap_flops'])!r} --wait")


def summary_line(s: dict) -> str:
    """One line for `status`."""
    if s["width"] is None:
        fit = "no fit yet (the pilot trains)"
    else:
        lo, hi = s["ci"]
        fit = f"φ {s['phi']:.3f} [{lo:.3f}, {hi:.3f}], CI width {s['width']:.3f} ({s['verdict']})"
    end = f"; {s['stop_line']}" if s["stop"] else ""
    return (f"adaptive: round {s['round']}, {fit}, target {s['target']:g}"
            f"{' (until trustworthy)' if s['target'] >= 0.35 else ''}; "
            f"{s['flops_so_far']:.3g} of {s['cap_flops']:.3g} FLOPs{end}")
