"""Adaptive sweeps that run (`loopscale sweep GRID --until-ci W`): round by round, look at the sweep's finished
runs with the policy of analysis.adaptive (analysis.adaptive.round.look), stop or choose the next K runs, turn
them into the grid's own runs (``picks``) and submit them with submit's code; every round is a record in the sweep
folder (``records``: rounds.jsonl), so a rerun of the same command goes on from the last finished round and no run
trains twice (``loop``). The layer above analysis and submit, which never import each other."""

from loopscale.rounds.loop import Settings, step, until_stop
from loopscale.rounds.records import ROUNDS_FILE, read_rounds, summary

__all__ = ["ROUNDS_FILE", "Settings", "read_rounds", "step", "summary", "until_stop"]
