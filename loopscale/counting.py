"""Parameter and FLOP accounting of the iso-depth looped decoder (method.md §2–§3).

Pure Python, no torch: grids expand and analyses run without it.

Conventions (the paper's):
- ``n_once``: unique non-embedding parameters applied once per token: prelude + coda layers and
  the three model-level RMSNorm scales (after the embedding, after each recurrence, before the head).
- ``n_rec``: unique non-embedding parameters of the looped block, including the injection layer.
- For r = 1 the model is a plain stack of ``n_layers_eff`` layers that all count as "recurrent"
  (no prelude/coda split, no injection), so ``n_once`` is just the 3·d of norms.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from loopscale import paper, probes
from loopscale.errors import UserError


class ArchError(UserError, ValueError):
    """An architecture that cannot be built (bad r, width, depth split)."""


@dataclass(frozen=True)
class Arch:
    """The shape of one looped model. Widths in channels, depths in layers.

    ``probe`` names a registered probe (loopscale.probes); its settings are the fields it declares
    (tbptt_k, hc_lanes: fields of their own, in every run's id) or entries of ``probe_settings``
    (any other probe's: only values away from their defaults, only on that probe's runs)."""

    d_model: int
    r: int = 1
    n_layers_eff: int = paper.N_LAYERS_EFF
    n_prelude: int = paper.N_PRELUDE
    n_coda: int = paper.N_CODA
    head_dim: int = paper.HEAD_DIM
    injection: str = "linear"  # linear | additive
    probe: str = "none"  # a name in loopscale.probes.PROBES
    tbptt_k: int | None = None  # probe tbptt's setting: recurrences that get gradients; None = ceil(r/2)
    hc_lanes: int = 2  # probe hyperconn's setting: K, lanes of the hyperconnections
    probe_settings: dict[str, Any] | None = field(default=None, hash=False)  # other probes' settings

    def __post_init__(self) -> None:
        if isinstance(self.probe_settings, dict):  # canonical: defaults dropped, keys sorted, {} is None
            object.__setattr__(self, "probe_settings", _canonical_settings(self.probe, self.probe_settings))
        check_arch(self)

    # The depth split actually built: r = 1 has no prelude/coda and no injection.
    @property
    def l_prelude(self) -> int:
        return 0 if self.r == 1 else self.n_prelude

    @property
    def l_coda(self) -> int:
        return 0 if self.r == 1 else self.n_coda

    @property
    def l_recur(self) -> int:
        return (self.n_layers_eff - self.l_prelude - self.l_coda) // self.r

    @property
    def n_head(self) -> int:
        return self.d_model // self.head_dim

    @property
    def probe_spec(self) -> probes.Probe:
        """The registered probe this model runs (loopscale.probes)."""
        return probes.lookup(self.probe)

    @property
    def k_grad(self) -> int:
        """Recurrences that receive gradients (k in method.md §3)."""
        return self.probe_spec.k_grad(self)

    def probe_injection(self) -> probes.Injection | None:
        """The probe's injection replacing the linear (or additive) one, None to keep it; none at r = 1."""
        return self.probe_spec.injection(self) if self.r > 1 else None


INJECTIONS = ("linear", "additive")
# The probe settings carried as Arch fields of their own; every other probe setting goes in probe_settings.
PROBE_FIELDS = ("probe", "probe_settings") + tuple(n for n, (s, _) in probes.settings().items() if s.arch_field)


def _check_declarations() -> None:
    """The registry's settings against Arch: fields where they say so, with the same defaults."""
    arch_fields = {f.name: f for f in fields(Arch)}
    for name, (s, p) in probes.settings().items():
        if s.arch_field:
            assert name in arch_fields and arch_fields[name].default == s.default, (
                f"probe {p.name}'s setting {name} is declared an Arch field; add it to Arch with default {s.default!r}")
        else:
            assert name not in arch_fields and not hasattr(Arch, name), (
                f"probe {p.name}'s setting {name} would shadow Arch.{name}; rename it")


_check_declarations()


def _canonical_settings(probe: str, values: dict[str, Any]) -> dict[str, Any] | None:
    """probe_settings without entries at their default, keys sorted; None when nothing is left."""
    owner = probes.PROBES.get(probe)
    declared = {s.name: s for s in owner.settings} if owner else {}
    kept = {k: values[k] for k in sorted(values, key=str)
            if not (k in declared and not declared[k].arch_field and values[k] == declared[k].default)}
    return kept or None


def check_arch(a: Arch) -> None:
    """Raise ArchError with one clear sentence when the shape cannot be built."""
    if not isinstance(a.r, int) or a.r < 1:
        raise ArchError(f"r must be a positive integer, got {a.r!r}")
    if not isinstance(a.d_model, int) or a.d_model < 1:
        raise ArchError(f"width d_model must be a positive integer, got {a.d_model!r}")
    if not isinstance(a.head_dim, int) or a.head_dim < 1:
        raise ArchError(f"head_dim must be a positive integer, got {a.head_dim!r}")
    if a.d_model % a.head_dim:
        raise ArchError(f"width {a.d_model} is not divisible by head_dim {a.head_dim}")
    if a.head_dim % 2:
        raise ArchError(f"head_dim must be even for RoPE, got {a.head_dim}")
    for name in ("n_layers_eff", "n_prelude", "n_coda"):
        v = getattr(a, name)
        if not isinstance(v, int) or v < 0:
            raise ArchError(f"{name} must be a non-negative integer, got {v!r}")
    if a.n_layers_eff < 1:
        raise ArchError(f"n_layers_eff must be at least 1, got {a.n_layers_eff}")
    if a.r > 1:
        loop_depth = a.n_layers_eff - a.n_prelude - a.n_coda
        if loop_depth < 1:
            raise ArchError(
                f"n_layers_eff {a.n_layers_eff} leaves no layers to loop after prelude "
                f"{a.n_prelude} + coda {a.n_coda}"
            )
        if loop_depth % a.r:
            raise ArchError(
                f"r = {a.r} does not divide the loop depth {loop_depth} "
                f"(n_layers_eff {a.n_layers_eff} - prelude {a.n_prelude} - coda {a.n_coda})"
            )
    if a.injection not in INJECTIONS:
        raise ArchError(f"unknown injection {a.injection!r}; choose one of {', '.join(INJECTIONS)}")
    check_probe_settings(a)


def check_probe_settings(a: Arch) -> None:
    """The probe is registered; its settings have their types and pass its validation; no other probe's
    setting is set (it would change the run id, not the model)."""
    try:
        probe = probes.lookup(a.probe)
    except probes.UnknownProbe as e:
        raise ArchError(str(e)) from None
    extra = a.probe_settings
    if extra is not None and not isinstance(extra, dict):
        raise ArchError(f"probe_settings must be a mapping of probe {a.probe}'s settings, got {extra!r}")
    own = {s.name for s in probe.settings}
    for name, (s, owner) in probes.settings().items():
        value = getattr(a, name) if s.arch_field else (extra or {}).get(name, s.default)
        if name not in own:
            if value != s.default:
                raise ArchError(f"{name} is set but probe is {a.probe!r}; it only applies to probe {owner.name}")
            continue
        try:
            s.check(value)
        except ValueError as e:
            raise ArchError(f"{name}: {e}") from None
    for name in extra or {}:
        if name not in own or probe.setting(name).arch_field:
            raise ArchError(f"probe_settings: {name!r} is not a setting of probe {a.probe} "
                            f"(its settings: {', '.join(sorted(own)) or 'none'})")
    try:
        probe.validate(a)
    except ValueError as e:
        raise ArchError(str(e)) from None


def probe_arch(model: dict[str, Any], probe: str, settings: dict[str, Any]) -> Arch:
    """The model of one run of ``probe``: ``model``'s Arch fields (r included, no probe setting) with the
    probe's own ``settings`` (by name; settings of other probes are left out).

    Canonical, so that one model has one run id: where the probe does not apply (r = 1) the run is the
    baseline's, and a setting at its default is the same run as one left unset."""
    spec = probes.lookup(probe)
    if not spec.applies(model["r"]):
        spec = probes.BASELINE
    kw: dict[str, Any] = {**model, "probe": spec.name}
    extra = {}
    for s in spec.settings:
        if s.name in settings:
            if s.arch_field:
                kw[s.name] = settings[s.name]
            else:
                extra[s.name] = settings[s.name]
    if extra:
        kw["probe_settings"] = extra
    return Arch(**kw)


def split_arch(a: Arch) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """(shape, probe, settings): ``a``'s fields but the probe's, its probe, and its probe's settings (the
    inverse of probe_arch)."""
    shape = {f.name: getattr(a, f.name) for f in fields(Arch) if f.name not in PROBE_FIELDS}
    own = a.probe_spec
    return shape, a.probe, {s.name: own.value(a, s.name) for s in own.settings}


def baseline_arch(a: Arch, **changes: Any) -> Arch:
    """The probe-none model of ``a``'s shape (with ``changes``): no probe, every probe setting at its default."""
    return Arch(**{**split_arch(a)[0], **changes})


def layer_params(d: int) -> int:
    """Weights of one block: attention 4d² + MLP 8d², plus two RMSNorm scales (2d)."""
    return 12 * d * d + 2 * d


def injection_params(a: Arch) -> int:
    """n_i: parameters of the injection shared across loops (0 for r = 1)."""
    if a.r == 1:
        return 0
    replaced = a.probe_injection()
    if replaced is not None:
        return replaced.n_params()
    return 2 * a.d_model * a.d_model if a.injection == "linear" else 0


def injection_flops_params(a: Arch) -> int:
    """n_i as charged in the FLOP formula ((K²+2K)·d "equivalent" for hyperconnections)."""
    replaced = a.probe_injection()
    if replaced is not None:
        return replaced.flops_params()
    return injection_params(a)


def n_once(a: Arch) -> int:
    """Unique non-embedding parameters applied once per token (prelude, coda, 3 model norms)."""
    return (a.l_prelude + a.l_coda) * layer_params(a.d_model) + 3 * a.d_model


def n_rec(a: Arch) -> int:
    """Unique non-embedding parameters of the looped block, including the injection."""
    return a.l_recur * layer_params(a.d_model) + injection_params(a)


def n_params(a: Arch) -> int:
    """All unique non-embedding parameters (n_once + n_rec)."""
    return n_once(a) + n_rec(a)


def n_effective_compute(a: Arch) -> int:
    """N_once + r·N_rec: parameters as executed per token (the paper's D_ref 'effective params')."""
    return n_once(a) + a.r * n_rec(a)


def embedding_params(a: Arch, vocab: int) -> int:
    """Token embedding + untied LM head."""
    return 2 * vocab * a.d_model


def flops_per_token(a: Arch, seq_len: int, vocab: int) -> int:
    """Training FLOPs per token, the authors' accounting (method.md §3).

    Recurrences without gradient (truncated backprop) cost forward only (2 instead of 6 per
    parameter, 4 instead of 12 per attention term).
    """
    d, T, V = a.d_model, seq_len, vocab
    r, k = a.r, a.k_grad
    l_pc = a.l_prelude + a.l_coda
    once = 6 * (l_pc * layer_params(d) + d * V)
    loop = (2 * (r - k) + 6 * k) * (a.l_recur * layer_params(d) + injection_flops_params(a))
    attn = 12 * l_pc * d * T + (4 * (r - k) + 12 * k) * a.l_recur * d * T
    return once + loop + attn


def iterations_for_budget(budget_flops: float, flops_token: int, batch_tokens: int) -> int:
    """Optimizer steps for a FLOP budget C: round(C / (F·B))."""
    return int(round(budget_flops / (flops_token * batch_tokens)))
