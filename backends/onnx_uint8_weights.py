"""Rule 15 (optional: ``QModel.export(uint8_weights=True)``): 8-bit weights of integer kernels as uint8.

On x86 CPUs without VNNI (AVX2, AVX-512 without VNNI), ONNX Runtime's default u8·s8 kernels
multiply uint8 activations by int8 weights with ``vpmaddubsw``, which adds each pair of products
in int16 with saturation: 2 · 255 · 127 does not fit, and a w8a8 file comes out off (a random
1024-4096-1024 MLP: 0.15 on outputs up to 0.98). ONNX Runtime's exact mode fixes it per session
(:func:`qgraph.backends.ort.session` with ``exact_int8``), but a session the user opens with default
options does not have it. This rule fixes it in the file: every int8 weight that a
``DequantizeLinear`` feeds into an integer kernel (a Conv / ConvTranspose / Gemm / MatMul whose
activation is dequantized too) is stored as uint8 ``w + 128`` with zero point ``z + 128``. The
dequantized values are the same bit for bit; ONNX Runtime then runs its u8·u8 kernels, which do not
saturate, under any session options. ONNX Runtime's documentation calls this the U8U8 format.

The cost is speed where the CPU has VNNI, whose fast instruction takes u8·s8: the file runs the
u8·u8 kernels there too. Weight-only layers (w8a16) and packed int4/int2 weights are left alone:
no integer kernel multiplies them by 8-bit activations.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from qgraph.backends.onnx_fold import subgraph_reads
from qgraph.backends.onnx_runtime_rules import _PASS_THROUGH, _WEIGHTED, _Graph

_SHIFT = 128


def integer_kernel_weights(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The ``DequantizeLinear`` nodes of int8 weights (initializers) that feed an integer kernel:
    a weighted op whose other input is dequantized too. These are the weights ONNX Runtime's u8·s8
    kernels multiply, the ones that saturate on a CPU without VNNI."""
    gr = _Graph(model.graph)
    found = []
    for dq in gr.g.node:
        if dq.op_type != "DequantizeLinear" or dq.domain not in ("", "ai.onnx"):
            continue
        w = gr.inits.get(dq.input[0])
        if w is None or w.data_type != TensorProto.INT8:
            continue
        if any(_feeds_integer_kernel(gr, op, value) for op, value in _readers(gr, dq.output[0])):
            found.append(dq)
    return found


def _readers(gr: _Graph, name: str) -> list[tuple[onnx.NodeProto, str]]:
    """(op, the input name it reads) for the weighted ops that read ``name``, through pass-through ops."""
    out, frontier = [], [name]
    for _ in range(8):
        nxt = []
        for v in frontier:
            for n in gr.users.get(v, []):
                if n.op_type in _WEIGHTED:
                    out.append((n, v))
                elif n.op_type in _PASS_THROUGH and n.output:
                    nxt.append(n.output[0])
        if not nxt:
            break
        frontier = nxt
    return out


def _feeds_integer_kernel(gr: _Graph, op: onnx.NodeProto, value: str) -> bool:
    """Whether ``op`` reads ``value`` beside a dequantized activation."""
    others = [i for i in op.input[:2] if i and i != value]
    return bool(others) and all(gr.dequantized(i) for i in others)


def uint8_weights(model: onnx.ModelProto) -> int:
    """Rule 15, in place: each weight of :func:`integer_kernel_weights` as uint8 ``w + 128``, its zero
    point ``z + 128`` (128 where the DequantizeLinear had none). Returns how many DequantizeLinear
    nodes changed. A weight several of them read is converted once; each gets its own zero point."""
    dqs = integer_kernel_weights(model)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    taken = set(inits)
    converted: dict[str, str] = {}
    old_zero_points: set[str] = set()

    def fresh(base: str) -> str:
        name, i = base, 1
        while name in taken:
            i += 1
            name = f"{base}_{i}"
        taken.add(name)
        return name

    for dq in dqs:
        w = dq.input[0]
        if w not in converted:
            codes = numpy_helper.to_array(inits[w]).astype(np.int16) + _SHIFT
            converted[w] = fresh(f"{w}_u8")
            g.initializer.append(numpy_helper.from_array(codes.astype(np.uint8), converted[w]))
        dq.input[0] = converted[w]
        zp = inits.get(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
        if zp is not None:
            old_zero_points.add(zp.name)
        if zp is None:
            zeros = np.zeros(numpy_helper.to_array(inits[dq.input[1]]).shape, np.int16) if dq.input[1] in inits else np.int16(0)
        elif zp.data_type == TensorProto.INT8:
            zeros = numpy_helper.to_array(zp).astype(np.int16)
        else:
            raise ValueError(f"DequantizeLinear {dq.name!r}: int8 weight {w!r} with a zero point of type "
                             f"{TensorProto.DataType.Name(zp.data_type)}")
        name = fresh(f"{w}_u8_zero_point")
        g.initializer.append(numpy_helper.from_array(np.asarray(zeros + _SHIFT).astype(np.uint8), name))
        while len(dq.input) < 3:
            dq.input.append("")
        dq.input[2] = name
    _drop_unread(g, set(converted) | old_zero_points)
    return len(dqs)


def _drop_unread(g: onnx.GraphProto, candidates: set[str]) -> None:
    """Remove the initializers in ``candidates`` (the int8 originals) that no node reads any more."""
    read = {i for n in g.node for i in (*n.input, *subgraph_reads(n))}
    keep = [t for t in g.initializer if t.name in read or t.name not in candidates]
    if len(keep) != len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(keep)
