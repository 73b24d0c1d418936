"""Weights & Biases: project and entity from the section, group = the sweep, name = the run id.

Offline when the section says ``mode: offline`` or WANDB_MODE=offline is set; files go to the run folder
(``runs/<id>/wandb/``) unless WANDB_DIR says where. A requeued or resumed run continues the same wandb
run: its id is derived from the sweep and the run id, and resuming is allowed. Values are logged against
``train/step`` (our optimizer step), so a rerun that restarts below wandb's own step still lands.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from loopscale.trackers.base import Tracker, run_id_of
from loopscale.trackers.section import TrackerConfig

STEP = "train/step"


def wandb_id(sweep: str, run_id: str) -> str:
    """The wandb run id of a loopscale run: the run id and a tag of the sweep (ids are unique per project)."""
    return f"{run_id}-{hashlib.sha256(sweep.encode()).hexdigest()[:6]}"


class WandbTracker(Tracker):
    kind = "wandb"

    def __init__(self, tc: TrackerConfig, run_dir: Path):
        import wandb

        self.wandb = wandb
        self.tc = tc
        self.run_dir = Path(run_dir)
        self.run = None

    def start(self, config: dict[str, Any], resumed_from: int | None) -> None:
        tc, rid = self.tc, run_id_of(self.run_dir)
        self.run = self.wandb.init(
            project=tc.project, entity=tc.entity, group=tc.sweep or None, name=rid, id=wandb_id(tc.sweep, rid),
            resume="allow", config=config, mode=tc.mode, reinit="create_new",
            dir=None if os.environ.get("WANDB_DIR") else str(self.run_dir),
            settings=self.wandb.Settings(console="off", quiet=True),  # job.out/job.err stay ours
        )
        self.run.define_metric(STEP)
        self.run.define_metric("*", step_metric=STEP)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log({STEP: step, **metrics})

    def finish(self, status: str, val_loss: float | None, step: int | None) -> None:
        if val_loss is not None:
            self.run.log({STEP: step or 0, "val_loss": val_loss})
            self.run.summary["val_loss"] = val_loss
        self.run.summary["status"] = status
        self.run.finish(exit_code=0 if status == "done" else 1)

    def close(self) -> None:
        self.run.mark_preempting()  # stopped at a checkpoint: shown as preempted until the resumed job goes on
        self.run.finish()
