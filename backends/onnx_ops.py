"""ONNX translations of qgraph's custom ops for the dynamo ONNX exporter.

* ``qgraph::fake_quantize`` → ``QuantizeLinear → DequantizeLinear`` with a uint8/int8 zero point;
  grids narrower than 8 bits get an integer ``Clip`` between Q and DQ.
* ``qgraph::dequantize`` → ``Cast(int codes → container) → DequantizeLinear``; the Cast of an
  initializer is folded into a typed (packed int4) initializer after export
  (:func:`qgraph.backends.onnx_fold.fold_constant_quantization`).

Axis and block size follow the primitive's layout: per-tensor (no axis), per-channel (``axis``),
per-group (``axis`` = blocked axis, ``block_size``).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import torch
from onnxscript import opset21 as op

_RANGES = {
    ir.DataType.INT4: (-8, 7),
    ir.DataType.UINT4: (0, 15),
    ir.DataType.INT8: (-128, 127),
    ir.DataType.UINT8: (0, 255),
}
_NP = {ir.DataType.INT8: np.int8, ir.DataType.UINT8: np.uint8}


def container(qmin: int, qmax: int, allow_4bit: bool) -> ir.DataType:
    """The ONNX integer type that holds a [qmin, qmax] grid."""
    if qmin >= 0:
        if allow_4bit and qmax <= 15:
            return ir.DataType.UINT4
        return ir.DataType.UINT8
    if allow_4bit and qmin >= -8 and qmax <= 7:
        return ir.DataType.INT4
    return ir.DataType.INT8


def _qdq_attrs(axis: int, group_size: int, scale_rank: int) -> dict:
    if group_size > 0:
        return {"axis": axis, "block_size": group_size}
    if scale_rank == 0:
        return {}
    return {"axis": axis}


def _scale_rank(scale) -> int:
    shape = getattr(scale, "shape", None)
    return len(shape) if shape is not None else 0


def fake_quantize(x, scale, zero_point, qmin: int, qmax: int, axis: int, group_size: int, grad_factor: float):
    # activations always travel in 8-bit containers: ONNX Runtime's QDQ fusion picks up uint4
    # activations for QLinearConv and then rejects the graph (ORT 1.32)
    dtype = container(qmin, qmax, allow_4bit=False)
    zp = op.Cast(zero_point, to=dtype)
    attrs = _qdq_attrs(axis, group_size, _scale_rank(scale))
    q = op.QuantizeLinear(x, scale, zp, **attrs)
    if (qmin, qmax) != _RANGES[dtype]:
        lo = op.Constant(value=ir.tensor(np.array(qmin, dtype=_NP[dtype])))
        hi = op.Constant(value=ir.tensor(np.array(qmax, dtype=_NP[dtype])))
        q = op.Clip(q, lo, hi)
    return op.DequantizeLinear(q, scale, zp, **attrs)


def dequantize(q, scale, zero_point, qmin: int, qmax: int, axis: int, group_size: int):
    dtype = container(qmin, qmax, allow_4bit=True)
    qc = op.Cast(q, to=dtype)
    zp = op.Cast(zero_point, to=dtype)
    return op.DequantizeLinear(qc, scale, zp, **_qdq_attrs(axis, group_size, _scale_rank(scale)))


def translation_table() -> dict:
    import qgraph.primitives  # noqa: F401  (registers the custom ops)

    return {
        torch.ops.qgraph.fake_quantize.default: fake_quantize,
        torch.ops.qgraph.dequantize.default: dequantize,
    }
