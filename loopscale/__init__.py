"""loopscale: iso-depth scaling-law sweeps for looped (depth-recurrent) language models."""

__version__ = "0.1.0"
