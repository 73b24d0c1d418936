"""GPU readiness in one table: is this machine ready for grids/one-gpu.yaml (and grids/paper.yaml)?

Three steps, each a separate process with its own time limit, so the whole check stays within 8 minutes:

1. ``bench/gpu_throughput.py``: tokens/s and bf16 MFU of the paper family at s 10 and 20, r 1 and 4,
   torch.compile off and on (MFU against this GPU's own measured dense bf16 matmul rate);
2. ``bench/gpu_throughput.py --paper-memory``: the peak memory of each paper-grid micro batch size, measured;
3. the smallest run of grids/one-gpu.yaml (its cheapest budget, narrowest width), trained by
   ``loopscale sweep --executor local --wait`` on generated tokens (a Zipf unigram stream with a BOS every
   ~1,000 tokens: the pipeline and its speed, not its loss), with its tokens/s, MFU and wall time.

    bash bench/gpu_check.sh                 # on the GPU machine, from the repository root
    python bench/gpu_check.py --cpu-smoke   # the same steps scaled down on CPU: checks the script itself

Exit status 0 when every step ran (a row may still say OOM or "time limit"); 1 when a step failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
GEN_TOKENS = 1 << 25  # 33.5M generated training tokens (64 MiB); the smallest run reads ~6 epochs of them
BOS = 1  # Llama-2's <s>


def run_step(name: str, cmd: list[str], limit_s: float, log: Path) -> tuple[bool, float, str]:
    """Run one step; True when it exited 0 within ``limit_s``. Its output goes to ``log`` and the console."""
    t = time.perf_counter()
    print(f"\n== {name} (limit {limit_s:.0f} s): {' '.join(cmd)}", flush=True)
    with open(log, "w") as f:
        try:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=limit_s, cwd=REPO)
            ok, why = proc.returncode == 0, f"exit {proc.returncode}"
        except subprocess.TimeoutExpired:
            ok, why = False, "time limit"
    print(log.read_text()[-4000:], end="", flush=True)
    return ok, time.perf_counter() - t, why


def generate_data(out: Path, vocab: int, tokens: int, seed: int = 0) -> Path:
    """A data directory of generated tokens: Zipf(1.1) ids over the vocabulary, a BOS every ~1,000 tokens."""
    from loopscale.data.prepare import import_bin

    rng = np.random.default_rng(seed)
    bins = {}
    for split, n in (("train", tokens), ("val", max(tokens // 16, 1 << 20))):
        ids = np.minimum(rng.zipf(1.1, size=n), vocab - 1).astype(np.uint16 if vocab <= 1 << 16 else np.uint32)
        ids[ids == BOS] = 2
        ids[rng.integers(0, 1000, size=1)[0]::1000] = BOS
        ids[0] = BOS
        bins[split] = out.parent / f"{out.name}.{split}.bin"
        ids.tofile(bins[split])
    import_bin(bins["train"], bins["val"], out, vocab, str(ids.dtype), BOS, force=True)
    return out


def smallest_run_grid(grid_path: Path, data_dir: Path, smoke: bool) -> tuple[dict, dict]:
    """The grid YAML of one-gpu's cheapest run (cheapest budget, narrowest width, r = 1), on ``data_dir``."""
    raw = yaml.safe_load(grid_path.read_text())
    budget = min(raw["flops"], key=float)
    s = min(raw["flops"][budget]["s"])
    raw["flops"] = {budget: {"s": [s]}}
    raw["r"] = [1]
    raw["name"] = "gpu-check-smallest"
    raw["data"] = {**raw["data"], "dir": str(data_dir)}
    raw["executor"] = {"kind": "local", "gpus_per_node": 0 if smoke else 1}
    if smoke:  # the same grid shape, scaled to what a CPU trains in seconds
        raw["model"] = {**raw["model"], "n_layers_eff": 4, "n_prelude": 1, "n_coda": 1, "head_dim": 32}
        raw["train"] = {**raw["train"], "seq_len": 64, "batch_tokens": 1024, "micro_batch_rows": 0,
                        "compile": False, "device": "cpu", "threads": 2}
        raw["flops"] = {2e10: {"s": [1]}}
        raw["vocab_size"] = 512
        raw["data"]["eval_tokens"] = 4096
    return raw, {"budget": float(next(iter(raw["flops"]))), "s": next(iter(raw["flops"].values()))["s"][0]}


def table(tp: dict | None, mem: dict | None, run: dict | None, steps: dict, smoke: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    title = "GPU check" + (" (--cpu-smoke: every model scaled down, on CPU; the numbers mean nothing)" if smoke else "")
    t = Table(title=title, title_justify="left")
    for col in ("check", "configuration", "tokens/s", "MFU", "peak GiB", "seconds", "note"):
        t.add_column(col, justify="left" if col in ("check", "configuration", "note") else "right")
    for row in (tp or {}).get("rows", []):
        conf = f"s {row['s']} (d {row['d']}), r {row['r']}, compile {'on' if row['compile'] else 'off'}"
        if row.get("oom"):
            t.add_row("throughput", conf, "", "", "", "", f"out of memory at {row['rows']} rows")
            continue
        t.add_row("throughput", conf, f"{row['tps']:,.0f}", f"{row['mfu']:.1%}",
                  "" if row["mem_gb"] is None else f"{row['mem_gb']:.1f}", f"{row['warm_s']:.0f}",
                  "warm-up (compile) seconds")
    for row in (mem or {}).get("rows", []):
        peak = "OOM" if row["oom"] else ("" if row["peak_gib"] is None else f"{row['peak_gib']:.1f}")
        share = f"{row['peak_gib'] / row['device_gib']:.0%} of the device" if row["peak_gib"] and row["device_gib"] else ""
        t.add_row("paper memory", f"d {row['d']}, {row['micro_batch_rows']} rows × {row['seq']}, r 1, eager",
                  "", "", peak, "", share)
    if run is not None:
        mfu = "" if run.get("mfu") is None else f"{run['mfu']:.1%}"
        t.add_row("one-gpu smallest", f"C {run['budget_flops']:.3g}, d {run['d_model']}, r {run['r']}",
                  f"{run['tokens_per_s']:,.0f}", mfu, "", f"{run['wall_time_s']:.0f}",
                  f"{run['tokens']:,} tokens, val loss {run['val_loss']:.3f} (generated data)")
    for name, (ok, secs, why) in steps.items():
        if not ok:
            t.add_row(name, "", "", "", "", f"{secs:.0f}", f"did not finish: {why}")
    console = Console()
    console.width = max(console.width, 132)  # one line per row, also in a log file
    console.print(t)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-smoke", action="store_true", help="every step scaled down, on CPU (checks the script)")
    p.add_argument("--workdir", type=Path, help="where data, runs and logs go (default: a temporary folder)")
    p.add_argument("--limit-s", type=float, default=470, help="seconds for all three steps together")
    args = p.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    deadline = time.perf_counter() + args.limit_s
    py = sys.executable
    smoke = ["--cpu-smoke", "--compile", "off"] if args.cpu_smoke else []
    if not args.cpu_smoke:
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: no CUDA GPU visible; run it on the GPU machine (or --cpu-smoke to check the script)",
                  file=sys.stderr)
            return 1
    # Limits: throughput gets the largest share (four compilations); memory is eager and quick.
    shares = {"throughput": 0.45, "paper memory": 0.10}
    steps: dict[str, tuple[bool, float, str]] = {}
    steps["throughput"] = run_step("throughput", [py, str(BENCH / "gpu_throughput.py"), *smoke, "--json",
                                                  str(work / "throughput.json")],
                                   shares["throughput"] * args.limit_s, work / "throughput.log")
    steps["paper memory"] = run_step("paper memory", [py, str(BENCH / "gpu_throughput.py"), "--paper-memory",
                                                      *smoke[:1], "--json", str(work / "memory.json")],
                                     shares["paper memory"] * args.limit_s, work / "memory.log")

    grid, _ = smallest_run_grid(REPO / "loopscale" / "grids" / "one-gpu.yaml", work / "data", args.cpu_smoke)
    generate_data(work / "data", grid["vocab_size"] if args.cpu_smoke else 32000,
                  1 << 18 if args.cpu_smoke else GEN_TOKENS)
    (work / "smallest.yaml").write_text(yaml.safe_dump(grid, sort_keys=False))
    steps["one-gpu smallest"] = run_step(
        "one-gpu smallest run", [py, "-m", "loopscale.cli", "sweep", str(work / "smallest.yaml"), "--out",
                                 str(work / "sweep"), "--executor", "local", "--wait"],
        max(30.0, deadline - time.perf_counter()), work / "smallest.log")

    load = lambda f: json.loads(f.read_text()) if f.exists() else None
    results = sorted((work / "sweep" / "runs").glob("*/result.json"))
    run = load(results[0]) if results else None
    if run is not None and run.get("status") != "done":
        run = None
    print()
    table(load(work / "throughput.json"), load(work / "memory.json"), run, steps, args.cpu_smoke)
    print(f"logs and runs: {work}")
    return 0 if all(ok for ok, _, _ in steps.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
