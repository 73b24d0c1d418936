"""The law and what `loopscale equiv` computes from it (method.md §1, §7), checked against the
paper's worked example and the project page's compute-optimal minima."""

import json
from pathlib import Path

import pytest

from loopscale.analysis.equiv import (
    compute_optimal,
    equivalent,
    loss_at_budget,
    parse_amount,
    size_at_width,
    width_for_params,
)
from loopscale.analysis.law import PAPER_LAW, Law, load_law
from loopscale.counting import Arch, flops_per_token, n_once, n_rec
from loopscale.errors import UserError
from loopscale.runs_table import PAPER_GRID

PROJECT_PAGE = Path(__file__).resolve().parent / "data" / "project_page_fit_data.json"  # tests/data/README.md
R_KEYS = {1: "noloop", 2: "loop2", 4: "loop", 8: "loop8"}


def test_law_formula_and_worth():
    law = Law(E=1.5, A=30.0, alpha=0.2, B=900.0, beta=0.35, phi=0.5)
    got = law.predict(1e7, 5e7, 4, 2e9)
    want = 1.5 + 30.0 * (1e7 + 4**0.5 * 5e7) ** -0.2 + 900.0 * 2e9**-0.35
    assert got == pytest.approx(want, rel=1e-15)
    assert law.n_eff(1e7, 5e7, 4) == pytest.approx(1e7 + 2 * 5e7)
    assert law.recurrence_worth(1) == 1.0
    assert law.recurrence_worth(4) == pytest.approx(0.5)
    assert Law(1, 1, 0.1, 1, 0.1, phi=0.0).recurrence_worth(8) == pytest.approx(1 / 8)
    assert Law(1, 1, 0.1, 1, 0.1, phi=1.0).recurrence_worth(8) == pytest.approx(1.0)


def test_paper_law_full_precision_matches_project_page():
    assert PAPER_LAW == Law(E=1.56773, A=28.027, alpha=0.19924, B=915.82, beta=0.36863, phi=0.459)
    fit = json.loads(PROJECT_PAGE.read_text())["FIT"]
    assert PAPER_LAW.to_dict() == {**{k: fit[k] for k in ("E", "A", "alpha", "B", "beta")}, "phi": fit["phi_fit"]}


def test_load_law(tmp_path):
    assert load_law("paper") is PAPER_LAW
    doc = {"params": {"E": 1.25, "A": 20.000000000000004, "alpha": 0.3, "B": 800.0, "beta": 0.31, "phi": 0.6}}
    (tmp_path / "fit.json").write_text(json.dumps(doc))
    law = load_law(tmp_path)  # a folder holding fit.json
    assert law.A == 20.000000000000004 and law.phi == 0.6
    doc["params"]["phi"] = None  # a Chinchilla-form fit: no looping term
    (tmp_path / "fit.json").write_text(json.dumps(doc))
    assert load_law(tmp_path / "fit.json").phi == 0.0
    with pytest.raises(UserError, match="no phi"):
        load_law(tmp_path / "fit.json", need_phi=True)
    with pytest.raises(UserError, match="no such fit file"):
        load_law(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read"):
        load_law(tmp_path / "bad.json")
    (tmp_path / "nop.json").write_text(json.dumps({"params": {"E": 1.0}}))
    with pytest.raises(UserError, match="missing coefficients"):
        load_law(tmp_path / "nop.json")


@pytest.mark.parametrize("r", [1, 2, 4, 8])
def test_sizes_at_any_width_are_counting_exactly(r):
    for s in (6, 10, 20, 34):
        a = Arch(d_model=64 * s, r=r)
        m = size_at_width(64 * s, r)
        assert m.n_once == pytest.approx(n_once(a), rel=1e-12)
        assert m.n_rec == pytest.approx(n_rec(a), rel=1e-12)
        assert m.flops_per_token == pytest.approx(flops_per_token(a, 2048, 32064), rel=1e-12)
        assert width_for_params(n_once(a) + n_rec(a), r) == pytest.approx(64 * s, rel=1e-10)
    # Between valid widths the counts are smooth and increasing.
    assert size_at_width(700.0, r).n_params > size_at_width(640, r).n_params


def test_worked_example_r4_410m():
    """method.md §1: at r = 4 a 410M looped model ≈ 580–600M non-looped, costing what ≈1B costs."""
    eq = equivalent(PAPER_LAW, 4, n_params=410e6, tokens=20e9)
    assert eq.looped.n_params == pytest.approx(410e6, rel=1e-9)
    assert 580e6 <= eq.n_eff <= 600e6
    assert eq.equivalent.n_params == pytest.approx(eq.n_eff, rel=1e-9)
    assert 0.95e9 <= eq.flop_matched.n_params <= 1.05e9
    assert eq.flop_matched.width == eq.looped.width
    assert 1.0 < eq.looped.flops_per_token / eq.flop_matched.flops_per_token < 1.05  # only the injection
    assert eq.worth == pytest.approx(4**0.459 / 4)
    # Same-width non-looped at the same compute has more unique parameters, so a lower loss.
    assert eq.loss_flop_matched < eq.loss
    assert eq.loss == pytest.approx(PAPER_LAW.predict(eq.looped.n_once, eq.looped.n_rec, 4, 20e9))


def test_equivalent_rejects_ambiguous_input():
    with pytest.raises(UserError):
        equivalent(PAPER_LAW, 4)
    with pytest.raises(UserError):
        equivalent(PAPER_LAW, 4, width=1024, n_params=1e8)
    with pytest.raises(UserError):
        equivalent(PAPER_LAW, 4, width=1024, tokens=1e9, budget_flops=1e19)


def test_compute_optimal_matches_project_page_minima():
    """The law's compute-optimal losses sit near the paper's empirical per-cell minima, and the loss
    gaps to r = 1 near the empirical gaps (paper: r=2 0.03–0.06, r=4 0.05–0.08, r=8 0.09–0.12)."""
    emp = json.loads(PROJECT_PAGE.read_text())["EMPIRICAL_cell_minima"]
    for i, budget in enumerate(emp["noloop"]["C"]):
        opt = {o.model.r: o for o in compute_optimal(PAPER_LAW, budget)}
        for r, key in R_KEYS.items():
            assert opt[r].loss == pytest.approx(emp[key]["L"][i], abs=0.025)
            # N* of the law vs a parabola through 4–6 runs: same scale, not the same number.
            assert 0.6 < opt[r].model.n_params / emp[key]["N"][i] < 1.7
            if r > 1:
                emp_gap = emp[key]["L"][i] - emp["noloop"]["L"][i]
                assert opt[r].gap_to_r1 == pytest.approx(emp_gap, abs=0.02)
        assert 0.02 < opt[2].gap_to_r1 < 0.06
        assert 0.04 < opt[4].gap_to_r1 < 0.09
        assert 0.07 < opt[8].gap_to_r1 < 0.13
        assert 0 < opt[2].gap_to_r1 < opt[4].gap_to_r1 < opt[8].gap_to_r1


def test_compute_optimal_continuous_beats_grid():
    s_grid = sorted({s for widths in PAPER_GRID.values() for s in widths})
    for budget in (1e18, 1e19):
        cont = compute_optimal(PAPER_LAW, budget)
        grid = compute_optimal(PAPER_LAW, budget, grid=s_grid)
        for c, g in zip(cont, grid):
            assert c.loss <= g.loss + 1e-12
            assert g.model.width / 64 in s_grid
            # A continuous optimum: nudging the width either way costs loss.
            for f in (0.97, 1.03):
                assert loss_at_budget(PAPER_LAW, c.model.width * f, c.model.r, budget) > c.loss
            assert c.tokens * c.model.flops_per_token == pytest.approx(budget)


def test_phi_one_and_zero_limits():
    one = Law(**{**PAPER_LAW.to_dict(), "phi": 1.0})
    zero = Law(**{**PAPER_LAW.to_dict(), "phi": 0.0})
    a = Arch(d_model=1024, r=4)
    assert equivalent(one, 4, width=1024).n_eff == pytest.approx(n_once(a) + 4 * n_rec(a))
    assert equivalent(zero, 4, width=1024).n_eff == pytest.approx(n_once(a) + n_rec(a))


def test_parse_amount():
    assert parse_amount("410M") == 410e6
    assert parse_amount("1.5B") == 1.5e9
    assert parse_amount("2e19") == 2e19
    assert parse_amount("3T") == 3e12
    for bad in ("abc", "-5M", "0", "nan"):
        with pytest.raises(UserError):
            parse_amount(bad)


def _cli(argv, capsys):
    from loopscale.cli import main

    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_equiv_json(capsys):
    argv = ["equiv", "--law", "paper", "--r", "4", "--params", "410M", "--budget", "1e19", "--json"]
    code, out, err = _cli(argv, capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert 580e6 <= doc["model"]["n_eff"] <= 600e6
    assert doc["model"]["recurrence_worth"] == pytest.approx(4**0.459 / 4)
    assert [c["r"] for c in doc["compute_optimal"]] == [1, 2, 4, 8]
    assert doc["compute_optimal"][0]["gap_to_r1"] == 0.0


def test_cli_equiv_table_and_errors(capsys):
    code, out, _ = _cli(["equiv", "--s", "32", "--r", "4"], capsys)
    assert code == 0 and "FLOP-matched" in out
    for argv in (["equiv", "--params", "lots"], ["equiv"], ["equiv", "--law", "/nonexistent/fit.json", "--s", "8"],
                 ["equiv", "--params", "410M", "--width", "1024"]):
        code, out, err = _cli(argv, capsys)
        assert code == 2, argv
        assert err.strip().startswith("error:") and len(err.strip().splitlines()) == 1
