"""Probes (method.md §6): plug-ins declared in loopscale/probes/, listed by one registry.

The run ids of the shipped grids are pinned: moving a probe onto another mechanism must never change a
run's identity (a changed id retrains a finished run). tests/data/probe_grid_run_ids.json holds each grid's
runs as [run_id, probe, probes], expanded by the code before probes became plug-ins (the additive grids: when
they were added); every one of them must still expand, with the same probe, serving at least those probes
(a grid may grow: new runs are new). Data dirs resolve against a fixed folder that does not exist, every data
dir has the fixed identity PIN_DATA_ID (injected: run ids hold the data's identity), and smoke, which reads its
vocabulary from its data, gets vocab_size 4096. Deliberate changes, each regenerated run for run
(``write_pins``, tests/data/README.md): train.muon_ns (default polar_express) entered the ids of muonh runs;
under muon_ns: quintic the same runs expand to their ids from before (one sha256 per grid). Then the data's
identity replaced its path in every id; without an identity (a config written before identities) a run keeps
its path-keyed id from before (one sha256 per grid).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from unittest import mock

import pytest
import yaml

from loopscale import probes
from loopscale.config import run_config_from_dict
from loopscale.counting import Arch, ArchError, baseline_arch, n_rec, probe_arch, split_arch
from loopscale.grid import GridError, find_grid, grid_from_dict

PIN_DIR = Path("/loopscale-pin")  # never read: relative data dirs resolve against it
PIN_DATA_ID = hashlib.sha256(b"loopscale-pin").hexdigest()  # the identity every data dir has in these tests
PIN_FILE = Path(__file__).parent / "data" / "probe_grid_run_ids.json"
PINNED = json.loads(PIN_FILE.read_text())
PINNED.pop("_about")
PINNED_QUINTIC = PINNED.pop("_quintic_sha256")  # grid -> sha256 of its pinned runs' ids under muon_ns: quintic
PINNED_PATH_KEYED = PINNED.pop("_path_keyed_sha256", {})  # grid -> sha256 of their ids without a data identity
PINS_ABOUT = ("tests/test_probes.py: [run_id, probe, probes] of each shipped grid's runs, expanded with data dirs "
              "under /loopscale-pin, every one of identity sha256('loopscale-pin') (PIN_DATA_ID; smoke: vocab_size "
              "4096); the first seven grids by the code before probes became plug-ins (commit 08c1d35), the additive "
              "grids when they were added; regenerated run for run (test_probes.write_pins) when train.muon_ns "
              "(default polar_express) entered muonh run ids, and when the data's identity replaced its path in every "
              "id. _quintic_sha256: per grid, sha256 of the JSON list of its pinned runs' ids under train.muon_ns: "
              "quintic. _path_keyed_sha256: the same of their ids without a data identity (the data dir's path in "
              "the id): their ids before identities existed")
# A few spelled out: run_id -> (grid, probe, probes it serves there)
PINNED_RUNS = {
    "dd57102cf189": ("tiny-tbptt", "none", ["tbptt"]),  # tiny's own r = 1 run
    "e77719415921": ("tiny-tbptt", "tbptt", ["tbptt"]),
    "f8c6ad6c38d7": ("tiny-hyperconn", "hyperconn", ["hyperconn"]),
    "e667a87ef195": ("paper-hyperconn", "none", ["hyperconn"]),  # paper's own r = 1 run
    "193ccd7a50d2": ("paper-tbptt", "tbptt", ["tbptt"]),
    "03f69f208452": ("paper-hyperconn", "hyperconn", ["hyperconn"]),
    "5c3ae3d74f37": ("smoke", "none", ["none"]),
    "fa215fdba71d": ("tiny-additive", "additive", ["additive"]),
    "09728ea0a880": ("paper-additive", "additive", ["additive"]),
}
# Every probe in one grid, both probe settings away from their defaults (a frozen copy: shipped grids change).
MIXED = """
name: mixed
model: {n_layers_eff: 6, n_prelude: 1, n_coda: 1, head_dim: 8, tbptt_k: 1, hc_lanes: 3}
train: {optimizer: muonh, lr_matrix: 0.02, seq_len: 64, batch_tokens: 2048}
data: {dir: data/bytes, eval_tokens: 32768}
vocab_size: 256
r: [1, 2, 4]
probes: [none, tbptt, hyperconn]
flops: {1.0e11: [8, 16, 24], 4.0e11: [16, 24, 32]}
repeats: [{d_model: 16, budget_flops: 1.0e11, r: 2, seed: 1}]
"""


@contextlib.contextmanager
def data_identity(value: str | None = PIN_DATA_ID):
    """Every data dir has identity ``value`` (None: none, as before a prepare or before identities existed)."""
    with mock.patch("loopscale.data.identity.data_id", lambda *args, **kwargs: value):
        yield


def _expansion(raw: dict, where: str, path: Path | None = None) -> list:
    grid = grid_from_dict(raw, where, path=path, cwd=PIN_DIR)
    return [[s.run_id, s.probe, list(s.probes)] for s in grid.runs]


def shipped_expansion(name: str, **train) -> list:
    path = find_grid(name)
    raw = yaml.safe_load(path.read_text())
    raw.setdefault("vocab_size", 4096)
    raw["train"] = {**(raw.get("train") or {}), **train}
    return _expansion(raw, name, path)


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch):
    monkeypatch.delenv("LOOPSCALE_DATA", raising=False)
    with data_identity():
        yield


def sha(ids: list) -> str:
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()


def write_pins() -> None:
    """Regenerate tests/data/probe_grid_run_ids.json run for run (the recipe in tests/data/README.md): each grid
    is expanded with the pinned identity and without one; the runs pinned (by either id) keep their place, probe
    and probes, and get their id under the identity. Run from tests/: python -c 'import test_probes as t;
    t.write_pins()'."""
    doc = json.loads(PIN_FILE.read_text())
    doc["_about"] = PINS_ABOUT
    for name in [k for k in doc if not k.startswith("_")]:
        with data_identity():
            keyed, quintic = shipped_expansion(name), shipped_expansion(name, muon_ns="quintic")
        with data_identity(None):
            by_path = shipped_expansion(name)
        assert [row[1:] for row in keyed] == [row[1:] for row in by_path] == [row[1:] for row in quintic], name
        pinned = {run_id for run_id, *_ in doc[name]}
        keep = [i for i, (a, b) in enumerate(zip(keyed, by_path)) if a[0] in pinned or b[0] in pinned]
        assert len(keep) == len(doc[name]), f"{name}: pinned runs lost"
        doc[name] = [keyed[i] for i in keep]
        doc["_quintic_sha256"][name] = sha([quintic[i][0] for i in keep])
        doc.setdefault("_path_keyed_sha256", {})[name] = sha([by_path[i][0] for i in keep])
    PIN_FILE.write_text(pins_text(doc))


def pins_text(doc: dict) -> str:
    """The pins file's layout: one line per run, per grid's sha256."""
    def entry(key, value) -> str:
        if isinstance(value, dict):
            return f" {json.dumps(key)}: {{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}"
                                                           for k, v in value.items()) + "\n }"
        if isinstance(value, list):
            return f" {json.dumps(key)}: [\n" + ",\n".join(f"  {json.dumps(row)}" for row in value) + "\n ]"
        return f" {json.dumps(key)}: {json.dumps(value)}"

    return "{" + ",\n".join(entry(k, v) for k, v in doc.items())[1:] + "\n}\n"


def test_the_pins_cover_every_probe_grid():
    assert {"tiny", "tiny-tbptt", "tiny-hyperconn", "tiny-additive", "paper", "paper-tbptt", "paper-hyperconn",
            "paper-additive", "smoke"} == set(PINNED)
    for run_id, (grid, probe, serves) in PINNED_RUNS.items():
        assert [run_id, probe, serves] in PINNED[grid]


@pytest.mark.parametrize("name", sorted(PINNED))
def test_shipped_grids_keep_their_run_ids(name):
    got = {run_id: (probe, serves) for run_id, probe, serves in shipped_expansion(name)}
    lost = [run_id for run_id, *_ in PINNED[name] if run_id not in got]
    assert not lost, f"{name}: {len(lost)} of {len(PINNED[name])} pinned runs changed id, e.g. {lost[:3]}"
    for run_id, probe, serves in PINNED[name]:
        assert got[run_id][0] == probe and set(serves) <= set(got[run_id][1]), run_id


@pytest.mark.parametrize("name", sorted(PINNED))
def test_quintic_gives_the_run_ids_from_before_muon_ns(name):
    """Every muonh run trained with quintic Newton–Schulz before train.muon_ns existed: under muon_ns: quintic
    the pinned runs get those ids back (adamw runs: muon_ns is not in their ids at all)."""
    shipped, quintic = shipped_expansion(name), shipped_expansion(name, muon_ns="quintic")
    assert [row[1:] for row in shipped] == [row[1:] for row in quintic]
    before = dict(zip((row[0] for row in shipped), (row[0] for row in quintic)))
    ids = [before[run_id] for run_id, *_ in PINNED[name]]
    assert sha(ids) == PINNED_QUINTIC[name]
    assert (ids == [run_id for run_id, *_ in PINNED[name]]) == (name == "smoke")  # smoke: the one adamw grid


@pytest.mark.parametrize("name", sorted(PINNED))
def test_without_a_data_identity_runs_keep_their_path_keyed_ids(name):
    """Before data identities, a run's id held its data dir's path: a config without data_id (a run folder of
    then) still hashes to that id, its folder's name, so its run can be found and re-keyed; the same runs with
    an identity have other ids (run ids changed once, on purpose)."""
    with data_identity(None):
        by_path = shipped_expansion(name)
    keyed = shipped_expansion(name)
    assert [row[1:] for row in keyed] == [row[1:] for row in by_path]
    old = dict(zip((row[0] for row in keyed), (row[0] for row in by_path)))
    ids = [old[run_id] for run_id, *_ in PINNED[name]]
    assert sha(ids) == PINNED_PATH_KEYED[name]
    assert not set(ids) & set(old)  # every id changed


def test_mixed_probe_grid_keeps_its_run_ids():
    """Each probe setting lands only in its own probe's looped runs, and the r = 1 runs stay one run serving
    every probe (sha256 of [[run_id, probe, probes], ...] from the code before probes became plug-ins, which
    the grid still expands to under muon_ns: quintic without a data identity; as written, with the polar_express
    default, since train.muon_ns entered muonh run ids; both with the pinned identity since it replaced the data
    dir's path in the ids)."""
    got = _expansion(yaml.safe_load(MIXED), "mixed")
    assert len(got) == 45 and sum(probe == "none" and len(serves) == 3 for _, probe, serves in got) == 6
    assert sha(got) == "2a32da0694c8347c984ca5dbb6e22ac82b266e4d3a549011ae24225cf8d12216"
    raw = yaml.safe_load(MIXED)
    raw["train"]["muon_ns"] = "quintic"
    assert sha(_expansion(raw, "mixed")) == "cdd7da4819d99eca6316c3231cf7241c8b97e01fff4bd0615076f632e5cd1f39"
    with data_identity(None):  # without an identity: the ids from before identities (data dir in the id)
        assert sha(_expansion(yaml.safe_load(MIXED), "mixed")) == \
            "fe2ee9ed780952969f5ee332ccee6e7910a2e189a81f9fd609b104b4159776b8"
        assert sha(_expansion(raw, "mixed")) == "6c259d12aa1072454571e890326a710ce51d7ccccc458a65d7e850f99cbd812f"


def test_every_run_keeps_the_model_keys_of_its_id():
    """The model part of a run's identity: the same keys for every run, whatever its probe."""
    keys = {"d_model", "r", "n_layers_eff", "n_prelude", "n_coda", "head_dim", "injection", "probe", "tbptt_k",
            "hc_lanes"}
    raw = yaml.safe_load(MIXED)
    raw["probes"] = probes.names()
    runs = grid_from_dict(raw, "mixed", cwd=PIN_DIR).runs
    assert {s.probe for s in runs} == set(probes.names())
    for s in runs:
        assert set(s.config.semantic_dict()["model"]) == keys, s.probe


# --- the registry and the plug-in mechanism ---------------------------------------------------------

def test_registry_lists_the_probes_baseline_first():
    assert probes.names() == ("none", "tbptt", "hyperconn", "additive")
    assert probes.lookup("tbptt") is probes.PROBES["tbptt"] and probes.lookup("none") is probes.BASELINE
    with pytest.raises(probes.UnknownProbe, match="unknown probe 'nope'; choose one of none, tbptt, hyperconn"):
        probes.lookup("nope")
    for p in probes.REGISTERED:
        assert p.name and p.description and "\n" not in p.description


class GatedSum(probes.Injection):
    """u = h + g_t·e with h⁰ = 0 and one gain per recurrence, g_t = gain at init."""

    def __init__(self, r: int, gain: float):
        self.r, self.gain = r, gain

    def weights(self):
        return {"gate": (self.r,)}

    def init(self, w):
        w.gate.fill_(self.gain)

    def init_state(self, w, e):
        return e.new_zeros(e.shape)

    def mix(self, w, t, e, h):
        return h + w.gate[t].to(e.dtype) * e


class Gated(probes.Probe):
    """A probe with a setting of its own (not an Arch field): what a researcher's plug-in looks like."""

    name = "gated"
    description = "additive injection with a learned gain per recurrence"
    settings = (probes.Setting("gate_gain", 1.0, "the gains at init", kind=float, minimum=0.0),)

    def validate(self, arch):
        if self.value(arch, "gate_gain") > 10:
            raise ValueError(f"gate_gain must be at most 10, got {self.value(arch, 'gate_gain')}")

    def injection(self, arch):
        return GatedSum(arch.r, self.value(arch, "gate_gain"))


@pytest.fixture
def gated(monkeypatch):
    probe = Gated()
    monkeypatch.setitem(probes.PROBES, probe.name, probe)
    monkeypatch.setattr(probes, "REGISTERED", probes.REGISTERED + (probe,))
    return probe


def mixed_with(**changes):
    raw = yaml.safe_load(MIXED)
    raw.update(probes=["none"], r=[1, 4])
    model = changes.pop("model", {})
    raw["model"].update(model)
    raw.update(changes)
    return grid_from_dict(raw, "tiny", cwd=PIN_DIR)


def test_a_plugin_probe_with_its_own_setting_leaves_every_other_id_alone(gated):
    base = {s.run_id for s in mixed_with().runs}
    grid = mixed_with(probes=["none", "gated"], model={"gate_gain": 0.5})
    mine = [s for s in grid.runs if s.probe == "gated"]
    assert mine and all(s.r > 1 for s in mine)
    assert {s.run_id for s in grid.runs if s.probe == "none"} == base  # its setting reaches only its runs
    for s in grid.runs:
        model = s.config.semantic_dict()["model"]
        assert ("probe_settings" in model) == (s.probe == "gated")
    cfg = mine[0].config
    assert cfg.model.probe_settings == {"gate_gain": 0.5}
    assert gated.value(cfg.model, "gate_gain") == 0.5
    again = run_config_from_dict(cfg.to_dict())  # a run's config.yaml reads back to the same run
    assert again == cfg and again.run_id() == cfg.run_id()
    # A setting at its default is the run without it; another value, another run.
    default = {s.run_id for s in mixed_with(probes=["gated"], model={"gate_gain": 1.0}).runs}
    unset = {s.run_id for s in mixed_with(probes=["gated"]).runs}
    assert default == unset and not default & {s.run_id for s in mine}


def test_a_plugin_probe_counts_and_builds_its_injection(gated):
    import torch

    from loopscale.training.model import LoopedLM

    arch = Arch(d_model=16, r=4, n_layers_eff=6, n_prelude=1, n_coda=1, head_dim=8, probe="gated",
                probe_settings={"gate_gain": 0.5})
    plain = baseline_arch(arch)
    assert plain.probe == "none" and plain.probe_settings is None
    assert n_rec(arch) == n_rec(plain) - 2 * 16 * 16 + 4  # the linear W replaced by 4 gains
    assert split_arch(arch) == (split_arch(plain)[0], "gated", {"gate_gain": 0.5})
    assert probe_arch(split_arch(arch)[0], "gated", {"gate_gain": 0.5}) == arch
    m = LoopedLM(arch, 40, 8)
    assert m.n_non_embedding_params() == sum(p.numel() for n, p in m.named_parameters()
                                             if not n.startswith(("embed.", "lm_head.")))
    assert m.n_non_embedding_params() - sum(p.numel() for p in m.injection.parameters()) + 2 * 16 * 16 == \
        LoopedLM(plain, 40, 8).n_non_embedding_params()
    assert torch.equal(m.injection.gate, torch.full((4,), 0.5))
    assert [p for p in m.param_groups()["lane"]] == [m.injection.gate]
    e, h = torch.randn(2, 3, 16), torch.randn(2, 3, 16)
    assert torch.equal(m.injection.init_state(e), torch.zeros_like(e))
    torch.testing.assert_close(m.injection.mix(1, e, h), h + 0.5 * e)


@pytest.mark.parametrize("kwargs, words", [
    (dict(probe="gated", probe_settings={"gate_gain": -1.0}), "gate_gain: expected a number ≥ 0, got -1.0"),
    (dict(probe="gated", probe_settings={"gate_gain": 11.0}), "gate_gain must be at most 10"),
    (dict(probe="gated", probe_settings={"lanes": 3}), "'lanes' is not a setting of probe gated"),
    (dict(probe="gated", probe_settings={"hc_lanes": 3}), "'hc_lanes' is not a setting of probe gated"),
    (dict(probe="none", probe_settings={"gate_gain": 2.0}), "gate_gain is set but probe is 'none'"),
    (dict(probe="tbptt", hc_lanes=3), "hc_lanes is set but probe is 'tbptt'; it only applies to probe hyperconn"),
    (dict(probe="none", tbptt_k=1), "tbptt_k is set but probe is 'none'; it only applies to probe tbptt"),
    (dict(probe="tbptt", tbptt_k=5), r"tbptt_k must be in \[1, r=4\], got 5"),
    (dict(probe="hyperconn", hc_lanes=0), "hc_lanes: expected an integer ≥ 2, got 0"),
    (dict(probe="hyperconn", hc_lanes=1), "hc_lanes: expected an integer ≥ 2, got 1"),  # the authors: K ≥ 2
])
def test_probe_settings_are_checked(gated, kwargs, words):
    with pytest.raises(ArchError, match=words):
        Arch(d_model=16, r=4, n_layers_eff=6, n_prelude=1, n_coda=1, head_dim=8, **kwargs)


@pytest.mark.parametrize("model, words", [
    ({"gate_gain": "high"}, "model.gate_gain: expected a number ≥ 0, got 'high'"),
    ({"hc_lanes": 2.5}, "model.hc_lanes: expected an integer ≥ 2, got 2.5"),
    ({"hc_lanes": 1}, "model.hc_lanes: expected an integer ≥ 2, got 1"),
    ({"tbptt_k": 0}, "model.tbptt_k: expected a positive integer, got 0"),
    ({"probe_settings": {"gate_gain": 2.0}}, "model: unknown key 'probe_settings'"),
])
def test_grid_checks_probe_settings_in_its_model_section(gated, model, words):
    with pytest.raises(GridError, match=words):
        mixed_with(probes=["gated"], model=model)


# --- the additive probe: the authors' injection ablation -------------------------------------------

@pytest.mark.parametrize("d, r", [(640, 2), (640, 4), (768, 8), (1280, 4)])
def test_additive_probe_has_no_injection_weights(d, r):
    from loopscale.counting import flops_per_token, injection_flops_params, injection_params, n_once

    probe = Arch(d_model=d, r=r, probe="additive")
    linear, additive = Arch(d_model=d, r=r), Arch(d_model=d, r=r, injection="additive")
    assert injection_params(probe) == injection_flops_params(probe) == 0 and probe.k_grad == r
    assert n_rec(probe) == n_rec(linear) - 2 * d * d == n_rec(additive) and n_once(probe) == n_once(linear)
    T, V = 2048, 32064
    assert flops_per_token(probe, T, V) == flops_per_token(additive, T, V) == \
        flops_per_token(linear, T, V) - 6 * r * 2 * d * d
    assert probe_arch({"d_model": d, "r": 1}, "additive", {}) == Arch(d_model=d, r=1)  # r = 1: the baseline's run


def test_additive_probe_forward_is_h_plus_e_from_zero():
    """u = h + e with h⁰ = 0: the model is the `injection: additive` one, weight for weight, and not the linear."""
    import torch

    from loopscale.training.model import LoopedLM

    shape = dict(d_model=32, r=4, n_layers_eff=6, n_prelude=1, n_coda=1, head_dim=16)
    torch.manual_seed(0)
    m = LoopedLM(Arch(**shape, probe="additive"), 40, 8)
    assert not list(m.injection.parameters()) and not m.param_groups()["lane"]
    e, h = torch.randn(2, 3, 32), torch.randn(2, 3, 32)
    assert torch.equal(m.injection.init_state(e), torch.zeros_like(e))
    assert torch.equal(m.injection.mix(2, e, h), h + e)
    assert torch.equal(m.injection.update(2, h, e), e) and torch.equal(m.injection.readout(h), h)
    with torch.no_grad():
        m.lm_head.weight.normal_()
    twin = LoopedLM(Arch(**shape, injection="additive"), 40, 8)
    twin.load_state_dict(m.state_dict())  # the same weights, no injection weight in either
    idx, tgt = torch.randint(0, 40, (2, 8)), torch.randint(0, 40, (2, 8))
    m.loss(idx, tgt).backward()
    twin.loss(idx, tgt).backward()
    torch.testing.assert_close(m(idx), twin(idx), rtol=0, atol=0)
    for (name, p), q in zip(m.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0, msg=name)
    linear = LoopedLM(Arch(**shape), 40, 8)
    linear.load_state_dict({**m.state_dict(), **{k: v for k, v in linear.state_dict().items() if "injection" in k}})
    assert not torch.allclose(linear(idx), m(idx))


def test_tiny_additive_dry_run_shares_tinys_r1_runs(tmp_path, capsys, monkeypatch):
    from sweep_fixtures import cli_in_process

    monkeypatch.chdir(tmp_path)
    runs = {}
    for name in ("tiny", "tiny-additive"):
        code, out, err = cli_in_process(["sweep", find_grid(name), "--dry-run", "--json"], capsys)
        assert code == 0, err
        runs[name] = json.loads(out)
    tiny = {r["run_id"]: r for r in runs["tiny"]}
    r1 = [r for r in runs["tiny-additive"] if r["r"] == 1]
    looped = [r for r in runs["tiny-additive"] if r["r"] > 1]
    assert len(r1) == len(looped) == 6 and all(r["run_id"] in tiny and r["probe"] == "none" for r in r1)
    assert {r["probe"] for r in looped} == {"additive"} and not any(r["run_id"] in tiny for r in looped)
    plain = {(r["budget_flops"], r["d_model"]): r for r in tiny.values() if r["r"] == 4 and r["seed"] == 0}
    for r in looped:  # the same design as tiny's r = 4 runs, without the 2d² injection weights
        twin = plain[(r["budget_flops"], r["d_model"])]
        assert twin["n_rec"] - r["n_rec"] == 2 * r["d_model"] ** 2 and r["tokens"] > twin["tokens"]
