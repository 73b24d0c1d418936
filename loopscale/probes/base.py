"""What a probe is (method.md §6): one named change to the looped model or its training, judged by φ.

A probe is one module (``loopscale/probes/<name>.py``) holding one :class:`Probe`, listed in the registry
(``loopscale/probes/__init__.py``). It declares

- ``name`` (a grid's ``probes:`` entry, ``compare --probe NAME``) and a one-line ``description``;
- ``settings``: the model settings it owns, with their defaults (:class:`Setting`). A grid gives them as
  keys of its ``model:`` section; they reach only the probe's own looped runs;
- ``validate(arch)``: what the settings must satisfy, beyond each setting's own type;
- ``applies(r)``: where it changes the model. By default r > 1: at r = 1 there is no loop, so that run is
  the baseline's own and is shared (one run id) by every probe of a sweep;
- ``k_grad(arch)``: the recurrences that receive gradients (k of the FLOP formula, method.md §3);
- ``injection(arch)``: the :class:`Injection` that replaces the model's own at r > 1 (None: keep it). Its
  weights and its FLOP-charged weight count are the probe's n_i (method.md §3).

Torch-free, like counting, grid and config, which read every probe's accounting and validation: a probe's
change to the model is written with the methods and operators of the tensors it is handed, never by
importing torch (tests/test_imports.py checks it).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any


@dataclass(frozen=True)
class Setting:
    """One model setting a probe owns: ``name`` as written in a grid's ``model:`` section.

    ``arch_field``: carried as a field of its own on ``counting.Arch`` (tbptt_k, hc_lanes: in every run's id
    since before probes were plug-ins). Any other setting travels in ``Arch.probe_settings``, and only when
    it differs from its default, so it enters the ids of its probe's runs alone.
    """

    name: str
    default: Any
    doc: str
    kind: type = int  # int | float | str | bool
    optional: bool = False  # None is allowed (and means the probe's own choice, e.g. tbptt_k: ⌈r/2⌉)
    minimum: float | None = None
    arch_field: bool = False

    def check(self, value: Any) -> Any:
        """The value, checked; ValueError with one sentence (without the setting's name) when it is wrong."""
        if value is None and self.optional:
            return None
        if self.kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)  # YAML's 2.0, as config reads an integer field
        kinds = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
        want = kinds.get(self.kind, self.kind.__name__)
        if self.kind is int and self.minimum == 1:
            want = "a positive integer"
        ok = isinstance(value, self.kind) and (self.kind is bool or not isinstance(value, bool))
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok or (self.minimum is not None and value < self.minimum):
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            at_least = f" ≥ {self.minimum:g}" if self.minimum is not None and want != "a positive integer" else ""
            raise ValueError(f"expected {want}{at_least}, got {shown}")
        return value


class Injection:
    """How the prelude output e enters each recurrence, for a probe that replaces the linear injection.

    One instance per model (``Probe.injection(arch)``). It declares its weights, ``{name: shape}``; the model
    makes them parameters (``injection.<name>``, in the optimizer's "lane" group) of a module ``w`` that it
    hands to every method below, the weights as attributes (``w.alpha``). Recurrence t of r runs
    ``u = mix(w, t, e, h)``, ``s = norm_recur(block(u))``, ``h = update(w, t, h, s)`` from
    ``h = init_state(w, e)``; the coda reads ``readout(w, h)``. Write them with tensor methods and
    operators only (``e.new_zeros(e.shape)``, ``h + e``, ``m @ x``): probes never import torch.
    The defaults are the loop without injection: h⁰ = e, u = h, h ← s.
    """

    def weights(self) -> dict[str, tuple[int, ...]]:
        return {}

    def init(self, w: Any) -> None:
        """Set every declared weight of ``w`` in place (the model runs it without gradient)."""

    def init_state(self, w: Any, e: Any) -> Any:
        return e

    def mix(self, w: Any, t: int, e: Any, h: Any) -> Any:
        return h

    def update(self, w: Any, t: int, h: Any, s: Any) -> Any:
        return s

    def readout(self, w: Any, h: Any) -> Any:
        return h

    def n_params(self) -> int:
        """n_i: the injection's weights (all of them, over every recurrence)."""
        return sum(prod(shape) for shape in self.weights().values())

    def flops_params(self) -> int:
        """n_i as the FLOP formula charges it per recurrence (method.md §3); by default its weight count."""
        return self.n_params()


class Probe:
    """The baseline (``none``): the model as method.md §2 builds it. A probe subclasses it and overrides
    what it changes (see the module docstring)."""

    name: str = "none"
    description: str = "the baseline: the paper's model and training, unchanged"
    settings: tuple[Setting, ...] = ()

    def applies(self, r: int) -> bool:
        """Whether this probe changes a model with r recurrences (elsewhere its runs are the baseline's)."""
        return r > 1

    def validate(self, arch: Any) -> None:
        """Raise ValueError with one sentence when ``arch`` (this probe's) cannot be built."""

    def k_grad(self, arch: Any) -> int:
        """Recurrences that receive gradients (k in method.md §3)."""
        return arch.r

    def injection(self, arch: Any) -> Injection | None:
        """The injection replacing the model's own at r > 1, or None to keep it."""
        return None

    # -- reading a setting -------------------------------------------------------------------------
    def setting(self, name: str) -> Setting:
        for s in self.settings:
            if s.name == name:
                return s
        raise KeyError(f"probe {self.name} has no setting {name!r}")

    def value(self, arch: Any, name: str) -> Any:
        """The value of this probe's setting ``name`` on ``arch``: its field, or its entry in
        ``arch.probe_settings``, or its default."""
        s = self.setting(name)
        if s.arch_field:
            return getattr(arch, name)
        return (arch.probe_settings or {}).get(name, s.default)

    def __repr__(self) -> str:
        return f"<probe {self.name}>"
