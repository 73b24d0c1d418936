"""One training run: read a run folder's config.yaml, train, write result.json.

``train_run(run_dir)`` is the picklable entry point the sweep submits through submitit.
Files in the run folder:
- ``config.yaml``  the resolved RunConfig (written by the caller)
- ``metrics.jsonl`` one JSON line every ``log_every`` steps (step, tokens, loss, lr, tokens/s)
- ``result.json``  written atomically at the end; its presence means the run finished
- ``error.json``   written atomically when the run raised; the sweep reports it as failed
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

from loopscale.atomic import write_json_atomic
from loopscale.checkpoint import load_latest_checkpoint, remove_checkpoints, save_checkpoint
from loopscale.config import RunConfig, check_budget, run_config_from_dict
from loopscale.counting import n_once, n_rec
from loopscale.data import load_data
from loopscale.model import LoopedLM, cross_entropy
from loopscale.optim import build_optimizer, lr_factor
from loopscale.progress import TrainProgress

RESULT_FILE, ERROR_FILE, CONFIG_FILE, METRICS_FILE = "result.json", "error.json", "config.yaml", "metrics.jsonl"


def load_run_config(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / CONFIG_FILE
    with open(path) as f:
        return run_config_from_dict(yaml.safe_load(f))


def write_run_config(run_dir: Path, cfg: RunConfig) -> Path:
    """Write the resolved config into a run folder (atomically)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / (CONFIG_FILE + ".tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    os.replace(tmp, run_dir / CONFIG_FILE)
    return run_dir / CONFIG_FILE


def check_data_fits(cfg: RunConfig, data) -> None:
    """The data must match the config's vocab and hold enough tokens for training and evaluation."""
    from loopscale.config import ConfigError

    where = cfg.data.dir
    if data.vocab_size != cfg.vocab_size:
        raise ConfigError(f"{where}: data vocab {data.vocab_size} differs from the config's vocab_size {cfg.vocab_size}")
    if len(data.val) < cfg.data.eval_tokens + 1:
        raise ConfigError(
            f"data.eval_tokens: {cfg.data.eval_tokens} exceeds the {len(data.val)}-token validation split of {where}"
        )
    if len(data.train) < cfg.train.seq_len + 2:
        raise ConfigError(f"{where}: training split has {len(data.train)} tokens, fewer than one sequence")


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


def batch_starts(seed: int, step: int, n_tokens: int, seq_len: int, rows: int) -> np.ndarray:
    """Window starts for one step: a pure function of (seed, step), so a resumed run sees the same data."""
    rng = np.random.default_rng([seed, step])
    return rng.integers(0, n_tokens - seq_len - 1, size=rows)


def get_batch(tokens: np.ndarray, starts: np.ndarray, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    rows = np.stack([tokens[s : s + seq_len + 1] for s in starts]).astype(np.int64)
    t = torch.from_numpy(rows).to(device, non_blocking=True)
    return t[:, :-1], t[:, 1:]


@torch.no_grad()
def evaluate(model: LoopedLM, val: np.ndarray, eval_tokens: int, seq_len: int, rows: int, device, amp) -> float:
    """Mean cross-entropy (nats/token) over the first ``eval_tokens`` predictions of the validation
    split, in non-overlapping windows, accumulated in float64. Same tokens for every run."""
    if len(val) < eval_tokens + 1:
        raise ValueError(f"validation split has {len(val)} tokens, fewer than eval_tokens {eval_tokens} + 1")
    model.eval()
    total, count = 0.0, 0
    starts = list(range(0, eval_tokens, seq_len))
    for i in range(0, len(starts), rows):
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
) -> TrainOutcome:
    """Train ``cfg`` on its data dir; return the final validation loss (nats/token).

    With a run folder, resumes from its latest checkpoint and checkpoints every
    ``checkpoint_every_steps`` steps / ``checkpoint_every_min`` minutes. When ``stop`` is set,
    saves a checkpoint at the next step boundary and returns with status "stopped".
    """
    t_start = time.time()
    check_budget(cfg)
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    data = load_data(cfg.data.dir)
    check_data_fits(cfg, data)
    device = resolve_device(cfg)
    amp = autocast_dtype(cfg, device)
    torch.manual_seed(t.seed)
    model = LoopedLM(cfg.model, cfg.vocab_size, t.seq_len).to(device)
    forward = torch.compile(model) if t.compile else model
    optimizer = build_optimizer(model, cfg)
    peaks = [g["lr"] for g in optimizer.param_groups]

    iters, rows = cfg.iterations(), t.rows_per_step()
    micro = t.micro_batch_rows or rows
    first, tokens_seen, prior_train_s, prior_wall_s, resumed_from = 0, 0, 0.0, 0.0, None
    ckpt = load_latest_checkpoint(run_dir) if run_dir else None
    if ckpt is not None:
        if ckpt.get("run_id") != cfg.run_id():
            raise RuntimeError(f"checkpoint in {run_dir} belongs to run {ckpt.get('run_id')}, not {cfg.run_id()}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        first = resumed_from = ckpt["step"]
        tokens_seen, prior_train_s, prior_wall_s = ckpt["tokens_seen"], ckpt["train_time_s"], ckpt["wall_time_s"]
        _trim_metrics(Path(run_dir) / METRICS_FILE, first)

    def save(step: int) -> None:
        save_checkpoint(run_dir, step, {
            "run_id": cfg.run_id(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "tokens_seen": tokens_seen, "train_time_s": prior_train_s + time.time() - t_train,
            "wall_time_s": prior_wall_s + time.time() - t_start,
        })

    metrics = open(Path(run_dir) / METRICS_FILE, "a") if run_dir else None
    bar = TrainProgress(iters, enabled=progress, start=first)
    status, diverged_step = "done", None
    t_train = last_ckpt = time.time()
    try:
        for step in range(first, iters):
            if stop is not None and stop.is_set() and run_dir:
                save(step)
                status = "stopped"
                break
            f = lr_factor(step, iters, t.warmup_steps, t.final_lr_frac)
            for g, peak in zip(optimizer.param_groups, peaks):
                g["lr"] = peak * f
            starts = batch_starts(t.seed, step, len(data.train), t.seq_len, rows)
            loss_sum = 0.0
            for i in range(0, rows, micro):
                x, y = get_batch(data.train, starts[i : i + micro], t.seq_len, device)
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    loss = cross_entropy(forward(x), y)
                (loss * (x.size(0) / rows)).backward()
                loss_sum += loss.item() * x.size(0) / rows
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
                rec = {"step": step + 1, "tokens": tokens_seen, "loss": loss_sum, "lr_factor": f, "tokens_per_s": tps}
                metrics.write(json.dumps(rec) + "\n")
                metrics.flush()
            due_steps = t.checkpoint_every_steps and (step + 1) % t.checkpoint_every_steps == 0
            due_time = t.checkpoint_every_min and time.time() - last_ckpt >= 60 * t.checkpoint_every_min
            if run_dir and step + 1 < iters and (due_steps or due_time):
                save(step + 1)
                last_ckpt = time.time()
    finally:
        bar.close()
        if metrics:
            metrics.close()
    train_time = prior_train_s + time.time() - t_train
    val_loss = float("nan")
    if status == "done":
        val_loss = evaluate(model, data.val, cfg.data.eval_tokens, t.seq_len, micro, device, amp)
        if not math.isfinite(val_loss):
            status, diverged_step = "diverged", iters
    wall = prior_wall_s + time.time() - t_start
    return TrainOutcome(val_loss, status, diverged_step, iters, wall, train_time, resumed_from)


def result_record(cfg: RunConfig, out: TrainOutcome, device: str) -> dict[str, Any]:
    """The result.json payload: config, counts, D, FLOPs and the final validation loss."""
    fpt = cfg.flops_per_token()
    tokens = out.iterations * cfg.train.batch_tokens
    return {
        "run_id": cfg.run_id(),
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
        "tokens_per_s": tokens / out.train_time_s if out.train_time_s > 0 else None,
        "device": device,
        "torch_version": torch.__version__,
        "git_commit": git_commit(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": cfg.to_dict(),
    }


def train_run(run_dir: str | Path, stop: threading.Event | None = None) -> dict[str, Any]:
    """Train the run described by ``run_dir/config.yaml``; write result.json (or error.json) there.

    Returns the result record. Resumes from the run's latest checkpoint if there is one; a run
    that already has result.json is not trained again. A crash leaves error.json and no result.json;
    a run stopped through ``stop`` leaves a checkpoint and returns {"status": "stopped", ...}.
    """
    run_dir = Path(run_dir)
    if (run_dir / RESULT_FILE).exists():
        with open(run_dir / RESULT_FILE) as f:
            return json.load(f)
    try:
        cfg = load_run_config(run_dir)
        device = resolve_device(cfg)
        out = train(cfg, run_dir, stop=stop)
        if out.status == "stopped":
            return {"run_id": cfg.run_id(), "status": "stopped", "step": load_latest_checkpoint(run_dir)["step"]}
        record = result_record(cfg, out, str(device) if device.type == "cpu" else torch.cuda.get_device_name(device))
        write_json_atomic(run_dir / RESULT_FILE, record)
        (run_dir / ERROR_FILE).unlink(missing_ok=True)
        remove_checkpoints(run_dir)
        return record
    except BaseException as e:  # noqa: BLE001 - record every way a run can end, then re-raise
        write_json_atomic(
            run_dir / ERROR_FILE,
            {
                "status": "failed",
                "error": f"{type(e).__name__}: {e}".splitlines()[0] if str(e) else type(e).__name__,
                "traceback": traceback.format_exc(),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "python": sys.executable,
            },
        )
        raise
