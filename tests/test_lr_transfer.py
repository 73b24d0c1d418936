"""The paper's learning-rate transfer (method.md §4): the pure rules, and their wiring into grids
(``train.lr_rule: paper``), with per-width ``micro_batch_rows``."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import yaml

from loopscale import lr_transfer as lt
from loopscale.config import run_config_from_dict
from loopscale.counting import Arch, layer_params
from loopscale.grid import GridError, grid_from_dict, load_grid
from sweep_fixtures import GRIDS, REPO


PAPER = dict(n_layers_eff=20, n_prelude=2, n_coda=2, head_dim=128)


def authors_d_ref(d=640, looped=True):
    """10 × effective params of the authors' reference, by hand: 2-4-2 × 4 with W_inj, or 0-20-0."""
    L = layer_params(d)
    if looped:
        return 10 * ((4 * L + 3 * d) + 4 * (4 * L + 2 * d * d))
    return 10 * (20 * L + 3 * d)


def test_reference_run_gets_exactly_the_base_lrs():
    ref = Arch(d_model=640, r=4, **PAPER)
    assert lt.d_ref(ref) == authors_d_ref()
    lrs = lt.paper_lrs(ref, lt.d_ref(ref), lt.B_REF)
    assert lrs == {"lr_matrix": 0.014, "lr_embed": 0.3, "lr_head": 0.004, "lr_norm": 0.005}
    # With the authors' batch exponent on, B = B_ref still changes nothing.
    assert lt.paper_lrs(ref, lt.d_ref(ref), lt.B_REF, batch_exponent=lt.AUTHORS_BATCH_EXPONENT) == lrs


def test_reference_choice_follows_the_authors():
    # Every looped run refers to the r = 4 reference of its family (the authors: 2-4-2 × 4) ...
    for r in (2, 4, 8):
        a = Arch(d_model=1024, r=r, **PAPER)
        assert lt.reference_arch(a).r == 4 and lt.d_ref(a) == authors_d_ref()
    assert lt.d_ref(Arch(d_model=1024, r=2, probe="hyperconn", **PAPER)) == authors_d_ref()
    # ... r = 1 to the plain stack; ref_r overrides; head_dim nudges the width up as the authors do.
    assert lt.d_ref(Arch(d_model=1024, r=1, **PAPER)) == authors_d_ref(looped=False)
    assert lt.reference_arch(Arch(d_model=1024, r=2, **PAPER), ref_r=2).r == 2
    assert lt.reference_arch(Arch(d_model=960, r=1, n_layers_eff=20, head_dim=96)).d_model == 672
    # A family whose loop depth 4 does not divide falls back to the run's r.
    assert lt.reference_arch(Arch(d_model=128, r=3, n_layers_eff=11, n_prelude=1, n_coda=1, head_dim=32)).r == 3


def test_lrs_scale_with_width_data_and_batch():
    base = Arch(d_model=640, r=4, **PAPER)
    D, B = lt.d_ref(base), lt.B_REF
    ref = lt.paper_lrs(base, D, B)
    wide = lt.paper_lrs(Arch(d_model=2560, r=4, **PAPER), D, B)
    for k in ("lr_embed", "lr_head", "lr_norm"):
        assert wide[k] == pytest.approx(ref[k] * 0.5)  # (2560/640)^-0.5
    assert wide["lr_matrix"] == ref["lr_matrix"]  # the data term only: same D_ref at any width
    more = lt.paper_lrs(base, 8 * D, B)
    assert more["lr_matrix"] == pytest.approx(0.014 * 8**-0.32)
    assert {k: more[k] for k in ("lr_embed", "lr_head", "lr_norm")} == {k: ref[k] for k in ("lr_embed", "lr_head", "lr_norm")}
    assert lt.paper_lrs(base, D, 4 * B) == ref  # batch transfer is off by default
    big = lt.paper_lrs(base, D, 4 * B, batch_exponent=0.558)
    for k in ("lr_matrix", "lr_embed", "lr_head"):
        assert big[k] == pytest.approx(ref[k] * 4**0.558)
    assert big["lr_norm"] == ref["lr_norm"]  # as the authors: norms get no batch factor
    det = lt.paper_lr_details(base, 2 * D, B)
    assert det["d_ref"] == D and det["data_scale"] == pytest.approx(2**-0.32) and det["ref_r"] == 4
    with pytest.raises(ValueError):
        lt.paper_lrs(base, 0, B)


def test_lr_transfer_is_torch_free():
    code = "import sys, loopscale.lr_transfer; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the rule in grids ----------------------------------------------------------------------------

D_REF = 1_016_083_200  # authors_d_ref(): divisible by 256, so iterations · 256 = D_ref exactly
D_REF_PLAIN = 983_315_200  # authors_d_ref(looped=False)


def grid(train=None, **over):
    """A grid of the paper's family at the paper rule; tiny batches (expansion only, nothing trains)."""
    train = {"seq_len": 128, "batch_tokens": 256, "optimizer": "muonh", "lr_rule": "paper", **(train or {})}
    raw = {"model": dict(PAPER), "data": {"dir": "/data/x", "eval_tokens": 64}, "vocab_size": 512,
           "train": {k: v for k, v in train.items() if v is not None},
           "r": [4], "widths": [640], "tokens": [D_REF], **over}
    return grid_from_dict({k: v for k, v in raw.items() if v is not None}, "g.yaml")


def lrs_of(spec) -> dict[str, float]:
    return {k: getattr(spec.config.train, k) for k in lt.LR_KEYS}


BASE_LRS = {"lr_matrix": 0.014, "lr_embed": 0.3, "lr_head": 0.004, "lr_norm": 0.005}


def test_grid_reference_runs_get_exactly_the_base_lrs():
    assert authors_d_ref() == D_REF and authors_d_ref(looped=False) == D_REF_PLAIN
    looped, = grid().runs
    assert looped.tokens == D_REF and lrs_of(looped) == BASE_LRS
    plain, = grid(r=[1], tokens=[D_REF_PLAIN]).runs  # r = 1 refers to the plain 20-layer stack
    assert plain.tokens == D_REF_PLAIN and lrs_of(plain) == BASE_LRS


def test_width_1280_gets_the_base_adamw_lrs_times_2_to_the_minus_half():
    ref, wide = grid(widths=[640, 1280]).runs
    assert wide.d_model == 1280
    for k in ("lr_embed", "lr_head", "lr_norm"):
        assert getattr(wide.config.train, k) == pytest.approx(BASE_LRS[k] * 2**-0.5, rel=1e-5)  # 6 digits
        assert getattr(wide.config.train, k) == lt.round_lr(BASE_LRS[k] * 2**-0.5)
    assert wide.config.train.lr_matrix == 0.014  # same D: the matrix lr has no width term
    assert wide.run_id != ref.run_id


def test_paper_grids_hold_each_runs_transferred_lrs_in_its_config(tmp_path):
    from loopscale.submit import write_config  # noqa: PLC0415

    paper = load_grid(GRIDS / "paper.yaml", cwd=REPO)
    for s in paper.runs:
        t = s.config.train
        assert t.optimizer == "muonh" and (t.betas, t.eps, t.weight_decay) == ((0.8, 0.95), 1e-10, 0.0)
        assert (t.warmup_steps, t.final_lr_frac) == (0, 0.1)
        want = lt.paper_lrs(s.config.model, s.tokens, 262144, batch_exponent=0.558)  # D = the resolved D
        assert lrs_of(s) == {k: lt.round_lr(v) for k, v in want.items()}
    by = {(s.budget_flops, s.d_model, s.r): s.config.train for s in paper.runs}
    # Across widths at one budget: the AdamW lrs fall as d^-0.5 ...
    widths = sorted(d for c, d, r in by if c == 1e18 and r == 2)
    embeds = [by[(1e18, d, 2)].lr_embed for d in widths]
    assert embeds == sorted(embeds, reverse=True) and len(set(embeds)) == len(widths)
    # ... and across budgets at one width, the matrix lr falls as D^-0.32 (more tokens).
    budgets = sorted(c for c, d, r in by if d == 768 and r == 4)
    mats = [by[(c, 768, 4)].lr_matrix for c in budgets]
    assert len(budgets) == 5 and mats == sorted(mats, reverse=True) and len(set(mats)) == 5
    assert {by[(c, 768, 4)].lr_embed for c in budgets} == {lt.round_lr(0.3 * (768 / 640) ** -0.5)}
    # The lrs are in config.yaml as the trainer reads it, and in the run id.
    spec = paper.runs[-1]
    write_config(tmp_path, spec)
    raw = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert raw["train"]["lr_matrix"] == spec.config.train.lr_matrix
    assert run_config_from_dict(raw).run_id() == spec.run_id
    other = dataclasses.replace(spec.config, train=dataclasses.replace(spec.config.train, lr_matrix=0.02))
    assert other.run_id() != spec.run_id
    # The probe grids: truncated runs see more tokens at the same budget, so a lower matrix lr.
    tbptt = {(s.budget_flops, s.d_model, s.r): s for s in load_grid(GRIDS / "paper-tbptt.yaml", cwd=REPO).runs}
    full = next(s for s in paper.runs if (s.budget_flops, s.d_model, s.r) == (1e18, 768, 4))
    trunc = tbptt[(1e18, 768, 4)]
    assert trunc.tokens > full.tokens and trunc.config.train.lr_matrix < full.config.train.lr_matrix
    assert trunc.config.train.lr_matrix == lt.round_lr(
        lt.paper_lrs(trunc.config.model, trunc.tokens, 262144)["lr_matrix"])


def test_micro_batch_rows_per_width_is_resolved_per_run_and_not_in_the_id():
    g1 = grid(widths=[128, 256, 512, 640], train={"micro_batch_rows": {256: 2, 640: 1}})
    assert [s.config.train.micro_batch_rows for s in g1.runs] == [2, 2, 1, 1]
    g2 = grid(widths=[128, 256, 512, 640], train={"micro_batch_rows": 2})
    assert [s.run_id for s in g1.runs] == [s.run_id for s in g2.runs]
    paper = load_grid(GRIDS / "paper.yaml", cwd=REPO)
    for s in paper.runs:
        want = 16 if s.d_model <= 768 else 8 if s.d_model <= 1536 else 4
        assert s.config.train.micro_batch_rows == want, s.d_model
        assert s.config.train.rows_per_step() % want == 0


def test_fixed_rule_is_the_default_and_keeps_the_given_lrs():
    fixed = grid(train={"lr_rule": "fixed", "optimizer": "adamw", "lr_matrix": 0.02})
    default = grid(train={"lr_rule": None, "optimizer": None, "lr_matrix": 0.02})
    assert [s.run_id for s in fixed.runs] == [s.run_id for s in default.runs]
    assert lrs_of(fixed.runs[0]) == {"lr_matrix": 0.02, "lr_embed": 0.1, "lr_head": 0.01, "lr_norm": 0.01}


def test_batch_exponent_scales_embed_head_and_matrix_lrs():
    plain, = grid().runs
    batched, = grid(train={"lr_batch_exponent": 0.558}).runs
    f = (256 / 2**18) ** 0.558
    for k in ("lr_matrix", "lr_embed", "lr_head"):
        assert getattr(batched.config.train, k) == pytest.approx(BASE_LRS[k] * f, rel=1e-5)
    assert batched.config.train.lr_norm == plain.config.train.lr_norm == 0.005


BAD = [
    ({"lr_matrix": 0.01}, "train.lr_matrix: set per run by lr_rule: paper; remove it"),
    ({"lr_norm": 0.01}, "train.lr_norm: set per run by lr_rule: paper"),
    ({"optimizer": "adamw"}, "train.lr_rule: paper gives the paper's MuonH learning rates"),
    ({"optimizer": None}, "set optimizer: muonh (got adamw)"),
    ({"lr_rule": "chinchilla"}, "train.lr_rule: unknown rule 'chinchilla'; choose one of fixed, paper"),
    ({"lr_rule": "fixed", "lr_batch_exponent": 0.5}, "train.lr_batch_exponent: applies only with lr_rule: paper"),
    ({"lr_batch_exponent": "big"}, "train.lr_batch_exponent: expected a number"),
    ({"lr_rules": "paper"}, "train: unknown key 'lr_rules' (allowed: batch_tokens,"),
    ({"weight_decay": 0.1}, "train.weight_decay: 0.1 does not apply under optimizer muonh"),
    ({"micro_batch_rows": {320: 1}}, "train.micro_batch_rows: no entry for d_model 640 (keys are the widest"),
    ({"micro_batch_rows": {"wide": 1}}, "train.micro_batch_rows: keys are widths d_model"),
    ({"micro_batch_rows": {640: -1}}, "train.micro_batch_rows.640: expected a non-negative integer"),
    ({"micro_batch_rows": {640: 3}}, "d_model 640, r 4: train.micro_batch_rows: 3 must divide the 2 rows"),
    ({"micro_batch_rows": {}}, "train.micro_batch_rows: the mapping is empty"),
]


@pytest.mark.parametrize("train, message", BAD, ids=[m for _, m in BAD])
def test_bad_lr_and_micro_batch_settings_are_one_line_errors(train, message):
    with pytest.raises(GridError) as e:
        grid(train=train)
    text = str(e.value)
    assert text.startswith("g.yaml: ") and message in text and "\n" not in text, text


def test_with_paper_lrs_uses_the_resolved_tokens_of_a_flop_budget():
    spec, = grid(tokens=None, widths=None, flops={"1e17": [640]}).runs
    assert spec.tokens != 1e17 and spec.tokens % 256 == 0
    assert spec.config.train.lr_matrix == lt.round_lr(0.014 * (spec.tokens / D_REF) ** -0.32)
