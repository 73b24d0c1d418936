"""Orchestration overhead at scale: expand, plan, collect and `status` a 10,000-run grid.

No training: finished runs are fake result.json files with the trainer's keys, written once before
timing ``collect``. Prints one line per step with its wall time.

    python bench/sweep_overhead.py [--runs-per-r 2500]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from loopscale import store
from loopscale.commands.status import StatusLook
from loopscale.grid import grid_from_dict
from loopscale.submit import plan, plan_totals, write_config


def big_grid(widths: int, budgets: int) -> dict:
    """r ∈ {1,2,4,8} × ``widths`` widths × ``budgets`` token budgets."""
    return {
        "name": "bench",
        "model": {"n_layers_eff": 10, "n_prelude": 1, "n_coda": 1, "head_dim": 32},
        "train": {"seq_len": 128, "batch_tokens": 4096},
        "data": {"dir": "/nonexistent/bench-data", "eval_tokens": 32768},
        "vocab_size": 4096,
        "r": [1, 2, 4, 8],
        "widths": [32 * (i + 1) for i in range(widths)],
        "tokens": [4096 * 10 * (i + 1) for i in range(budgets)],
    }


def fake_result(spec, loss: float) -> dict:
    return {"run_id": spec.run_id, "status": "done", "diverged_step": None, "r": spec.r, "d_model": spec.d_model,
            "probe": spec.probe, "seed": spec.seed, "n_once": spec.n_once, "n_rec": spec.n_rec, "tokens": spec.tokens,
            "iterations": spec.iterations, "flops_per_token": spec.flops_per_token, "flops_total": spec.flops,
            "budget_flops": spec.budget_flops, "val_loss": loss, "wall_time_s": 60.0, "tokens_per_s": 5000.0,
            "device": "cpu", "torch_version": "bench", "git_commit": None, "finished_at": "2026-01-01T00:00:00+0000",
            "config": spec.config.to_dict()}


def timed(label: str, fn):
    t0 = time.perf_counter()
    out = fn()
    print(f"{label:<58} {time.perf_counter() - t0:8.3f} s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, default=50)
    ap.add_argument("--budgets", type=int, default=50)
    args = ap.parse_args()
    raw = big_grid(args.widths, args.budgets)
    n = 4 * args.widths * args.budgets
    print(f"grid: {n:,} runs (r ∈ {{1,2,4,8}} × {args.widths} widths × {args.budgets} token budgets)")
    grid = timed(f"expand {n:,} runs", lambda: grid_from_dict(raw, "bench.yaml"))
    assert len(grid.runs) == n
    tmp = Path(tempfile.mkdtemp(prefix="loopscale-bench-"))
    try:
        sweep = tmp / "sweep"
        (sweep / "runs").mkdir(parents=True)
        rows = timed("plan a fresh sweep (states + plan + totals)",
                     lambda: plan(grid.runs, store.run_states(sweep, [s.run_id for s in grid.runs])))
        totals = plan_totals(rows)
        assert totals["actions"] == {"submit": n}

        def write_all():
            for i, spec in enumerate(grid.runs):
                d = sweep / "runs" / spec.run_id
                d.mkdir()
                write_config(d, spec)
                (d / store.RESULT_FILE).write_text(json.dumps(fake_result(spec, 3.0 + (i % 97) / 100)))

        timed(f"write {n:,} run folders (config.yaml + fake result.json)", write_all)
        ids = [s.run_id for s in grid.runs]
        rows = timed("plan the finished sweep (read every result.json)", lambda: plan(grid.runs, store.run_states(sweep, ids)))
        assert {r.action for r in rows} == {"skip"}
        got = timed("collect into results.db (first time)", lambda: store.collect(sweep))
        assert got.counts == {"done": n}
        timed("collect again (idempotent upsert)", lambda: store.collect(sweep))
        df = timed("load_results(refresh=False) → DataFrame", lambda: store.load_results(sweep, refresh=False))
        assert len(df) == n and df.loss.notna().all()
        timed("export to parquet", lambda: store.export(sweep, tmp / "runs.parquet"))
        look = StatusLook(sweep)
        timed("status: first look (every result.json)", look)
        timed("status --watch: a refresh (nothing changed)", look)
        for spec in grid.runs[::2]:  # half the sweep still to run: its rows come from config.yaml
            (sweep / "runs" / spec.run_id / store.RESULT_FILE).unlink()
        timed(f"status: first look, {n // 2:,} runs not run yet (config.yaml)", StatusLook(sweep))
        print(f"results.db: {(sweep / store.DB_FILE).stat().st_size / 1e6:.1f} MB, {len(df.columns)} columns")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
