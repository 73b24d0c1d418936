"""Experiment trackers (wandb, tensorboard, mlflow): optional, off by default, never in a run's id.

``KINDS`` is the one registry of tracker kinds: the keys each takes in a grid's ``tracker:`` section and the
package it imports. The modules, each importing only what is above it in this list:

- :mod:`~loopscale.trackers.section`: the grid's ``tracker:`` section (``TrackerConfig``), checked against
  ``KINDS``, its package looked for up front (``check_available``); torch-free and light, read by the config
  and the grid;
- :mod:`~loopscale.trackers.base`: the ``Tracker`` interface and ``Background``, the thread that keeps a
  tracker off the training loop;
- one module per kind (``wandb_tracker``, ``tensorboard_tracker``, ``mlflow_tracker``), each a ``Tracker``
  whose ``kind`` is its key in ``KINDS``;
- :mod:`~loopscale.trackers.factory`: ``make_tracker``, the run's tracker for the trainer (the one module that
  knows every kind's class; tensorboard's loads torch, so the config never imports it).

Nothing here imports the modules below it: the registry is plain data.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    keys: tuple[str, ...]  # what the section takes besides `kind`
    package: str  # the module it imports, looked for when the grid is read; its extra is named like the kind


KINDS = {
    "wandb": Kind(keys=("project", "entity", "mode"), package="wandb"),
    "tensorboard": Kind(keys=(), package="tensorboard"),
    "mlflow": Kind(keys=("tracking_uri",), package="mlflow"),
}

__all__ = ["KINDS", "Kind"]
