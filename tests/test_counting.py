"""Parameter and FLOP accounting against the paper's check values (method.md §2–§3)."""

import pytest

from loopscale.counting import Arch, ArchError, flops_per_token, iterations_for_budget, n_once, n_rec

# N in millions at r = 1/2/4/8 (method.md §2).
PAPER_N = {
    6: (35.4, 21.5, 14.5, 10.9),
    10: (98.3, 59.8, 40.2, 30.3),
    20: (393.3, 239.2, 160.6, 121.3),
    34: (1136.5, 691.4, 464.1, 350.4),
}


@pytest.mark.parametrize("s", sorted(PAPER_N))
def test_total_params_match_paper(s):
    for r, want in zip((1, 2, 4, 8), PAPER_N[s]):
        a = Arch(d_model=64 * s, r=r)
        assert round((n_once(a) + n_rec(a)) / 1e6, 1) == want


def test_split_formulas():
    d = 640
    a = Arch(d_model=d, r=4)
    assert n_once(a) == 4 * (12 * d * d + 2 * d) + 3 * d
    assert n_rec(a) == 4 * (12 * d * d + 2 * d) + 2 * d * d  # 16/4 layers + injection
    one = Arch(d_model=d, r=1)
    assert n_rec(one) == 20 * (12 * d * d + 2 * d) and n_once(one) == 3 * d
    add = Arch(d_model=d, r=4, injection="additive")
    assert n_rec(add) == 4 * (12 * d * d + 2 * d)


def test_flops_check_value():
    assert flops_per_token(Arch(d_model=384, r=1), seq_len=2048, vocab=32064) == 475_047_936


def test_flops_iso_depth_nearly_equal_across_r():
    # Iso-depth: FLOPs/token differ across r only by the injection matmul.
    d, T, V = 640, 2048, 32064
    base = flops_per_token(Arch(d_model=d, r=1), T, V)
    for r in (2, 4, 8):
        f = flops_per_token(Arch(d_model=d, r=r), T, V)
        assert f - base == 6 * r * 2 * d * d


def test_truncated_backprop_charges_forward_only():
    d, T, V = 640, 2048, 32064
    full = Arch(d_model=d, r=4)
    trunc = Arch(d_model=d, r=4, probe="tbptt")
    assert trunc.k_grad == 2
    per_loop = 4 * (12 * d * d + 2 * d) + 2 * d * d
    attn = 4 * d * T
    saved = 2 * (6 - 2) * per_loop + 2 * (12 - 4) * attn  # two loops forward-only
    assert flops_per_token(full, T, V) - flops_per_token(trunc, T, V) == saved


def test_iterations_round():
    assert iterations_for_budget(1e18, 475_047_936, 262_144) == round(1e18 / (475_047_936 * 262_144))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(d_model=640, r=3), "does not divide"),
        (dict(d_model=640, r=0), "positive"),
        (dict(d_model=-64, r=1), "positive"),
        (dict(d_model=100, r=1), "not divisible by head_dim"),
        (dict(d_model=640, r=2, n_layers_eff=4), "no layers to loop"),
        (dict(d_model=640, r=2, injection="cross"), "unknown injection"),
        (dict(d_model=640, r=2, probe="nope"), "unknown probe"),
    ],
)
def test_bad_arch(kwargs, words):
    with pytest.raises(ArchError, match=words):
        Arch(**kwargs)
