"""The grid's ``tracker:`` section: which experiment tracker a sweep's runs log to.

Off by default. ``tracker: {kind: tensorboard}``, ``{kind: wandb, project: ..., entity: ..., mode: offline}`` or
``{kind: mlflow, tracking_uri: ...}``. The section travels in each run's config.yaml (``RunConfig.tracker``)
with the sweep's name added (wandb's group, mlflow's experiment); it is never part of a run's id.
Torch-free and import-light: the grid and the config read it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopscale.errors import UserError
from loopscale.trackers import KINDS

KEYS = {kind: k.keys for kind, k in KINDS.items()}  # the keys each kind takes besides `kind`
WANDB_MODES = ("online", "offline")


class TrackerSectionError(UserError, ValueError):
    """A tracker section that cannot be used; the message names the key."""


@dataclass(frozen=True)
class TrackerConfig:
    kind: str  # wandb | tensorboard | mlflow
    sweep: str = ""  # the grid's name: wandb's group, mlflow's experiment
    project: str | None = None  # wandb (default: WANDB_PROJECT, else wandb's own)
    entity: str | None = None  # wandb (default: WANDB_ENTITY, else your default entity)
    mode: str | None = None  # wandb: online | offline (default: WANDB_MODE, else online)
    tracking_uri: str | None = None  # mlflow (default: a file store in <sweep folder>/mlruns)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def _check(raw: Any, allowed_extra: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise TrackerSectionError(f"tracker: expected a mapping such as {{kind: tensorboard}}, got {raw!r}")
    kind = raw.get("kind")
    if kind not in KEYS:
        raise TrackerSectionError(f"tracker.kind: unknown tracker {kind!r}; choose one of {', '.join(KEYS)}")
    allowed = ("kind",) + KEYS[kind] + allowed_extra
    for k, v in raw.items():
        if k not in allowed:
            raise TrackerSectionError(f"tracker.{k}: unknown key for kind {kind} (allowed: {', '.join(allowed)})")
        if not isinstance(v, str) or not v:
            raise TrackerSectionError(f"tracker.{k}: expected a non-empty string, got {v!r}")
    if "mode" in raw and raw["mode"] not in WANDB_MODES:
        raise TrackerSectionError(f"tracker.mode: unknown mode {raw['mode']!r}; choose {' or '.join(WANDB_MODES)}")
    return dict(raw)


def from_grid(raw: Any, sweep: str, base: Path) -> TrackerConfig | None:
    """The grid's section (None when absent), the sweep's name added; a tracking_uri that is a plain path
    is resolved against ``base`` (the working directory) and written as a file: URI."""
    if raw is None:
        return None
    d = _check(raw)
    uri = d.get("tracking_uri")
    if uri is not None and "://" not in uri and not uri.startswith("file:"):
        p = Path(uri).expanduser()
        d["tracking_uri"] = (p if p.is_absolute() else Path(base) / p).resolve().as_uri()
    return TrackerConfig(sweep=sweep, **d)


def from_dict(raw: Any) -> TrackerConfig:
    """The section as a run's config.yaml holds it (TrackerConfig.to_dict)."""
    return TrackerConfig(**_check(raw, allowed_extra=("sweep",)))


def install_hint(kind: str) -> str:
    return f"pip install 'loopscale[{kind}]'"


def check_available(tc: TrackerConfig | None) -> None:
    """The tracker's package is importable here; else one line naming the extra that installs it."""
    if tc is None:
        return
    module = KINDS[tc.kind].package
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise TrackerSectionError(f"tracker.kind: {tc.kind} needs the {module} package, which is not installed "
                                  f"here; {install_hint(tc.kind)} (or remove the grid's tracker section)")
