"""One training run: read a run folder's config.yaml, train, write result.json.

``train_run(run_dir)`` is the picklable entry point the sweep submits through submitit.
Files in the run folder:
- ``config.yaml``  the resolved RunConfig (written by the caller)
- ``metrics.jsonl`` one JSON line every ``log_every`` steps (step, tokens, loss, lr, tokens/s, mfu)
- ``result.json``  written atomically at the end; its presence means the run finished. It records the identity of
  the data the run trained on (``data_id``), as its checkpoints do: a run whose config names another identity than
  its data dir now holds is refused before training (the data was re-prepared since the run was planned), and a
  checkpoint of other data is not resumed (``loopscale.training.checkpoint``)
- ``error.json``   written atomically when the run raised; the sweep reports it as failed

Data-parallel: launched as several processes (``torchrun --nproc_per_node N -m loopscale.training.train RUN_DIR``,
or a SLURM job with one task per GPU), every rank trains its slice of each step's rows and rank 0 alone
writes metrics, checkpoints and result.json (see ``loopscale.training.distributed``). Batches come from
``loopscale.training.loaders`` (``data.loader``: windows | packed).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from loopscale.fmt import timestamp
from loopscale.training import distributed, heap, perf
from loopscale.atomic import write_json_atomic
from loopscale.training.checkpoint import STALE, load_latest_checkpoint, remove_checkpoints, save_checkpoint
from loopscale.config import ConfigError, RunConfig, check_budget, run_config_from_dict
from loopscale.counting import n_once, n_rec
from loopscale.data import identity
from loopscale.data.dataset import load_data
from loopscale.training.distributed import DistEnv
from loopscale.training.loaders import make_loader
from loopscale.store import CKPT_DIR, CONFIG_FILE, ERROR_FILE, METRICS_FILE, RESULT_FILE
from loopscale.training.model import LoopedLM, cross_entropy
from loopscale.training.optim import build_optimizer, lr_factor
from loopscale.training.progress import TrainProgress
from loopscale.trackers.base import Background
from loopscale.trackers.factory import make_tracker



def load_run_config(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / CONFIG_FILE
    with open(path) as f:
        return run_config_from_dict(yaml.safe_load(f))


def write_run_config(run_dir: Path, cfg: RunConfig) -> Path:
    """Write the resolved config into a run folder (atomically)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    path = run_dir / CONFIG_FILE
    if path.exists() and path.read_text() == text:
        return path  # e.g. the other ranks of a torchrun launch
    tmp = run_dir / f"{CONFIG_FILE}.{os.getpid()}.tmp"  # per process: ranks may write it at once
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def check_data_fits(cfg: RunConfig, data) -> None:
    """The data must match the config's vocab and hold enough tokens for training and evaluation."""
    where = cfg.data.dir
    if data.vocab_size != cfg.vocab_size:
        raise ConfigError(f"{where}: data vocab {data.vocab_size} differs from the config's vocab_size {cfg.vocab_size}")
    if len(data.val) < cfg.data.eval_tokens + 1:
        raise ConfigError(
            f"data.eval_tokens: {cfg.data.eval_tokens} exceeds the {len(data.val)}-token validation split of {where}"
        )
    if len(data.train) < cfg.train.seq_len + 2:
        raise ConfigError(f"{where}: training split has {len(data.train)} tokens, fewer than one sequence")
    if cfg.data.loader == "packed" and data.bos_id is None:
        raise ConfigError(f"data.loader: packed needs document boundaries, but {where} has no BOS id "
                          "(re-import its .bin files with their document separator, or use windows)")


def check_data_identity(cfg: RunConfig) -> str | None:
    """The identity of the data in the run's data dir (None: it has none readable), refused (ConfigError) when
    the config was planned on another (its data.data_id): the dir was re-prepared since."""
    now = identity.data_id(cfg.data.dir)
    want = cfg.data.data_id
    if want is not None and now != want:
        raise ConfigError(f"{cfg.data.dir}: the data changed since this run was planned (data_id {want[:12]} in its "
                          f"config, {now[:12] if now else 'none'} in the dir now: re-prepared since); its results "
                          "would mix two corpora: plan the runs again on this data (`loopscale sweep GRID`)")
    return now


def resolve_device(cfg: RunConfig) -> torch.device:
    want = cfg.train.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is cuda but no CUDA device is visible")
    return torch.device(want)


def autocast_dtype(cfg: RunConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA by default, fp32 on CPU."""
    if cfg.train.dtype == "bf16" or (cfg.train.dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def to_device(rows: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows (seq_len + 1 each) as inputs and next-token targets on ``device``."""
    t = torch.from_numpy(rows).to(device, non_blocking=True)
    return t[:, :-1], t[:, 1:]


@torch.no_grad()
def evaluate(model: LoopedLM, val: np.ndarray, eval_tokens: int, seq_len: int, rows: int, device, amp,
             dist: DistEnv = distributed.SINGLE) -> float:
    """Mean cross-entropy (nats/token) over the first ``eval_tokens`` predictions of the validation
    split, in non-overlapping windows, accumulated in float64. Same tokens for every run; data-parallel
    ranks score every W-th chunk of windows and the sums are reduced."""
    if len(val) < eval_tokens + 1:
        raise ValueError(f"validation split has {len(val)} tokens, fewer than eval_tokens {eval_tokens} + 1")
    model.eval()
    total, count = 0.0, 0
    starts = list(range(0, eval_tokens, seq_len))
    for c, i in enumerate(range(0, len(starts), rows)):
        if c % dist.world_size != dist.rank:
            continue
        chunk = starts[i : i + rows]
        lens = [min(seq_len, eval_tokens - s) for s in chunk]
        L = max(lens)
        x = torch.stack([torch.from_numpy(val[s : s + L].astype(np.int64)) for s in chunk]).to(device)
        y = torch.stack([torch.from_numpy(val[s + 1 : s + L + 1].astype(np.int64)) for s in chunk]).to(device)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(x)
        nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), y, reduction="none").double()
        for j, n in enumerate(lens):
            total += nll[j, :n].sum().item()
            count += n
    model.train()
    if dist.active:
        total, count = distributed.all_sum(torch.tensor([total, count], dtype=torch.float64, device=device), dist).tolist()
    return total / count


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


@dataclass
class TrainOutcome:
    val_loss: float
    status: str  # done | diverged | stopped (checkpointed on request, to be resumed)
    diverged_step: int | None
    iterations: int
    wall_time_s: float  # this process plus earlier attempts of a resumed run
    train_time_s: float
    resumed_from: int | None = None
    world_size: int = 1  # data-parallel processes
    peak_flops: float | None = None  # measured matmul FLOP/s of one device (CUDA only), for MFU
    loader_stats: dict[str, Any] | None = None  # the packed loader's epochs and cropped share
    data_id: str | None = None  # the identity of the data trained on (loopscale.data.identity)


class _Silent:
    """The progress display of ranks other than 0."""

    def update(self, *args: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _trim_metrics(path: Path, step: int) -> None:
    """Drop metric lines past a checkpoint's step, so a resumed run does not log steps twice."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


def train(
    cfg: RunConfig,
    run_dir: Path | None = None,
    progress: bool | None = None,
    stop: threading.Event | None = None,
    dist: DistEnv = distributed.SINGLE,
    tracker: Background | None = None,
) -> TrainOutcome:
    """Train ``cfg`` on its data dir; return the final validation loss (nats/token).

    With a run folder, resumes from its latest checkpoint and checkpoints every
    ``checkpoint_every_steps`` steps / ``checkpoint_every_min`` minutes. When ``stop`` is set (on any
    rank), saves a checkpoint at the next step boundary and returns with status "stopped". Under
    data parallelism (``dist``) every rank calls this; rank 0 alone writes to the run folder. A ``tracker``
    (rank 0's, from ``make_tracker``) is started here and fed each metrics line; the caller ends it.
    """
    t_start = time.time()
    check_budget(cfg)
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    heap.keep_freed_memory()  # reuse the heap's pages step after step (loopscale/training/heap.py)
    data = load_data(cfg.data.dir)
    check_data_fits(cfg, data)
    data_id = check_data_identity(cfg)
    device = distributed.local_device(resolve_device(cfg), dist)
    amp = autocast_dtype(cfg, device)
    torch.manual_seed(t.seed)
    model = LoopedLM(cfg.model, cfg.vocab_size, t.seq_len).to(device)
    forward = distributed.wrap(torch.compile(model) if t.compile else model, dist, device)
    optimizer = build_optimizer(model, cfg)
    peaks = [g["lr"] for g in optimizer.param_groups]

    iters, rows = cfg.iterations(), t.rows_per_step()
    lo, hi = distributed.shard(rows, dist)  # this rank's rows of every step
    micro = t.micro_batch_rows or hi - lo
    if (hi - lo) % micro:
        raise ConfigError(f"train.micro_batch_rows: {micro} does not divide the {hi - lo} rows of a step "
                          f"on each of {dist.world_size} processes")
    loader = make_loader(cfg.data.loader, data.train, t.seq_len, rows, t.seed, data)
    first, tokens_seen, prior_train_s, prior_wall_s, resumed_from = 0, 0, 0.0, 0.0, None
    ckpt = load_latest_checkpoint(run_dir, report=dist.main, data_id=data_id) if run_dir else None
    if run_dir and ckpt is None and dist.main and any(Path(run_dir, CKPT_DIR).glob(f"*{STALE}*")):
        _trim_metrics(Path(run_dir) / METRICS_FILE, 0)  # from scratch after other data's checkpoints: their lines go
    if ckpt is not None:
        # A checkpoint from before identities (no data_id) holds the path-keyed id of its run (RunConfig.path_keyed_id)
        ids = (cfg.run_id(),) if ckpt.get("data_id") is not None else (cfg.run_id(), cfg.path_keyed_id())
        if ckpt.get("run_id") not in ids:
            raise RuntimeError(f"checkpoint in {run_dir} belongs to run {ckpt.get('run_id')}, not {cfg.run_id()}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        loader.load_state_dict(ckpt.get("loader", {"kind": "windows"}))
        first = resumed_from = ckpt["step"]
        tokens_seen, prior_train_s, prior_wall_s = ckpt["tokens_seen"], ckpt["train_time_s"], ckpt["wall_time_s"]
        if dist.main:
            _trim_metrics(Path(run_dir) / METRICS_FILE, first)

    def save(step: int) -> None:
        if dist.main:
            save_checkpoint(run_dir, step, {
                "run_id": cfg.run_id(), "data_id": data_id, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "loader": loader.state_dict(), "tokens_seen": tokens_seen,
                "train_time_s": prior_train_s + time.time() - t_train,
                "wall_time_s": prior_wall_s + time.time() - t_start,
            })

    peak = perf.peak_flops(device, amp) if dist.main else None
    fpt = cfg.flops_per_token()
    metrics = open(Path(run_dir) / METRICS_FILE, "a") if run_dir and dist.main else None
    if tracker:
        tracker.start(cfg.to_dict(), resumed_from)
    bar = TrainProgress(iters, enabled=progress, start=first) if dist.main else _Silent()
    status, diverged_step = "done", None
    t_train = last_ckpt = time.time()
    try:
        for step in range(first, iters):
            stopping = stop is not None and stop.is_set()
            if distributed.any_rank(stopping, dist, device) and run_dir:
                save(step)
                distributed.barrier(dist)  # the checkpoint is on disk before any rank returns
                status = "stopped"
                break
            f = lr_factor(step, iters, t.warmup_steps, t.final_lr_frac)
            for g, peak_lr in zip(optimizer.param_groups, peaks):
                g["lr"] = peak_lr * f
            batch = loader.rows(step, lo, hi)
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # this rank's share of the step mean
            for i in range(0, hi - lo, micro):
                x, y = to_device(batch[i : i + micro], device)
                with distributed.no_sync(forward, sync=i + micro >= hi - lo):
                    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                        loss = cross_entropy(forward(x), y)
                    # DDP averages gradients over ranks: scale so the sum over all rows is the step mean
                    (loss * (x.size(0) * dist.world_size / rows)).backward()
                loss_sum += loss.detach().double() * x.size(0) / rows
            loss_sum = distributed.all_sum(loss_sum, dist).item()
            if not math.isfinite(loss_sum):
                status, diverged_step = "diverged", step
                break
            if t.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tokens_seen += t.batch_tokens
            tps = (tokens_seen - first * t.batch_tokens) / max(time.time() - t_train, 1e-9)
            bar.update(step + 1, loss_sum, tps)
            if metrics and ((step + 1) % t.log_every == 0 or step + 1 == iters):
                rec = {"step": step + 1, "tokens": tokens_seen, "loss": loss_sum, "lr_factor": f, "tokens_per_s": tps,
                       "mfu": perf.mfu(tps, fpt, peak, dist.world_size)}
                metrics.write(json.dumps(rec) + "\n")
                metrics.flush()
                if tracker:
                    tracker.log(step + 1, rec)  # a queue put: the tracker's own thread does the rest
            due_steps = t.checkpoint_every_steps and (step + 1) % t.checkpoint_every_steps == 0
            due_time = t.checkpoint_every_min and time.time() - last_ckpt >= 60 * t.checkpoint_every_min
            if run_dir and step + 1 < iters and (due_steps or due_time):
                save(step + 1)  # rank 0 only; the others go on (they next wait in the step's all-reduce)
                last_ckpt = time.time()
    finally:
        bar.close()
        if metrics:
            metrics.close()
    train_time = prior_train_s + time.time() - t_train
    val_loss = float("nan")
    if status == "done":
        val_loss = evaluate(model, data.val, cfg.data.eval_tokens, t.seq_len, micro, device, amp, dist)
        if not math.isfinite(val_loss):
            status, diverged_step = "diverged", iters
    wall = prior_wall_s + time.time() - t_start
    return TrainOutcome(val_loss, status, diverged_step, iters, wall, train_time, resumed_from,
                        dist.world_size, peak, loader.stats(), data_id)


def result_record(cfg: RunConfig, out: TrainOutcome, device: str) -> dict[str, Any]:
    """The result.json payload: config, the identity of the data trained on, counts, D, FLOPs and the final
    validation loss."""
    fpt = cfg.flops_per_token()
    tokens = out.iterations * cfg.train.batch_tokens
    tps = tokens / out.train_time_s if out.train_time_s > 0 else None
    return {
        "run_id": cfg.run_id(),
        "data_id": out.data_id,
        "status": out.status,
        "diverged_step": out.diverged_step,
        "r": cfg.model.r,
        "d_model": cfg.model.d_model,
        "probe": cfg.model.probe,
        "seed": cfg.train.seed,
        "n_once": n_once(cfg.model),
        "n_rec": n_rec(cfg.model),
        "tokens": tokens,
        "iterations": out.iterations,
        "flops_per_token": fpt,
        "flops_total": fpt * tokens,
        "budget_flops": cfg.train.budget_flops,
        "val_loss": out.val_loss if math.isfinite(out.val_loss) else None,
        "wall_time_s": out.wall_time_s,
        "resumed_from_step": out.resumed_from,
        "tokens_per_s": tps,
        "mfu": perf.mfu(tps, fpt, out.peak_flops, out.world_size),
        "peak_flops": out.peak_flops,
        "world_size": out.world_size,
        "loader_stats": out.loader_stats,
        "device": device,
        "torch_version": torch.__version__,
        "git_commit": git_commit(),
        "finished_at": timestamp(),
        "config": cfg.to_dict(),
    }


def error_reason(e: BaseException) -> str:
    """One line for status/collect: what went wrong, and for out-of-memory what to change."""
    if isinstance(e, torch.OutOfMemoryError):
        return ("out of memory on the GPU; lower train.micro_batch_rows (per width in the grid) "
                f"or use more GPUs ({str(e).splitlines()[0] if str(e) else 'OutOfMemoryError'})")
    return f"{type(e).__name__}: {e}".splitlines()[0] if str(e) else type(e).__name__


def _write_error(run_dir: Path, e: BaseException, dist: DistEnv | None) -> None:
    """error.json: a single process overwrites it; of several ranks the first to fail writes it (later
    failures are usually the others noticing a lost peer)."""
    rec = {
        "status": "failed",
        "error": error_reason(e),
        "traceback": traceback.format_exc(),
        "time": timestamp(),
        "python": sys.executable,
    }
    if dist is None or not dist.active:
        write_json_atomic(run_dir / ERROR_FILE, rec)
        return
    rec["rank"] = dist.rank
    tmp = run_dir / f".{ERROR_FILE}.{dist.rank}.tmp"
    tmp.write_text(json.dumps(rec, indent=2) + "\n")
    try:
        os.link(tmp, run_dir / ERROR_FILE)  # atomic, and refuses when another rank got there first
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def train_run(run_dir: str | Path, stop: threading.Event | None = None, threads: int | None = None) -> dict[str, Any]:
    """Train the run described by ``run_dir/config.yaml``; write result.json (or error.json) there.

    Returns the result record. Resumes from the run's latest checkpoint if there is one; a run
    that already has result.json is not trained again. A crash leaves error.json and no result.json;
    a run stopped through ``stop`` leaves a checkpoint and returns {"status": "stopped", ...}.
    Under a multi-process launch (torchrun, or a SLURM job with several tasks) every rank calls this
    and trains data-parallel; rank 0 writes the files. ``threads``: torch's CPU threads in this process (a
    local worker's share; the run's own train.threads, when set, wins).
    """
    if threads:
        torch.set_num_threads(threads)
    run_dir = Path(run_dir)
    if (run_dir / RESULT_FILE).exists():
        with open(run_dir / RESULT_FILE) as f:
            return json.load(f)
    dist, tracker = None, None
    try:
        cfg = load_run_config(run_dir)
        dist = distributed.init(resolve_device(cfg))
        device = distributed.local_device(resolve_device(cfg), dist)
        # The grid's experiment tracker (rank 0): fed on a thread of its own, never failing the run.
        tracker = make_tracker(cfg.tracker, run_dir) if dist.main else None
        out = train(cfg, run_dir, stop=stop, dist=dist, tracker=tracker)
        if out.status == "stopped":
            step = load_latest_checkpoint(run_dir, report=dist.main)["step"]
            if tracker:
                tracker.close()  # checkpointed, to be resumed: not marked finished
                tracker.wait()
            return {"run_id": cfg.run_id(), "status": "stopped", "step": step}
        record = result_record(cfg, out, str(device) if device.type == "cpu" else torch.cuda.get_device_name(device))
        if dist.main:
            write_json_atomic(run_dir / RESULT_FILE, record)
            (run_dir / ERROR_FILE).unlink(missing_ok=True)
            remove_checkpoints(run_dir)
        if tracker:
            tracker.finish(out.status, out.val_loss, out.iterations)
            tracker.wait()
        return record
    except BaseException as e:  # noqa: BLE001 - record every way a run can end, then re-raise
        _write_error(run_dir, e, dist)
        if tracker:
            tracker.finish("failed", None, None)
            tracker.wait()
        raise
    finally:
        distributed.shutdown(dist)


def main(argv: list[str] | None = None) -> None:
    """``python -m loopscale.training.train RUN_DIR`` (or the old path, ``-m loopscale.train``), one process per
    rank under torchrun: train the run in RUN_DIR and print its final validation loss."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python -m loopscale.training.train RUN_DIR  (the folder holding config.yaml)")
    rec = train_run(argv[0])
    if rec.get("status") == "done" and os.environ.get("RANK", "0") == "0":
        print(f"val_loss {rec['val_loss']:.4f}  ({rec['tokens']:,} tokens, {rec['tokens_per_s'] or math.nan:,.0f} tok/s)")


if __name__ == "__main__":  # torchrun --nproc_per_node N -m loopscale.training.train RUN_DIR
    main()
