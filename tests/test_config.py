"""Strict run configs: unknown keys and wrong types are errors; run ids hash only semantic fields."""

import json

import pytest

from loopscale.atomic import write_json_atomic
from loopscale.config import ConfigError, check_budget, run_config_from_dict
from loopscale.training.optim import lr_factor

BASE = {
    "model": {"d_model": 64, "r": 2, "n_layers_eff": 6, "n_prelude": 1, "n_coda": 1, "head_dim": 32},
    "train": {"tokens": 65536, "seq_len": 64, "batch_tokens": 2048},
    "vocab_size": 512,
}


def cfg(**over):
    raw = json.loads(json.dumps(BASE))
    for path, v in over.items():
        sec, key = path.split("__")
        raw.setdefault(sec, {})[key] = v
    return run_config_from_dict(raw)


def test_derived_quantities():
    c = cfg()
    assert c.iterations() == 32 and c.tokens() == 65536
    f = cfg(train__tokens=None, train__budget_flops=c.flops_per_token() * 2048 * 10.4)
    assert f.iterations() == 10 and f.tokens() == 20480


def test_run_id_ignores_execution_settings():
    a = cfg()
    assert a.run_id() == cfg(train__log_every=3, train__threads=1, train__compile=True).run_id()
    assert a.run_id() == cfg(train__micro_batch_rows=8).run_id()
    assert a.run_id() != cfg(train__seed=1).run_id()
    assert a.run_id() != cfg(model__r=3, model__n_layers_eff=8).run_id()
    assert len(a.run_id()) == 12


def test_run_id_holds_the_datas_identity_not_its_path():
    """data.data_id (the content) is in the id, data.dir (where a job finds it) is not; config.yaml keeps both.
    A config without an identity (written before identities) keeps its old, path-keyed id."""
    a = cfg(data__dir="/scratch/me/data", data__data_id="ab" * 32)
    moved = cfg(data__dir="/project/data", data__data_id="ab" * 32)
    assert a.run_id() == moved.run_id() != cfg(data__dir="/scratch/me/data", data__data_id="cd" * 32).run_id()
    assert a.semantic_dict()["data"] == {"data_id": "ab" * 32, "eval_tokens": 65536}
    assert a.to_dict()["data"] == {"dir": "/scratch/me/data", "eval_tokens": 65536, "loader": "windows",
                                   "data_id": "ab" * 32}
    assert run_config_from_dict(a.to_dict()) == a
    old = cfg(data__dir="/scratch/me/data")
    assert "data_id" not in old.to_dict()["data"] and old.semantic_dict()["data"]["dir"] == "/scratch/me/data"
    assert a.path_keyed_id() == old.run_id() == old.path_keyed_id() != cfg(data__dir="/project/data").run_id()
    with pytest.raises(ConfigError, match="data.data_id: expected the data dir's identity"):
        cfg(data__data_id="")


def test_muon_ns_is_in_the_run_id_of_muonh_runs_only():
    """Polar Express (the default) enters muonh run ids; quintic, what every muonh run used before train.muon_ns
    existed, keeps the ids from before; adamw ids never hold it. Pinned: the ids of cfg() from before the key."""
    adamw, muonh = cfg(), cfg(train__optimizer="muonh")
    assert muonh.train.muon_ns == "polar_express" and "muon_ns" in muonh.semantic_dict()["train"]
    assert muonh.run_id() == cfg(train__optimizer="muonh", train__muon_ns="polar_express").run_id() == "cc86c6fd39e2"
    assert cfg(train__optimizer="muonh", train__muon_ns="quintic").run_id() == "4721495020e1"  # as before
    assert "muon_ns" not in adamw.semantic_dict()["train"]
    assert adamw.run_id() == cfg(train__muon_ns="quintic").run_id() == "601a42a44ef3"  # as before
    assert "muon_ns" not in adamw.to_dict()["train"]  # nor its config.yaml and results columns
    assert muonh.to_dict()["train"]["muon_ns"] == "polar_express"
    assert cfg(train__optimizer="muonh", train__muon_ns="quintic").to_dict()["train"]["muon_ns"] == "quintic"


@pytest.mark.parametrize(
    "over, words",
    [
        (dict(train__tokns=5), "unknown key 'tokns'"),
        (dict(model__width=5), "unknown key 'width'"),
        (dict(model__r="four"), "model.r: expected a number"),
        (dict(model__r=2.5), "model.r: expected an integer"),
        (dict(model__r=0), "r must be a positive integer"),
        (dict(model__r=3), "does not divide the loop depth 4"),
        (dict(model__d_model=70), "not divisible by head_dim"),
        (dict(train__budget_flops=1e12), "exactly one of tokens or budget_flops"),
        (dict(train__tokens=-5), "must be positive"),
        (dict(train__batch_tokens=100), "multiple of seq_len"),
        (dict(train__optimizer="sgd"), "unknown 'sgd'"),
        (dict(train__compile="yes"), "expected true/false"),
        (dict(train__micro_batch_rows=5), "must divide"),
        (dict(train__final_lr_frac=2.0), r"in \[0, 1\]"),
        (dict(train__optimizer="muonh", train__weight_decay=0.1), "weight_decay: 0.1 does not apply under optimizer muonh"),
        (dict(train__optimizer="muonh", train__muon_ns="cubic"),
         "train.muon_ns: unknown 'cubic'; choose polar_express or quintic"),
        (dict(train__muon_ns=5), "train.muon_ns: expected a string, got 5"),
    ],
)
def test_bad_values_name_the_key(over, words):
    with pytest.raises(ConfigError, match=words):
        cfg(**over)


def test_unknown_section():
    with pytest.raises(ConfigError, match="unknown key 'optim'"):
        run_config_from_dict({**BASE, "optim": {}})


def test_budget_too_small_for_one_step():
    c = cfg(train__tokens=1000)
    with pytest.raises(ConfigError, match="buys no optimizer step"):
        check_budget(c)


def test_yaml_style_float_strings_accepted():
    c = cfg(train__tokens=None, train__budget_flops="1e12")
    assert c.train.budget_flops == 1e12


def test_lr_schedule_linear_decay_to_final_fraction():
    assert lr_factor(0, 100, 0, 0.1) == 1.0
    assert lr_factor(99, 100, 0, 0.1) == pytest.approx(0.1)
    assert lr_factor(49, 99, 0, 0.1) == pytest.approx(0.55)
    assert lr_factor(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.1) == 1.0


def test_atomic_json_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / "result.json"
    write_json_atomic(p, {"val_loss": 3.0})
    with pytest.raises(ValueError):
        write_json_atomic(p, {"val_loss": float("nan")})  # not valid JSON: refused
    assert json.loads(p.read_text()) == {"val_loss": 3.0}
    assert [f.name for f in tmp_path.iterdir()] == ["result.json"]
    write_json_atomic(p, {"val_loss": 0.1 + 0.2})
    assert json.loads(p.read_text())["val_loss"] == 0.1 + 0.2  # full precision
