"""Rule 16 of :func:`qgraph.backends.onnx_runtime_rules.prepare_for_onnxruntime`: the attention scale
after the ``q·kᵀ`` MatMul.

The dynamo exporter writes ``scaled_dot_product_attention`` as ``MatMul(q · √s, kᵀ · √s)`` with
``s = 1/√d``: a ``Mul`` by a constant on each side, the k-side constant behind a ``CastLike``. With q
and k quantized, those Muls stand between the DequantizeLinear nodes and the MatMul, so ONNX Runtime
fuses nothing and runs ``q·kᵀ`` as a float MatMul on dequantized values (``FusedMatMul``). Written as
``Mul(MatMul(q, kᵀ), s)`` (the same product up to float rounding), ONNX Runtime fuses the MatMul with
its two DequantizeLinear inputs into ``MatMulIntegerToFloat``, as it does for the linears around it.

Only a MatMul whose two inputs are both dequantized to float32 (directly or through reshapes and
transposes) once the scalar Muls are set aside is rewritten; everything else is left as the exporter
wrote it (``repeat_kv``'s Expand in grouped-query attention, for one, is no op ONNX Runtime moves a
DequantizeLinear past).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto
from qgraph.backends.onnx_fold import _to_numpy


def scale_after_attention_matmul(model: onnx.ModelProto, gr) -> int:
    """Rule 16 (module docstring) on ``model``'s main graph, in place; ``gr`` is a fresh
    ``onnx_runtime_rules._Graph`` of it. Returns how many MatMuls were rewritten."""
    after: dict[int, list[onnx.NodeProto]] = {}
    drop: set[int] = set()
    index = {id(n): i for i, n in enumerate(model.graph.node)}
    claimed: set[int] = set()
    count = 0
    for mm in list(model.graph.node):
        if mm.op_type != "MatMul" or mm.domain not in ("", "ai.onnx") or len(mm.input) != 2:
            continue
        sides = [_unscaled(gr, name) for name in mm.input]
        if any(s is None for s in sides) or all(s[1] is None for s in sides):
            continue
        muls = [s[1] for s in sides if s[1] is not None]
        if any(id(m) in claimed for m in muls):
            continue
        factor = np.float32(1.0)
        for _, _, c in sides:
            factor = np.float32(factor * c)
        claimed.update(id(m) for m in muls)
        drop.update(index[id(m)] for m in muls)
        out = mm.output[0]
        unscaled = f"{out}_unscaled"
        c_name = gr.add_initializer(np.asarray(factor, dtype=np.float32), f"{out}_attention_scale")
        mm.input[0], mm.input[1] = sides[0][0], sides[1][0]
        mm.output[0] = unscaled
        after.setdefault(index[id(mm)], []).append(
            onnx.helper.make_node("Mul", [unscaled, c_name], [out], name=f"{mm.name or out}_attention_scale"))
        count += 1
    if count:
        # CastLike nodes that only fed a dropped Mul
        dropped_reads = {i for k in drop for i in model.graph.node[k].input}
        for k, n in enumerate(model.graph.node):
            if n.op_type == "CastLike" and n.output[0] in dropped_reads and all(
                    index[id(u)] in drop for u in gr.users.get(n.output[0], [])) and n.output[0] not in gr.outputs:
                drop.add(k)
        gr.replace_nodes({}, drop, after)
    return count


def _unscaled(gr, name: str) -> tuple[str, onnx.NodeProto | None, np.float32] | None:
    """``(x, mul, c)`` where ``name`` is ``mul = Mul(x, c)`` (its result read by one node only; ``c`` a
    float32 scalar constant) or ``x`` itself (``mul`` None, ``c`` 1), and ``x`` is dequantized to
    float32; None otherwise."""
    p = gr.producer.get(name)
    if p is not None and p.op_type == "Mul" and p.domain in ("", "ai.onnx") and name not in gr.outputs \
            and len(gr.users.get(name, [])) == 1:
        for k in (0, 1):
            c = _scalar(gr, p.input[1 - k])
            if c is not None and _float32_dequantized(gr, p.input[k]):
                return p.input[k], p, c
    if _float32_dequantized(gr, name):
        return name, None, np.float32(1.0)
    return None


def _float32_dequantized(gr, name: str) -> bool:
    """``name`` is dequantized (through reshapes and transposes) by a DequantizeLinear with a float32 scale."""
    dq = gr.dequantizer(name)
    scale = gr.inits.get(dq.input[1]) if dq is not None and len(dq.input) > 1 else None
    return scale is not None and scale.data_type == TensorProto.FLOAT


def _scalar(gr, name: str) -> np.float32 | None:
    """The value of a float32 scalar initializer ``name``, or of ``CastLike(initializer, y)`` where the
    initializer is a float32 scalar (the Mul's other input is a float32 DequantizeLinear result, so the
    CastLike casts to float32 and changes nothing)."""
    p = gr.producer.get(name)
    if p is not None and p.op_type == "CastLike" and p.domain in ("", "ai.onnx"):
        name = p.input[0]
    t = gr.inits.get(name)
    if t is None or t.data_type != TensorProto.FLOAT:
        return None
    v = _to_numpy(t)
    return np.float32(v.reshape(())) if v.size == 1 else None
