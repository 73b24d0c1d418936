"""Experiment trackers (wandb, tensorboard, mlflow): optional, off by default, never in a run's id.

``section`` reads the grid's ``tracker:`` section and checks its package up front; ``base`` runs a
tracker on a background thread for the trainer (``make_tracker``); one module per kind.
"""

from loopscale.trackers.section import KEYS, TrackerConfig, TrackerSectionError, check_available

__all__ = ["KEYS", "TrackerConfig", "TrackerSectionError", "check_available"]
