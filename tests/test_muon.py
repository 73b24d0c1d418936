"""MuonH invariants, the muonh/AdamW combined optimizer, and the paper's learning-rate transfer."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

from loopscale import lr_transfer as lt
from loopscale.config import RunConfig, TrainConfig
from loopscale.counting import Arch, layer_params
from loopscale.model import LoopedLM, cross_entropy
from loopscale.muon import MuonH, orthogonalize
from loopscale.optim import CombinedOptimizer, build_optimizer


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: one thread is fastest, and the machine's cores are shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# Square, wide, tall, and the injection's d × 2d.
SHAPES = [(32, 32), (32, 128), (128, 32), (32, 64)]


def make_params(shapes=SHAPES, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=g) / s[1] ** 0.5) for s in shapes]


def random_grads(params, g):
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)


# -- MuonH --------------------------------------------------------------------------------------


@pytest.mark.parametrize("coeffs", ["quintic", "polar_express"])
def test_weights_stay_on_their_spheres(coeffs):
    params = make_params()
    norms = [p.detach().norm().item() for p in params]
    opt = MuonH(params, lr=0.05, ns_coefficients=coeffs)
    g = torch.Generator().manual_seed(1)
    before = [p.detach().clone() for p in params]
    for _ in range(60):
        random_grads(params, g)
        opt.step()
    for p, n, b in zip(params, norms, before):
        assert p.norm().item() == pytest.approx(n, rel=1e-5)
        assert (p - b).norm() > 0.1 * n  # and they did move


@pytest.mark.parametrize("coeffs", ["quintic", "polar_express"])
@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (96, 192)])
def test_newton_schulz_output_is_orthogonal_ish(shape, coeffs):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    o = orthogonalize(g, 5, coeffs)
    assert o.shape == g.shape and o.dtype == torch.float32
    s = torch.linalg.svdvals(o)
    assert s.min() > 0.5 and s.max() < 1.5, (s.min().item(), s.max().item())
    # Tall matrices are handled by transposition: NS(Gᵀ) = NS(G)ᵀ.
    torch.testing.assert_close(orthogonalize(g.T, 5, coeffs), o.T, atol=1e-5, rtol=1e-5)


def test_update_is_the_documented_rule_with_magnitude_lr_times_initial_norm():
    params = make_params(seed=3)
    w0 = [p.detach().clone() for p in params]
    lr, mu = 0.03, 0.95
    opt = MuonH(params, lr=lr, momentum=mu)
    g = torch.Generator().manual_seed(4)
    random_grads(params, g)
    grads = [p.grad.clone() for p in params]
    opt.step()
    for p, w, gr in zip(params, w0, grads):
        c = w.norm()
        buf = (1 - mu) * gr
        m = (1 - mu) * gr + mu * buf
        o = orthogonalize(m)
        step = lr * o * (c / o.norm())
        assert step.norm().item() == pytest.approx(lr * c.item(), rel=1e-5)
        w1 = w - step
        torch.testing.assert_close(p.detach(), w1 * (c / w1.norm()), atol=1e-6, rtol=1e-5)


def test_lr_is_read_from_the_group_each_step():
    params = make_params(seed=5)
    opt = MuonH(params, lr=0.02)
    g = torch.Generator().manual_seed(6)
    opt.param_groups[0]["lr"] = 0.0
    before = [p.detach().clone() for p in params]
    random_grads(params, g)
    opt.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert all("momentum_buffer" in opt.state[p] for p in params)  # momentum still accumulates
    opt.param_groups[0]["lr"] = 0.02
    random_grads(params, g)
    opt.step()
    assert all(not torch.equal(p, b) for p, b in zip(params, before))


def test_rejects_vectors_and_zero_matrices():
    with pytest.raises(ValueError, match="2-D"):
        MuonH([torch.nn.Parameter(torch.ones(8))])
    with pytest.raises(ValueError, match="non-zero"):
        MuonH([torch.nn.Parameter(torch.zeros(4, 4))])
    with pytest.raises(ValueError, match="ns_coefficients"):
        MuonH(make_params(), ns_coefficients="cubic")


# -- the combined optimizer on a real model -----------------------------------------------------

ARCH = Arch(d_model=32, r=2, n_layers_eff=4, n_prelude=1, n_coda=1, head_dim=16)
VOCAB, SEQ = 64, 16


def tiny(optimizer="muonh", seed=0, **train):
    torch.manual_seed(seed)
    model = LoopedLM(ARCH, VOCAB, SEQ)
    cfg = RunConfig(model=ARCH, train=TrainConfig(tokens=1024, seq_len=SEQ, batch_tokens=64, optimizer=optimizer,
                                                  lr_matrix=0.05, **train), vocab_size=VOCAB)
    return model, build_optimizer(model, cfg)


def train_steps(model, opt, steps, start=0):
    losses = []
    for step in range(start, start + steps):
        x = torch.randint(0, VOCAB, (4, SEQ + 1), generator=torch.Generator().manual_seed(100 + step))
        x[:, 1::2] = x[:, 0:-1:2]  # a learnable pattern: every odd token repeats the previous one
        loss = cross_entropy(model(x[:, :-1]), x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_build_optimizer_muonh_groups_and_adamw_path_unchanged():
    model, opt = tiny(betas=(0.8, 0.95), eps=1e-10)
    assert isinstance(opt, CombinedOptimizer)
    assert [g["name"] for g in opt.param_groups] == ["matrix", "embed", "head", "norm"]
    muon, adam = opt.optimizers["muonh"], opt.optimizers["adamw"]
    groups = model.param_groups()
    assert isinstance(muon, MuonH) and muon.param_groups[0]["params"] == groups["matrix"]
    assert any(p is model.injection.proj.weight for p in groups["matrix"])  # W ∈ R^{d×2d} is Muon's
    assert all(g["betas"] == (0.8, 0.95) and g["eps"] == 1e-10 and g["weight_decay"] == 0 for g in adam.param_groups)
    assert muon.param_groups[0]["momentum"] == 0.95 and muon.param_groups[0]["ns_steps"] == 5
    _, opt_adamw = tiny("adamw")
    assert type(opt_adamw) is torch.optim.AdamW
    assert [g["name"] for g in opt_adamw.param_groups] == ["matrix", "embed", "head", "norm"]


def test_muonh_trains_the_looped_model_and_keeps_its_matrices_on_spheres():
    model, opt = tiny()
    matrices = model.param_groups()["matrix"]
    norms = [p.detach().norm().item() for p in matrices]
    losses = train_steps(model, opt, 40)
    assert sum(losses[-5:]) / 5 < losses[0] - 0.4, losses
    for p, n in zip(matrices, norms):
        assert p.norm().item() == pytest.approx(n, rel=1e-5)


def test_combined_lrs_are_written_through_param_groups():
    model, opt = tiny()
    for g in opt.param_groups:
        g["lr"] = 0.0
    before = copy.deepcopy(model.state_dict())
    train_steps(model, opt, 2)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_combined_state_dict_round_trip_gives_identical_steps():
    model, opt = tiny()
    train_steps(model, opt, 3)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    assert set(saved_opt) == {"muonh", "adamw"}
    train_steps(model, opt, 3, start=3)
    # A fresh model with different weights: the optimizer records other initial norms, and loading
    # must restore the checkpoint's (the sphere radii travel in the optimizer state).
    model2, opt2 = tiny(seed=1)
    model2.load_state_dict(saved_model)
    opt2.load_state_dict(saved_opt)
    train_steps(model2, opt2, 3, start=3)
    for k, v in model.state_dict().items():
        assert torch.equal(v, model2.state_dict()[k]), k
    with pytest.raises(ValueError, match="parts"):
        opt2.load_state_dict({"adamw": saved_opt["adamw"]})


# -- learning-rate transfer -----------------------------------------------------------------------

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
