"""What an experiment tracker costs the training loop: the same small run with no tracker and with each
installed one (tensorboard, mlflow, wandb offline), as ``train_run`` trains it (the run folder's
config.yaml carries the tracker section; the tracker runs on its background thread).

    .venv/bin/python bench/tracker_overhead.py                 # d=64, 120 steps, a line every 10: ~1.5 min
    .venv/bin/python bench/tracker_overhead.py --steps 600 --rounds 3

Harsh on purpose: a tiny CPU model (tens of milliseconds a step) logging every 10 steps, where a real run
logs every 10 steps of a second or more. Runs alternate (none, wandb, tensorboard, mlflow, none, ...) so
load from other processes falls on all alike; each rate is the best of ``--rounds``. Per tracker:
- loop: steps/s over the whole training loop (from metrics.jsonl: elapsed time at a line = tokens /
  tokens_per_s), the tracker's start (its package import, on its thread) included;
- steady: steps/s from the line at a quarter of the run to the last, once the tracker is up;
- ratio: tracker / none (1.00: no cost; 0.99: a 1% slower step). Wall-clock: on a shared machine it
  moves by a few percent from round to round either way;
- ms/line: CPU time the tracker's thread spends after its start (logging, and finishing the run: a
  batching tracker sends at the end what it held) per logged line (load-independent), and worst: that as
  a share of the 10 steps between lines at the untracked rate, as if each of its cycles stalled the
  training thread (one core, GIL). The tracker's own processes and threads (wandb-core, TensorBoard's
  writer thread) are not in it;
- start s: the thread's CPU time to open the tracker's run, once per run. Each package is imported once
  before the rounds (its import time is printed first): a run pays it once, at its start, on the
  tracker's thread, and a short bench would otherwise count it as a per-step cost.
One torch thread.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from loopscale.config import run_config_from_dict
from loopscale.data.stream import prepare_stream
from loopscale.trackers.section import KEYS, TrackerSectionError, check_available, from_dict
from loopscale.training.train import load_run_config, train, write_run_config
from loopscale.trackers.factory import make_tracker


def corpus(root: Path) -> Path:
    rng = np.random.default_rng(0)
    words = ["the", "loop", "block", "cat", "sat", "on", "a", "mat", "and", "ran", "far", "away"]
    src = root / "text"
    src.mkdir()
    for i in range(12):
        (src / f"doc{i}.txt").write_text(" ".join(rng.choice(words, 4000)) + ".\n")
    prepare_stream([src], root / "data", tokenizer="bytes", val_fraction=0.25)
    return root / "data"


def run(run_dir: Path) -> tuple[float, int, float]:
    """Train as train_run does, the tracker ended the same way; (tracker thread CPU s in logs, lines, start)."""
    cfg = load_run_config(run_dir)
    tracker = make_tracker(cfg.tracker, run_dir)
    with open(run_dir / "job.err", "w") as err, contextlib.redirect_stderr(err):  # progress lines, tracker lines
        out = train(cfg, run_dir, progress=False, tracker=tracker)
        if tracker is not None:
            tracker.finish(out.status, out.val_loss, out.iterations)
            tracker.wait()
    assert out.status == "done", out
    if tracker is None:
        return 0.0, 0, 0.0
    assert not tracker.failed, (run_dir / "job.err").read_text()
    cpu = dict(tracker.cpu_s)
    start = cpu.pop("start")
    return sum(cpu.values()), tracker.logged, start


def rates(run_dir: Path) -> tuple[float, float]:
    """(loop steps/s, steady steps/s) from metrics.jsonl."""
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    elapsed = [ln["tokens"] / ln["tokens_per_s"] for ln in lines]
    a = len(lines) // 4
    loop = lines[-1]["step"] / elapsed[-1]
    steady = (lines[-1]["step"] - lines[a]["step"]) / (elapsed[-1] - elapsed[a])
    return loop, steady


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    kinds = ["none"]
    for kind in KEYS:
        try:
            check_available(from_dict({"kind": kind}))
        except TrackerSectionError as e:
            print(f"skipping {kind}: {e}")
            continue
        kinds.append(kind)
        t = time.perf_counter()
        importlib.import_module({"tensorboard": "torch.utils.tensorboard", "mlflow": "mlflow.tracking"}.get(kind, kind))
        print(f"import {kind}: {time.perf_counter() - t:.1f} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="tracker-bench-") as tmp:
        root = Path(tmp)
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ.setdefault("WANDB_DIR", str(root))
        data = corpus(root)
        best: dict[str, list[float]] = {k: [0.0, 0.0] for k in kinds}
        cpu: dict[str, list[float]] = {k: [0.0, 0, 0.0] for k in kinds}
        t0 = time.time()
        for rnd in range(args.rounds):
            for kind in kinds:
                raw = {"model": {"d_model": args.width, "r": 2, "n_layers_eff": 4, "n_prelude": 1, "n_coda": 1,
                                 "head_dim": 32},
                       "train": {"tokens": args.steps * 128, "seq_len": 32, "batch_tokens": 128, "threads": 1,
                                 "log_every": args.log_every, "checkpoint_every_min": 0},
                       "data": {"dir": str(data), "eval_tokens": 1024}, "vocab_size": 256}
                if kind != "none":
                    raw["tracker"] = {"kind": kind, "sweep": "bench"}
                run_dir = root / "sweep" / "runs" / f"{kind}-{rnd}"
                write_run_config(run_dir, run_config_from_dict(raw))
                busy, lines, start = run(run_dir)
                cpu[kind] = [cpu[kind][0] + busy, cpu[kind][1] + lines, max(cpu[kind][2], start)]
                loop, steady = rates(run_dir)
                best[kind] = [max(best[kind][0], loop), max(best[kind][1], steady)]
                print(f"round {rnd + 1} {kind:<12} loop {loop:7.1f} steps/s  steady {steady:7.1f} steps/s", flush=True)
        print(f"\nd={args.width}, {args.steps} steps, a line every {args.log_every} steps, best of {args.rounds} "
              f"({time.time() - t0:.0f} s)")
        print(f"{'tracker':<12} {'loop steps/s':>13} {'ratio':>6} {'steady steps/s':>15} {'ratio':>6} "
              f"{'ms/line':>8} {'worst':>7} {'start s':>8}")
        base = best["none"]
        for kind in kinds:
            loop, steady = best[kind]
            busy, lines, start = cpu[kind]
            ms = 1000 * busy / lines if lines else 0.0
            worst = ms / 1000 * base[1] / args.log_every  # of the log_every steps' time at the untracked rate
            print(f"{kind:<12} {loop:13.1f} {loop / base[0]:6.3f} {steady:15.1f} {steady / base[1]:6.3f} "
                  f"{ms:8.2f} {worst:7.2%} {start:8.2f}")


if __name__ == "__main__":
    main()
