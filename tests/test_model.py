"""The looped model: real parameter counts, injection identity at init, r = 1 is a plain stack."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from loopscale.counting import Arch, n_once, n_rec
from loopscale.training.model import SOFTCAP, LinearInjection, LoopedLM, fast_path


@pytest.mark.parametrize(
    "d, r, l_eff, pre, coda, hd, inj",
    [
        (64, 1, 10, 1, 1, 32, "linear"),
        (64, 2, 10, 1, 1, 32, "linear"),
        (96, 4, 12, 2, 2, 32, "linear"),
        (128, 8, 20, 2, 2, 64, "linear"),
        (64, 4, 6, 1, 1, 16, "additive"),
        (32, 2, 8, 2, 2, 16, "additive"),
        (48, 3, 9, 0, 0, 16, "linear"),
        (64, 16, 20, 2, 2, 64, "linear"),
    ],
)
def test_param_counts_equal_model(d, r, l_eff, pre, coda, hd, inj):
    a = Arch(d_model=d, r=r, n_layers_eff=l_eff, n_prelude=pre, n_coda=coda, head_dim=hd, injection=inj)
    m = LoopedLM(a, vocab_size=97, max_seq_len=16)
    assert m.n_non_embedding_params() == n_once(a) + n_rec(a)
    loop = sum(p.numel() for n, p in m.named_parameters() if n.startswith(("recur.", "injection.")))
    assert loop == n_rec(a) and len(m.recur) == a.l_recur


def test_linear_injection_is_identity_on_e_at_init():
    inj = LinearInjection(24)
    e, h = torch.randn(2, 5, 24), torch.randn(2, 5, 24)
    assert torch.equal(inj.mix(0, e, h), e)
    assert torch.equal(inj.proj.weight[:, :24], torch.eye(24))
    assert not inj.proj.weight[:, 24:].any()


def test_recur_block_runs_r_times_with_shared_weights():
    a = Arch(d_model=32, r=4, n_layers_eff=6, n_prelude=1, n_coda=1, head_dim=16)
    m = LoopedLM(a, 50, 8)
    calls = []
    m.recur[0].register_forward_hook(lambda *_: calls.append(1))
    m(torch.randint(0, 50, (1, 8)))
    assert len(calls) == 4


def plain_transformer_logits(m: LoopedLM, idx):
    """An independent plain ℓ_eff-layer pre-norm transformer using m's weights."""
    x = F.rms_norm(m.embed(idx), (m.arch.d_model,), m.norm_embed.weight, 1e-6)
    T = idx.size(1)
    pos = torch.arange(T, dtype=torch.float32)
    hd = m.arch.head_dim
    inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
    ang = torch.outer(pos, inv)
    cos, sin = ang.cos(), ang.sin()

    def rope(z):
        a, b = z[..., : hd // 2], z[..., hd // 2 :]
        return torch.cat([a * cos - b * sin, a * sin + b * cos], -1)

    for blk in m.recur:
        y = F.rms_norm(x, (x.size(-1),), blk.norm_attn.weight, 1e-6)
        B, T, d = y.shape
        q, k, v = (w(y).view(B, T, -1, hd).transpose(1, 2) for w in (blk.attn.q, blk.attn.k, blk.attn.v))
        q = F.rms_norm(rope(q), (hd,), eps=1e-6)
        k = F.rms_norm(rope(k), (hd,), eps=1e-6)
        att = (q @ k.transpose(-1, -2)) / hd**0.5
        att = att.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf")).softmax(-1)
        x = x + blk.attn.o((att @ v).transpose(1, 2).reshape(B, T, d))
        y = F.rms_norm(x, (d,), blk.norm_mlp.weight, 1e-6)
        x = x + blk.mlp.down(torch.relu(blk.mlp.up(y)) ** 2)
    x = F.rms_norm(x, (x.size(-1),), m.norm_recur.weight, 1e-6)
    x = F.rms_norm(x, (x.size(-1),), m.norm_final.weight, 1e-6)
    z = m.lm_head(x).float()
    return SOFTCAP * torch.tanh(z / SOFTCAP)


@pytest.mark.parametrize("mode", ["on", "off"])
def test_r1_is_plain_transformer_of_l_eff_layers(mode):
    torch.manual_seed(0)
    a = Arch(d_model=32, r=1, n_layers_eff=5, n_prelude=2, n_coda=2, head_dim=16)
    m = LoopedLM(a, 61, 12)
    assert len(m.prelude) == 0 and len(m.coda) == 0 and len(m.recur) == 5
    with torch.no_grad():  # make the head non-trivial so logits differ meaningfully
        m.lm_head.weight.normal_()
    idx = torch.randint(0, 61, (2, 12))
    with fast_path(mode):
        out = m(idx)
    torch.testing.assert_close(out, plain_transformer_logits(m, idx), atol=2e-5, rtol=1e-5)


def test_init_distributions():
    torch.manual_seed(0)
    d = 256
    m = LoopedLM(Arch(d_model=d, r=2, n_layers_eff=4, n_prelude=1, n_coda=1, head_dim=64), 1000, 8)
    assert abs(m.embed.weight.std().item() - 1.0) < 0.02
    assert abs(m.lm_head.weight.std().item() - 1e-3) < 5e-5
    q = m.recur[0].attn.q.weight
    assert q.abs().max() <= (3**0.5) / d**0.5 + 1e-7
    down = m.recur[0].mlp.down.weight
    assert down.abs().max() <= (3**0.5) / (4 * d) ** 0.5 + 1e-7
    assert all(p.eq(1).all() for n, p in m.named_parameters() if n.endswith("norm_attn.weight"))


def test_logits_softcapped_fp32():
    m = LoopedLM(Arch(d_model=32, r=2, n_layers_eff=4, n_prelude=1, n_coda=1, head_dim=16), 40, 8)
    with torch.no_grad():
        m.lm_head.weight.mul_(1e5)
    out = m(torch.randint(0, 40, (1, 8)))
    assert out.dtype == torch.float32 and out.abs().max() <= SOFTCAP


def test_causal():
    torch.manual_seed(1)
    m = LoopedLM(Arch(d_model=32, r=2, n_layers_eff=4, n_prelude=1, n_coda=1, head_dim=16), 40, 10)
    with torch.no_grad():
        m.lm_head.weight.normal_()
    a = torch.randint(0, 40, (1, 10))
    b = a.clone()
    b[0, 7:] = (b[0, 7:] + 1) % 40
    torch.testing.assert_close(m(a)[:, :7], m(b)[:, :7])


def test_tbptt_gradients_only_from_last_k_iterations():
    """Hand-unrolled reference: detach the state after the first r − k iterations."""
    torch.manual_seed(0)
    arch = Arch(d_model=32, r=4, n_layers_eff=6, n_prelude=1, n_coda=1, head_dim=16, probe="tbptt")
    m = LoopedLM(arch, 40, 8)
    with torch.no_grad():  # at init W = [I ∥ 0] ignores h; make the state matter
        m.injection.proj.weight.add_(0.1 * torch.randn_like(m.injection.proj.weight))
    idx, tgt = torch.randint(0, 40, (2, 8)), torch.randint(0, 40, (2, 8))
    m.loss(idx, tgt).backward()
    got = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    rope = (m.rope_cos, m.rope_sin)
    x = m.norm_embed(m.embed(idx))
    e = m.prelude[0](x, rope)
    h = e
    for t in range(4):
        u = m.injection.mix(t, e, h)
        u = m.recur[0](u, rope)
        h = m.norm_recur(u)
        if t < 2:
            h = h.detach()
    x = m.coda[0](h, rope)
    logits = SOFTCAP * torch.tanh(m.lm_head(m.norm_final(x)).float() / SOFTCAP)
    F.cross_entropy(logits.view(-1, 40), tgt.view(-1)).backward()
    for n, p in m.named_parameters():
        torch.testing.assert_close(got[n], p.grad, msg=n)
    # And it differs from full backprop (the loop really gets less gradient).
    full = LoopedLM(Arch(d_model=32, r=4, n_layers_eff=6, n_prelude=1, n_coda=1, head_dim=16), 40, 8)
    full.load_state_dict(m.state_dict())
    full.loss(idx, tgt).backward()
    assert not torch.allclose(full.recur[0].mlp.up.weight.grad, got["recur.0.mlp.up.weight"])


def test_param_groups_cover_everything_once():
    m = LoopedLM(Arch(d_model=32, r=2, n_layers_eff=4, n_prelude=1, n_coda=1, head_dim=16), 40, 8)
    groups = m.param_groups()
    ids = [id(p) for p in itertools.chain(*groups.values())]
    assert len(ids) == len(set(ids)) == len(list(m.parameters()))
    assert any(p is m.injection.proj.weight for p in groups["matrix"])
    assert all(p.ndim == 1 for p in groups["norm"])


def test_hyperconn_one_live_lane_reduces_to_loop_without_injection():
    torch.manual_seed(0)  # K = 2 (K = 1 is rejected), lane 1 zeroed after the first step and never read
    arch = Arch(d_model=32, r=3, n_layers_eff=5, n_prelude=1, n_coda=1, head_dim=16, probe="hyperconn", hc_lanes=2)
    m = LoopedLM(arch, 40, 8)
    with torch.no_grad():
        m.lm_head.weight.normal_()
        m.injection.alpha.zero_()[:, 0] = 1.0
        m.injection.mix_lanes.zero_()
        m.injection.beta.zero_()[:, 0] = 1.0
    idx = torch.randint(0, 40, (2, 8))
    rope = (m.rope_cos, m.rope_sin)
    with torch.no_grad():
        h = m.prelude[0](m.norm_embed(m.embed(idx)), rope)
        for _ in range(3):  # h ← norm_recur(block(h)), no injection of e
            h = m.norm_recur(m.recur[0](h, rope))
        ref = SOFTCAP * torch.tanh(m.lm_head(m.norm_final(m.coda[0](h, rope))).float() / SOFTCAP)
        torch.testing.assert_close(m(idx), ref)


def test_hyperconn_cyclic_init_and_counts():
    arch = Arch(d_model=32, r=4, n_layers_eff=6, n_prelude=1, n_coda=1, head_dim=16, probe="hyperconn", hc_lanes=2)
    m = LoopedLM(arch, 40, 8)
    hc = m.injection
    assert torch.equal(hc.alpha, torch.tensor([[1.0, 0], [0, 1], [1, 0], [0, 1]]))
    assert torch.equal(hc.mix_lanes, torch.eye(2).repeat(4, 1, 1)) and torch.equal(hc.beta, torch.ones(4, 2))
    assert m.n_non_embedding_params() == n_once(arch) + n_rec(arch)
    lanes = {id(p) for p in m.param_groups()["lane"]}
    assert lanes == {id(hc.alpha), id(hc.mix_lanes), id(hc.beta)}
    # Step 0 reads lane 0 (= e); after it, lane 0 = e + s0 and lane 1 = e + s0; readout sums lanes.
    e = torch.randn(2, 3, 32)
    st = hc.init_state(e)
    assert torch.equal(hc.mix(0, e, st), e)
    s0 = torch.randn(2, 3, 32)
    st = hc.update(0, st, s0)
    torch.testing.assert_close(st[0], e + s0)
    torch.testing.assert_close(hc.readout(st), 2 * (e + s0))


# -- The fused fast path (loopscale.training.model's hand-written backwards) against the plain forms ----------
# The model has both: the fast path (CPU) and the plain PyTorch forms (CUDA); FAST_PATH overrides.

FUSED_NODES = {"_RMSNormalizeBackward", "_CausalAttentionBackward", "_SquaredReLUBackward"}


def _graph_nodes(out: torch.Tensor) -> set[str]:
    """Class names of the autograd nodes behind ``out``."""
    names, seen, stack = set(), set(), [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        stack.extend(f for f, _ in fn.next_functions)
    return names


def _moved_from_init(a: Arch, vocab: int, seq: int) -> LoopedLM:
    torch.manual_seed(0)
    m = LoopedLM(a, vocab, seq)
    with torch.no_grad():  # move away from init: norm scales ≠ 1, injection mixes h, head non-trivial
        for n, p in m.named_parameters():
            if "norm" in n:
                p.mul_(1 + 0.3 * torch.randn_like(p))
        if a.r > 1:
            m.injection.proj.weight.add_(0.1 * torch.randn_like(m.injection.proj.weight))
        m.lm_head.weight.normal_(0, 0.3)
    return m


def _logits_and_grads(m: LoopedLM, idx, tgt, mode: str):
    """Logits, their autograd node names and every parameter's gradient, on path ``mode``."""
    m.zero_grad(set_to_none=True)
    with fast_path(mode):
        out = m(idx)
    F.cross_entropy(out.view(-1, out.size(-1)), tgt.view(-1)).backward()
    return out.detach(), _graph_nodes(out), {n: p.grad.clone() for n, p in m.named_parameters()}


@pytest.mark.parametrize("d, hd", [(16, 8), (16, 16), (32, 16)])
@pytest.mark.parametrize("r", [1, 4])
def test_fast_path_matches_plain_forward_and_gradients(d, hd, r):
    """The model's own two paths on CPU: same logits and every gradient to 1e-5."""
    m = _moved_from_init(Arch(d_model=d, r=r, n_layers_eff=6, n_prelude=1, n_coda=1, head_dim=hd, injection="linear"), 64, 24)
    idx, tgt = torch.randint(0, 64, (3, 24)), torch.randint(0, 64, (3, 24))
    out_fast, nodes_fast, g_fast = _logits_and_grads(m, idx, tgt, "on")
    out_plain, nodes_plain, g_plain = _logits_and_grads(m, idx, tgt, "off")
    assert FUSED_NODES <= nodes_fast and not FUSED_NODES & nodes_plain  # each ran the path it says
    torch.testing.assert_close(out_fast, out_plain, atol=1e-5, rtol=1e-5)
    for n, g in g_plain.items():
        scale = g.abs().max().clamp_min(1e-12)
        torch.testing.assert_close(g_fast[n] / scale, g / scale, atol=1e-5, rtol=0, msg=n)


def test_fast_path_dispatch_decision():
    """auto: fast path on CPU tensors, plain forms on CUDA-typed ones; on/off force either."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from loopscale.training import model

    cpu = torch.zeros(2)
    with FakeTensorMode():  # a CUDA-typed tensor without a GPU (no kernels run)
        cuda = torch.empty(2, device="cuda")
    assert cuda.is_cuda and model.FAST_PATH == "auto"
    assert model.use_fast_path(cpu) and not model.use_fast_path(cuda)
    with fast_path("off"):
        assert not model.use_fast_path(cpu) and not model.use_fast_path(cuda)
        with fast_path("on"):
            assert model.use_fast_path(cpu) and model.use_fast_path(cuda)
        assert model.FAST_PATH == "off"
    assert model.FAST_PATH == "auto"
    with pytest.raises(ValueError, match="fast_path"), fast_path("fused"):
        pass


def test_cuda_typed_tensors_run_the_plain_forms(monkeypatch):
    """Every tensor reports is_cuda (kernels still run on the CPU): auto picks the plain forms,
    bitwise the path that "off" forces; on real CPU tensors auto is the fast path."""
    m = _moved_from_init(Arch(d_model=32, r=2, n_layers_eff=4, n_prelude=1, n_coda=1, head_dim=16), 40, 8)
    idx, tgt = torch.randint(0, 40, (2, 8)), torch.randint(0, 40, (2, 8))
    out_auto, nodes_auto, _ = _logits_and_grads(m, idx, tgt, "auto")
    out_off, nodes_off, g_off = _logits_and_grads(m, idx, tgt, "off")
    assert FUSED_NODES <= nodes_auto and not FUSED_NODES & nodes_off
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    assert idx.is_cuda
    out, nodes, grads = _logits_and_grads(m, idx, tgt, "auto")
    monkeypatch.undo()
    assert not idx.is_cuda
    assert not FUSED_NODES & nodes and nodes == nodes_off
    assert torch.equal(out, out_off) and all(torch.equal(grads[n], g) for n, g in g_off.items())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: the CUDA-typed dispatch "
                    "tests above stand in; this one runs the model on a real GPU")
def test_cuda_runs_plain_forms_and_matches_cpu():
    m = _moved_from_init(Arch(d_model=32, r=2, n_layers_eff=4, n_prelude=1, n_coda=1, head_dim=16), 40, 8)
    idx, tgt = torch.randint(0, 40, (2, 8)), torch.randint(0, 40, (2, 8))
    out_cpu, _, g_cpu = _logits_and_grads(m, idx, tgt, "auto")
    out, nodes, grads = _logits_and_grads(m.cuda(), idx.cuda(), tgt.cuda(), "auto")
    assert not FUSED_NODES & nodes
    torch.testing.assert_close(out.cpu(), out_cpu, atol=1e-4, rtol=1e-4)
    for n, g in g_cpu.items():
        scale = g.abs().max().clamp_min(1e-12)
        torch.testing.assert_close(grads[n].cpu() / scale, g / scale, atol=1e-4, rtol=0, msg=n)


def test_fused_functions_gradcheck():
    """The hand-written backwards, in float64 against finite differences."""
    from loopscale.training.model import causal_attention, rms_normalize, rope_tables, squared_relu

    torch.manual_seed(0)
    x = torch.randn(2, 5, 12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(rms_normalize, (x,))
    assert torch.autograd.gradcheck(squared_relu, (x + 0.01 * torch.sign(x),))  # away from the kink
    cos, sin = (t.double() for t in rope_tables(5, 4))
    qkv = torch.randn(2, 5, 3 * 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: causal_attention(z, cos, sin, 2), (qkv,))
