"""MuonH invariants and the muonh/AdamW combined optimizer (the lr transfer: tests/test_lr_transfer.py)."""

from __future__ import annotations

import copy

import pytest
import torch

import loopscale.training.muon as muon_module
from loopscale.config import RunConfig, TrainConfig
from loopscale.counting import Arch
from loopscale.training.model import LoopedLM, cross_entropy
from loopscale.training.muon import MuonH, orthogonalize
from loopscale.training.optim import CombinedOptimizer, build_optimizer


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
    for _ in range(300):
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


@pytest.mark.parametrize("coeffs, max_ratio", [("quintic", 1.8), ("polar_express", 1.4)])
def test_update_of_a_random_gradient_has_near_equal_singular_values(coeffs, max_ratio, monkeypatch):
    """What MuonH applies, U = NS₅(M)·c/‖NS₅(M)‖, is ≈ orthogonal: its singular values are nearly equal
    however spread the gradient's are (a square Gaussian matrix: max/min σ ≈ 50), and ‖U‖_F = c."""
    params = make_params()
    norms = [p.detach().norm() for p in params]
    seen = []
    real = muon_module.orthogonalize

    def spy(m, *args):
        o = real(m, *args)
        seen.append(o)
        return o

    opt = MuonH(params, lr=0.01, momentum=0.0, ns_coefficients=coeffs)  # no momentum: M = G
    monkeypatch.setattr(muon_module, "orthogonalize", spy)
    random_grads(params, torch.Generator().manual_seed(7))
    grads = {tuple(p.shape): p.grad.clone() for p in params}
    opt.step()
    outs = {tuple(o.shape[1:]): o[0] for o in seen}  # one bucket per shape here
    assert set(outs) == set(grads)
    spread = []
    for p, c in zip(params, norms):
        o = outs[tuple(p.shape)]
        u = o * (c / o.norm())
        s = torch.linalg.svdvals(u)
        assert u.norm().item() == pytest.approx(c.item(), rel=1e-5)
        assert (s.max() / s.min()).item() < max_ratio, (p.shape, s.min().item(), s.max().item())
        g = torch.linalg.svdvals(grads[tuple(p.shape)])
        spread.append((g.max() / g.min()).item())
    assert max(spread) > 20  # the square gradient was far from orthogonal


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


# -- against the authors' MuonH step -------------------------------------------------------------

# Polar Express (Amsel et al. 2025, arXiv:2505.16932: 5 steps, safety 2e-2, cushion 2), as the authors'
# nanochat/optim.py lists them; written out here so the reference does not read loopscale's copy.
AUTHORS_COEFFS = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]


def authors_muonh_step(w, grad, buf, w0_norm, lr, momentum=0.95):
    """One MuonH step on one matrix, written from the authors' muon_step_fused (kschwethelm/looped-lm-scaling,
    nanochat/optim.py) in plain fp32: returns the new weight and momentum buffer."""
    buf = torch.lerp(buf, grad, 1 - momentum)  # buffer ← μ·buffer + (1 − μ)·grad
    g = torch.lerp(grad, buf, momentum)  # Nesterov: (1 − μ)·grad + μ·buffer
    x = g / (g.norm() * 1.02 + 1e-6)
    tall = g.shape[0] > g.shape[1]
    for a, b, c in AUTHORS_COEFFS:
        if tall:  # the Gram matrix on the small side, Xᵀ X, applied from the right
            gram = x.T @ x
            x = a * x + x @ (b * gram + c * (gram @ gram))
        else:
            gram = x @ x.T
            x = a * x + (b * gram + c * (gram @ gram)) @ x
    update = x * (w0_norm / x.norm().clamp_min(1e-10))  # ‖update‖_F = ‖W₀‖_F
    w = w - lr * update
    w = w * (w0_norm / w.norm().clamp_min(1e-10))  # back onto the sphere
    return w, buf


# Three square, two tall, one wide and two of the injection's d × 2d: same shapes stack into one bucket.
REFERENCE_SHAPES = [(32, 32), (32, 32), (32, 32), (96, 32), (96, 32), (32, 96), (32, 64), (32, 64)]
REFERENCE_LRS = [0.05, 0.04, 0.03, 0.02, 0.01]  # a decaying schedule, written to the group each step


def max_relative_difference_from_the_authors(steps, coefficients):
    """Max over matrices of ‖W − W_ref‖_F / ‖W_ref‖_F after ``steps`` steps of loopscale's MuonH and of the
    reference from the same weights and gradients (fp32, CPU)."""
    params = make_params(REFERENCE_SHAPES, seed=11)
    ref = [p.detach().clone() for p in params]
    bufs = [torch.zeros_like(w) for w in ref]
    w0_norms = [w.norm() for w in ref]
    opt = MuonH(params, lr=REFERENCE_LRS[0], ns_coefficients=coefficients)
    g = torch.Generator().manual_seed(12)
    for step in range(steps):
        random_grads(params, g)
        opt.param_groups[0]["lr"] = REFERENCE_LRS[step]
        for i, p in enumerate(params):
            ref[i], bufs[i] = authors_muonh_step(ref[i], p.grad, bufs[i], w0_norms[i], REFERENCE_LRS[step])
        opt.step()
    assert all(p.dtype == torch.float32 and not p.is_cuda for p in params)
    return max(((p.detach() - w).norm() / w.norm()).item() for p, w in zip(params, ref))


@pytest.mark.parametrize("steps", [1, 5])
def test_polar_express_muonh_matches_the_authors_step(steps):
    assert max_relative_difference_from_the_authors(steps, "polar_express") <= 1e-6


def test_the_comparison_with_the_authors_tells_quintic_apart():
    """The reference is sharp enough: quintic Newton–Schulz (the old default) lands far outside the tolerance."""
    assert max_relative_difference_from_the_authors(1, "quintic") > 1e-3


@pytest.mark.parametrize("device, dtype", [
    ("cpu", torch.float32),
    pytest.param("cuda", torch.bfloat16, marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")),
])
def test_the_step_orthogonalises_in_bf16_on_cuda_and_fp32_on_cpu(device, dtype, monkeypatch):
    """As the authors (bf16 on the GPU); fp32 on CPU, where bf16 matmuls are slow and the reference test runs."""
    params = [torch.nn.Parameter(p.detach().to(device)) for p in make_params(seed=13)]
    opt = MuonH(params, lr=0.02)
    seen, real = [], muon_module.orthogonalize
    monkeypatch.setattr(muon_module, "orthogonalize", lambda m, *a, **k: seen.append(real(m, *a, **k)) or seen[-1])
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    assert seen and {o.dtype for o in seen} == {dtype} and all(p.dtype == torch.float32 for p in params)


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
    assert muon.param_groups[0]["ns_coefficients"] == "polar_express"  # the run config's default, the authors'
    quintic = tiny(muon_ns="quintic")[1].optimizers["muonh"]
    assert quintic.param_groups[0]["ns_coefficients"] == "quintic"
    _, opt_adamw = tiny("adamw")
    assert type(opt_adamw) is torch.optim.AdamW
    assert [g["name"] for g in opt_adamw.param_groups] == ["matrix", "embed", "head", "norm"]


@pytest.mark.slow
def test_muonh_trains_the_looped_model_and_keeps_its_matrices_on_spheres():
    model, opt = tiny()
    matrices = model.param_groups()["matrix"]
    norms = [p.detach().norm().item() for p in matrices]
    losses = train_steps(model, opt, 40)
    assert sum(losses[-5:]) / 5 < losses[0] - 0.4, losses
    for p, n in zip(matrices, norms):
        assert p.norm().item() == pytest.approx(n, rel=1e-5)


@pytest.mark.slow
def test_combined_lrs_are_written_through_param_groups():
    model, opt = tiny()
    for g in opt.param_groups:
        g["lr"] = 0.0
    before = copy.deepcopy(model.state_dict())
    train_steps(model, opt, 2)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.slow
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


