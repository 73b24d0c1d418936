"""Old (plain eager) vs new (fused helpers) training step at the small widths of the default CPU
grid, side by side in one run, one torch thread.

    .venv/bin/python bench/small_width_speed.py                 # the grid table + jobs×threads line
    .venv/bin/python bench/small_width_speed.py --rounds 8      # more rounds when the machine is busy
    .venv/bin/python bench/small_width_speed.py --compile       # also per-Block torch.compile, cold and warm
    .venv/bin/python bench/small_width_speed.py --no-jobs       # skip the 2 jobs × 1 thread line

"Old" is the model code before the fused helpers, kept here verbatim (``reference_*`` below) and
bound onto the same modules, so both paths train the same parameters with the same optimizer
(muonh). Steps of the two paths alternate (old, new, old, new, ...) so that load from other
processes falls on both alike; each column is the median over rounds. Step times are this
process's CPU seconds (with one thread ≈ wall seconds on an idle core, and far less disturbed when
other jobs share the cores); ``--wall`` times wall-clock instead. The jobs × threads and compile
lines always use wall-clock, as they are about elapsed time. Synthetic token ids: this
measures model and optimizer, not the data loader. Read the ratios, not the absolute rates: the
machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types

import torch
import torch.nn.functional as F

from loopscale.config import RunConfig, TrainConfig
from loopscale.counting import Arch
from loopscale.model import MLP, NORM_EPS, Attention, Block, LoopedLM, RMSNorm, apply_rope, cross_entropy
from loopscale.optim import build_optimizer

# (d_model, r, vocab, head_dim): the default CPU grid's widths at r 1 and 4, plus one V 4096 line.
CLOCK = time.process_time  # one thread: CPU time ≈ wall time on an idle core, and steadier under load
GRID = [(d, r, 256, 16) for d in (16, 32, 48, 64) for r in (1, 4)] + [(32, 4, 4096, 16), (16, 4, 256, 8)]


# -- The old path, verbatim from loopscale/model.py before the fused helpers -----------------------
def reference_rmsnorm_forward(self: RMSNorm, x):
    return F.rms_norm(x, (x.size(-1),), self.weight, NORM_EPS)


def reference_attention_forward(self: Attention, x, rope):
    B, T, d = x.shape
    q, k, v = (p(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
    cos, sin = rope[0][:T], rope[1][:T]
    q = F.rms_norm(apply_rope(q, cos, sin), (self.head_dim,), eps=NORM_EPS)
    k = F.rms_norm(apply_rope(k, cos, sin), (self.head_dim,), eps=NORM_EPS)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return self.o(y.transpose(1, 2).reshape(B, T, d))


def reference_mlp_forward(self: MLP, x):
    return self.down(F.relu(self.up(x)).square())


def reference_block_forward(self: Block, x, rope):
    x = x + self.attn(self.norm_attn(x), rope)
    return x + self.mlp(self.norm_mlp(x))


def use_reference_path(model: LoopedLM) -> LoopedLM:
    """Bind the old forwards onto ``model``'s modules (same parameters, same state_dict)."""
    for m in model.modules():
        for cls, fwd in ((RMSNorm, reference_rmsnorm_forward), (Attention, reference_attention_forward),
                         (MLP, reference_mlp_forward), (Block, reference_block_forward)):
            if isinstance(m, cls):
                m.forward = types.MethodType(fwd, m)
    return model


# -- One training step ------------------------------------------------------------------------------
def make_step(d: int, r: int, vocab: int, head_dim: int, seq_len: int, rows: int, reference: bool,
              compile_blocks: bool = False):
    torch.manual_seed(0)
    arch = Arch(d_model=d, r=r, n_layers_eff=10, n_prelude=1, n_coda=1, head_dim=head_dim)
    cfg = RunConfig(model=arch, vocab_size=vocab,
                    train=TrainConfig(tokens=1, seq_len=seq_len, batch_tokens=rows * seq_len, optimizer="muonh"))
    model = LoopedLM(arch, vocab, seq_len)
    if reference:
        use_reference_path(model)
    if compile_blocks:
        for blk in (*model.prelude, *model.recur, *model.coda):
            blk.compile(dynamic=False)
    opt = build_optimizer(model, cfg)
    x = torch.randint(0, vocab, (rows, seq_len + 1))

    def step() -> float:
        """One step; returns its seconds: CPU time of this process (wall with --wall)."""
        t = CLOCK()
        cross_entropy(model(x[:, :-1]), x[:, 1:]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return CLOCK() - t

    return step


def side_by_side(d, r, vocab, hd, seq_len, rows, rounds) -> tuple[float, float]:
    """Median step seconds of (old, new), steps interleaved after two warm-up steps each."""
    old, new = make_step(d, r, vocab, hd, seq_len, rows, True), make_step(d, r, vocab, hd, seq_len, rows, False)
    for _ in range(2):
        old(), new()
    times = {"old": [], "new": []}
    for i in range(rounds):  # alternate which goes first
        for name, f in (("old", old), ("new", new)) if i % 2 == 0 else (("new", new), ("old", old)):
            times[name].append(f())
    return statistics.median(times["old"]), statistics.median(times["new"])


# -- Worker subprocesses: jobs × threads and compile ------------------------------------------------
def worker(args) -> None:
    """Run steps in this process and print one JSON line (for the jobs/compile comparisons)."""
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    step = make_step(args.d, args.r, args.vocab, args.head_dim, args.seq_len, args.rows, False, args.compile_blocks)
    first = step() + step()  # compiles here (forward and backward) when compiling
    times = [step() for _ in range(args.steps)]
    tokens = args.rows * args.seq_len
    print(json.dumps({"startup_s": time.perf_counter() - t0 - sum(times), "first_two_s": first,
                      "tok_s": tokens * len(times) / sum(times), "end": time.time(), "start": t0}))


def run_workers(n: int, extra: list[str], env: dict | None = None) -> list[dict]:
    cmd = [sys.executable, __file__, "--worker", *extra]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) for _ in range(n)]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"worker failed: {' '.join(cmd)}")
    return [json.loads(o.strip().splitlines()[-1]) for o in outs]


def jobs_vs_threads(args) -> None:
    """Aggregate tokens/s: 2 processes × 1 thread against 1 process × 2 threads (new path, d32 r4)."""
    base = ["--d", "32", "--r", "4", "--steps", str(args.job_steps)]
    two_jobs = sum(w["tok_s"] for w in run_workers(2, [*base, "--threads", "1"]))
    one_job = run_workers(1, [*base, "--threads", "2"])[0]["tok_s"]
    print(f"\njobs × threads, d32 r4 V256 (new path): 2 jobs × 1 thread / 1 job × 2 threads = "
          f"{two_jobs / one_job:.2f}× aggregate tokens/s")


def compile_report(args) -> None:
    """Per-Block torch.compile against eager new path: compile time cold (empty inductor cache) and
    warm (the cache from the cold run), and the steady-state speed ratio."""
    base = ["--d", "32", "--r", "4", "--steps", str(args.job_steps)]
    eager = run_workers(1, base)[0]
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        cold = run_workers(1, [*base, "--compile-blocks"], env)[0]
        warm = run_workers(1, [*base, "--compile-blocks"], env)[0]
    print("\nper-Block torch.compile, d32 r4 V256, vs eager new path:")
    for name, w in (("cold", cold), ("warm", warm)):
        extra = w["startup_s"] + w["first_two_s"] - eager["startup_s"] - eager["first_two_s"]
        speed = w["tok_s"] / eager["tok_s"]
        # a run of S seconds eager takes extra + S / speed compiled: break-even S = extra / (1 − 1/speed)
        even = extra / (1 - 1 / speed) if speed > 1 else float("inf")
        print(f"  {name}: compile overhead {extra:5.1f} s, steady speed {speed:.2f}× eager new, "
              f"pays off for eager runs longer than {even:,.0f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="interleaved steps per path and configuration")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--job-steps", type=int, default=15, help="steps per worker process")
    p.add_argument("--compile", action="store_true", help="also measure per-Block torch.compile")
    p.add_argument("--wall", action="store_true", help="time the table in wall-clock, not CPU seconds")
    p.add_argument("--no-jobs", action="store_true", help="skip 2 jobs × 1 thread vs 1 job × 2 threads")
    # worker-only flags
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--d", type=int, default=32, help=argparse.SUPPRESS)
    p.add_argument("--r", type=int, default=4, help=argparse.SUPPRESS)
    p.add_argument("--vocab", type=int, default=256, help=argparse.SUPPRESS)
    p.add_argument("--head-dim", type=int, default=16, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=15, help=argparse.SUPPRESS)
    p.add_argument("--compile-blocks", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    global CLOCK
    if args.worker or args.wall:
        CLOCK = time.perf_counter
    if args.worker:
        return worker(args)
    torch.set_num_threads(1)
    tokens = args.rows * args.seq_len
    print(f"torch {torch.__version__}, 1 thread, seq {args.seq_len}, {args.rows} rows/step, ℓ_eff 10 "
          f"(prelude 1, coda 1), muonh; median of {args.rounds} interleaved steps, "
          f"{'wall' if args.wall else 'CPU'} seconds")
    print(f"{'d':>3} {'r':>2} {'V':>5} {'hd':>3} {'old tok/s':>10} {'new tok/s':>10} {'new/old':>8}")
    for d, r, vocab, hd in GRID:
        t_old, t_new = side_by_side(d, r, vocab, hd, args.seq_len, args.rows, args.rounds)
        print(f"{d:>3} {r:>2} {vocab:>5} {hd:>3} {tokens / t_old:>10,.0f} {tokens / t_new:>10,.0f} "
              f"{t_old / t_new:>7.2f}×", flush=True)
    if not args.no_jobs:
        jobs_vs_threads(args)
    if args.compile:
        compile_report(args)


if __name__ == "__main__":
    main()
