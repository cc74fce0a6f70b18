"""The one quantization primitive every qgraph quantizer is built on.

Affine integer grids: ``q = clamp(round(x / s) + z, qmin, qmax)`` and ``x̂ = (q - z) * s``, with
round-half-to-even (as ``torch.round`` and ONNX ``QuantizeLinear`` do). ``s`` and ``z`` are laid
out by granularity:

* per-tensor: ``scale`` is a 0-d tensor;
* per-channel: ``scale`` is 1-d with one entry per slice along ``axis``;
* per-group: ``x`` is ``[..., K]`` and ``scale`` is ``[..., K // group_size]`` (one scale per
  ``group_size`` consecutive elements of the last axis), matching ONNX blocked quantization. The
  ``dequantize`` kernel also takes blocks along another ``axis`` (lowered weight-only linears
  store ``W^T`` with blocks along axis 0, the layout ONNX Runtime's MatMulNBits wants).

The public functions below are the documented math; under ``torch.export`` they run as
``torch.library`` custom ops (``qgraph::fake_quantize``, ``qgraph::dequantize``) so that the ONNX
exporter can translate them into QuantizeLinear/DequantizeLinear at any bit width (see
``qgraph.backends.onnx_ops``). In training, fake quantization runs as an ``autograd.Function`` with
straight-through / LSQ gradients that ``torch.compile`` fuses (see "kernels" below).
"""

from __future__ import annotations

import torch

from qgraph.granularity import Granularity, PerChannel, PerGroup, PerTensor

# The smallest scale qgraph picks: far below any real activation range (random-weight models can
# produce logits near 1e-10), far above float32's smallest normal number.
MIN_SCALE = 1e-30

__all__ = [
    "MIN_SCALE",
    "integer_range",
    "choose_qparams",
    "quantize_affine",
    "dequantize_affine",
    "fake_quantize_affine",
    "fake_quantize_grads",
    "granularity_args",
]


def integer_range(bits: int, signed: bool) -> tuple[int, int]:
    """``(qmin, qmax)`` of a ``bits``-wide integer grid."""
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be in 1..16, got {bits}")
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def choose_qparams(
    min_val: torch.Tensor, max_val: torch.Tensor, qmin: int, qmax: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point that map ``[min_val, max_val]`` onto ``[qmin, qmax]``.

    The range is widened to include 0 so that zero is exactly representable. Symmetric signed grids
    use ``scale = max|x| / qmax`` and zero point 0, so codes stay in ``[-qmax, qmax]`` (int8:
    [-127, 127], ONNX Runtime's convention for weights; the extra code ``qmin`` stays reachable for
    learned scales). Symmetric unsigned grids centre the zero point at ``(qmax + 1) / 2`` with
    ``scale = max|x| / ((qmax - qmin) / 2)``.
    """
    min_val = torch.minimum(min_val.float(), torch.zeros_like(min_val, dtype=torch.float32))
    max_val = torch.maximum(max_val.float(), torch.zeros_like(max_val, dtype=torch.float32))
    eps = MIN_SCALE
    if symmetric:
        amax = torch.maximum(-min_val, max_val)
        half = qmax if qmin < 0 else (qmax - qmin) / 2
        scale = torch.clamp(amax / half, min=eps)
        zp = torch.full_like(scale, 0.0 if qmin < 0 else float((qmax + 1) // 2))
    else:
        scale = torch.clamp((max_val - min_val) / (qmax - qmin), min=eps)
        zp = torch.clamp(torch.round(qmin - min_val / scale), qmin, qmax)
    return scale, zp


def granularity_args(g: Granularity) -> tuple[int, int]:
    """``(axis, group_size)`` as the kernels take them; ``axis=-1, group_size=0`` is per-tensor."""
    if isinstance(g, PerTensor):
        return -1, 0
    if isinstance(g, PerChannel):
        return g.axis, 0
    if isinstance(g, PerGroup):
        return -1, g.size
    raise TypeError(f"unknown granularity {g!r}")


def _expand(p: torch.Tensor, x: torch.Tensor, axis: int, group_size: int) -> torch.Tensor:
    """Broadcast a scale or zero point laid out by granularity to ``x``'s shape."""
    if group_size > 0:
        return p.repeat_interleave(group_size, dim=axis)
    if p.dim() == 0 or p.numel() == 1 and axis < 0:
        return p.reshape(())
    shape = [1] * x.dim()
    shape[axis] = -1
    return p.reshape(shape)


def _reduce_to(g: torch.Tensor, p: torch.Tensor, axis: int, group_size: int) -> torch.Tensor:
    """Sum an elementwise gradient back to the layout of the scale/zero point ``p``."""
    if group_size > 0:
        return g.reshape(*g.shape[:-1], -1, group_size).sum(-1).reshape(p.shape)
    if p.numel() == 1 and axis < 0:
        return g.sum().reshape(p.shape)
    dims = [d for d in range(g.dim()) if d != axis % g.dim()]
    return g.sum(dim=dims).reshape(p.shape)


# --------------------------------------------------------------------------- kernels
#
# One forward and one backward, written once in plain ATen ops. Three callers share them:
# * the custom op ``qgraph::fake_quantize``: what ``torch.export`` (hence the ONNX exporter) sees, so
#   ``backends.onnx_ops`` can translate it into QuantizeLinear/DequantizeLinear;
# * ``_FakeQuantizeFn`` (an ``autograd.Function``): the training path. ``torch.compile`` traces
#   through it, so Inductor fuses each quantizer's forward, and its backward, into the neighbouring
#   kernels instead of calling an opaque op;
# * plain calls without autograd (inference, observers).


def _fq_forward(x, scale, zero_point, qmin: int, qmax: int, axis: int, group_size: int) -> torch.Tensor:
    s = _expand(scale, x, axis, group_size)
    z = _expand(zero_point, x, axis, group_size)
    # (clamp(round(x / s) + z, qmin, qmax) - z) * s, in place on the one fresh tensor: the same float
    # operations in the same order (bit for bit), without five temporaries (3-4x faster on large
    # activations, where allocating and faulting in fresh memory costs more than the arithmetic)
    v = torch.div(x, s)
    return v.round_().add_(z).clamp_(qmin, qmax).sub_(z).mul_(s)


def _fq_grads(grad, x, scale, zero_point, qmin, qmax, axis, group_size, grad_factor, need_scale, need_zero_point):
    """Straight-through estimator for x; LSQ gradient for the scale, LSQ+ for the zero point."""
    s = _expand(scale, x, axis, group_size)
    z = _expand(zero_point, x, axis, group_size)
    v = x / s
    r = v + z  # LSQ decides in/out of range on the unrounded value (ALGORITHMS.md §0.2)
    below, above = r < qmin, r > qmax
    inside = ~(below | above)
    grad_x = grad * inside
    grad_s = grad_z = None
    if need_scale:
        local = torch.where(inside, torch.round(v) - v, torch.where(below, qmin - z, qmax - z))
        grad_s = _reduce_to(grad * local, scale, axis, group_size) * grad_factor
    if need_zero_point:
        grad_z = _reduce_to(grad * torch.where(inside, 0.0, -s), zero_point, axis, group_size) * grad_factor
    return grad_x, grad_s, grad_z


@torch.library.custom_op("qgraph::fake_quantize", mutates_args=())
def _fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qmin: int,
    qmax: int,
    axis: int,
    group_size: int,
    grad_factor: float,
) -> torch.Tensor:
    return _fq_forward(x, scale, zero_point, qmin, qmax, axis, group_size)


@_fake_quantize.register_fake
def _(x, scale, zero_point, qmin, qmax, axis, group_size, grad_factor):
    return torch.empty_like(x)


def _fq_setup(ctx, inputs, output):
    x, scale, zero_point, qmin, qmax, axis, group_size, grad_factor = inputs
    ctx.save_for_backward(x, scale, zero_point)
    ctx.args = (qmin, qmax, axis, group_size, grad_factor)


def _fq_backward(ctx, grad):
    x, scale, zero_point = ctx.saved_tensors
    grads = _fq_grads(grad, x, scale, zero_point, *ctx.args, ctx.needs_input_grad[1], ctx.needs_input_grad[2])
    return (*grads, None, None, None, None, None)


_fake_quantize.register_autograd(_fq_backward, setup_context=_fq_setup)


class _FakeQuantizeFn(torch.autograd.Function):
    """The training path of ``fake_quantize_affine``: the same math as the custom op, traceable."""

    @staticmethod
    def forward(x, scale, zero_point, qmin, qmax, axis, group_size, grad_factor):
        return _fq_forward(x, scale, zero_point, qmin, qmax, axis, group_size)

    setup_context = staticmethod(_fq_setup)
    backward = staticmethod(_fq_backward)


@torch.library.custom_op("qgraph::dequantize", mutates_args=())
def _dequantize(
    q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int, axis: int, group_size: int
) -> torch.Tensor:
    return _dq_forward(q, scale, zero_point, axis, group_size)


def _dq_forward(q, scale, zero_point, axis: int, group_size: int) -> torch.Tensor:
    s = _expand(scale, q, axis, group_size)
    z = _expand(zero_point, q, axis, group_size)
    return (q.to(s.dtype) - z) * s


@_dequantize.register_fake
def _(q, scale, zero_point, qmin, qmax, axis, group_size):
    return torch.empty(q.shape, dtype=scale.dtype, device=q.device)


# --------------------------------------------------------------------------- public math


def quantize_affine(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int, granularity: Granularity
) -> torch.Tensor:
    """Integer codes ``clamp(round(x / s) + z, qmin, qmax)`` as int8 (int16 above 8 bits)."""
    axis, group_size = granularity_args(granularity)
    s = _expand(scale, x, axis, group_size)
    z = _expand(zero_point, x, axis, group_size)
    q = torch.clamp(torch.round(x / s) + z, qmin, qmax)
    dtype = torch.int8 if -128 <= qmin and qmax <= 127 else (torch.uint8 if qmin >= 0 and qmax <= 255 else torch.int16)
    return q.to(dtype)


def dequantize_affine(
    q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int, granularity: Granularity
) -> torch.Tensor:
    """Float values ``(q - z) * s`` of integer codes."""
    axis, group_size = granularity_args(granularity)
    if torch.compiler.is_exporting():
        return torch.ops.qgraph.dequantize(q, scale, zero_point, qmin, qmax, axis, group_size)
    return _dq_forward(q, scale, zero_point, axis, group_size)


def fake_quantize_grads(
    grad: torch.Tensor,
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qmin: int,
    qmax: int,
    granularity: Granularity,
    grad_factor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients ``fake_quantize_affine`` back-propagates for an output gradient ``grad``:
    ``(d x, d scale, d zero_point)`` (straight-through, LSQ, LSQ+), for quantizers with their own
    forward (e.g. bit switching's double rounding) that share this backward."""
    axis, group_size = granularity_args(granularity)
    return _fq_grads(grad, x, scale, zero_point, qmin, qmax, axis, group_size, grad_factor, True, True)


def fake_quantize_affine(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qmin: int,
    qmax: int,
    granularity: Granularity,
    grad_factor: float = 1.0,
) -> torch.Tensor:
    """``dequantize(quantize(x))`` in one op, with straight-through (x) and LSQ (scale) gradients.

    ``grad_factor`` multiplies the scale and zero-point gradients (LSQ uses ``1/sqrt(N * qmax)``).
    The result equals ``dequantize_affine(quantize_affine(x, ...), ...)`` bit for bit.
    """
    axis, group_size = granularity_args(granularity)
    if torch.compiler.is_exporting():  # one op the ONNX exporter translates into Q/DQ
        return torch.ops.qgraph.fake_quantize(x, scale, zero_point, qmin, qmax, axis, group_size, float(grad_factor))
    if torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad or zero_point.requires_grad):
        return _FakeQuantizeFn.apply(x, scale, zero_point, qmin, qmax, axis, group_size, float(grad_factor))
    return _fq_forward(x, scale, zero_point, qmin, qmax, axis, group_size)
