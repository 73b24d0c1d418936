"""`loopscale plan --adaptive`: the candidate space, the rule, one round's choice, each stop reason, the
simulation's JSON fields and bad input. A small iso-FLOP grid keeps each test to seconds."""

import json

import numpy as np
import pytest

from loopscale.analysis.adaptive import build_space, check_rule, choose, midpoints, rule_deficits, stop_reason
from loopscale.analysis.adaptive.policy import predictions
from loopscale.analysis.adaptive.rule import MIN_HALF_BUDGETS, halves
from loopscale.analysis.law import PAPER_LAW, theta_of
from loopscale.errors import UserError
from loopscale.grid import GridError, find_grid, load_grid
from sweep_fixtures import cli_in_process

SMALL = """\
name: small
model: {n_layers_eff: 10, n_prelude: 1, n_coda: 1, head_dim: 32}
train: {seq_len: 128, batch_tokens: 2048}
vocab_size: 4096
r: [1, 2, 4, 8]
flops:
  1.0e14: [64, 96, 128]
  3.0e14: [96, 128, 160]
  1.0e15: [128, 160, 192]
"""


def grid_of(tmp_path, extra: str = "", name: str = "small.yaml"):
    path = tmp_path / name
    path.write_text(SMALL + extra)
    return load_grid(path)


def truth_losses(space):
    return np.asarray(PAPER_LAW.predict(space.table["n_once"], space.table["n_rec"], space.table["r"],
                                        space.table["tokens"]), dtype=float)


def test_space_pilot_is_the_two_smallest_budgets_and_candidates_add_midpoints(tmp_path):
    space = build_space(grid_of(tmp_path))
    t = space.table
    assert sorted(set(t.loc[space.pilot, "budget_flops"])) == [1e14, 3e14]
    assert space.pilot.sum() == 2 * 3 * 4  # 3 widths × 4 r at each pilot budget
    assert np.allclose(space.budgets, midpoints([1e14, 3e14, 1e15]))
    assert np.isclose(space.budgets[1], np.sqrt(3e28))
    assert set(t["width"]) <= {64, 96, 128, 160, 192} and set(t["r"]) == {1, 2, 4, 8}
    assert not t.duplicated(["budget_flops", "width", "r"]).any()  # one candidate per cell and width
    tpp = t["tokens"] / (t["n_once"] + t["n_rec"])
    fixed = space.fixed["tokens"] / (space.fixed["n_once"] + space.fixed["n_rec"])
    assert tpp.min() >= fixed.min() * (1 - 1e-9) and tpp.max() <= fixed.max() * (1 + 1e-9)
    assert space.pilot_flops < space.fixed_flops


def test_adaptive_section_sets_pilot_and_space_and_is_strict(tmp_path):
    g = grid_of(tmp_path, "adaptive:\n  pilot: [1.0e14]\n  midpoints: false\n  r: [1, 4]\n")
    space = build_space(g)
    assert space.source == "adaptive section"
    assert sorted(set(space.table.loc[space.pilot, "budget_flops"])) == [1e14]
    assert list(space.budgets) == [1e14, 3e14, 1e15] and set(space.table.loc[~space.pilot, "r"]) == {1, 4}
    with pytest.raises(GridError, match="adaptive.budget: unknown key"):
        grid_of(tmp_path, "adaptive:\n  budget: [1.0e14]\n", "bad.yaml")
    with pytest.raises(GridError, match="adaptive.pilot"):
        grid_of(tmp_path, "adaptive:\n  pilot: [2.0e14]\n", "bad2.yaml")


def paper_space():
    """paper.yaml's space: its cells bracket their optimum under the paper's law (the small grid's do not)."""
    return build_space(load_grid(find_grid("paper")))


def test_rule_holds_on_a_full_design_and_fails_without_an_end_cell():
    space = paper_space()
    loss = truth_losses(space)
    everything = np.ones(len(space.table), dtype=bool)
    assert check_rule(space, everything, loss).held
    top = space.end_budgets[1]
    dropped = everything & ~((space.table["budget_flops"] == top) & (space.table["r"] == 4)).to_numpy()
    rule = check_rule(space, dropped, loss)
    assert not rule.held and any("r = 4" in m for m in rule.missing)
    pilot_only = check_rule(space, space.pilot, loss)
    assert not pilot_only.held and any("budgets per half" in m for m in pilot_only.missing)
    assert [len(h) for h in halves([1, 2, 3])] == [1, 2]  # as fit splits: the odd middle goes up
    assert MIN_HALF_BUDGETS == 2


def test_a_round_fills_the_rule_first_then_scores_within_the_budget():
    space = paper_space()
    data = space.data()
    theta = theta_of(PAPER_LAW)
    needs = rule_deficits(space, space.pilot, predictions(space, data, theta), trust_fit=True)
    assert needs and all(space.table["budget_flops"][row] == space.end_budgets[1] for row, _ in needs)
    ch = choose(space, data, space.pilot, theta, 0.01, 0.3, 4, 1e30)
    assert [p.row for p in ch.picks] == [row for row, _ in needs[:4]]
    assert all(p.why.startswith("rule:") for p in ch.picks)
    # after the rule's runs, picks are scored; each scored pick predicts a narrower CI than the one before
    mask = space.pilot.copy()
    mask[[row for row, _ in needs]] = True
    ch = choose(space, data, mask, theta, 0.01, 0.3, 6, 1e30)
    assert ch.picks and not set(ch.rows) & set(np.flatnonzero(mask))
    widths = [p.width_after for p in ch.picks if p.why == "score"]
    assert widths and all(b <= a + 1e-12 for a, b in zip(widths, widths[1:])) and widths[0] < 0.3
    assert len(set(ch.rows)) == len(ch.rows)


def test_each_stop_reason():
    space = paper_space()
    data = space.data()
    theta = theta_of(PAPER_LAW)
    # target: narrow enough, trustworthy and the rule held; not when any of them fails
    assert stop_reason(0.05, 0.1, True, True) == "target"
    assert stop_reason(0.05, 0.1, False, True) is None and stop_reason(0.05, 0.1, True, False) is None
    assert stop_reason(0.2, 0.1, True, True) is None and stop_reason(float("nan"), 0.1, True, True) is None
    assert stop_reason(0.34, 5.0, True, True) == "target" and stop_reason(0.36, 5.0, True, True) is None
    # budget: nothing fits in what is left
    ch = choose(space, data, space.pilot, theta, 0.01, 0.3, 4, 1.0)
    assert not ch.picks and ch.blocked_by_budget
    # no help: every candidate trained already
    ch = choose(space, data, np.ones(len(space.table), dtype=bool), theta, 0.01, 0.3, 4, 1e30)
    assert not ch.picks and not ch.blocked_by_budget


FIELDS = {"adaptive": {"flops_median", "flops_p80", "reached_share", "coverage", "pilot_flops", "rounds_median",
                       "rule_held_share"},
          "fixed": {"flops", "phi_ci_width"}, "random": {"flops_median", "reached_share"}}


@pytest.mark.slow
def test_cli_json_fields(tmp_path, capsys):  # ~40 s on 2 cores: 10 replicates of two policies
    grid_of(tmp_path)
    code, out, err = cli_in_process(["plan", tmp_path / "small.yaml", "--adaptive", "--until-ci", 0.3, "--replicates",
                                     10, "--batch", 4, "--workers", 1, "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    for key, fields in FIELDS.items():
        assert set(doc[key]) == fields, key
    a = doc["adaptive"]
    assert 0 <= a["reached_share"] <= 1 and 0 <= a["coverage"] <= 1 and 0 <= a["rule_held_share"] <= 1
    assert a["pilot_flops"] < doc["fixed"]["flops"] and a["flops_median"] <= doc["cap_flops"]
    assert doc["target_width"] == 0.3 and sum(doc["stop_reasons"]["score"].values()) == 10


@pytest.mark.parametrize("case", ["w-zero", "w-negative", "w-word", "tokens-grid", "unknown-key", "no-w"])
def test_cli_bad_input_one_line_exit_2(tmp_path, capsys, case):
    grid_of(tmp_path)
    argv = ["plan", tmp_path / "small.yaml", "--adaptive", "--until-ci", 0.3, "--replicates", 10, "--json"]
    if case == "w-zero":
        argv[4] = 0
    elif case == "w-negative":
        argv[4] = -0.1
    elif case == "w-word":
        argv[4] = "narrow"
    elif case == "no-w":
        argv = argv[:3] + argv[5:]
    elif case == "tokens-grid":
        argv[1] = tmp_path / "tokens.yaml"
        argv[1].write_text(SMALL.split("flops:")[0] + "widths: [64, 96, 128]\ntokens: [1e6, 2e6]\n")
    elif case == "unknown-key":
        argv[1] = tmp_path / "unknown.yaml"
        argv[1].write_text(SMALL + "adaptive:\n  pilots: [1.0e14]\n")
    code, out, err = cli_in_process(argv, capsys)
    assert code == 2, (out, err)
    assert out == "" and len(err.strip().splitlines()) == 1, err


def test_a_token_grid_is_refused_by_the_space(tmp_path):
    path = tmp_path / "tokens.yaml"
    path.write_text(SMALL.split("flops:")[0] + "widths: [64, 96, 128]\ntokens: [1e6, 2e6]\n")
    with pytest.raises(UserError, match="FLOP budgets"):
        build_space(load_grid(path))
