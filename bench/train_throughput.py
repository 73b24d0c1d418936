"""Training throughput at the default grid's exact configurations: the old (plain PyTorch) path
and the new (CPU fast) path side by side in one run, one torch thread, and the speed-up of the
whole sweep that follows.

    .venv/bin/python bench/train_throughput.py                   # grids/tiny.yaml, ~2 min
    .venv/bin/python bench/train_throughput.py --grid grids/tiny-tbptt.yaml --vocab 4096
    .venv/bin/python bench/train_throughput.py --rounds 7        # more steps when the machine is busy
    .venv/bin/python bench/train_throughput.py --compile         # also per-Block torch.compile, cold and warm
    .venv/bin/python bench/train_throughput.py --no-jobs         # skip the 2 jobs × 1 thread line
    .venv/bin/python bench/train_throughput.py --no-heap         # skip the default/kept heap table

The grid is expanded (loopscale.grid) and each distinct model configuration of its runs is timed
as the sweep trains it: the grid's width, r, probe, layers, head_dim, vocabulary, seq_len, rows
per step (batch_tokens / seq_len, in micro batches where the grid sets them), optimizer and lrs.
The grid's data dir need not exist: the vocabulary is ``--vocab``, else the grid's vocab_size,
else 256. Synthetic token ids: this measures model and optimizer, not the data loader.

"Old" is the model's plain path (``loopscale.training.model.fast_path("off")``: F.rms_norm with its
weight, three q/k/v linears, apply_rope then QK-norm, relu(·)², i.e. the computation before the
fused helpers, and what CUDA runs); "new" is the CPU fast path (``fast_path("on")``). One model
and optimizer per path, same init; steps of the two alternate (old, new, new, old, ...) so that
load from other processes falls on both alike, and each column is the median over rounds after
one warm-up step each. Step times are this process's CPU seconds (with one thread ≈ wall seconds
on an idle core, and far less disturbed when other jobs share the cores); ``--wall`` times
wall-clock instead.

The trainer also keeps freed memory in the process heap (``loopscale.training.heap``), a per-process
setting, so it cannot alternate within one process: a second table times the new path in worker
processes with glibc's default heap and with the kept heap, alternating, and multiplies each
configuration's ratio into the path ratio: the trainer's speed-up over the old path as a whole.

Prints, per configuration: d, r, tokens/s old and new, new/old, the achieved GFLOP/s of each path
(method accounting, RunConfig.flops_per_token) and the new path's as a share of this machine's
1-thread fp32 matmul rate (measured first, same clock). Then each configuration's share of the
grid's training time (its runs' FLOPs / the old path's measured rate), the geometric mean of
new/old weighted by those shares (the expected speed-up of the whole sweep), and the grid's
training time at one thread, old → new (its ratio: the same speed-up, exactly, for the training
steps). Then the heap table and the trainer's weighted speed-up. Then aggregate tokens/s of 2 jobs × 1 thread against 1 job × 2 threads, and with
``--compile`` per-Block torch.compile of the new path, cold and warm; these two lines use the
configuration with the largest time share and wall-clock. Read the ratios, not the absolute
rates: the machine may be shared.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from loopscale.training import heap
from loopscale.config import RunConfig
from loopscale.grid import grid_from_dict, parse_yaml
from loopscale.training.model import LoopedLM, cross_entropy, fast_path
from loopscale.training.optim import build_optimizer

DEFAULT_GRID = Path(__file__).resolve().parent.parent / "grids" / "tiny.yaml"
DEFAULT_VOCAB = 256  # when neither --vocab nor the grid gives one
CLOCK = time.process_time  # one thread: CPU time ≈ wall time on an idle core, and steadier under load


# -- The grid's configurations ----------------------------------------------------------------------
@dataclasses.dataclass
class Config:
    """One distinct model configuration of the grid and the training FLOPs of its runs."""

    cfg: RunConfig
    flops: float

    @property
    def label(self) -> str:
        a = self.cfg.model
        return f"d{a.d_model} r{a.r}" + (f" {a.probe}" if a.probe != "none" else "")


def grid_configs(path: str | Path, vocab: int | None) -> tuple[str, list[Config]]:
    """The grid's distinct (model, vocabulary, batch shape, optimizer) configurations by width and
    r, each with the summed FLOPs of its runs. Learning rates do not change a step's time."""
    raw = parse_yaml(Path(path).read_text(), str(path))
    if vocab is not None or "vocab_size" not in raw:
        raw = {**raw, "vocab_size": vocab or DEFAULT_VOCAB}
    grid = grid_from_dict(raw, str(path), path=Path(path))
    configs: dict[tuple, Config] = {}
    for spec in grid.runs:
        c, t = spec.config, spec.config.train
        key = (c.model, c.vocab_size, t.seq_len, t.batch_tokens, t.micro_batch_rows, t.optimizer)
        if key not in configs:
            configs[key] = Config(c, 0.0)
        configs[key].flops += spec.flops
    return grid.name, sorted(configs.values(), key=lambda c: (c.cfg.model.d_model, c.cfg.model.r))


# -- One training step ------------------------------------------------------------------------------
def make_step(cfg: RunConfig, mode: str, compile_blocks: bool = False):
    """A training step of ``cfg`` on fixed synthetic ids, on path ``mode`` ("on" new, "off" old)."""
    torch.manual_seed(0)
    t = cfg.train
    model = LoopedLM(cfg.model, cfg.vocab_size, t.seq_len)
    if compile_blocks:
        for blk in (*model.prelude, *model.recur, *model.coda):
            blk.compile(dynamic=False)
    opt = build_optimizer(model, cfg)
    rows = t.rows_per_step()
    x = torch.randint(0, cfg.vocab_size, (rows, t.seq_len + 1))
    micro = x.split(t.micro_batch_rows or rows)

    def step() -> float:
        """One step; returns its seconds: CPU time of this process (wall with --wall)."""
        start = CLOCK()
        for xb in micro:
            with fast_path(mode):
                logits = model(xb[:, :-1])
            (cross_entropy(logits, xb[:, 1:]) * (len(xb) / rows)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return CLOCK() - start

    return step


def side_by_side(cfg: RunConfig, rounds: int) -> tuple[float, float]:
    """Median step seconds of (old, new), steps interleaved after one warm-up step each."""
    old, new = make_step(cfg, "off"), make_step(cfg, "on")
    old(), new()
    times = {"old": [], "new": []}
    for i in range(rounds):  # alternate which goes first
        for name, f in (("old", old), ("new", new)) if i % 2 == 0 else (("new", new), ("old", old)):
            times[name].append(f())
    return statistics.median(times["old"]), statistics.median(times["new"])


def matmul_flops_per_s(n: int = 1024, repeats: int = 5) -> float:
    """Dense fp32 matmul rate on the current threads: the best of a few n×n @ n×n products."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = CLOCK()
        torch.mm(a, b)
        best = min(best, CLOCK() - t)
    return 2 * n**3 / best


# -- Worker subprocesses: jobs × threads and compile ------------------------------------------------
def worker(args) -> None:
    """Run steps of one grid configuration (new path) in this process; print one JSON line."""
    torch.set_num_threads(args.threads)
    if args.heap == "keep":
        heap.keep_freed_memory()
    if args.config < 0:  # every configuration, CPU seconds: the heap comparison
        rates = []
        for c in grid_configs(args.grid, args.vocab)[1]:
            step = make_step(c.cfg, "on")
            step(), step()
            rates.append(c.cfg.train.batch_tokens / statistics.median(step() for _ in range(args.steps)))
        print(json.dumps({"tok_s": rates}))
        return
    t0 = time.perf_counter()
    cfg = grid_configs(args.grid, args.vocab)[1][args.config].cfg
    step = make_step(cfg, "on", args.compile_blocks)
    first = step() + step()  # compiles here (forward and backward) when compiling
    times = [step() for _ in range(args.steps)]
    print(json.dumps({"startup_s": time.perf_counter() - t0 - sum(times), "first_two_s": first,
                      "tok_s": cfg.train.batch_tokens * len(times) / sum(times)}))


def run_workers(n: int, args, extra: list[str], env: dict | None = None) -> list[dict]:
    cmd = [sys.executable, __file__, "--worker", "--grid", str(args.grid), "--config", str(args.config),
           "--steps", str(args.job_steps), *(["--vocab", str(args.vocab)] if args.vocab else []), *extra]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) for _ in range(n)]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"worker failed: {' '.join(cmd)}")
    return [json.loads(o.strip().splitlines()[-1]) for o in outs]


def heap_report(args, rows, shares) -> None:
    """The new path in worker processes with glibc's default heap and with ``heap.keep_freed_memory``
    (what the trainer calls), processes alternating (default, kept, kept, default, ...), each
    configuration's median step in CPU seconds; then the trainer's whole speed-up over the old path:
    this table's ratio times the path ratio above, per configuration and weighted by time share."""
    rates = {"default": [], "keep": []}
    for i in range(args.heap_rounds):
        for mode in ("default", "keep") if i % 2 == 0 else ("keep", "default"):
            rates[mode].append(run_workers(1, args, ["--heap", mode, "--config", "-1"])[0]["tok_s"])
    default = [statistics.median(r) for r in zip(*rates["default"])]
    kept = [statistics.median(r) for r in zip(*rates["keep"])]
    print(f"\nheap: new path, worker processes, {args.heap_rounds} alternating rounds of {args.job_steps} steps")
    print(f"{'config':>10} {'default tok/s':>14} {'kept tok/s':>11} {'kept/def':>9} {'trainer/old':>12}")
    total = []
    for (c, old, new), d, k in zip(rows, default, kept):
        total.append(new / old * k / d)
        print(f"{c.label:>10} {d:>14,.0f} {k:>11,.0f} {k / d:>8.2f}× {total[-1]:>11.2f}×")
    geo_heap = math.exp(sum(w * math.log(k / d) for w, d, k in zip(shares, default, kept)))
    geo = math.exp(sum(w * math.log(t) for w, t in zip(shares, total)))
    print(f"kept/default heap over the grid, weighted by time share: {geo_heap:.3f}×")
    print(f"trainer (new path, kept heap) over the old path (plain path, default heap), weighted: {geo:.3f}×")


def jobs_vs_threads(args, label: str) -> None:
    """Aggregate tokens/s: 2 processes × 1 thread against 1 process × 2 threads (new path)."""
    two_jobs = sum(w["tok_s"] for w in run_workers(2, args, ["--threads", "1"]))
    one_job = run_workers(1, args, ["--threads", "2"])[0]["tok_s"]
    print(f"\njobs × threads, {label} (new path): 2 jobs × 1 thread / 1 job × 2 threads = "
          f"{two_jobs / one_job:.2f}× aggregate tokens/s")


def compile_report(args, label: str) -> None:
    """Per-Block torch.compile against the eager new path: compile time cold (empty inductor cache)
    and warm (the cache from the cold run), and the steady-state speed ratio."""
    eager = run_workers(1, args, [])[0]
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        cold = run_workers(1, args, ["--compile-blocks"], env)[0]
        warm = run_workers(1, args, ["--compile-blocks"], env)[0]
    print(f"\nper-Block torch.compile, {label}, vs eager new path:")
    for name, w in (("cold", cold), ("warm", warm)):
        extra = w["startup_s"] + w["first_two_s"] - eager["startup_s"] - eager["first_two_s"]
        speed = w["tok_s"] / eager["tok_s"]
        # a run of S seconds eager takes extra + S / speed compiled: break-even S = extra / (1 − 1/speed)
        even = extra / (1 - 1 / speed) if speed > 1 else float("inf")
        print(f"  {name}: compile overhead {extra:5.1f} s, steady speed {speed:.2f}× eager new, "
              f"pays off for eager runs longer than {even:,.0f} s")


# -- The table --------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", default=str(DEFAULT_GRID), help="grid file (default: grids/tiny.yaml)")
    p.add_argument("--vocab", type=int, default=None,
                   help=f"vocabulary size (default: the grid's vocab_size, else {DEFAULT_VOCAB})")
    p.add_argument("--rounds", type=int, default=3, help="interleaved steps per path and configuration")
    p.add_argument("--job-steps", type=int, default=5, help="timed steps per worker process")
    p.add_argument("--compile", action="store_true", help="also measure per-Block torch.compile")
    p.add_argument("--wall", action="store_true", help="time the table in wall-clock, not CPU seconds")
    p.add_argument("--no-jobs", action="store_true", help="skip 2 jobs × 1 thread vs 1 job × 2 threads")
    p.add_argument("--no-heap", action="store_true", help="skip the default against the kept heap")
    p.add_argument("--heap-rounds", type=int, default=4, help="worker processes per heap setting")
    # worker-only flags
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--config", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=5, help=argparse.SUPPRESS)
    p.add_argument("--compile-blocks", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--heap", choices=("default", "keep"), default="default", help=argparse.SUPPRESS)
    args = p.parse_args()
    global CLOCK
    if (args.worker and args.config >= 0) or args.wall:
        CLOCK = time.perf_counter
    if args.worker:
        return worker(args)
    torch.set_num_threads(1)
    name, configs = grid_configs(args.grid, args.vocab)
    peak = matmul_flops_per_s()
    c0 = configs[0].cfg
    print(f"torch {torch.__version__}, 1 thread, {'wall' if args.wall else 'CPU'} seconds; "
          f"fp32 matmul {peak / 1e9:.1f} GFLOP/s")
    print(f"grid {name}: {len(configs)} configurations, V {c0.vocab_size}, seq {c0.train.seq_len}, "
          f"{c0.train.rows_per_step()} rows/step, ℓ_eff {c0.model.n_layers_eff}, hd {c0.model.head_dim}, "
          f"{c0.train.optimizer}; median of {args.rounds} interleaved steps per path")
    print(f"{'config':>10} {'old tok/s':>10} {'new tok/s':>10} {'new/old':>8} {'old GF/s':>9} {'new GF/s':>9} "
          f"{'new of matmul':>14}")
    rows = []
    for c in configs:
        t_old, t_new = side_by_side(c.cfg, args.rounds)
        tokens, fpt = c.cfg.train.batch_tokens, c.cfg.flops_per_token()
        old_rate, new_rate = tokens * fpt / t_old, tokens * fpt / t_new  # FLOP/s
        rows.append((c, old_rate, new_rate))
        print(f"{c.label:>10} {tokens / t_old:>10,.0f} {tokens / t_new:>10,.0f} {t_old / t_new:>7.2f}× "
              f"{old_rate / 1e9:>9.2f} {new_rate / 1e9:>9.2f} {new_rate / peak:>14.1%}", flush=True)
    # Each configuration's share of the grid's training time: its runs' FLOPs at the old path's rate.
    old_s = [c.flops / old for c, old, _ in rows]
    new_s = [c.flops / new for c, _, new in rows]
    shares = [s / sum(old_s) for s in old_s]
    geo = math.exp(sum(w * math.log(new / old) for (_, old, new), w in zip(rows, shares)))
    print("time share (old path): " + ", ".join(f"{c.label} {w:.0%}" for (c, _, _), w in zip(rows, shares)))
    print(f"new/old over the grid, geometric mean weighted by time share: {geo:.3f}×")
    print(f"grid {name} training time at 1 thread ({sum(c.flops for c in configs):.3g} FLOPs): "
          f"old {sum(old_s) / 60:.1f} min → new {sum(new_s) / 60:.1f} min, {sum(old_s) / sum(new_s):.3f}× "
          f"(training steps only)")
    if not args.no_heap:
        heap_report(args, rows, shares)
    top = max(range(len(rows)), key=lambda i: shares[i])
    args.config = top
    if not args.no_jobs:
        jobs_vs_threads(args, configs[top].label)
    if args.compile:
        compile_report(args, configs[top].label)


if __name__ == "__main__":
    main()
