"""OFQ: StatsQ formula, CGA freezing, the oscillation counter, query-key reparameterization."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import qgraph
from qgraph.ofq import CGA, OscillationTracker, QATLinear, QKRAttention, prepare_ofq, statsq, statsq_scale


class TimmAttention(nn.Module):
    """timm's ViT attention block layout."""

    def __init__(self, dim: int = 16, num_heads: int = 4) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * (c // self.num_heads) ** -0.5).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, attn: nn.Module, dim: int = 16) -> None:
        super().__init__()
        self.attn = attn
        self.fc1, self.fc2 = nn.Linear(dim, 32), nn.Linear(32, dim)

    def forward(self, x):
        a = self.attn(x, x, x)[0] if isinstance(self.attn, (nn.MultiheadAttention, QKRAttention)) and \
            getattr(self.attn, "style", "mha") == "mha" else self.attn(x)
        x = x + a
        return x + self.fc2(torch.relu(self.fc1(x)))


def test_statsq_follows_its_formula_with_identity_gradient():
    torch.manual_seed(0)
    w = (torch.randn(6, 10) * torch.linspace(0.1, 2, 6)[:, None]).requires_grad_()
    for bits in (2, 3, 4):
        q = statsq(w, bits)
        a = w.detach().numpy().astype(np.float32)
        s = 2 * np.abs(a).mean(axis=1, keepdims=True)
        n = 2 ** (bits - 1)
        u = np.clip(a / s, -1, 1 - 1e-6)
        want = s * (np.round(u * n - 0.5) + 0.5) / n
        np.testing.assert_allclose(q.detach().numpy(), want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(statsq_scale(w).numpy(), s[:, 0], rtol=1e-6)
        assert not np.any(np.isclose(q.detach().numpy(), 0))  # no zero level
        g = torch.randn_like(w)
        (grad,) = torch.autograd.grad(q, w, g)
        assert torch.equal(grad, g)  # identity STE, clipped weights included
    # 2-bit levels are ±0.5·mean|W| and ±1.5·mean|W|
    m = w.detach().abs().mean(1, keepdim=True)
    levels = (statsq(w, 2).detach() / m).unique().numpy()
    assert set(np.round(levels, 4).tolist()) <= {-1.5, -0.5, 0.5, 1.5}


def _tiny_statsq_mlp(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 4))
    prepare_ofq(model, bits=2, keep=(), qkr=False)
    return model


def test_cga_really_freezes_the_weights_it_reports_frozen():
    model = _tiny_statsq_mlp()
    x, y = torch.randn(64, 12), torch.randint(0, 4, (64,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    for _ in range(3):  # some plain QAT first: momentum and weight decay would move every weight
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    cga = CGA(model, boundary_range=0.05).attach(opt)
    moved_unfrozen = 0
    for _ in range(5):
        before = {n: m.weight.detach().clone() for n, m in cga.layers.items()}
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        for n, m in cga.layers.items():
            frozen = cga.frozen[n]
            assert frozen.any() and torch.equal(m.weight.detach()[frozen], before[n][frozen])
            moved_unfrozen += int((m.weight.detach()[~frozen] != before[n][~frozen]).sum())
    assert moved_unfrozen > 0  # the near-threshold weights still train
    assert 0.5 < cga.frozen_ratio() < 1.0
    cga.detach()
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    before = model[0].weight.detach().clone()
    opt.step()
    assert (model[0].weight.detach() != before).float().mean() > 0.5  # hooks removed: everything trains again


def test_oscillation_counter_counts_a_synthetic_oscillation():
    lin = QATLinear(4, 1, bias=False, bits=2)
    tracker_values = [0.1, 0.9, 0.1, 0.9, 0.1]
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -1.0, 0.5, tracker_values[0]]]))
    tracker = OscillationTracker(nn.Sequential(lin), momentum=0.5)
    for v in tracker_values[1:]:
        with torch.no_grad():
            lin.weight[0, 3] = v
        tracker.step()
    counts = tracker.counts["0"][0].tolist()
    assert counts == [0, 0, 0, 3]  # 0→1 sets the direction, then three reversals
    assert tracker.total() == 3
    assert tracker.ema["0"][0, 3] == pytest.approx(0.5 * (1 + 0.5 + 0.25))
    assert tracker.ratio(0.1) == pytest.approx(0.25)


@pytest.mark.parametrize("kind", ["timm", "mha"])
def test_qkr_attention_is_an_exact_reparameterization_before_quantization(kind):
    torch.manual_seed(0)
    attn = TimmAttention() if kind == "timm" else nn.MultiheadAttention(16, 4, batch_first=True)
    with torch.no_grad():
        for p in attn.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # non-zero q/k/v biases
    model = Block(attn).eval()
    x = torch.randn(3, 7, 16)
    with torch.no_grad():
        ref = model(x)
    prepare_ofq(model, bits=None, keep=())  # float: only the reparameterization
    assert isinstance(model.attn, QKRAttention)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-5)


def test_qkr_quantized_block_trains_and_is_tracked():
    torch.manual_seed(0)
    model = Block(TimmAttention())
    _, changes = prepare_ofq(model, bits=2, a_bits=4, keep=())
    assert any("QKRAttention" in c.detail for c in changes)
    x = torch.randn(4, 7, 16)
    tracker = OscillationTracker(model)
    assert set(tracker.modules) == {"attn", "attn.v", "attn.proj", "fc1", "fc2"}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.attn.q_weight.detach().clone()
    model(x).square().mean().backward()
    opt.step()
    tracker.step()
    assert not torch.equal(before, model.attn.q_weight.detach())  # gradients reach W_q through W_qk


def test_unrecognised_attention_names_the_module():
    class FancyAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.to_qkv = nn.Linear(16, 48)

        def forward(self, x):
            return x

    model = nn.Sequential(nn.Linear(16, 16), FancyAttention())
    with pytest.raises(qgraph.UnsupportedOpError, match=r"'1' \(FancyAttention\).*qkr=False"):
        prepare_ofq(model, bits=2)
