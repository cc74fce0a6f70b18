"""Fold quantization of constants in an exported ONNX model, so integer weights are stored as integers.

Rules, applied until nothing changes:

1. ``Constant`` nodes become initializers.
2. ``Cast(initializer)`` becomes an initializer of the target type (int4/uint4 packed two to a byte,
   int2/uint2 four to a byte), except a Cast that widens integer codes (rules 5 and 7 put those there).
3. ``QuantizeLinear(initializer, scale, zero_point)`` becomes an integer initializer
   (``saturate(round_half_even(x / scale) + zero_point)``, per-tensor, per-axis or blocked).
4. ``Clip(integer initializer, lo, hi)`` becomes an initializer.

Without this the file keeps FP32 weights feeding a QuantizeLinear and stays FP32-sized.

The rewrites for ONNX Runtime's fusions (rules 5 to 13) are in :mod:`qgraph.backends.onnx_runtime_rules`.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

_NP_OF = {
    TensorProto.INT2: ml_dtypes.int2,
    TensorProto.UINT2: ml_dtypes.uint2,
    TensorProto.INT4: ml_dtypes.int4,
    TensorProto.UINT4: ml_dtypes.uint4,
    TensorProto.INT8: np.int8,
    TensorProto.UINT8: np.uint8,
    TensorProto.INT16: np.int16,
    TensorProto.INT32: np.int32,
    TensorProto.INT64: np.int64,
    TensorProto.FLOAT: np.float32,
    TensorProto.FLOAT16: np.float16,
}
_RANGE = {
    TensorProto.INT2: (-2, 1),
    TensorProto.UINT2: (0, 3),
    TensorProto.INT4: (-8, 7),
    TensorProto.UINT4: (0, 15),
    TensorProto.INT8: (-128, 127),
    TensorProto.UINT8: (0, 255),
}


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _expand(p: np.ndarray, x: np.ndarray, axis: int, block: int) -> np.ndarray:
    if p.ndim == 0 or p.size == 1 and block == 0 and p.ndim <= 1 and x.ndim != 1:
        return p.reshape(())
    axis = axis % x.ndim
    if block > 0:
        return np.repeat(p, block, axis=axis)
    shape = [1] * x.ndim
    shape[axis] = -1
    return p.reshape(shape)


def quantize_linear(x: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, axis: int, block: int, to: int) -> np.ndarray:
    """ONNX QuantizeLinear semantics in numpy (round half to even, saturate to the type)."""
    s = _expand(scale.astype(np.float32), x, axis, block)
    z = _expand(zp.astype(np.float32), x, axis, block) if zp is not None else np.float32(0)
    lo, hi = _RANGE[to]
    q = np.clip(np.rint(x.astype(np.float32) / s) + z, lo, hi)
    return q.astype(np.int8 if lo < 0 else np.uint8).astype(_NP_OF[to])


def _to_numpy(t: onnx.TensorProto) -> np.ndarray:
    return numpy_helper.to_array(t)


def fold_constant_quantization(model: onnx.ModelProto) -> int:
    """Apply the folding rules in place; returns how many nodes were folded."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    folded = 0
    changed = True
    while changed:
        changed = False
        keep = []
        for node in g.node:
            value = _fold(node, inits)
            if value is None:
                keep.append(node)
                continue
            name = _readable_name(node, g, inits)
            if name != node.output[0]:
                for other in g.node:
                    other.input[:] = [name if i == node.output[0] else i for i in other.input]
                for out in g.output:
                    if out.name == node.output[0]:
                        out.name = name
            inits[name] = numpy_helper.from_array(value, name)
            folded += 1
            changed = True
        if changed:
            del g.node[:]
            g.node.extend(keep)
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    for sub in g.node:
        used |= subgraph_reads(sub)
    del g.initializer[:]
    g.initializer.extend(t for name, t in inits.items() if name in used)
    return folded


def _readable_name(node: onnx.NodeProto, g: onnx.GraphProto, inits: dict) -> str:
    """Keep the source initializer's name (``fc1.weight_quantizer.qweight``) when only this node reads it."""
    src = node.input[0] if node.input else ""
    if node.op_type in ("Cast", "QuantizeLinear", "Clip") and src in inits:
        readers = sum(src in n.input for n in g.node)
        if readers == 1 and src not in {o.name for o in g.output}:
            return src
    return node.output[0]


def _fold(node: onnx.NodeProto, inits: dict) -> np.ndarray | None:
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
        return _to_numpy(node.attribute[0].t)
    ins = [i for i in node.input]
    if not ins or any(i and i not in inits for i in ins):
        return None
    vals = [(_to_numpy(inits[i]) if i else None) for i in ins]
    if node.op_type == "Cast":
        to = _attr(node, "to", None)
        if to not in _NP_OF or _widens_packed(inits[ins[0]].data_type, to):
            return None
        return vals[0].astype(np.float32).astype(_NP_OF[to]) if to in _RANGE else vals[0].astype(_NP_OF[to])
    if node.op_type == "QuantizeLinear":
        zp_t = inits[ins[2]] if len(ins) > 2 and ins[2] else None
        to = zp_t.data_type if zp_t is not None else _attr(node, "output_dtype", TensorProto.UINT8) or TensorProto.UINT8
        if to not in _RANGE:
            return None
        return quantize_linear(vals[0], vals[1], vals[2] if len(vals) > 2 else None, _attr(node, "axis", 1), _attr(node, "block_size", 0), to)
    if node.op_type == "Clip" and len(vals) == 3 and inits[ins[0]].data_type in _RANGE:
        dtype = vals[0].dtype
        signed = _RANGE[inits[ins[0]].data_type][0] < 0
        return np.clip(vals[0].astype(np.int32), int(vals[1]), int(vals[2])).astype(np.int8 if signed else np.uint8).astype(dtype)
    return None


def _widens_packed(src: int, to: int) -> bool:
    """A Cast that widens integer codes (rules 5 and 7 put them there): kept, so the file keeps the codes."""
    bits = {TensorProto.INT2: 2, TensorProto.UINT2: 2, TensorProto.INT4: 4, TensorProto.UINT4: 4,
            TensorProto.INT8: 8, TensorProto.UINT8: 8}
    return src in bits and bits[src] < bits.get(to, 32)


def subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Every name the subgraphs of ``node`` (an ``If``'s branches, a ``Loop``'s or ``Scan``'s body, at any
    depth) read: outer-scope values and initializers they use without listing them as node inputs."""
    names: set[str] = set()
    for a in node.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs) if a.type == onnx.AttributeProto.GRAPHS else []
        for sub in graphs:
            for n in sub.node:
                names.update(n.input)
                names |= subgraph_reads(n)
    return names
