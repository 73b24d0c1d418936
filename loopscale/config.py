"""Typed run configuration, merged strictly from plain dicts (YAML): unknown keys are errors.

A ``RunConfig`` is everything one training run needs. It is torch-free so grids can expand and
hash runs without importing torch. ``semantic_dict`` holds only the fields that change a run's
result; its hash is the run id. The data enters it by content (``data.data_id``, the identity of the
prepared data dir: ``loopscale.data.identity``), not by path: ``data.dir`` is where a job finds its data, an
execution setting. A config without an identity (written before identities existed) keeps its old,
path-keyed id.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from loopscale.counting import Arch, ArchError, flops_per_token, iterations_for_budget
from loopscale.data.format import DEFAULT_DATA_DIR
from loopscale.errors import UserError
from loopscale.trackers.section import TrackerConfig, TrackerSectionError
from loopscale.trackers.section import from_dict as tracker_from_dict

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present


class ConfigError(UserError, ValueError):
    """A configuration value or key that is wrong; the message names it."""


@dataclass(frozen=True)
class DataConfig:
    """Where the tokenized corpus lives (``loopscale data prepare`` writes it) and what it holds."""

    dir: str = DEFAULT_DATA_DIR  # a prepared data dir (loopscale.data.format); where, not what: not in the run id
    eval_tokens: int = 65536  # held-out tokens scored at the end; the same for every run
    # Training batches: windows (random windows of the token stream) | packed (BOS-aligned best-fit
    # packed documents, every row starting at a document; loopscale.training.loaders). In the run id unless windows.
    loader: str = "windows"
    # The identity of dir's content (loopscale.data.identity: a hash of its tokens, tokenizer, vocabulary and
    # format), set when a grid or `loopscale train` resolves the dir; in the run id instead of dir. None: not
    # known (a grid planned before its data is prepared, or a config written before identities existed).
    data_id: str | None = None

    def __post_init__(self) -> None:
        if self.loader not in ("windows", "packed"):
            raise ConfigError(f"data.loader: unknown {self.loader!r}; choose windows or packed")
        if self.data_id is not None and (not isinstance(self.data_id, str) or not self.data_id):
            raise ConfigError(f"data.data_id: expected the data dir's identity (a hex string), got {self.data_id!r}")


OPTIMIZERS = ("adamw", "muonh")
# MuonH's orthogonalisation (loopscale.training.muon): the authors' Polar Express, or Keller Jordan's quintic
# Newton–Schulz (what every muonh run used before train.muon_ns existed).
MUON_NS = ("polar_express", "quintic")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. Budgets: exactly one of ``tokens`` (D) or ``budget_flops`` (C)."""

    tokens: int | None = None  # training tokens D
    budget_flops: float | None = None  # training FLOPs C; iterations = round(C / (F·B))
    seq_len: int = 256
    batch_tokens: int = 8192  # tokens per optimizer step (B)
    micro_batch_rows: int = 0  # rows per forward pass; 0 = whole batch (no accumulation)
    optimizer: str = "adamw"
    muon_ns: str = "polar_express"  # muonh only: its orthogonalisation, polar_express | quintic (MUON_NS)
    # AdamW defaults tuned on the tiny CPU family (d≈96, 300k tokens: 5.74 nats vs 5.96 at 3e-3 flat).
    lr_matrix: float = 1e-2  # block matrices and injection
    lr_embed: float = 1e-1
    lr_head: float = 1e-2
    lr_norm: float = 1e-2
    betas: tuple[float, float] = (0.8, 0.95)
    eps: float = 1e-10
    weight_decay: float = 0.0
    warmup_steps: int = 0
    final_lr_frac: float = 0.1  # linear decay to this fraction of peak
    grad_clip: float = 0.0  # 0 = off
    seed: int = 0
    # Execution only: do not change the result's meaning, so not part of the run id.
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    compile: bool = False
    threads: int = 0  # torch CPU threads; 0 = torch default
    log_every: int = 10
    checkpoint_every_steps: int = 0  # 0 = by time only
    checkpoint_every_min: float = 10.0  # 0 = by steps only

    def rows_per_step(self) -> int:
        return self.batch_tokens // self.seq_len


EXECUTION_FIELDS = {
    "micro_batch_rows", "device", "dtype", "compile", "threads", "log_every",
    "checkpoint_every_steps", "checkpoint_every_min",
}


@dataclass(frozen=True)
class RunConfig:
    model: Arch
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    vocab_size: int = 0  # filled from the data's meta.json when 0
    # The experiment tracker the run logs to (the grid's `tracker:` section); execution only, never in the id.
    tracker: TrackerConfig | None = None

    # -- derived quantities (method.md §3) ---------------------------------------------------
    def flops_per_token(self) -> int:
        return flops_per_token(self.model, self.train.seq_len, self.vocab_size)

    def iterations(self) -> int:
        t = self.train
        if t.tokens is not None:
            return int(round(t.tokens / t.batch_tokens))
        assert t.budget_flops is not None
        return iterations_for_budget(t.budget_flops, self.flops_per_token(), t.batch_tokens)

    def tokens(self) -> int:
        """D, tokens actually trained: iterations · B."""
        return self.iterations() * self.train.batch_tokens

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["train"]["betas"] = list(self.train.betas)
        if self.tracker is None:  # no tracker: the config reads as it did before trackers existed
            del d["tracker"]
        else:
            d["tracker"] = self.tracker.to_dict()
        if d["model"]["probe_settings"] is None:  # only a probe with settings of its own writes them:
            del d["model"]["probe_settings"]  # the ids of every other run stay as they were
        if self.train.optimizer != "muonh":  # MuonH's setting means nothing to another optimizer
            del d["train"]["muon_ns"]
        if self.data.data_id is None:  # no identity known: the config reads as it did before identities
            del d["data"]["data_id"]
        return d

    def semantic_dict(self) -> dict[str, Any]:
        """The fields that change the result (execution-only settings dropped). The data counts by its identity
        (data.data_id), not by where it lies (data.dir): the same tokens in two folders give one id. Without an
        identity (a config written before identities existed) the dir stands in for it, as it did then, so such
        a config keeps its old id until its run is re-keyed."""
        d = self.to_dict()
        if self.data.data_id is not None:
            del d["data"]["dir"]
        d.pop("tracker", None)  # where a run is logged changes nothing in it
        for k in EXECUTION_FIELDS:
            d["train"].pop(k, None)
        # A FLOP budget is resolved to its iterations: what is trained is what matters.
        d["train"]["iterations"] = self.iterations() if self.vocab_size else None
        if d["data"]["loader"] == "windows":  # the default: run ids from before the setting stay valid
            del d["data"]["loader"]
        # muon_ns changes only muonh runs (to_dict leaves it out of the others). Under muonh, quintic is what
        # every run trained with before the setting existed, so those run ids stay valid; polar_express enters the id.
        if d["train"].get("muon_ns") == "quintic":
            del d["train"]["muon_ns"]
        return d

    def run_id(self) -> str:
        blob = json.dumps(self.semantic_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def path_keyed_id(self) -> str:
        """The id this run had before data identities existed: its data dir's path in place of its data_id."""
        return dataclasses.replace(self, data=dataclasses.replace(self.data, data_id=None)).run_id()


def _coerce(cls_name: str, key: str, typ: Any, value: Any) -> Any:
    """Check one value against its annotated type; ints are accepted where floats are."""
    where = f"{cls_name}.{key}"
    t = str(typ)
    if value is None:
        if "None" in t:
            return None
        raise ConfigError(f"{where}: must not be empty")
    if t.startswith("tuple"):
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ConfigError(f"{where}: expected a pair of numbers, got {value!r}")
        return tuple(float(_coerce(cls_name, key, float, v)) for v in value)
    if typ is bool or t == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if typ is int or t.startswith("int"):
        if isinstance(value, float) and value.is_integer() and "float" not in t:
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if "float" not in t and not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if typ is float or t.startswith("float"):
        if isinstance(value, str):
            try:
                value = float(value)  # YAML reads 1e18 as a string
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if typ is str or t == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> tuple[dict[str, Any], frozenset[str]]:
    """A dataclass's field types and names, resolved once (get_type_hints compiles every annotation string:
    most of the time `status` spends on a 10,000-run sweep's configs)."""
    return get_type_hints(cls), frozenset(f.name for f in fields(cls))


def build(cls: type, raw: dict[str, Any] | None, section: str) -> Any:
    """Instantiate a dataclass from a dict, rejecting unknown keys and wrong types."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{section}: expected a mapping, got {raw!r}")
    hints, names = _hints(cls)
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(
            f"{section}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(names))})"
        )
    kwargs = {k: _coerce(section, k, hints[k], v) for k, v in raw.items()}
    try:
        return cls(**kwargs)
    except ArchError as e:
        raise ConfigError(f"{section}: {e}") from None
    except TypeError as e:
        raise ConfigError(f"{section}: {e}") from None


def check_train(t: TrainConfig) -> None:
    if (t.tokens is None) == (t.budget_flops is None):
        raise ConfigError("train: give exactly one of tokens or budget_flops")
    if t.tokens is not None and t.tokens <= 0:
        raise ConfigError(f"train.tokens: must be positive, got {t.tokens}")
    if t.budget_flops is not None and not t.budget_flops > 0:
        raise ConfigError(f"train.budget_flops: must be positive, got {t.budget_flops}")
    if t.seq_len < 2:
        raise ConfigError(f"train.seq_len: must be at least 2, got {t.seq_len}")
    if t.batch_tokens <= 0 or t.batch_tokens % t.seq_len:
        raise ConfigError(
            f"train.batch_tokens: {t.batch_tokens} must be a positive multiple of seq_len {t.seq_len}"
        )
    if t.micro_batch_rows < 0 or (t.micro_batch_rows and t.rows_per_step() % t.micro_batch_rows):
        raise ConfigError(
            f"train.micro_batch_rows: {t.micro_batch_rows} must divide the {t.rows_per_step()} "
            "rows of a step"
        )
    if t.optimizer not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer: unknown {t.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if t.muon_ns not in MUON_NS:
        raise ConfigError(f"train.muon_ns: unknown {t.muon_ns!r}; choose {' or '.join(MUON_NS)}")
    if t.optimizer == "muonh" and t.weight_decay:
        raise ConfigError(f"train.weight_decay: {t.weight_decay} does not apply under optimizer muonh "
                          "(its matrices stay on fixed-norm spheres); set it to 0")
    if not 0.0 <= t.final_lr_frac <= 1.0:
        raise ConfigError(f"train.final_lr_frac: must be in [0, 1], got {t.final_lr_frac}")
    for k in ("lr_matrix", "lr_embed", "lr_head", "lr_norm"):
        if getattr(t, k) < 0:
            raise ConfigError(f"train.{k}: must be non-negative, got {getattr(t, k)}")
    if t.warmup_steps < 0 or t.grad_clip < 0 or t.weight_decay < 0:
        raise ConfigError("train: warmup_steps, grad_clip and weight_decay must be non-negative")
    if t.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"train.device: unknown {t.device!r}; choose auto, cpu or cuda")
    if t.dtype not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"train.dtype: unknown {t.dtype!r}; choose auto, fp32 or bf16")


def load_run_config(path: str | Path) -> RunConfig | None:
    """A run's config.yaml as a RunConfig; None when it is missing or does not read as one."""
    try:
        with open(path) as f:
            return run_config_from_dict(yaml.load(f, Loader=_Loader))
    except (OSError, yaml.YAMLError, UserError):
        return None


def run_config_from_dict(raw: dict[str, Any]) -> RunConfig:
    """Build and validate a RunConfig from {'model': …, 'train': …, 'data': …, 'vocab_size': …}."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping, got {raw!r}")
    unknown = sorted(set(raw) - {"model", "train", "data", "vocab_size", "tracker"})
    if unknown:
        raise ConfigError(f"config: unknown key {unknown[0]!r} (allowed: data, model, tracker, train, vocab_size)")
    if "model" not in raw or not raw["model"] or "d_model" not in raw["model"]:
        raise ConfigError("model.d_model: missing (the width of the model)")
    model = build(Arch, raw.get("model"), "model")
    train = build(TrainConfig, raw.get("train"), "train")
    check_train(train)
    data = build(DataConfig, raw.get("data"), "data")
    if data.eval_tokens <= 0:
        raise ConfigError(f"data.eval_tokens: must be positive, got {data.eval_tokens}")
    vocab = raw.get("vocab_size", 0) or 0
    if not isinstance(vocab, int) or vocab < 0:
        raise ConfigError(f"vocab_size: expected a non-negative integer, got {vocab!r}")
    try:
        tracker = tracker_from_dict(raw["tracker"]) if raw.get("tracker") is not None else None
    except TrackerSectionError as e:
        raise ConfigError(str(e)) from None
    return RunConfig(model=model, train=train, data=data, vocab_size=vocab, tracker=tracker)


def check_budget(cfg: RunConfig) -> None:
    """A budget must buy at least one optimizer step."""
    if cfg.iterations() < 1:
        t = cfg.train
        what = f"tokens {t.tokens}" if t.tokens is not None else f"budget_flops {t.budget_flops:g}"
        raise ConfigError(
            f"train: {what} buys no optimizer step at batch_tokens {t.batch_tokens} "
            f"({cfg.flops_per_token():,} FLOPs/token)"
        )
