"""The run's tracker for the trainer: the class of each kind of the registry (``loopscale.trackers.KINDS``),
made on its background thread.

The one module that imports every tracker class; the trainer imports it, the config and the grid never do
(the tensorboard tracker loads torch when it is made).
"""

from __future__ import annotations

from pathlib import Path

from loopscale.trackers.base import Background, Tracker
from loopscale.trackers.mlflow_tracker import MlflowTracker
from loopscale.trackers.section import TrackerConfig
from loopscale.trackers.tensorboard_tracker import TensorboardTracker
from loopscale.trackers.wandb_tracker import WandbTracker

# each kind of the registry, KINDS, has one class here (tests/test_trackers.py checks that they match)
CLASSES: dict[str, type[Tracker]] = {cls.kind: cls for cls in (WandbTracker, TensorboardTracker, MlflowTracker)}


def make_tracker(tc: TrackerConfig | None, run_dir: Path) -> Background | None:
    """The run's tracker behind its background thread (the trainer starts it); None without a section."""
    if tc is None:
        return None
    run_dir = Path(run_dir)

    def make() -> Tracker:  # on the thread: a failure here is one line on stderr, and the run goes on
        if tc.kind not in CLASSES:
            raise ValueError(f"unknown tracker kind {tc.kind!r}")
        return CLASSES[tc.kind](tc, run_dir)

    return Background(make, tc.kind)
