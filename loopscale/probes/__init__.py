"""The registry of probes (method.md §6): every probe a grid, ``compare --probe`` or ``fit --probe`` knows.

A probe is one module of this package declaring one :class:`~loopscale.probes.base.Probe` (its name, its
change to the model, its parameter and FLOP accounting, its settings and their validation); adding one is
that module plus its import and its entry in ``REGISTERED`` below. ``none`` is the baseline. Torch-free.
"""

from __future__ import annotations

from loopscale.probes import additive, hyperconn, tbptt
from loopscale.probes.base import Injection, Probe, Setting

BASELINE = Probe()

REGISTERED: tuple[Probe, ...] = (
    BASELINE,
    tbptt.PROBE,
    hyperconn.PROBE,
    additive.PROBE,
)

PROBES: dict[str, Probe] = {p.name: p for p in REGISTERED}
assert len(PROBES) == len(REGISTERED), "two probes share a name"


class UnknownProbe(ValueError):
    """A probe name the registry does not list; the message names the known ones."""


def names() -> tuple[str, ...]:
    """The registered probe names, the baseline ``none`` first."""
    return tuple(PROBES)


def choices(sep: str = " | ", skip_baseline: bool = False) -> str:
    """The names as a help text writes them: ``none | tbptt | hyperconn``."""
    return sep.join(n for n in PROBES if not (skip_baseline and n == BASELINE.name))


def lookup(name: object) -> Probe:
    """The probe called ``name``; UnknownProbe (``unknown probe 'x'; choose one of ...``) otherwise."""
    probe = PROBES.get(name) if isinstance(name, str) else None
    if probe is None:
        raise UnknownProbe(f"unknown probe {name!r}; choose one of {choices(', ')}")
    return probe


def settings() -> dict[str, tuple[Setting, Probe]]:
    """Every probe setting by name, with the probe that owns it."""
    out: dict[str, tuple[Setting, Probe]] = {}
    for p in REGISTERED:
        for s in p.settings:
            assert s.name not in out, f"setting {s.name!r} is declared by probes {out[s.name][1].name} and {p.name}"
            out[s.name] = (s, p)
    return out


__all__ = ["BASELINE", "PROBES", "REGISTERED", "Injection", "Probe", "Setting", "UnknownProbe", "choices",
           "lookup", "names", "settings"]
