"""The quantization primitive, its gradients (STE / LSQ), and the calibration observers."""

from __future__ import annotations

import math

import pytest
import torch

from qgraph import PerChannel, PerGroup, PerTensor, QSpec
from qgraph.observers import Observer
from qgraph.primitives import (
    choose_qparams,
    dequantize_affine,
    fake_quantize_affine,
    integer_range,
    quantize_affine,
)
from qgraph.quantizer import FakeQuantize

GRANULARITIES = {
    "per_tensor": PerTensor(),
    "per_channel0": PerChannel(0),
    "per_channel1": PerChannel(1),
    "per_group8": PerGroup(8),
}


def _minmax(x: torch.Tensor, g) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference min/max laid out by granularity (written independently of the observers)."""
    if isinstance(g, PerTensor):
        return x.min(), x.max()
    if isinstance(g, PerChannel):
        other = [d for d in range(x.dim()) if d != g.axis]
        return x.amin(dim=other), x.amax(dim=other)
    v = x.reshape(*x.shape[:-1], x.shape[-1] // g.size, g.size)
    return v.amin(-1), v.amax(-1)


def _expand(p: torch.Tensor, x: torch.Tensor, g) -> torch.Tensor:
    if isinstance(g, PerTensor):
        return p
    if isinstance(g, PerChannel):
        shape = [1] * x.dim()
        shape[g.axis] = -1
        return p.reshape(shape)
    return p.repeat_interleave(g.size, dim=-1)


def test_integer_range():
    assert integer_range(8, True) == (-128, 127)
    assert integer_range(8, False) == (0, 255)
    assert integer_range(4, True) == (-8, 7)
    assert integer_range(2, False) == (0, 3)
    with pytest.raises(ValueError):
        integer_range(0, True)


@pytest.mark.parametrize("gname", list(GRANULARITIES))
@pytest.mark.parametrize("signed", [True, False], ids=["int", "uint"])
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_fake_quantize_is_dequantize_of_quantize(bits, signed, gname):
    g = GRANULARITIES[gname]
    torch.manual_seed(bits * 10 + signed)
    x = torch.randn(6, 16) * torch.linspace(0.1, 3.0, 16) + 0.3
    qmin, qmax = integer_range(bits, signed)
    mn, mx = _minmax(x, g)
    symmetric = signed
    # shrink the range so that clamping to [qmin, qmax] is exercised too
    scale, zp = choose_qparams(mn * 0.7, mx * 0.7, qmin, qmax, symmetric)

    codes = quantize_affine(x, scale, zp, qmin, qmax, g)
    assert not codes.dtype.is_floating_point
    assert int(codes.min()) >= qmin and int(codes.max()) <= qmax
    # the shrunk range makes values saturate at an end of the grid
    assert int(codes.max()) == qmax or int(codes.min()) == qmin

    fq = fake_quantize_affine(x, scale, zp, qmin, qmax, g)
    dq = dequantize_affine(codes, scale, zp, qmin, qmax, g)
    assert fq.dtype == torch.float32 and fq.shape == x.shape
    assert torch.equal(fq, dq), "fake_quantize must equal dequantize(quantize(x)) bit for bit"

    # and both follow the documented formula q = clamp(round(x / s) + z), x̂ = (q - z) * s
    s, z = _expand(scale, x, g), _expand(zp, x, g)
    ref_q = torch.clamp(torch.round(x / s) + z, qmin, qmax)
    assert torch.equal(codes.float(), ref_q)
    assert torch.equal(fq, (ref_q - z) * s)
    # the error inside the range is at most half a step
    inside = (ref_q > qmin) & (ref_q < qmax)
    assert bool(((fq - x).abs() <= s / 2 * (1 + 1e-6))[inside].all())


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_choose_qparams_makes_zero_exactly_representable(bits, signed, symmetric):
    qmin, qmax = integer_range(bits, signed)
    # ranges that include zero, are all-positive, all-negative, or lopsided
    mins = torch.tensor([-1.0, 0.5, -3.0, -0.01, -7.3, 2.0])
    maxs = torch.tensor([1.0, 4.0, -0.5, 5.0, 0.2, 2.5])
    scale, zp = choose_qparams(mins, maxs, qmin, qmax, symmetric)
    assert scale.shape == mins.shape and bool((scale > 0).all())
    assert torch.equal(zp, torch.round(zp)), "zero points are integers"
    assert bool((zp >= qmin).all()) and bool((zp <= qmax).all())
    zero = torch.zeros(6, 3)
    fq = fake_quantize_affine(zero, scale, zp, qmin, qmax, PerChannel(0))
    assert torch.equal(fq, zero)
    # the representable range covers [min(min, 0), max(max, 0)] up to half a step
    lo = (qmin - zp) * scale
    hi = (qmax - zp) * scale
    assert bool((lo <= torch.clamp(mins, max=0) + scale / 2 + 1e-6).all())
    assert bool((hi >= torch.clamp(maxs, min=0) - scale / 2 - 1e-6).all())


def test_choose_qparams_asymmetric_uint8_values():
    scale, zp = choose_qparams(torch.tensor(-1.0), torch.tensor(3.0), 0, 255, symmetric=False)
    assert scale.item() == pytest.approx(4.0 / 255, rel=1e-6)
    assert zp.item() == 64.0  # round(0 - (-1) / (4/255)) = round(63.75)
    scale, zp = choose_qparams(torch.tensor(-2.0), torch.tensor(1.0), -128, 127, symmetric=True)
    assert scale.item() == pytest.approx(2.0 / 127, rel=1e-6)  # symmetric signed: max|x| / qmax
    assert zp.item() == 0.0


@pytest.mark.parametrize("bits", [4, 8])
def test_symmetric_signed_codes_stay_within_plus_minus_qmax(bits):
    qmin, qmax = integer_range(bits, True)
    torch.manual_seed(bits)
    w = torch.randn(16, 64)
    w[3, 5] = -5.0  # the most negative value of its row
    scale, zp = choose_qparams(w.amin(1), w.amax(1), qmin, qmax, symmetric=True)
    codes = quantize_affine(w, scale, zp, qmin, qmax, PerChannel(0))
    assert int(codes.min()) == -qmax and int(codes.max()) <= qmax
    assert int(codes[3, 5]) == -qmax
    assert int((codes == qmin).sum()) == 0, "the extra negative code is not used by calibrated weights"


# --------------------------------------------------------------------------- gradients


def _values_avoiding_boundaries(qmin: int, qmax: int, n: int, seed: int) -> torch.Tensor:
    """x / s values spread over [qmin - 4, qmax + 4] that avoid the half-step bands at the grid's
    ends (where "inside" by rounding and "inside" by value differ) and exact .5 ties."""
    g = torch.Generator().manual_seed(seed)
    v = torch.empty(0)
    while v.numel() < n:
        c = torch.rand(4 * n, generator=g) * (qmax - qmin + 8) + (qmin - 4)
        ok = ~((c > qmin - 0.6) & (c < qmin + 0.1)) & ~((c > qmax - 0.1) & (c < qmax + 0.6))
        ok &= (c - c.floor() - 0.5).abs() > 0.02
        v = torch.cat([v, c[ok]])
    return v[:n]


def test_ste_gradient_for_x_is_one_inside_zero_outside():
    qmin, qmax = integer_range(4, True)
    s = torch.tensor(0.1)
    v = _values_avoiding_boundaries(qmin, qmax, 400, seed=0)
    x = (v * s).clone().requires_grad_(True)
    upstream = torch.randn(400)
    out = fake_quantize_affine(x, s, torch.tensor(0.0), qmin, qmax, PerTensor())
    (out * upstream).sum().backward()
    inside = (v > qmin) & (v < qmax)
    assert 0 < int(inside.sum()) < 400, "the test data must cover both cases"
    assert torch.equal(x.grad, torch.where(inside, upstream, torch.zeros(())))


def _lsq_reference(x, s, upstream, qn, qp, g, dims):
    """ALGORITHMS.md §0.2: ∂L/∂s = g · Σ_i ∂L/∂x̂_i · r_i, r_i = Qn below, Qp above, ⌊x/s⌉ − x/s inside."""
    x, s, upstream = x.double(), s.double(), upstream.double()
    v = x / s
    r = torch.where(v < qn, torch.tensor(float(qn), dtype=torch.float64),
                    torch.where(v > qp, torch.tensor(float(qp), dtype=torch.float64), torch.round(v) - v))
    return g * (upstream * r).sum(dim=dims) if dims else g * (upstream * r).sum()


def test_lsq_scale_gradient_per_tensor():
    qn, qp = integer_range(4, True)
    s0 = 0.05
    x = _values_avoiding_boundaries(qn, qp, 300, seed=1) * s0
    upstream = torch.randn(300, generator=torch.Generator().manual_seed(2))
    g = 1.0 / math.sqrt(x.numel() * qp)
    scale = torch.tensor(s0, requires_grad=True)
    out = fake_quantize_affine(x, scale, torch.tensor(0.0), qn, qp, PerTensor(), grad_factor=g)
    (out * upstream).sum().backward()
    ref = _lsq_reference(x, torch.tensor(s0), upstream, qn, qp, g, None)
    assert scale.grad is not None and scale.grad.shape == scale.shape
    assert scale.grad.item() == pytest.approx(ref.item(), rel=1e-4, abs=1e-6)
    assert abs(ref.item()) > 1e-3  # a non-trivial gradient


@pytest.mark.parametrize("axis", [0, 1])
def test_lsq_scale_gradient_per_channel(axis):
    qn, qp = integer_range(4, True)
    channels, k = 5, 64
    s0 = torch.tensor([0.02, 0.05, 0.1, 0.2, 0.07])
    v = _values_avoiding_boundaries(qn, qp, channels * k, seed=3).reshape(channels, k)
    x = v * s0[:, None]
    upstream = torch.randn(channels, k, generator=torch.Generator().manual_seed(4))
    if axis == 1:
        x, v, upstream = x.t().contiguous(), v.t().contiguous(), upstream.t().contiguous()
    g = 1.0 / math.sqrt(k * qp)
    scale = s0.clone().requires_grad_(True)
    out = fake_quantize_affine(x, scale, torch.zeros(channels), qn, qp, PerChannel(axis), grad_factor=g)
    (out * upstream).sum().backward()
    shape = [1, 1]
    shape[axis] = -1
    ref = _lsq_reference(x, s0.reshape(shape), upstream, qn, qp, g, [1 - axis])
    assert scale.grad.shape == (channels,)
    torch.testing.assert_close(scale.grad.double(), ref, rtol=1e-4, atol=1e-6)
    # each channel's gradient depends only on its own slice: channels differ
    assert len({round(float(t), 6) for t in scale.grad}) == channels


def test_learnable_weight_quantizer_uses_lsq_gradient_scale():
    """FakeQuantize with a learnable spec multiplies the scale gradient by 1/sqrt(N_s · Qp)."""
    spec = QSpec(bits=4, symmetric=True, signed=True, granularity=PerChannel(0), learnable=True)
    fq = FakeQuantize(spec, role="weight")
    s0 = torch.tensor([0.01, 0.03, 0.05, 0.2])
    w = _values_avoiding_boundaries(spec.qmin, spec.qmax, 4 * 32, seed=5).reshape(4, 32) * s0[:, None]
    fq.init_from(w)  # calibrates and switches to quantize mode
    fq.set_qparams(s0, torch.zeros(4))  # a scale that keeps every x/s off the grid's half-step edges
    assert isinstance(fq.scale, torch.nn.Parameter) and fq.scale.shape == (4,)
    assert fq.grad_factor(w) == pytest.approx(1.0 / math.sqrt(32 * spec.qmax))
    upstream = torch.randn(4, 32, generator=torch.Generator().manual_seed(6))
    (fq(w) * upstream).sum().backward()
    qn, qp = spec.qmin, spec.qmax
    g = 1.0 / math.sqrt(32 * qp)
    ref = _lsq_reference(w, s0[:, None], upstream, qn, qp, g, [1])
    torch.testing.assert_close(fq.scale.grad.double(), ref, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- observers


def _fq_error(x: torch.Tensor, spec: QSpec, scale, zp) -> float:
    return float(((fake_quantize_affine(x, scale, zp, spec.qmin, spec.qmax, spec.granularity) - x) ** 2).mean())


def test_minmax_observer_tracks_range_over_batches():
    spec = QSpec(bits=8, symmetric=False, signed=False, granularity=PerTensor())
    obs = Observer(spec)
    obs.update(torch.tensor([0.0, 0.5, 1.0]))
    obs.update(torch.tensor([-1.0, 2.0]))
    obs.update(torch.tensor([3.0, 0.0]))
    scale, zp = obs.compute()
    assert scale.item() == pytest.approx(4.0 / 255, rel=1e-6)
    assert zp.item() == 64.0
    assert float(obs.min_val) == -1.0 and float(obs.max_val) == 3.0


def test_minmax_observer_per_channel_symmetric():
    spec = QSpec(bits=8, symmetric=True, signed=True, granularity=PerChannel(0))
    w = torch.tensor([[1.0, -2.0, 0.5], [0.1, 0.2, -0.05], [-4.0, 3.0, 0.0]])
    obs = Observer(spec)
    obs.update(w)
    scale, zp = obs.compute()
    torch.testing.assert_close(scale, torch.tensor([2.0, 0.2, 4.0]) / 127)
    assert torch.equal(zp, torch.zeros(3))


def test_percentile_observer_clips_an_outlier():
    torch.manual_seed(0)
    x = torch.randn(50_000)
    x[123] = 1000.0
    base = dict(bits=8, symmetric=False, signed=False, granularity=PerTensor())
    mm, pc = Observer(QSpec(**base)), Observer(QSpec(**base, observer="percentile", percentile=99.9))
    mm.update(x)
    pc.update(x)
    s_mm, z_mm = mm.compute()
    s_pc, z_pc = pc.compute()
    hi_mm = float((255 - z_mm) * s_mm)
    hi_pc = float((255 - z_pc) * s_pc)
    assert hi_mm >= 999.0
    assert 2.5 < hi_pc < 5.0, f"the 99.9th percentile of N(0, 1) is ~3.1, got a range up to {hi_pc}"
    lo_pc = float((0 - z_pc) * s_pc)
    assert -5.0 < lo_pc < -2.5
    # clipping the outlier makes the bulk of the data far more accurate
    bulk = x.clone()
    bulk[123] = 0.0
    spec = QSpec(**base)
    assert _fq_error(bulk, spec, s_pc, z_pc) < 0.01 * _fq_error(bulk, spec, s_mm, z_mm)


@pytest.mark.parametrize("gran", [PerTensor(), PerChannel(0)], ids=["per_tensor", "per_channel"])
def test_mse_observer_beats_minmax_on_heavy_tails_at_4_bits(gran):
    torch.manual_seed(0)
    x = torch.distributions.Laplace(0.0, 1.0).sample((8, 4096))
    base = dict(bits=4, symmetric=True, signed=True, granularity=gran)
    mm, ms = Observer(QSpec(**base)), Observer(QSpec(**base, observer="mse"))
    mm.update(x)
    ms.update(x)
    spec = QSpec(**base)
    s_mm, z_mm = mm.compute()
    s_ms, z_ms = ms.compute()
    e_mm, e_ms = _fq_error(x, spec, s_mm, z_mm), _fq_error(x, spec, s_ms, z_ms)
    assert e_ms <= e_mm
    assert e_ms < 0.8 * e_mm, f"MSE search should clearly help on a heavy-tailed tensor ({e_ms} vs {e_mm})"
    assert bool((s_ms <= s_mm + 1e-12).all()), "the MSE search only shrinks the min-max range"
