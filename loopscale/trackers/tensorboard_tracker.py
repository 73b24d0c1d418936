"""TensorBoard: event files in the run folder (``runs/<id>/tensorboard/``), scalars against the step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loopscale.trackers.base import Tracker
from loopscale.trackers.section import TrackerConfig

DIR = "tensorboard"


class TensorboardTracker(Tracker):
    kind = "tensorboard"

    def __init__(self, tc: TrackerConfig, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self._writer_class = SummaryWriter
        self.log_dir = Path(run_dir) / DIR
        self.writer = None

    def start(self, config: dict[str, Any], resumed_from: int | None) -> None:
        # Resumed from a checkpoint at step k: the earlier attempt's events past k are hidden, as
        # metrics.jsonl drops its lines past k.
        self.writer = self._writer_class(str(self.log_dir), purge_step=resumed_from + 1 if resumed_from else None)
        if not resumed_from:
            self.writer.add_text("config", "```\n" + json.dumps(config, indent=1) + "\n```", 0)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for name, v in metrics.items():
            self.writer.add_scalar(name, v, step)

    def finish(self, status: str, val_loss: float | None, step: int | None) -> None:
        if val_loss is not None:
            self.writer.add_scalar("val_loss", val_loss, step or 0)
        self.writer.add_text("status", status, step or 0)
        self.writer.close()

    def close(self) -> None:
        self.writer.close()
