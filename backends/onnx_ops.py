"""ONNX translations of qgraph's custom ops for the dynamo ONNX exporter.

* ``qgraph::fake_quantize`` → ``QuantizeLinear → DequantizeLinear`` with a uint8/int8 zero point;
  grids narrower than 8 bits get an integer ``Clip`` between Q and DQ.
* ``qgraph::dequantize`` → ``Cast(int codes → container) → DequantizeLinear``; the Cast of an
  initializer is folded into a typed initializer after export (int4 packed two to a byte, int2
  four to a byte; :func:`qgraph.backends.onnx_fold.fold_constant_quantization`).
* ``aten::conv3d`` → ``Conv`` (works around an onnxscript bug with bias-less 3-D convs: :func:`conv3d`).
* ``aten::_cdist_forward`` (``torch.cdist``), which torchlib does not translate → the direct
  pairwise-distance formula (:func:`cdist`).
* ``aten::adaptive_max_pool2d``/``3d``, which torchlib does not translate (torch decomposes only
  sizes that divide) → ``Slice → ReduceMax`` per output index and axis, indices by ``ArgMax``
  (:func:`adaptive_max_pool`).
* ``qgraph::rnn`` and ``qgraph::packed_rnn`` (recurrent layers on a batch, on packed sequences) → ONNX
  ``LSTM``/``GRU``/``RNN`` for any time length, on packed sequences with ``sequence_lens``
  (``backends/onnx_rnn.py``).
* ``aten::scatter_reduce`` with ``reduce="mean"``, which torchlib translates as a plain scatter
  (ONNX's ``ScatterElements`` has no mean) → sums and counts by two ``ScatterElements(add)``, divided
  (:func:`scatter_reduce`); the other reductions go to torchlib as before.
* mixture-of-experts grouped matmuls (``transformers::grouped_mm_fallback``, ``aten::_grouped_mm``
  with offsets, which torchlib does not translate) → one ``MatMul`` per expert (:func:`grouped_mm`).

Weight containers: int8/uint8, int4/uint4 (opset 21), int2/uint2 (opset 25, only when the export
runs at opset 25: :func:`translation_table` takes the opset). Axis and block size follow the
primitive's layout: per-tensor (no axis), per-channel (``axis``), per-group (``axis`` = blocked
axis, ``block_size``).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import torch
from onnxscript import opset21 as op

INT2_OPSET = 25  # the first opset with INT2 / UINT2

_RANGES = {
    ir.DataType.INT2: (-2, 1),
    ir.DataType.UINT2: (0, 3),
    ir.DataType.INT4: (-8, 7),
    ir.DataType.UINT4: (0, 15),
    ir.DataType.INT8: (-128, 127),
    ir.DataType.UINT8: (0, 255),
}
_NP = {ir.DataType.INT8: np.int8, ir.DataType.UINT8: np.uint8}


def container(qmin: int, qmax: int, allow_4bit: bool, allow_2bit: bool = False) -> ir.DataType:
    """The narrowest allowed ONNX integer type that holds a [qmin, qmax] grid."""
    signed = qmin < 0
    order = ((ir.DataType.INT2, ir.DataType.INT4, ir.DataType.INT8) if signed
             else (ir.DataType.UINT2, ir.DataType.UINT4, ir.DataType.UINT8))
    allowed = (allow_2bit, allow_4bit, True)
    for dtype, ok in zip(order, allowed):
        lo, hi = _RANGES[dtype]
        if ok and lo <= qmin and qmax <= hi:
            return dtype
    return order[-1]


def is_2bit(qmin: int, qmax: int) -> bool:
    """Whether a weight grid fits an INT2/UINT2 container."""
    return (-2 <= qmin and qmax <= 1) if qmin < 0 else qmax <= 3


def _qdq_attrs(axis: int, group_size: int, scale_rank: int) -> dict:
    if group_size > 0:
        return {"axis": axis, "block_size": group_size}
    if scale_rank == 0:
        return {}
    return {"axis": axis}


def _scale_rank(scale) -> int:
    shape = getattr(scale, "shape", None)
    return len(shape) if shape is not None else 0


def _one_step(scale, zero_point, group_size: int) -> tuple:
    """A ``[1]`` scale (one step along an axis of size 1: OFQ's per-token steps on a pooled conv map) and
    its zero point as scalars. ONNX Runtime takes a one-element scale as per-tensor when it fuses
    ``DequantizeLinear → AveragePool → QuantizeLinear`` into ``QLinearAveragePool``, and then refuses
    the file ("Scale and Zero-point must be a scalar"). The same numbers either way."""
    shape = getattr(scale, "shape", None)
    if group_size > 0 or shape is None or len(shape) != 1 or shape[0] != 1:
        return scale, zero_point
    scalar = op.Constant(value=ir.tensor(np.array([], dtype=np.int64)))
    return op.Reshape(scale, scalar), op.Reshape(zero_point, scalar)


def fake_quantize(x, scale, zero_point, qmin: int, qmax: int, axis: int, group_size: int, grad_factor: float):
    # activations always travel in 8-bit containers: ONNX Runtime's QDQ fusion picks up uint4
    # activations for QLinearConv and then rejects the graph (ORT 1.32); signed ones move to uint8
    # after export (backends.onnx_fold rule 12)
    dtype = container(qmin, qmax, allow_4bit=False)
    scale, zero_point = _one_step(scale, zero_point, group_size)
    zp = op.Cast(zero_point, to=dtype)
    attrs = _qdq_attrs(axis, group_size, _scale_rank(scale))
    q = op.QuantizeLinear(x, scale, zp, **attrs)
    if (qmin, qmax) != _RANGES[dtype]:
        lo = op.Constant(value=ir.tensor(np.array(qmin, dtype=_NP[dtype])))
        hi = op.Constant(value=ir.tensor(np.array(qmax, dtype=_NP[dtype])))
        q = op.Clip(q, lo, hi)
    return op.DequantizeLinear(q, scale, zp, **attrs)


def dequantize(q, scale, zero_point, qmin: int, qmax: int, axis: int, group_size: int):
    """Weights in int8/uint8 or int4/uint4 containers (opset 21)."""
    dtype = container(qmin, qmax, allow_4bit=True)
    qc = op.Cast(q, to=dtype)
    zp = op.Cast(zero_point, to=dtype)
    return op.DequantizeLinear(qc, scale, zp, **_qdq_attrs(axis, group_size, _scale_rank(scale)))


def dequantize_int2(q, scale, zero_point, qmin: int, qmax: int, axis: int, group_size: int):
    """As :func:`dequantize`, with 2-bit grids in int2/uint2 containers (opset 25)."""
    dtype = container(qmin, qmax, allow_4bit=True, allow_2bit=True)
    qc = op.Cast(q, to=dtype)
    zp = op.Cast(zero_point, to=dtype)
    return op.DequantizeLinear(qc, scale, zp, **_qdq_attrs(axis, group_size, _scale_rank(scale)))


def conv3d(input, weight, bias=None, stride=(1, 1, 1), padding=(0, 0, 0), dilation=(1, 1, 1), groups: int = 1):
    """``aten::conv3d`` as one ``Conv``, without a bias input when the layer has none.

    onnxscript 0.7's own translation gives a bias-less conv3d a zero bias of shape [C, 2] (copied from
    its complex variant; microsoft/onnxscript#2931, fix open in #2935), which ONNX Runtime rejects
    ("bias must be a 1D tensor of size output_channels"): every Conv3d(bias=False) in a float export,
    e.g. ``qgraph.export_onnx`` of torchvision's MViT or R3D."""
    def triple(v):
        return [v] * 3 if isinstance(v, int) else list(v) * (3 if len(v) == 1 else 1)

    pads = triple(padding)
    unbatched = len(input.shape) == 4  # conv3d also takes one unbatched [C, T, H, W] clip
    if unbatched:
        input = op.Unsqueeze(input, op.Constant(value_ints=[0]))
    inputs = (input, weight) if bias is None else (input, weight, bias)
    kernel = list(weight.shape[2:]) if weight.shape is not None and all(isinstance(d, int) for d in weight.shape[2:]) else None
    out = op.Conv(*inputs, strides=triple(stride), pads=pads + pads, dilations=triple(dilation), group=groups,
                  **({"kernel_shape": kernel} if kernel else {}))
    return op.Squeeze(out, op.Constant(value_ints=[0])) if unbatched else out


def cdist(x1, x2, p: float = 2.0, compute_mode=None):
    """``aten::_cdist_forward`` (``torch.cdist``: pairwise p-norm distances between the rows of
    ``x1 [..., P, M]`` and ``x2 [..., R, M]``), which torchlib does not translate, as the direct
    formula on ``x1[..., :, None, :] - x2[..., None, :, :]``: ``Sqrt(ReduceSum(d²))`` for p = 2,
    ``ReduceSum(|d|)`` for 1, ``ReduceMax(|d|)`` for ∞, the count of non-zeros for 0, else
    ``ReduceSum(|d|^p)^(1/p)``. PyTorch computes p = 2 on more than 25 rows through a matrix product
    (``compute_mode``), which rounds differently by a few ulps; the direct form is the exact one."""
    axes = op.Constant(value_ints=[-1])
    d = op.Sub(op.Unsqueeze(x1, op.Constant(value_ints=[-2])), op.Unsqueeze(x2, op.Constant(value_ints=[-3])))
    if p == 2:
        return op.Sqrt(op.ReduceSum(op.Mul(d, d), axes, keepdims=0))
    a = op.Abs(d)
    if p == 1:
        return op.ReduceSum(a, axes, keepdims=0)
    if p == float("inf"):
        return op.ReduceMax(a, axes, keepdims=0)
    if p == 0:
        return op.ReduceSum(op.CastLike(op.Not(op.Equal(d, op.CastLike(0.0, d))), d), axes, keepdims=0)
    return op.Pow(op.ReduceSum(op.Pow(a, op.CastLike(p, a)), axes, keepdims=0), op.CastLike(1.0 / p, a))


_FLOATS = {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE}


def scatter_reduce(self, dim: int, index, src, reduce: str, include_self: bool = True):
    """``aten::scatter_reduce``. torchlib (onnxscript) writes ``reduce="mean"`` as
    ``ScatterElements(reduction="none")``, a plain scatter that keeps the last value written: a file
    that ONNX Runtime runs and that is silently wrong (ToMe's token merging, 1.1 off). The mean is
    the scattered sum over the count, each starting from ``self`` and 1 with ``include_self``;
    without it, positions nothing is scattered to keep ``self``."""
    from onnxscript.function_libs.torch_lib.ops.core import aten_scatter_reduce

    if reduce != "mean":
        return aten_scatter_reduce(self, dim, index, src, reduce, include_self=include_self)
    dtype = src.dtype or self.dtype
    if dtype not in _FLOATS:
        raise NotImplementedError(f"scatter_reduce(reduce='mean') on {dtype} tensors: torch rounds the integer mean "
                                  "down, which has no ONNX translation here; scatter in float, or use reduce='sum' and divide")
    ones = op.Expand(op.CastLike(1.0, src), op.Shape(src))
    zeros = op.Mul(self, op.CastLike(0.0, self))
    if include_self:
        sums = op.ScatterElements(self, index, src, axis=dim, reduction="add")
        counts = op.ScatterElements(op.Add(zeros, op.CastLike(1.0, self)), index, ones, axis=dim, reduction="add")
        return op.Div(sums, counts)
    sums = op.ScatterElements(zeros, index, src, axis=dim, reduction="add")
    counts = op.ScatterElements(zeros, index, ones, axis=dim, reduction="add")
    reached = op.Greater(counts, op.CastLike(0.0, counts))
    return op.Where(reached, op.Div(sums, op.Max(counts, op.CastLike(1.0, counts))), self)


def ps_roi_align(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int, sampling_ratio: int):
    """``torchvision::ps_roi_align`` (R-FCN's position-sensitive pooling), which neither ONNX nor torchlib
    has: bin ``(i, j)`` of output channel ``c`` is bin ``(i, j)`` of ``RoiAlign`` (half-pixel, as
    torchvision's ``aligned=True``) on input channel ``c·ph·pw + i·pw + j``. Computed as ``RoiAlign``
    on every channel, then the diagonal of its ``[ph·pw, ph·pw]`` channel-by-bin blocks, by a mask and a
    sum (exact: the other terms are zeros). Also returns torchvision's channel mapping."""
    from onnxscript.function_libs.torch_lib.ops.vision import torchvision_roi_align

    bins = pooled_height * pooled_width
    channels = input.shape[1] if input.shape is not None else None
    if not isinstance(channels, int):
        raise NotImplementedError("ps_roi_align with a channel count the exporter does not know")
    out_channels = channels // bins
    pooled = torchvision_roi_align(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned=True)
    blocks = op.Reshape(pooled, op.Constant(value_ints=[0, out_channels, bins, bins]))  # [K, C, channel bin, spatial bin]
    eye = op.CastLike(op.Constant(value=ir.tensor(np.eye(bins, dtype=np.float32))), pooled)
    picked = op.ReduceSum(op.Mul(blocks, eye), op.Constant(value_ints=[2]), keepdims=0)  # [K, C, bins]
    out = op.Reshape(picked, op.Constant(value_ints=[0, out_channels, pooled_height, pooled_width]))
    mapping = np.arange(channels, dtype=np.int64).reshape(1, out_channels, pooled_height, pooled_width)
    channel_mapping = op.Expand(op.Constant(value=ir.tensor(mapping)), op.Shape(out))
    return out, channel_mapping


def rsub_scalar(self, other, alpha=1):
    """``aten::rsub.Scalar``, ``other - alpha * self`` (``1.0 - mask`` on an integer mask, older
    repositories' attention masks). torch 2.13+'s exporter decomposes it into ``aten.sub.Tensor`` on a
    Python float and fails ("Cannot find a compatible OpOverload for aten.sub", pytorch/pytorch#194381),
    float files included. A float scalar on an integer tensor computes in float32, as torch promotes."""
    if self.dtype is not None and self.dtype not in _FLOATS and (isinstance(other, float) or isinstance(alpha, float)):
        self = op.Cast(self, to=ir.DataType.FLOAT)
    scaled = self if alpha == 1 else op.Mul(self, op.CastLike(alpha, self))
    return op.Sub(op.CastLike(other, self), scaled)


def log_sigmoid(self):
    """``aten::log_sigmoid`` as ``-softplus(-x)``. torchlib writes ``Log(Sigmoid(x))``: ONNX Runtime's
    Sigmoid loses its relative accuracy in the negative tail (0.024 off at x = -13, SigLIP's pairwise
    loss) and underflows to 0 below about -88, where the Log gives -inf. ONNX Runtime's Softplus
    is computed stably (within 5e-7 over [-30, 30])."""
    return op.Neg(op.Softplus(op.Neg(self)))


def median_dim(self, dim: int, keepdim: bool = False):
    """``aten::median.dim``, which torchlib lacks: the lower median (the ``(n - 1) // 2``-th smallest
    along ``dim``) and its index, as the last of ``TopK(k = (n - 1) // 2 + 1, largest=0)``."""
    n = op.Gather(op.Shape(self), op.Constant(value_ints=[dim]))
    k = op.Add(op.Div(op.Sub(n, op.Constant(value_ints=[1])), op.Constant(value_ints=[2])), op.Constant(value_ints=[1]))
    values, indices = op.TopK(self, k, axis=dim, largest=0, sorted=1)
    last = op.Sub(k, op.Constant(value_ints=[1]))
    values, indices = op.Gather(values, last, axis=dim), op.Gather(indices, last, axis=dim)
    if not keepdim:
        axes = op.Constant(value_ints=[dim])
        values, indices = op.Squeeze(values, axes), op.Squeeze(indices, axes)
    return values, indices


def median(self):
    """``aten::median``: the lower median of all elements (:func:`median_dim` on the flattened tensor)."""
    values, _ = median_dim(op.Reshape(self, op.Constant(value_ints=[-1])), 0)
    return values


def searchsorted(sorted_sequence, self, out_int32: bool = False, right: bool = False, side: str | None = None, sorter=None):
    """``aten::searchsorted.Tensor``, which torchlib lacks: per value, how many entries of its sorted row
    lie below it (``right``/``side="right"``: at or below), by comparing every value with every
    entry. ``sorted_sequence`` 1-D (one row for all values) or with the values' leading dims."""
    if sorter is not None:
        raise NotImplementedError("searchsorted with a sorter: sort the sequence before the call")
    last = op.Constant(value_ints=[-1])
    seq = sorted_sequence if len(sorted_sequence.shape or ()) == 1 else op.Unsqueeze(sorted_sequence, op.Constant(value_ints=[-2]))
    values = op.Unsqueeze(self, last)
    below = op.LessOrEqual(seq, values) if right or side == "right" else op.Less(seq, values)
    counts = op.ReduceSum(op.Cast(below, to=ir.DataType.INT64), last, keepdims=0)
    return op.Cast(counts, to=ir.DataType.INT32) if out_int32 else counts


def cumprod(self, dim: int, dtype: int | None = None):
    """``aten::cumprod``, which neither ONNX nor torchlib has (NeRF's transmittance, ``(1 - alpha).cumprod``;
    a run of matched draft tokens, ``eq.cumprod(-1)``): in float64, the magnitude as ``exp(cumsum(log|x|))``,
    the sign from the count of negative factors so far, and 0 from the first zero on. Integer and bool
    inputs give int64, as torch does (exact below 2**53)."""
    floating = self.dtype in _FLOATS
    x = op.Cast(self, to=ir.DataType.DOUBLE)
    axis = op.Constant(value_int=dim)
    zero, one = op.Constant(value_float=0.0), op.Constant(value_float=1.0)
    zero, one = op.CastLike(zero, x), op.CastLike(one, x)
    is_zero = op.Equal(x, zero)
    magnitude = op.Exp(op.CumSum(op.Log(op.Where(is_zero, one, op.Abs(x))), axis))
    negatives = op.CumSum(op.Cast(op.Less(x, zero), to=ir.DataType.INT64), axis)
    odd = op.Equal(op.Mod(negatives, op.Constant(value_int=2)), op.Constant(value_int=1))
    signed = op.Where(odd, op.Neg(magnitude), magnitude)
    zeros_so_far = op.CumSum(op.Cast(is_zero, to=ir.DataType.INT64), axis)
    out = op.Where(op.Greater(zeros_so_far, op.Constant(value_int=0)), zero, signed)
    if dtype is not None and dtype != -1:
        return op.Cast(out, to=dtype)
    return op.CastLike(out, self) if floating else op.Cast(op.Round(out), to=ir.DataType.INT64)


def _window(j: int, size: int, out: int) -> tuple[int, int]:
    """Adaptive pooling's window along one axis: ``[floor(j·size/out), ceil((j+1)·size/out))``."""
    return j * size // out, -(-(j + 1) * size // out)


def adaptive_max_pool(self, output_size):
    """``aten::adaptive_max_pool2d`` / ``3d`` (also ``AdaptiveMaxPool1d``, which calls the 2-D op), which
    torchlib does not translate: where every output size divides its input size torch decomposes the op
    into a ``MaxPool``, but e.g. SPP levels (13x13 to 4x4) have windows of different sizes that overlap.

    The values: a maximum over a box is a maximum over rows of maxima over columns, so one axis at a time,
    one ``Slice → ReduceMax`` per output index, then ``Concat``. The indices (flat positions in the
    input's spatial plane, as torch returns them; ONNX drops them when the model does not use them): per
    output cell, ``ArgMax`` of the flattened window, mapped back to input coordinates. Needs static
    spatial sizes."""
    k = len(output_size)
    shape = self.shape
    sizes = list(shape[len(shape) - k:]) if shape is not None else []
    if len(sizes) != k or not all(isinstance(d, int) for d in sizes):
        raise NotImplementedError(f"adaptive max pooling is translated for static spatial sizes only (input shape {shape})")
    rank = len(shape)
    values = self
    separable = list(zip(sizes, output_size))
    if rank == k + 2 and all(size % out == 0 for size, out in separable):  # equal windows, no overlap: one MaxPool
        kernel = [size // out for size, out in separable]
        pooled = op.MaxPool(self, kernel_shape=kernel, strides=kernel)
        values, separable = pooled[0] if isinstance(pooled, tuple) else pooled, []  # (Y, Indices): Y
    for i, (size, out) in enumerate(separable):
        axis = rank - k + i
        parts = []
        for j in range(out):
            lo, hi = _window(j, size, out)
            box = op.Slice(values, op.Constant(value_ints=[lo]), op.Constant(value_ints=[hi]), op.Constant(value_ints=[axis]))
            parts.append(op.ReduceMax(box, op.Constant(value_ints=[axis]), keepdims=1))
        values = op.Concat(*parts, axis=axis) if out > 1 else parts[0]
    lead = op.Shape(self, start=0, end=rank - k)
    cells = []
    for flat_cell in range(int(np.prod(output_size))):
        coords = np.unravel_index(flat_cell, tuple(output_size))
        box, starts, lens = self, [], []
        for i, (c, size, out) in enumerate(zip(coords, sizes, output_size)):
            lo, hi = _window(int(c), size, out)
            box = op.Slice(box, op.Constant(value_ints=[lo]), op.Constant(value_ints=[hi]), op.Constant(value_ints=[rank - k + i]))
            starts.append(lo)
            lens.append(hi - lo)
        local = op.ArgMax(op.Reshape(box, op.Concat(lead, op.Constant(value_ints=[-1]), axis=0)), axis=-1, keepdims=1)
        index, rest = None, local  # unravel the window position, then ravel it in the input's plane
        for i in reversed(range(k)):
            pos = op.Add(op.Mod(rest, op.Constant(value_int=lens[i])), op.Constant(value_int=starts[i]))
            rest = op.Div(rest, op.Constant(value_int=lens[i]))
            term = op.Mul(pos, op.Constant(value_int=int(np.prod(sizes[i + 1:]))))
            index = term if index is None else op.Add(index, term)
        cells.append(index)
    indices = op.Reshape(op.Concat(*cells, axis=-1) if len(cells) > 1 else cells[0],
                         op.Concat(lead, op.Constant(value_ints=list(output_size)), axis=0))
    return values, indices


def grouped_mm(input, weight, offs=None, bias=None, out_dtype=None):
    """A mixture-of-experts grouped matmul (``transformers::grouped_mm_fallback``, ``aten::_grouped_mm``):
    ``input [S, K]`` holds the tokens sorted by expert, ``offs [E]`` the cumulative row count of each
    expert, and rows ``offs[e-1]:offs[e]`` are multiplied by ``weight[e] [K, N]``; rows past ``offs[-1]``
    come out zero. One ``Slice → MatMul`` per expert (E is fixed by the weight's shape), then one
    ``Concat``: no ``[S, K, N]`` gather of per-row weights. Without ``offs``: a batched ``MatMul``."""
    if offs is None:
        out = op.MatMul(input, weight)
    else:
        experts = weight.shape[0] if weight.shape is not None else None
        if len(input.shape) != 2 or len(weight.shape) != 3 or not isinstance(experts, int):
            raise NotImplementedError(f"grouped matmul with offsets: only input [S, K] × weight [E, K, N] with a fixed E is "
                                      f"translated (got input rank {len(input.shape)}, weight shape {weight.shape})")
        ends = op.Cast(offs, to=ir.DataType.INT64)
        zero = op.Constant(value_ints=[0])
        axis0 = op.Constant(value_ints=[0])
        start, parts = zero, []
        for e in range(experts):
            end = op.Slice(ends, op.Constant(value_ints=[e]), op.Constant(value_ints=[e + 1]))
            w = op.Gather(weight, op.Constant(value_int=e), axis=0)
            part = op.MatMul(op.Slice(input, start, end, axis0), w)
            if bias is not None:
                part = op.Add(part, op.Gather(bias, op.Constant(value_int=e), axis=0))
            parts.append(part)
            start = end
        # rows no expert owns (past offs[-1]) are zero, as in the eager op
        rest = op.Sub(op.Shape(input, start=0, end=1), start)
        n = op.Shape(weight, start=2, end=3)
        parts.append(op.CastLike(op.ConstantOfShape(op.Concat(rest, n, axis=0)), parts[0]))
        out = op.Concat(*parts, axis=0)
    if offs is None and bias is not None:
        out = op.Add(out, bias)
    if out_dtype is not None and out_dtype != -1:
        out = op.Cast(out, to=out_dtype)
    return out


def _grouped_mm_ops() -> list:
    """The grouped-matmul overloads this torch (and transformers, if imported) registers."""
    found = []
    aten = getattr(torch.ops.aten, "_grouped_mm", None)
    if aten is not None:
        found.append(aten.default)
    try:
        found.append(torch.ops.transformers.grouped_mm_fallback.default)
    except (AttributeError, RuntimeError):  # transformers not imported, or older than its MoE integration
        pass
    return found


def translation_table(opset: int = 21) -> dict:
    """Translations for an export at ``opset`` (INT2 containers from opset 25 on)."""
    from qgraph.backends.onnx_rnn import packed_rnn, rnn

    import qgraph.primitives  # noqa: F401  (registers the custom ops)
    import qgraph.recurrent_export  # noqa: F401  (registers qgraph::rnn and qgraph::packed_rnn)

    return {
        torch.ops.qgraph.rnn.default: rnn,
        torch.ops.qgraph.packed_rnn.default: packed_rnn,
        torch.ops.qgraph.fake_quantize.default: fake_quantize,
        torch.ops.qgraph.dequantize.default: dequantize_int2 if opset >= INT2_OPSET else dequantize,
        torch.ops.aten.conv3d.default: conv3d,
        torch.ops.aten._cdist_forward.default: cdist,
        torch.ops.aten.scatter_reduce.two: scatter_reduce,
        torch.ops.aten.log_sigmoid.default: log_sigmoid,
        torch.ops.aten.rsub.Scalar: rsub_scalar,
        **({torch.ops.torchvision.ps_roi_align.default: ps_roi_align} if _has_torchvision_ops() else {}),
        torch.ops.aten.median.dim: median_dim,
        torch.ops.aten.median.default: median,
        torch.ops.aten.searchsorted.Tensor: searchsorted,
        torch.ops.aten.cumprod.default: cumprod,
        torch.ops.aten.adaptive_max_pool2d.default: adaptive_max_pool,
        torch.ops.aten.adaptive_max_pool3d.default: adaptive_max_pool,
        **dict.fromkeys(_grouped_mm_ops(), grouped_mm),
    }


def _has_torchvision_ops() -> bool:
    """torchvision's ops are registered (``torch.ops.torchvision``): a model that calls them has imported
    torchvision, and exporting one that does not need not import it."""
    import sys

    return "torchvision" in sys.modules and hasattr(torch.ops.torchvision, "ps_roi_align")
