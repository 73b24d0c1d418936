"""`loopscale train`: one training run from flags and/or a config YAML."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import typer
import yaml
from rich.console import Console

from loopscale.errors import UserError
from loopscale.grid import WIDTH_UNIT
from loopscale.store import RESULT_FILE


def _set(d: dict, section: str, key: str, value: Any) -> None:
    if value is not None:
        d.setdefault(section, {})[key] = value


def build_config(base: dict[str, Any], overrides: dict[tuple[str, str], Any], data_dir: str | None):
    """Merge flags over a config dict, fill the vocab and the data's identity from the data dir, validate."""
    from loopscale.config import run_config_from_dict
    from loopscale.data import identity
    from loopscale.data.dataset import load_data
    from loopscale.data.format import default_data_dir

    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for (section, key), value in overrides.items():
        _set(raw, section, key, value)
    data_section = raw.setdefault("data", {})
    if not isinstance(data_section, dict):
        raise UserError(f"data: expected a mapping, got {data_section!r}")
    if data_dir is not None:
        data_section["dir"] = data_dir
    data_section["dir"] = str(Path(data_section.get("dir") or default_data_dir()).resolve())
    from loopscale.training.train import check_data_fits

    data = load_data(data_section["dir"])
    raw["vocab_size"] = data.vocab_size
    data_section["data_id"] = identity.data_id(data_section["dir"])  # what it holds now: in the run id, not the path
    cfg = run_config_from_dict(raw)
    check_data_fits(cfg, data)
    return cfg


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        r: Optional[int] = typer.Option(None, "--r", help="Recurrences of the shared block."),
        width: Optional[int] = typer.Option(None, "--width", help="Model width d."),
        s: Optional[int] = typer.Option(None, "--s", help="Width multiplier: d = 64·s (instead of --width)."),
        tokens: Optional[int] = typer.Option(None, help="Token budget D."),
        budget_flops: Optional[float] = typer.Option(None, help="FLOP budget C (iterations = C / (F·B))."),
        layers: Optional[int] = typer.Option(None, help="Effective depth ℓ_eff (default 20)."),
        prelude: Optional[int] = typer.Option(None, help="Prelude layers (default 2; none when r = 1)."),
        coda: Optional[int] = typer.Option(None, help="Coda layers (default 2; none when r = 1)."),
        head_dim: Optional[int] = typer.Option(None, help="Attention head dimension (default 128)."),
        injection: Optional[str] = typer.Option(None, help="linear | additive."),
        seq_len: Optional[int] = typer.Option(None, help="Sequence length T."),
        batch_tokens: Optional[int] = typer.Option(None, help="Tokens per optimizer step B."),
        micro_batch_rows: Optional[int] = typer.Option(None, help="Rows per forward pass (gradient accumulation)."),
        lr: Optional[float] = typer.Option(None, help="Peak lr for every group (AdamW)."),
        warmup_steps: Optional[int] = typer.Option(None),
        final_lr_frac: Optional[float] = typer.Option(None, help="Linear decay to this × peak (default 0.1)."),
        grad_clip: Optional[float] = typer.Option(None, help="Clip the gradient norm (0 = off)."),
        seed: Optional[int] = typer.Option(None),
        eval_tokens: Optional[int] = typer.Option(None, help="Held-out tokens for the final validation loss."),
        device: Optional[str] = typer.Option(None, help="auto | cpu | cuda."),
        compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the model."),
        threads: Optional[int] = typer.Option(None, help="torch CPU threads (0 = default)."),
        data: Optional[str] = typer.Option(None, help="Data dir from `loopscale data prepare`."),
        config: Optional[Path] = typer.Option(None, help="Run config YAML (flags override it)."),
        out: Optional[Path] = typer.Option(None, help="Run folder (default runs/<run_id>)."),
    ) -> None:
        """Train one looped model and write its run folder (config.yaml, metrics.jsonl, result.json)."""
        from loopscale.training.train import train_run, write_run_config

        base: dict[str, Any] = {}
        if config is not None:
            try:
                base = yaml.safe_load(config.read_text()) or {}
            except OSError as e:
                raise UserError(f"{config}: cannot read ({e.strerror})") from None
            except yaml.YAMLError as e:
                raise UserError(f"{config}: not valid YAML ({str(e).splitlines()[0]})") from None
            if not isinstance(base, dict):
                raise UserError(f"{config}: expected a mapping of model/train/data sections")
        if width is not None and s is not None:
            raise UserError("give --width or --s, not both")
        lr_keys = ("lr_matrix", "lr_embed", "lr_head", "lr_norm")
        overrides = {
            ("model", "r"): r, ("model", "d_model"): WIDTH_UNIT * s if s is not None else width,
            ("model", "n_layers_eff"): layers, ("model", "n_prelude"): prelude, ("model", "n_coda"): coda,
            ("model", "head_dim"): head_dim, ("model", "injection"): injection,
            ("train", "tokens"): tokens, ("train", "budget_flops"): budget_flops, ("train", "seq_len"): seq_len,
            ("train", "batch_tokens"): batch_tokens, ("train", "micro_batch_rows"): micro_batch_rows,
            ("train", "warmup_steps"): warmup_steps, ("train", "final_lr_frac"): final_lr_frac,
            ("train", "grad_clip"): grad_clip, ("train", "seed"): seed, ("train", "device"): device,
            ("train", "compile"): compile, ("train", "threads"): threads, ("data", "eval_tokens"): eval_tokens,
            **{("train", k): lr for k in lr_keys},
        }
        cfg = build_config(base, overrides, data)
        from loopscale.config import check_budget

        check_budget(cfg)
        run_dir = out or Path("runs") / cfg.run_id()
        if (run_dir / RESULT_FILE).exists():
            raise UserError(f"{run_dir} already holds a finished run; choose another --out")
        console = Console(stderr=True)
        console.print(
            f"run {cfg.run_id()}  r={cfg.model.r} d={cfg.model.d_model}  D={cfg.tokens():,} tokens  "
            f"{cfg.iterations()} steps  {cfg.flops_per_token():,} FLOPs/token  → {run_dir}",
            highlight=False,
        )
        write_run_config(run_dir, cfg)
        rec = train_run(run_dir)
        loss = rec["val_loss"]
        state = "diverged at step " + str(rec["diverged_step"]) if rec["status"] == "diverged" else "done"
        Console().print(
            f"{state}: val_loss {loss if loss is None else f'{loss:.4f}'} nats/token  "
            f"({rec['tokens']:,} tokens, {rec['tokens_per_s'] or math.nan:,.0f} tok/s, {rec['wall_time_s']:.1f} s)",
            highlight=False,
        )
