"""Probes (method.md §6): the run ids of the shipped grids are pinned, so moving a probe onto another
mechanism can never change a run's identity (a changed id retrains a finished run).

Each pin is the sha256 of the grid's expansion as JSON, [[run_id, probe, probes], ...] in expansion order,
computed from the code before probes became plug-ins. Data dirs resolve against a fixed folder (run ids hold
the absolute data dir), and smoke, which reads its vocabulary from its data, gets vocab_size 4096.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from loopscale.grid import find_grid, grid_from_dict

PIN_DIR = Path("/loopscale-pin")  # never read: relative data dirs resolve against it

PINNED = {  # grid: (runs, sha256 of the expansion)
    "tiny": (27, "f55dd5148c2808ffbaf3cd2f5ef7c3cfa23c5ae8c2d165f273e1018e9b0ad507"),
    "tiny-tbptt": (12, "9e47165e9d3345bc9d50a4254e1b2c81d9ddf0737919a7a5707a088b6a8d60a7"),
    "tiny-hyperconn": (12, "615c42efb9e3ed97cebfc89bf73cae5f9b365c8cba3ef33678386dde38cd1730"),
    "paper": (116, "2db90673b9f3cb237db70fc469a213d9791bdd2c56fc7dcfcf2fefeb438b87b6"),
    "paper-tbptt": (80, "34983f1a1b95ed7c51480d26285503c4d31f9159eb9c1d6e5dbf07be9c3e49b3"),
    "paper-hyperconn": (80, "36c7f29c649923b18c5daec770113cf864a9b67c42c1fafcbda5425c23121b8e"),
    "smoke": (4, "a6c1319d65e1b65885ce158086403992a33619a8d427ce4d966181244913ef4b"),
}
# A few ids spelled out: (grid, position in the expansion) -> (run_id, probe, probes)
PINNED_RUNS = {
    ("tiny", 0): ("8cd1532a50de", "none", ["none"]),
    ("tiny-tbptt", 0): ("8cd1532a50de", "none", ["tbptt"]),  # tiny's own r = 1 run
    ("tiny-tbptt", 3): ("1c10072a958f", "tbptt", ["tbptt"]),
    ("tiny-hyperconn", 3): ("ea978c9b68cb", "hyperconn", ["hyperconn"]),
    ("paper", 0): ("bf41c6cd3134", "none", ["none"]),
    ("paper-tbptt", 4): ("b3c627dfc320", "tbptt", ["tbptt"]),
    ("paper-hyperconn", 4): ("d70f9cc8fdb9", "hyperconn", ["hyperconn"]),
    ("smoke", 0): ("a6988dd6a71d", "none", ["none"]),
}


def _expansion(raw: dict, where: str, path: Path | None = None) -> list:
    grid = grid_from_dict(raw, where, path=path, cwd=PIN_DIR)
    return [[s.run_id, s.probe, list(s.probes)] for s in grid.runs]


def shipped_expansion(name: str) -> list:
    path = find_grid(name)
    raw = yaml.safe_load(path.read_text())
    raw.setdefault("vocab_size", 4096)
    return _expansion(raw, name, path)


def _sha(expansion: list) -> str:
    return hashlib.sha256(json.dumps(expansion).encode()).hexdigest()


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch):
    monkeypatch.delenv("LOOPSCALE_DATA", raising=False)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_shipped_grids_keep_their_run_ids(name):
    runs, sha = PINNED[name]
    got = shipped_expansion(name)
    assert len(got) == runs
    for (grid, i), run in PINNED_RUNS.items():
        if grid == name:
            assert tuple(got[i]) == run, f"{name}[{i}]"
    assert _sha(got) == sha


def test_mixed_probe_grid_keeps_its_run_ids():
    """Every probe in one grid, with both probe settings set away from their defaults: each setting lands only
    in its own probe's looped runs, and the r = 1 runs stay one run serving every probe."""
    raw = yaml.safe_load(find_grid("tiny").read_text())
    raw["model"].update(tbptt_k=1, hc_lanes=3)
    raw.update(r=[1, 2, 4], probes=["none", "tbptt", "hyperconn"])
    got = _expansion(raw, "mixed")
    assert len(got) == 91
    assert _sha(got) == "d77365dffdf2783b3226b3d8643eb3f6b5862517d9a9504a6bd6169bfba56999"


def test_every_run_keeps_the_model_keys_of_its_id():
    """The model part of a run's identity: the same keys for every run, whatever its probe."""
    keys = {"d_model", "r", "n_layers_eff", "n_prelude", "n_coda", "head_dim", "injection", "probe", "tbptt_k",
            "hc_lanes"}
    path = find_grid("tiny")
    raw = yaml.safe_load(path.read_text())
    raw.update(probes=["none", "tbptt", "hyperconn"])
    for s in grid_from_dict(raw, "tiny", path=path, cwd=PIN_DIR).runs:
        assert set(s.config.semantic_dict()["model"]) == keys, s.probe
