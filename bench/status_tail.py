"""The cost of a `loopscale status --watch` refresh's metrics reads at scale: 10,000 runs, each with a
metrics.jsonl of a few thousand lines, read by their tail (loopscale.live) and, for comparison, whole.

No training: the metrics files are generated with the trainer's keys (step, tokens, loss, lr_factor,
tokens_per_s, mfu), each run a different length, in a temporary folder that is removed at the end.
The folder is on /dev/shm (tmpfs) where there is one, so the bench times the reads themselves, not the
disk's write-back of the 2 GiB just written (and sets up and cleans up in seconds); ``--dir`` puts it
elsewhere. Both reads find the files in memory; on a cold network file system the whole-file read costs
more still. Prints the set-up time, each read's time and their ratio.

    python bench/status_tail.py [--runs 10000] [--lines 2000] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

from loopscale.live import Planned, last_metrics, read_live
from loopscale.store import METRICS_FILE, RUNS_DIR


def metric_lines(n: int, seed: int = 0) -> list[bytes]:
    """``n`` metrics lines as the trainer writes them (log_every 1, batch 4096 tokens)."""
    rng = random.Random(seed)
    out, loss = [], 10.4
    for step in range(1, n + 1):
        loss = max(2.5, loss * 0.999 + rng.gauss(0, 0.01))
        tps = 150_000 + rng.gauss(0, 2000)
        rec = {"step": step, "tokens": step * 4096, "loss": loss, "lr_factor": min(1.0, step / 100),
               "tokens_per_s": tps, "mfu": tps * 6e8 / 9.9e14}
        out.append(json.dumps(rec).encode() + b"\n")
    return out


def build(root: Path, runs: int, lines: int) -> tuple[dict[str, str], dict[str, Planned], dict[str, int]]:
    """``runs`` run folders, run i with between lines/2 and ``lines`` metric lines; returns the states, plans
    and each run's last step."""
    block = metric_lines(lines)
    offsets = [0]
    for ln in block:
        offsets.append(offsets[-1] + len(ln))
    data = b"".join(block)
    rng = random.Random(1)
    states, plans, last = {}, {}, {}
    for i in range(runs):
        rid = f"{i:012x}"
        n = rng.randint(lines // 2, lines)
        d = root / RUNS_DIR / rid
        d.mkdir(parents=True)
        with open(d / METRICS_FILE, "wb") as f:
            f.write(memoryview(data)[: offsets[n]])
        states[rid], plans[rid], last[rid] = "running", Planned(2 * lines, 2 * lines * 4096, 6e8), n
    return states, plans, last


def whole_file_last(path: Path) -> dict | None:
    """The comparison: read the whole file, parse its last line."""
    with open(path, "rb") as f:
        text = f.read()
    return json.loads(text.rstrip(b"\n").rsplit(b"\n", 1)[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--lines", type=int, default=2000, help="metric lines of the longest run (each run has "
                    "between half and all of them)")
    ap.add_argument("--dir", type=Path, default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,
                    help="where the temporary sweep folder goes (default /dev/shm where there is one)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="status-tail-", dir=args.dir))
    try:
        t0 = time.perf_counter()
        states, plans, last = build(root, args.runs, args.lines)
        setup = time.perf_counter() - t0
        size = sum((root / RUNS_DIR / rid / METRICS_FILE).stat().st_size for rid in states)
        print(f"set-up: {args.runs:,} runs, {args.lines // 2:,}-{args.lines:,} metric lines each, "
              f"{size / 2**30:.2f} GiB in {root.parent}, in {setup:.1f} s")

        t0 = time.perf_counter()
        now = read_live(root, states, plans)
        tail = time.perf_counter() - t0
        assert all(now.runs[rid].step == last[rid] for rid in states), "tail read disagrees"
        print(f"tail read (loopscale.live.read_live, {live_note(now)}): {tail:.3f} s")

        t0 = time.perf_counter()
        alone = [last_metrics(root / RUNS_DIR / rid / METRICS_FILE) for rid in states]
        tail_only = time.perf_counter() - t0
        print(f"tail read (last_metrics alone): {tail_only:.3f} s")

        t0 = time.perf_counter()
        whole = [whole_file_last(root / RUNS_DIR / rid / METRICS_FILE) for rid in states]
        full = time.perf_counter() - t0
        assert whole == alone, "whole-file read disagrees"
        print(f"whole-file read: {full:.3f} s")
        print(f"ratio whole/tail: {full / tail_only:.1f}x  ({args.runs:,} runs; 2 s allowed for the tail read)")
    finally:
        t0 = time.perf_counter()
        shutil.rmtree(root, ignore_errors=True)
        print(f"clean-up: {time.perf_counter() - t0:.1f} s")


def live_note(now) -> str:
    return f"{len(now.runs):,} runs, FLOPs {now.percent:.1f}% done, ETA {now.eta_s:.0f} s"


if __name__ == "__main__":
    main()
